// emberlm: language models on WebGPU in browsers, Node, Deno and Bun.
//
//   import { createEngine } from 'emberlm';
//   const engine = await createEngine('HuggingFaceTB/SmolLM2-360M-Instruct', { onProgress: console.log });
//   const reply = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Hi!' }] });
import { LocalBackend } from './backend-local.js';
import { WorkerBackend } from './backend-worker.js';
import { openCache, type CacheChoice } from './cache/index.js';
import { EmberEngine } from './engine.js';
import { modelRef } from './hub.js';
import { deleteCached, listCached, requestPersistentStorage, storageEstimate, type CachedModel } from './model-files.js';
import { IS_BROWSER_WINDOW } from './runtime.js';
import type { Engine, EngineOptions } from './types.js';

export type * from './types.js';
export type { CacheChoice, CachedModel };
export type { CacheEntryInfo, ModelCache, PartFile, StoredFile, SyncReader } from './cache/index.js';
export { CacheApiCache, FsCache, MemoryCache, OpfsCache, openCache } from './cache/index.js';
export { EmberError, type EmberErrorCode } from './errors.js';
export { DEFAULT_HUB, resolveUrl, type ModelRef, type RepoFile } from './hub.js';
export { quantOf, QUANT_PREFERENCE } from './select.js';
export { requestPersistentStorage, storageEstimate };

/**
 * Loads `repo` (a Hub id such as `HuggingFaceTB/SmolLM2-360M-Instruct`, optionally `@revision`)
 * from the cache, downloading it first when needed, and returns a ready engine. In Node, Deno
 * and Bun `repo` may instead be a path to a .gguf file (absolute, `./…`, or ending in `.gguf`),
 * read in place with no network. In a browser page the engine runs in a dedicated Web Worker
 * unless `worker: false`.
 */
export async function createEngine(repo: string, options: EngineOptions = {}): Promise<Engine> {
  const inWorker = options.worker ?? (IS_BROWSER_WINDOW && typeof Worker !== 'undefined');
  const backend = inWorker ? await WorkerBackend.load(repo, options) : await LocalBackend.load(repo, options);
  return new EmberEngine(backend);
}

interface CacheOptions {
  cache?: CacheChoice;
  cacheDir?: string;
}

/** Every complete model in the cache, with its files and sizes. */
export async function listCachedModels(options: CacheOptions = {}): Promise<CachedModel[]> {
  return listCached(await openCache(options.cache, options.cacheDir));
}

/** Whether `repo` (at `revision`, default main) is cached completely, so it loads offline. */
export async function isModelCached(repo: string, options: CacheOptions & { hub?: string; revision?: string } = {}): Promise<boolean> {
  const ref = modelRef(repo, options);
  return (await listCachedModels(options)).some((m) => m.hub === ref.hub && m.repo === ref.repo && m.revision === ref.revision);
}

/** Deletes `repo`'s cached files (every quantisation of that revision); resolves to the bytes freed. */
export async function deleteCachedModel(repo: string, options: CacheOptions & { hub?: string; revision?: string } = {}): Promise<number> {
  return deleteCached(await openCache(options.cache, options.cacheDir), modelRef(repo, options));
}
