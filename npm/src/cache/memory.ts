import type { CacheEntryInfo, ModelCache, PartFile, StoredFile } from './types.js';

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export function storedBytes(bytes: Uint8Array): StoredFile {
  return {
    size: bytes.length,
    readSync: (offset, length) => bytes.subarray(offset, offset + length),
    text: async () => new TextDecoder().decode(bytes),
  };
}

/** Keeps files in memory only: for tests and for `cache: 'memory'` (nothing persists). */
export class MemoryCache implements ModelCache {
  readonly kind = 'memory';
  private readonly entries = new Map<string, Uint8Array>();
  private readonly parts = new Map<string, Uint8Array[]>();

  async open(key: string): Promise<StoredFile | null> {
    const bytes = this.entries.get(key);
    return bytes ? storedBytes(bytes) : null;
  }

  async part(key: string): Promise<PartFile> {
    const chunks = this.parts.get(key) ?? [];
    this.parts.set(key, chunks);
    let size = chunks.reduce((n, c) => n + c.length, 0);
    return {
      get size() {
        return size;
      },
      chunks: async function* () {
        yield* [...chunks];
      },
      append: async (bytes) => {
        chunks.push(bytes.slice());
        size += bytes.length;
      },
      discard: async () => {
        this.parts.delete(key);
        chunks.length = 0;
        size = 0;
      },
      commit: async () => {
        this.entries.set(key, concat(chunks));
        this.parts.delete(key);
      },
    };
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    this.entries.set(key, bytes.slice());
  }

  async delete(key: string): Promise<void> {
    this.entries.delete(key);
    this.parts.delete(key);
  }

  async list(prefix: string): Promise<CacheEntryInfo[]> {
    return [...this.entries].filter(([k]) => k.startsWith(prefix)).map(([key, b]) => ({ key, size: b.length }));
  }
}
