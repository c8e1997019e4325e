// The Origin Private File System: one file per key under `emberlm/`, downloads appended to a
// `.part` file, so an interrupted download resumes after a reload too. Used from a worker.
import { storedBlob } from './cache-api.js';
import type { CacheEntryInfo, ModelCache, PartFile, StoredFile, SyncReader } from './types.js';

type Dir = FileSystemDirectoryHandle;

/** The parts of `FileSystemSyncAccessHandle` used here (dedicated workers only). */
interface SyncAccessHandle {
  read(buffer: Uint8Array, options: { at: number }): number;
  close(): void;
}
type SyncHandleFile = FileSystemFileHandle & { createSyncAccessHandle?(): Promise<SyncAccessHandle> };

/**
 * Reads through a sync access handle into one buffer reused across reads (grown to the largest
 * read): no Blob slice or FileReaderSync round trip to the browser process per read.
 */
async function openSyncReader(h: SyncHandleFile, name: string): Promise<SyncReader | null> {
  if (typeof h.createSyncAccessHandle !== 'function') return null;
  let access: SyncAccessHandle;
  try {
    access = await h.createSyncAccessHandle();
  } catch {
    // Another context holds the file's lock (a second tab loading the same model), or the
    // handle API is refused here: the caller falls back to Blob reads.
    return null;
  }
  let buffer = new Uint8Array(0);
  return {
    read(offset, length) {
      if (buffer.length < length) buffer = new Uint8Array(length);
      const out = buffer.subarray(0, length);
      let done = 0;
      while (done < length) {
        const n = access.read(out.subarray(done), { at: offset + done });
        if (n <= 0) throw new Error(`${name}: ended at ${offset + done} bytes (changed in storage?)`);
        done += n;
      }
      return out;
    },
    close: () => access.close(),
  };
}

export class OpfsCache implements ModelCache {
  readonly kind = 'opfs';

  private constructor(private readonly root: Dir) {}

  /** Whether this context can write OPFS files through `createWritable` (Chromium, Firefox). */
  static supported(): boolean {
    const g = globalThis as { navigator?: Navigator; FileSystemFileHandle?: { prototype: object } };
    return typeof g.navigator?.storage?.getDirectory === 'function' && !!g.FileSystemFileHandle && 'createWritable' in g.FileSystemFileHandle.prototype;
  }

  static async create(): Promise<OpfsCache> {
    const top = await navigator.storage.getDirectory();
    return new OpfsCache(await top.getDirectoryHandle('emberlm', { create: true }));
  }

  private async dir(segments: string[], create: boolean): Promise<Dir | null> {
    let d = this.root;
    for (const s of segments) {
      try {
        d = await d.getDirectoryHandle(s, { create });
      } catch {
        return null;
      }
    }
    return d;
  }

  private async handle(key: string, suffix: string, create: boolean): Promise<FileSystemFileHandle | null> {
    const segs = key.split('/');
    const name = segs.pop()! + suffix;
    const d = await this.dir(segs, create);
    if (!d) return null;
    try {
      return await d.getFileHandle(name, { create });
    } catch {
      return null;
    }
  }

  async open(key: string): Promise<StoredFile | null> {
    const h = await this.handle(key, '', false);
    if (!h) return null;
    return { ...storedBlob(await h.getFile()), openSyncReader: () => openSyncReader(h, key) };
  }

  async part(key: string): Promise<PartFile> {
    const h = (await this.handle(key, '.part', true))!;
    let size = (await h.getFile()).size;
    let writable: FileSystemWritableFileStream | undefined;
    const write = async (bytes: Uint8Array) => {
      if (!writable) {
        writable = await h.createWritable({ keepExistingData: true });
        await writable.seek(size);
      }
      await writable.write(bytes as Uint8Array<ArrayBuffer>);
    };
    return {
      get size() {
        return size;
      },
      async *chunks() {
        const file = await h.getFile();
        const step = 1 << 22;
        for (let at = 0; at < size; at += step) yield new Uint8Array(await file.slice(at, Math.min(size, at + step)).arrayBuffer());
      },
      async append(bytes) {
        await write(bytes);
        size += bytes.length;
      },
      discard: async () => {
        await writable?.abort().catch(() => {});
        writable = undefined;
        await this.delete(key);
        size = 0;
      },
      commit: async () => {
        await writable?.close();
        writable = undefined;
        // Copy into the final name (FileSystemHandle.move is not everywhere yet), then drop the part.
        const dest = (await this.handle(key, '', true))!;
        const out = await dest.createWritable();
        await (await h.getFile()).stream().pipeTo(out);
        const segs = key.split('/');
        const name = segs.pop()!;
        await (await this.dir(segs, false))?.removeEntry(`${name}.part`).catch(() => {});
      },
    };
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    const out = await (await this.handle(key, '', true))!.createWritable();
    await out.write(bytes as Uint8Array<ArrayBuffer>);
    await out.close();
  }

  async delete(key: string): Promise<void> {
    const segs = key.split('/');
    const name = segs.pop()!;
    const d = await this.dir(segs, false);
    await d?.removeEntry(name).catch(() => {});
    await d?.removeEntry(`${name}.part`).catch(() => {});
  }

  async list(prefix: string): Promise<CacheEntryInfo[]> {
    const out: CacheEntryInfo[] = [];
    const walk = async (d: Dir, rel: string): Promise<void> => {
      for await (const [name, h] of (d as unknown as AsyncIterable<[string, FileSystemHandle]>)) {
        const key = rel ? `${rel}/${name}` : name;
        if (h.kind === 'directory') await walk(h as Dir, key);
        else if (!name.endsWith('.part') && key.startsWith(prefix)) out.push({ key, size: (await (h as FileSystemFileHandle).getFile()).size });
      }
    };
    await walk(this.root, '');
    return out;
  }
}
