// The Hugging Face Hub's URL layout: file listings from the tree API, files from `resolve`.
import { IDLE_TIMEOUT_MS, idleSignal } from './timeout.js';
import { EmberError, throwIfAborted } from './errors.js';

export const DEFAULT_HUB = 'https://huggingface.co';

/** A model on a Hub: which server, which repo, which revision (branch, tag or commit). */
export interface ModelRef {
  hub: string;
  repo: string;
  revision: string;
}

/** One file of a repo as the tree API lists it. */
export interface RepoFile {
  path: string;
  size: number;
  /** LFS files (weights): the SHA-256 of the content. */
  sha256?: string;
  /** Small files stored in git: the git blob id (SHA-1 of "blob {size}\0" + content). */
  gitOid?: string;
}

/** The longest repo path, revision or `file` accepted (the Hub's own limits are far below). */
const MAX_PATH_BYTES = 1024;
/** The most listing pages followed: a real repo needs a handful (1,000 files a page). */
const MAX_LISTING_PAGES = 1000;
/** The folder inside each cached revision that holds manifests. */
export const MANIFEST_DIR = '.emberlm';

/**
 * The one rule for every path a Hub or a caller names (listing entries, safetensors index
 * shards, `file`, revisions): relative and `/`-separated, no empty, `.` or `..` segment, no
 * backslash or control character, at most 1,024 bytes, and nothing the cache keeps for itself
 * (the manifest folder, `.part` files). The CLI applies the same rule (`check_repo_path`).
 */
export function checkRepoPath(what: string, path: string): void {
  const refuse = (why: string) => {
    throw new EmberError('bad-request', `${what} ${JSON.stringify(path)} is refused: ${why}`);
  };
  if (typeof path !== 'string' || path.length === 0 || new TextEncoder().encode(path).length > MAX_PATH_BYTES) refuse('it must be 1 to 1024 bytes long');
  // eslint-disable-next-line no-control-regex
  if (/[\\\u0000-\u001f\u007f-\u009f]/.test(path)) refuse('it contains a backslash or a control character');
  for (const segment of path.split('/')) {
    if (segment === '' || segment === '.' || segment === '..') refuse('paths are relative and `/`-separated, with no empty, `.` or `..` segment');
    if (segment === MANIFEST_DIR || segment.endsWith('.part')) refuse("it names one of the cache's own files");
  }
}

/** `owner/name`: letters, digits, `-`, `_`, `.`; each part starts with a letter or digit, no `..`. */
const REPO_PART = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

/**
 * One cache path segment for any string: bytes other than ASCII letters, digits and `-_.~`
 * percent-encoded, so distinct strings never share a segment (the CLI's `cache_segment`).
 */
export function cacheSegment(s: string): string {
  let out = '';
  for (const b of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-_.~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/**
 * The cache folder of a Hub: its host (`:` → `_`) for an `https://host` Hub, which keeps the
 * default Hub's folder `huggingface.co`; any other scheme, or a Hub with a path, is encoded whole
 * (`http%3A%2F%2F127.0.0.1%3A8080`), so `http://h` and `https://h` never share entries.
 */
export function hubFolder(hub: string): string {
  const host = hub.startsWith('https://') ? hub.slice('https://'.length) : null;
  return host && !host.includes('/') ? host.toLowerCase().replace(/:/g, '_') : cacheSegment(hub);
}

export function modelRef(repo: string, options: { hub?: string; revision?: string } = {}): ModelRef {
  // Accept `owner/name@revision` as a shorthand.
  let revision = options.revision;
  const at = repo.indexOf('@');
  if (at >= 0) {
    revision ??= repo.slice(at + 1);
    repo = repo.slice(0, at);
  }
  const parts = repo.split('/');
  if (parts.length !== 2 || !parts.every((p) => REPO_PART.test(p) && !p.includes('..'))) {
    throw new EmberError('bad-request', `"${repo}" is not a Hub repo id (expected "owner/name")`);
  }
  revision ||= 'main';
  checkRepoPath('revision', revision);
  const hub = (options.hub ?? DEFAULT_HUB).replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]/.test(hub)) throw new EmberError('bad-request', `the Hub URL ${JSON.stringify(hub)} must start with https:// (or http:// for a local server)`);
  return { hub, repo, revision };
}

const encodePath = (path: string) => path.split('/').map(encodeURIComponent).join('/');

/** `{hub}/{repo}/resolve/{revision}/{file}`: the URL a file downloads from. */
export function resolveUrl(ref: ModelRef, path: string): string {
  return `${ref.hub}/${ref.repo}/resolve/${encodeURIComponent(ref.revision)}/${encodePath(path)}`;
}

