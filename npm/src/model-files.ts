// A model's files in the cache: served from a complete cached copy without touching the
// network, otherwise listed on the Hub, selected, downloaded in parallel and recorded in a
// manifest (written last, so a manifest always means "every file is there and verified").
import type { ModelCache, StoredFile } from './cache/types.js';
import { downloadFile, type HasherFactory } from './download.js';
import { EmberError, formatBytes, throwIfAborted } from './errors.js';
import { cacheSegment, checkRepoPath, hubFolder, listRepoFiles, MANIFEST_DIR, resolveUrl, type ModelRef, type RepoFile } from './hub.js';
import { indexShards, selectFiles, type FileChoice, type ModelFormat } from './select.js';

/** Load progress. Byte counts are per phase: download (from the Hub), upload (to the GPU). */
export interface LoadProgress {
  phase: 'download' | 'upload' | 'compile' | 'ready';
  /** The file being worked on, when there is one. */
  file?: string;
  fileLoaded?: number;
  fileTotal?: number;
  /** Bytes done and in all, over every file of this phase. */
  loaded: number;
  total: number;
}

export interface ModelFiles {
  ref: ModelRef;
  format: ModelFormat;
  /** Weight files in load order (GGUF shards, safetensors shards). */
  weights: { path: string; file: StoredFile }[];
  /** Contents of the small JSON files (config.json, tokenizer.json, ...), by path. */
  text: Record<string, string>;
  /** Small binary files read whole (sentence-transformers Dense modules' weights), by path. */
  modules: Record<string, Uint8Array>;
  /** Whether the files came from the cache without any network request. */
  fromCache: boolean;
}

interface Manifest {
  version: 1;
  hub: string;
  repo: string;
  revision: string;
  choice: FileChoice;
  format: ModelFormat;
  weights: RepoFile[];
  text: RepoFile[];
  /** Absent in manifests written before Dense modules were fetched. */
  modules?: RepoFile[];
  savedAt: string;
}

/** `{hub folder}/{owner}/{name}/{revision as one segment}/`: the CLI's layout too. */
export function cachePrefix(ref: ModelRef): string {
  return `${hubFolder(ref.hub)}/${ref.repo}/${cacheSegment(ref.revision)}/`;
}

function manifestKey(ref: ModelRef, choice: FileChoice): string {
  const which = choice.file ? `file=${cacheSegment(choice.file)}` : choice.quant ? `quant=${cacheSegment(choice.quant.toUpperCase())}` : 'auto';
  return `${cachePrefix(ref)}${MANIFEST_DIR}/${which}.json`;
}

/**
 * A manifest, when it is one and names `ref` (when given): a manifest planted or copied into
 * another repo's folder cannot make that repo load other files.
 */
async function readManifest(cache: ModelCache, key: string, ref?: ModelRef): Promise<Manifest | null> {
  const f = await cache.open(key);
  if (!f) return null;
  try {
    const m = JSON.parse(await f.text()) as Manifest;
    if (m.version !== 1 || !Array.isArray(m.weights) || !Array.isArray(m.text) || (m.modules !== undefined && !Array.isArray(m.modules))) return null;
    if (ref && (m.hub !== ref.hub || m.repo !== ref.repo || m.revision !== ref.revision)) return null;
    return m;
  } catch {
    return null;
  }
}

/** The cached copy of `f`, or null when it is missing or has the wrong size. */
async function openExpected(cache: ModelCache, ref: ModelRef, f: RepoFile): Promise<StoredFile | null> {
  checkRepoPath('cached file', f.path);
  const file = await cache.open(cachePrefix(ref) + f.path);
  return file && file.size === f.size ? file : null;
}

/** Opens every file of a manifest and reads the text files; null when one is missing or has the wrong size. */
async function openAll(cache: ModelCache, ref: ModelRef, m: Manifest): Promise<ModelFiles | null> {
  const weights: ModelFiles['weights'] = [];
  for (const w of m.weights) {
    const file = await openExpected(cache, ref, w);
    if (!file) return null;
    weights.push({ path: w.path, file });
  }
  const text: Record<string, string> = {};
  for (const t of m.text) {
    const file = await openExpected(cache, ref, t);
    if (!file) return null;
    text[t.path] = await file.text();
  }
  const modules: Record<string, Uint8Array> = {};
  for (const f of m.modules ?? []) {
    const file = await openExpected(cache, ref, f);
    if (!file) return null;
    modules[f.path] = await readWhole(file);
  }
  return { ref, format: m.format, weights, text, modules, fromCache: true };
}

