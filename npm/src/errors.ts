/** What went wrong, for code that reacts to it (retry, ask for space, pick a smaller model). */
export type EmberErrorCode =
  | 'no-webgpu' // no WebGPU in this runtime, or no adapter
  | 'not-found' // repo, revision or file missing on the Hub
  | 'network' // the Hub could not be reached or kept failing
  | 'integrity' // a downloaded file did not match its size or hash
  | 'quota' // not enough storage for the cache
  | 'offline' // no network and the model is not cached
  | 'aborted' // an AbortSignal fired
  | 'bad-request' // invalid options or messages
  | 'model' // the engine refused the model (unknown architecture, corrupt file, device limits)
  | 'crashed' // the engine's WebAssembly module trapped (a bug, or a hostile model file): load the model again
  | 'unloaded'; // the engine was unloaded

export class EmberError extends Error {
  override name = 'EmberError';
  constructor(
    readonly code: EmberErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function abortError(signal?: AbortSignal): EmberError {
  const reason = signal?.reason;
  return new EmberError('aborted', reason instanceof Error ? reason.message : 'the operation was aborted');
}

export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Bytes as a short human figure ("1.2 GB"). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
