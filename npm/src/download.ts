// One file from the Hub into the cache: resumes with HTTP Range after a dropped connection or a
// short body, retries 5xx/429 with backoff, hashes as bytes arrive, and commits the cache entry
// only when size and hash match. A bad file is thrown away, never kept.
import type { ModelCache, PartFile } from './cache/types.js';
import { isQuotaError } from './cache/types.js';
import { abortError, EmberError, formatBytes, throwIfAborted } from './errors.js';
import { hubHttpError, type ModelRef, type RepoFile } from './hub.js';
import { IDLE_TIMEOUT_MS, idleSignal } from './timeout.js';

export interface Hasher {
  update(bytes: Uint8Array): void;
  finishHex(): string;
}

/** A hasher for the digest the listing gives (`sha256` or `gitOid`), or null when it gives none. */
export type HasherFactory = (file: RepoFile) => Hasher | null;

export interface DownloadOptions {
  fetch: typeof fetch;
  hasher: HasherFactory;
  signal?: AbortSignal;
  /** Called with this file's stored byte count as it grows. */
  onBytes?: (stored: number) => void;
  /** Tries per file before giving up (default 6). */
  attempts?: number;
  /** First retry delay; doubles per retry (default 300 ms). */
  retryDelayMs?: number;
  /**
   * How long a request may go without progress — no response, or no bytes of the body — before
   * it is dropped and retried (default 60 s). An idle bound, not a total: big files never time out.
   */
  idleTimeoutMs?: number;
}

class Retry extends Error {}


function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), reject(abortError(signal))), { once: true });
  });
}

async function startHash(part: PartFile, file: RepoFile, make: HasherFactory): Promise<Hasher | null> {
  const h = make(file);
  if (h && part.size > 0) for await (const c of part.chunks()) h.update(c);
  return h;
}

export async function downloadFile(cache: ModelCache, key: string, ref: ModelRef, url: string, file: RepoFile, o: DownloadOptions): Promise<void> {
  const attempts = o.attempts ?? 6;
  const expected = file.sha256 ?? file.gitOid;
  let part = await cache.part(key);
  if (part.size > file.size) {
    await part.discard();
    part = await cache.part(key);
  }
  let hasher = await startHash(part, file, o.hasher);
  const restart = async () => {
    await part.discard();
    part = await cache.part(key);
    hasher = o.hasher(file);
    o.onBytes?.(0);
    return part;
  };
  let lastProblem = '';
  let restartedAfterMismatch = false;

  for (let attempt = 0; ; attempt++) {
    throwIfAborted(o.signal);
    if (part.size < file.size) {
      if (attempt >= attempts) {
        throw new EmberError('network', `${file.path}: download failed after ${attempts} tries (${lastProblem}); ${formatBytes(part.size)} of ${formatBytes(file.size)} kept to resume`);
      }
      if (attempt > 0) await sleep((o.retryDelayMs ?? 300) * 2 ** Math.min(attempt - 1, 5), o.signal);
      const idle = idleSignal(o.idleTimeoutMs ?? IDLE_TIMEOUT_MS, o.signal);
      try {
        await fetchInto(part, ref, url, file, o, (bytes) => hasher?.update(bytes), restart, idle);
      } catch (e) {
        if (o.signal?.aborted) throw abortError(o.signal);
        if (isQuotaError(e)) {
          await part.discard().catch(() => {});
          throw new EmberError('quota', `not enough storage to cache ${file.path} (${formatBytes(file.size)})`, { cause: e });
        }
        if (!(e instanceof Retry)) throw e;
        lastProblem = e.message;
        continue;
      } finally {
        idle.done();
      }
      if (part.size < file.size) {
        lastProblem = `the body ended after ${part.size} of ${file.size} bytes`;
        continue;
      }
    }
    const digest = hasher?.finishHex();
    if (expected && digest !== undefined && digest !== expected) {
      if (restartedAfterMismatch) {
        await part.discard();
        throw new EmberError('integrity', `${file.path}: content hash ${digest} does not match the Hub's ${expected}; the file was discarded`);
      }
      // Once more from the start: a corrupted piece may have come from one bad response.
      restartedAfterMismatch = true;
      await restart();
      lastProblem = 'content hash mismatch';
      continue;
    }
    await part.commit();
    return;
  }
}

/**
 * One request: appends what arrives to `part`. Throws `Retry` for faults worth another try,
 * including `idle` firing (no answer or no bytes for the idle timeout).
 */
async function fetchInto(
  part: PartFile,
  ref: ModelRef,
  url: string,
  file: RepoFile,
  o: DownloadOptions,
  hash: (bytes: Uint8Array) => void,
  restart: () => Promise<PartFile>,
  idle: ReturnType<typeof idleSignal>,
): Promise<void> {
  const from = part.size;
  let res: Response;
  try {
    res = await o.fetch(url, { signal: idle.signal, headers: from > 0 ? { Range: `bytes=${from}-` } : {}, cache: 'no-store' });
  } catch (e) {
    throw new Retry(`request failed: ${idle.signal.aborted && !o.signal?.aborted ? String(idle.signal.reason?.message) : (e as Error).message}`);
  }
  if (res.status === 416) {
    // Our part does not fit the server's file: start again.
    await restart();
    throw new Retry('range not satisfiable');
  }
  if (res.status === 404 || res.status === 401 || res.status === 403) throw hubHttpError(ref, file.path, res);
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    throw new Retry(`HTTP ${res.status}`);
  }
  if (res.status === 206) {
    const m = res.headers.get('content-range')?.match(/bytes (\d+)-(\d+)\/(\d+|\*)/);
    if (!m || Number(m[1]) !== from) {
      await res.body?.cancel().catch(() => {});
      await restart();
      throw new Retry(`the server resumed at the wrong offset (${res.headers.get('content-range')})`);
    }
    if (m[3] !== '*' && Number(m[3]) !== file.size) {
      await res.body?.cancel().catch(() => {});
      throw new EmberError('integrity', `${file.path}: the server has ${m[3]} bytes, the file list says ${file.size} (did the revision change?)`);
    }
  } else if (from > 0) {
    // The server ignored Range and sent the whole file.
    part = await restart();
  }
  if (res.status === 200) {
    const length = res.headers.get('content-length');
    if (length !== null && Number(length) !== file.size) {
      await res.body?.cancel().catch(() => {});
      throw new EmberError('integrity', `${file.path}: the server sends ${length} bytes, the file list says ${file.size} (did the revision change?)`);
    }
  }
  if (!res.body) throw new Retry('no response body');
  const reader = res.body.getReader();
  try {
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        const why = idle.signal.aborted && !o.signal?.aborted ? String(idle.signal.reason?.message) : (e as Error).message;
        throw new Retry(`connection dropped after ${part.size} bytes: ${why}`);
      }
      idle.poke();
      if (r.done) return;
      if (part.size + r.value.length > file.size) {
        await restart();
        throw new EmberError('integrity', `${file.path}: the server sent more than the listed ${file.size} bytes; discarded`);
      }
      await part.append(r.value);
      hash(r.value);
      o.onBytes?.(part.size);
    }
  } finally {
    reader.releaseLock();
  }
}