/** A small cached file's bytes. */
async function readWhole(file: StoredFile): Promise<Uint8Array> {
  try {
    if (file.readSync) return file.readSync(0, file.size).slice();
    if (file.blob) return new Uint8Array(await file.blob.arrayBuffer());
    throw new EmberError('integrity', 'a cached file cannot be read whole');
  } finally {
    file.close?.();
  }
}

/** Whether every file of a manifest is cached at its size (nothing read). */
async function isComplete(cache: ModelCache, ref: ModelRef, m: Manifest): Promise<boolean> {
  for (const f of [...m.text, ...m.weights, ...(m.modules ?? [])]) {
    const file = await openExpected(cache, ref, f);
    if (!file) return false;
    file.close?.();
  }
  return true;
}

export interface FetchOptions {
  cache: ModelCache;
  fetch: typeof fetch;
  hasher: HasherFactory;
  signal?: AbortSignal;
  onProgress?: (p: LoadProgress) => void;
  /** Never touch the network: the model must be cached. */
  offline?: boolean;
  /** Files downloaded at once (default 3). */
  parallel?: number;
  /** Retry settings for tests and slow links. */
  attempts?: number;
  retryDelayMs?: number;
  /** A request with no progress for this long is dropped and retried (default 60 s). */
  idleTimeoutMs?: number;
}

export async function fetchModelFiles(ref: ModelRef, choice: FileChoice, o: FetchOptions): Promise<ModelFiles> {
  const mKey = manifestKey(ref, choice);
  if (choice.file) checkRepoPath('file', choice.file);
  const cached = await readManifest(o.cache, mKey, ref);
  if (cached) {
    const files = await openAll(o.cache, ref, cached);
    if (files) return files;
  }
  if (o.offline) throw new EmberError('offline', `${ref.repo}@${ref.revision} is not in the cache and offline mode is on`);
  let listing: RepoFile[];
  try {
    listing = await listRepoFiles(ref, o.fetch, o.signal, o.retryDelayMs, o.idleTimeoutMs);
  } catch (e) {
    if (e instanceof EmberError && e.code === 'network') {
      throw new EmberError('offline', `${ref.repo}@${ref.revision} is not in the cache and ${ref.hub} cannot be reached (${e.message})`, { cause: e });
    }
    throw e;
  }
  const sel = selectFiles(ref.repo, listing, choice);
  const prefix = cachePrefix(ref);

  let done = 0;
  const allFiles = () => [...sel.text, ...(sel.modules ?? []), ...sel.weights];
  const total = () => allFiles().reduce((n, f) => n + f.size, 0);
  const report = (file?: RepoFile, fileLoaded?: number) =>
    o.onProgress?.({ phase: 'download', file: file?.path, fileLoaded, fileTotal: file?.size, loaded: done, total: total() });

  const get = async (f: RepoFile) => {
    const key = prefix + f.path;
    const have = await o.cache.open(key);
    if (have && have.size === f.size) {
      have.close?.();
      done += f.size;
      report(f, f.size);
      return;
    }
    if (have) await o.cache.delete(key);
    let counted = 0;
    await downloadFile(o.cache, key, ref, resolveUrl(ref, f.path), f, {
      fetch: o.fetch,
      hasher: o.hasher,
      signal: o.signal,
      attempts: o.attempts,
      retryDelayMs: o.retryDelayMs,
      idleTimeoutMs: o.idleTimeoutMs,
      onBytes: (stored) => {
        done += stored - counted;
        counted = stored;
        report(f, stored);
      },
    });
  };

  for (const f of [...sel.text, ...(sel.modules ?? [])]) await get(f);
  const index = sel.text.find((f) => f.path === 'model.safetensors.index.json');
  if (index) sel.weights = indexShards(ref.repo, await (await o.cache.open(prefix + index.path))!.text(), listing);

  await checkQuota(sel.weights, o.cache, prefix);
  const queue = [...sel.weights];
  const worker = async () => {
    for (let f = queue.shift(); f; f = queue.shift()) {
      throwIfAborted(o.signal);
      await get(f);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.parallel ?? 3) }, worker));

  const manifest: Manifest = {
    version: 1,
    hub: ref.hub,
    repo: ref.repo,
    revision: ref.revision,
    choice,
    format: sel.format,
    weights: sel.weights,
    text: sel.text,
    modules: sel.modules ?? [],
    savedAt: new Date().toISOString(),
  };
  await o.cache.put(mKey, new TextEncoder().encode(JSON.stringify(manifest, null, 1)));
  const files = await openAll(o.cache, ref, manifest);
  if (!files) throw new EmberError('integrity', `${ref.repo}: the cache lost files right after they were written`);
  return { ...files, fromCache: false };
}

