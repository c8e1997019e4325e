// Where downloaded model files live. Keys are `{hub host}/{repo}/{revision}/{path}`, so two
// revisions (or two Hubs) never share an entry. An entry appears only once complete and
// verified: downloads go to a part file first and are committed by the downloader.

/** A complete cached file, readable synchronously (what the wasm engine needs) or as text. */
export interface StoredFile {
  readonly size: number;
  /** A Blob for browser back-ends (read with FileReaderSync in a worker, or preloaded). */
  readonly blob?: Blob;
  /** Synchronous reads, where the back-end has them (files in Node/Deno/Bun). */
  readSync?(offset: number, length: number): Uint8Array;
  /**
   * Opens synchronous reads that need an async start (OPFS's `FileSystemSyncAccessHandle`, in a
   * dedicated worker). Null when this context cannot (no handle API, or another tab holds the file).
   */
  openSyncReader?(): Promise<SyncReader | null>;
  text(): Promise<string>;
  close?(): void;
}

/**
 * Synchronous reads from an open file. The returned bytes may be a view of a buffer that the
 * next read reuses: copy them before reading again (the wasm loader copies at once).
 */
export interface SyncReader {
  read(offset: number, length: number): Uint8Array;
  close(): void;
}

/** A download in progress. `size` bytes are already stored (a resumed download). */
export interface PartFile {
  readonly size: number;
  /** The bytes already stored, in pieces, so a resumed download can re-hash them. */
  chunks(): AsyncIterable<Uint8Array>;
  append(bytes: Uint8Array): Promise<void>;
  /** Throws the partial bytes away. */
  discard(): Promise<void>;
  /** Makes the part the cache entry (the caller has verified size and hash). */
  commit(): Promise<void>;
}

export interface CacheEntryInfo {
  key: string;
  size: number;
}

export interface ModelCache {
  readonly kind: 'fs' | 'cache-api' | 'opfs' | 'memory';
  open(key: string): Promise<StoredFile | null>;
  /** Opens (or resumes) the part file of `key`. */
  part(key: string): Promise<PartFile>;
  /** Writes a small complete entry at once (manifests). */
  put(key: string, bytes: Uint8Array): Promise<void>;
  delete(key: string): Promise<void>;
  /** Complete entries whose key starts with `prefix`. */
  list(prefix: string): Promise<CacheEntryInfo[]>;
}

/** A quota failure from any storage API, recognised by name. */
export function isQuotaError(e: unknown): boolean {
  const name = (e as { name?: string; code?: string })?.name;
  const code = (e as { code?: string })?.code;
  return name === 'QuotaExceededError' || code === 'ENOSPC' || code === 'EDQUOT';
}