export function treeUrl(ref: ModelRef): string {
  return `${ref.hub}/api/models/${ref.repo}/tree/${encodeURIComponent(ref.revision)}?recursive=true`;
}

/** Turns a Hub HTTP failure into an error that names the repo, the revision and what is missing. */
export function hubHttpError(ref: ModelRef, what: string, res: Response): EmberError {
  if (res.status === 401 || res.status === 403 || res.status === 404) {
    const code = res.headers.get('x-error-code');
    const missing =
      code === 'RevisionNotFound'
        ? `revision "${ref.revision}" of ${ref.repo}`
        : code === 'EntryNotFound'
          ? `${what} in ${ref.repo}@${ref.revision}`
          : `${ref.repo} (or it is private/gated)`;
    return new EmberError('not-found', `not found on ${ref.hub}: ${missing} (HTTP ${res.status})`);
  }
  return new EmberError('network', `${ref.hub} answered HTTP ${res.status} for ${what} of ${ref.repo}@${ref.revision}`);
}

interface TreeEntry {
  type: string;
  path: string;
  size: number;
  oid?: string;
  lfs?: { oid: string; size: number };
}

/** Lists every file of the repo at the revision (following the tree API's pagination). */
export async function listRepoFiles(ref: ModelRef, fetchFn: typeof fetch, signal?: AbortSignal, retryDelayMs = 300, timeoutMs = IDLE_TIMEOUT_MS): Promise<RepoFile[]> {
  const files: RepoFile[] = [];
  let url: string | null = treeUrl(ref);
  const seen = new Set<string>();
  const what = `${ref.repo}@${ref.revision} on ${ref.hub}`;
  while (url) {
    if (seen.has(url)) throw new EmberError('model', `listing ${what}: the Hub's pagination returned to a page already read (${url})`);
    if (seen.size >= MAX_LISTING_PAGES) throw new EmberError('model', `listing ${what}: more than ${MAX_LISTING_PAGES} pages`);
    seen.add(url);
    const res = await getWithRetries(ref, url, fetchFn, signal, retryDelayMs, timeoutMs);
    const entries = (await res.json()) as TreeEntry[];
    if (!Array.isArray(entries)) throw new EmberError('model', `listing ${what}: not a file list`);
    for (const e of entries) {
      if (e?.type !== 'file') continue;
      checkRepoPath(`${what}: listed file`, e.path);
      const f: RepoFile = e.lfs ? { path: e.path, size: Number(e.lfs.size), sha256: e.lfs.oid } : { path: e.path, size: Number(e.size), gitOid: e.oid };
      // Every file the Hub lists has a hash; one without could be anything.
      if (typeof (f.sha256 ?? f.gitOid) !== 'string') throw new EmberError('integrity', `${what}: the listing gives no hash for ${JSON.stringify(e.path)}, so it cannot be verified`);
      if (!Number.isSafeInteger(f.size) || f.size < 0) throw new EmberError('model', `${what}: the listing gives ${JSON.stringify(e.path)} a size of ${f.size}`);
      files.push(f);
    }
    url = nextPage(res.headers.get('link'), url);
    if (url && !url.startsWith(`${ref.hub}/`)) throw new EmberError('model', `listing ${what}: the next page is on another server (${url}); refused`);
  }
  return files;
}

/** A GET that retries 5xx/429 answers and failed requests a few times, with backoff. */
async function getWithRetries(ref: ModelRef, url: string, fetchFn: typeof fetch, signal: AbortSignal | undefined, delayMs: number, timeoutMs: number): Promise<Response> {
  const tries = 4;
  for (let i = 1; ; i++) {
    throwIfAborted(signal);
    let res: Response | undefined;
    let problem: string;
    // A listing page is small: the whole request (answer and body) gets `timeoutMs`.
    const bound = idleSignal(timeoutMs, signal);
    try {
      res = await fetchFn(url, { signal: bound.signal });
      if (res.ok) {
        return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
      }
      if (res.status < 500 && res.status !== 429) throw hubHttpError(ref, 'the file list', res);
      problem = `HTTP ${res.status}`;
    } catch (e) {
      throwIfAborted(signal);
      if (e instanceof EmberError) throw e;
      problem = bound.signal.aborted ? `no answer within ${timeoutMs / 1000} s` : (e as Error).message;
    } finally {
      bound.done();
    }
    if (i >= tries) throw new EmberError('network', `cannot list ${ref.repo}@${ref.revision} on ${ref.hub} (${problem}, ${tries} tries)`);
    await new Promise((r) => setTimeout(r, delayMs * 2 ** (i - 1)));
  }
}

function nextPage(link: string | null, base: string): string | null {
  const m = link?.match(/<([^>]+)>;\s*rel="next"/);
  return m ? new URL(m[1], base).toString() : null;
}