/** Fails before downloading when the browser says the files cannot fit. */
async function checkQuota(weights: RepoFile[], cache: ModelCache, prefix: string): Promise<void> {
  if (cache.kind === 'fs' || cache.kind === 'memory') return;
  const est = await storageEstimate();
  if (!est?.quota) return;
  let missing = 0;
  for (const w of weights) {
    const have = await cache.open(prefix + w.path);
    if (!have || have.size !== w.size) missing += w.size;
  }
  const free = est.quota - (est.usage ?? 0);
  if (missing > free) {
    throw new EmberError(
      'quota',
      `the model needs ${formatBytes(missing)} more storage but the browser grants only ${formatBytes(free)} (${formatBytes(est.usage ?? 0)} of ${formatBytes(est.quota)} used); delete cached models or call requestPersistentStorage()`,
    );
  }
}

/** `navigator.storage.estimate()` where it exists. */
export async function storageEstimate(): Promise<StorageEstimate | null> {
  const storage = (globalThis as { navigator?: Navigator }).navigator?.storage;
  return typeof storage?.estimate === 'function' ? storage.estimate() : null;
}

/** Asks the browser to keep the cache under storage pressure (`navigator.storage.persist()`). */
export async function requestPersistentStorage(): Promise<boolean> {
  const storage = (globalThis as { navigator?: Navigator }).navigator?.storage;
  return typeof storage?.persist === 'function' ? storage.persist() : false;
}

export interface CachedModel {
  hub: string;
  repo: string;
  revision: string;
  format: ModelFormat;
  choice: FileChoice;
  files: { path: string; size: number }[];
  bytes: number;
  savedAt: string;
}

/** Every complete model in the cache, with its files and size. */
export async function listCached(cache: ModelCache): Promise<CachedModel[]> {
  const out: CachedModel[] = [];
  for (const e of await cache.list('')) {
    if (!e.key.includes(`/${MANIFEST_DIR}/`) || !e.key.endsWith('.json')) continue;
    const m = await readManifest(cache, e.key);
    if (!m) continue;
    const ref = { hub: m.hub, repo: m.repo, revision: m.revision };
    // Listed only where it lies: a manifest naming another repo (or a bad path) is not a model.
    if (!e.key.startsWith(cachePrefix(ref))) continue;
    try {
      if (!(await isComplete(cache, ref, m))) continue;
    } catch {
      continue;
    }
    const files = [...m.text, ...m.weights].map((f) => ({ path: f.path, size: f.size }));
    out.push({ ...ref, format: m.format, choice: m.choice, files, bytes: files.reduce((n, f) => n + f.size, 0), savedAt: m.savedAt });
  }
  return out;
}

/** Deletes every cached file of `ref` (all quantisations of that revision). Returns bytes freed. */
export async function deleteCached(cache: ModelCache, ref: ModelRef): Promise<number> {
  let freed = 0;
  // Manifests first: a half-deleted model must not look complete.
  const entries = await cache.list(cachePrefix(ref));
  entries.sort((a, b) => Number(b.key.includes(`/${MANIFEST_DIR}/`)) - Number(a.key.includes(`/${MANIFEST_DIR}/`)));
  for (const e of entries) {
    await cache.delete(e.key);
    freed += e.size;
  }
  return freed;
}
