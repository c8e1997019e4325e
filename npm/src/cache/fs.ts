// Files on disk, for Node, Deno and Bun: `{root}/{key}`, downloads in `{root}/{key}.part`.
import type { CacheEntryInfo, ModelCache, PartFile, StoredFile } from './types.js';

type Fs = typeof import('node:fs');
type FsPromises = typeof import('node:fs/promises');
type Path = typeof import('node:path');

// Through a variable so browser bundlers do not try to resolve Node built-ins.
const importBuiltin = (name: string) => import(/* @vite-ignore */ name);

export class FsCache implements ModelCache {
  readonly kind = 'fs';

  private constructor(
    readonly root: string,
    private readonly fs: Fs,
    private readonly fsp: FsPromises,
    private readonly path: Path,
  ) {}

  /** `root` defaults to `$EMBERLM_CACHE`, else `$XDG_CACHE_HOME/emberlm`, else `~/.cache/emberlm`. */
  static async create(root?: string): Promise<FsCache> {
    const [fs, fsp, path, os] = await Promise.all(['node:fs', 'node:fs/promises', 'node:path', 'node:os'].map(importBuiltin));
    const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env ?? {};
    root ??= env.EMBERLM_CACHE ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'emberlm');
    return new FsCache(path.resolve(root), fs, fsp, path);
  }

  private file(key: string): string {
    const p = this.path.join(this.root, ...key.split('/'));
    if (!p.startsWith(this.root + this.path.sep)) throw new Error(`cache key ${key} leaves the cache folder`);
    return p;
  }

  async open(key: string): Promise<StoredFile | null> {
    const path = this.file(key);
    let size: number;
    try {
      size = (await this.fsp.stat(path)).size;
    } catch {
      return null;
    }
    const fs = this.fs;
    let fd: number | undefined;
    return {
      size,
      readSync(offset, length) {
        fd ??= fs.openSync(path, 'r');
        const out = new Uint8Array(length);
        let done = 0;
        while (done < length) {
          const n = fs.readSync(fd, out, done, length - done, offset + done);
          if (n === 0) throw new Error(`${path}: ended at ${offset + done} of ${size} bytes (changed on disk?)`);
          done += n;
        }
        return out;
      },
      text: () => this.fsp.readFile(path, 'utf8'),
      close() {
        if (fd !== undefined) fs.closeSync(fd);
        fd = undefined;
      },
    };
  }

  async part(key: string): Promise<PartFile> {
    const final = this.file(key);
    const path = `${final}.part`;
    await this.fsp.mkdir(this.path.dirname(path), { recursive: true });
    const handle = await this.fsp.open(path, 'a+');
    let size = (await handle.stat()).size;
    const { fsp } = this;
    return {
      get size() {
        return size;
      },
      async *chunks() {
        const buf = new Uint8Array(1 << 22);
        for (let at = 0; at < size; ) {
          const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, size - at), at);
          if (bytesRead === 0) break;
          yield buf.subarray(0, bytesRead);
          at += bytesRead;
        }
      },
      async append(bytes) {
        await handle.write(bytes);
        size += bytes.length;
      },
      async discard() {
        await handle.close().catch(() => {});
        await fsp.rm(path, { force: true });
        size = 0;
      },
      async commit() {
        await handle.sync();
        await handle.close();
        await fsp.rename(path, final);
      },
    };
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    const path = this.file(key);
    await this.fsp.mkdir(this.path.dirname(path), { recursive: true });
    // Write aside and rename, so a crash never leaves half a manifest.
    await this.fsp.writeFile(`${path}.part`, bytes);
    await this.fsp.rename(`${path}.part`, path);
  }

  async delete(key: string): Promise<void> {
    const path = this.file(key);
    await this.fsp.rm(path, { force: true });
    await this.fsp.rm(`${path}.part`, { force: true });
  }

  async list(prefix: string): Promise<CacheEntryInfo[]> {
    const out: CacheEntryInfo[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await this.fsp.readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const key = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(this.path.join(dir, e.name), key);
        else if (!e.name.endsWith('.part') && key.startsWith(prefix)) out.push({ key, size: (await this.fsp.stat(this.path.join(dir, e.name))).size });
      }
    };
    await walk(this.root, '');
    return out;
  }
}
