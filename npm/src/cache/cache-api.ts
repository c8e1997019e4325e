// The browser Cache API (the default in pages): one Response per file under a synthetic URL.
// It cannot append, so a download in progress is held as Blob pieces (Chromium keeps large
// Blobs on disk) and resumes with Range within the session only; OPFS resumes across reloads.
import type { CacheEntryInfo, ModelCache, PartFile, StoredFile } from './types.js';

const ORIGIN = 'https://emberlm.cache/';
const toUrl = (key: string) => ORIGIN + key.split('/').map(encodeURIComponent).join('/');
const toKey = (url: string) => url.slice(ORIGIN.length).split('/').map(decodeURIComponent).join('/');

export function storedBlob(blob: Blob): StoredFile {
  return { size: blob.size, blob, text: () => blob.text() };
}

export class CacheApiCache implements ModelCache {
  readonly kind = 'cache-api';
  private readonly parts = new Map<string, Blob[]>();

  constructor(readonly cacheName = 'emberlm') {}

  private cache(): Promise<Cache> {
    return caches.open(this.cacheName);
  }

  async open(key: string): Promise<StoredFile | null> {
    const res = await (await this.cache()).match(toUrl(key));
    return res ? storedBlob(await res.blob()) : null;
  }

  async part(key: string): Promise<PartFile> {
    const pieces = this.parts.get(key) ?? [];
    this.parts.set(key, pieces);
    let size = pieces.reduce((n, b) => n + b.size, 0);
    return {
      get size() {
        return size;
      },
      async *chunks() {
        for (const b of [...pieces]) yield new Uint8Array(await b.arrayBuffer());
      },
      async append(bytes) {
        pieces.push(new Blob([bytes as Uint8Array<ArrayBuffer>]));
        size += bytes.length;
      },
      discard: async () => {
        this.parts.delete(key);
        pieces.length = 0;
        size = 0;
      },
      commit: async () => {
        const body = new Blob(pieces);
        await (await this.cache()).put(toUrl(key), new Response(body, { headers: { 'content-length': String(body.size) } }));
        this.parts.delete(key);
      },
    };
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    await (await this.cache()).put(toUrl(key), new Response(bytes as Uint8Array<ArrayBuffer>, { headers: { 'content-length': String(bytes.length) } }));
  }

  async delete(key: string): Promise<void> {
    await (await this.cache()).delete(toUrl(key));
    this.parts.delete(key);
  }

  async list(prefix: string): Promise<CacheEntryInfo[]> {
    const cache = await this.cache();
    const out: CacheEntryInfo[] = [];
    for (const req of await cache.keys()) {
      const key = toKey(req.url);
      if (!key.startsWith(prefix)) continue;
      const res = await cache.match(req);
      const size = Number(res?.headers.get('content-length') ?? NaN);
      out.push({ key, size: Number.isFinite(size) ? size : ((await res?.blob())?.size ?? 0) });
    }
    return out;
  }
}
