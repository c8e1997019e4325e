import { IS_SERVER_RUNTIME } from '../runtime.js';
import { CacheApiCache } from './cache-api.js';
import { FsCache } from './fs.js';
import { MemoryCache } from './memory.js';
import { OpfsCache } from './opfs.js';
import type { ModelCache } from './types.js';

export { CacheApiCache, FsCache, MemoryCache, OpfsCache };
export type { CacheEntryInfo, ModelCache, PartFile, StoredFile, SyncReader } from './types.js';

export type CacheChoice = 'auto' | 'cache-api' | 'opfs' | 'fs' | 'memory' | ModelCache;

/**
 * `auto`: a file cache in Node/Deno/Bun; OPFS where files can be appended (large files,
 * downloads resumable across reloads; the page and its worker see the same store); the Cache
 * API otherwise; memory where neither exists.
 */
export async function openCache(choice: CacheChoice = 'auto', cacheDir?: string): Promise<ModelCache> {
  if (typeof choice === 'object') return choice;
  switch (choice) {
    case 'fs':
      return FsCache.create(cacheDir);
    case 'opfs':
      return OpfsCache.create();
    case 'cache-api':
      return new CacheApiCache();
    case 'memory':
      return new MemoryCache();
  }
  if (IS_SERVER_RUNTIME) return FsCache.create(cacheDir);
  if (OpfsCache.supported()) return OpfsCache.create();
  if (typeof caches !== 'undefined') return new CacheApiCache();
  return new MemoryCache();
}
