// The Hugging Face Hub's URL layout: file listings from the tree API, files from `resolve`.
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

export function modelRef(repo: string, options: { hub?: string; revision?: string } = {}): ModelRef {
  // Accept `owner/name@revision` as a shorthand.
  let revision = options.revision;
  const at = repo.indexOf('@');
  if (at >= 0) {
    revision ??= repo.slice(at + 1);
    repo = repo.slice(0, at);
  }
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repo) || repo.includes('..')) {
    throw new EmberError('bad-request', `"${repo}" is not a Hub repo id (expected "owner/name")`);
  }
  return { hub: (options.hub ?? DEFAULT_HUB).replace(/\/+$/, ''), repo, revision: revision || 'main' };
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
export async function listRepoFiles(ref: ModelRef, fetchFn: typeof fetch, signal?: AbortSignal, retryDelayMs = 300): Promise<RepoFile[]> {
  const files: RepoFile[] = [];
  let url: string | null = treeUrl(ref);
  while (url) {
    const res = await getWithRetries(ref, url, fetchFn, signal, retryDelayMs);
    const entries = (await res.json()) as TreeEntry[];
    for (const e of entries) {
      if (e.type !== 'file') continue;
      files.push(e.lfs ? { path: e.path, size: e.lfs.size, sha256: e.lfs.oid } : { path: e.path, size: e.size, gitOid: e.oid });
    }
    url = nextPage(res.headers.get('link'), url);
  }
  return files;
}

/** A GET that retries 5xx/429 answers and failed requests a few times, with backoff. */
async function getWithRetries(ref: ModelRef, url: string, fetchFn: typeof fetch, signal: AbortSignal | undefined, delayMs: number): Promise<Response> {
  const tries = 4;
  for (let i = 1; ; i++) {
    throwIfAborted(signal);
    let res: Response | undefined;
    let problem: string;
    try {
      res = await fetchFn(url, { signal });
      if (res.ok) return res;
      if (res.status < 500 && res.status !== 429) throw hubHttpError(ref, 'the file list', res);
      problem = `HTTP ${res.status}`;
    } catch (e) {
      throwIfAborted(signal);
      if (e instanceof EmberError) throw e;
      problem = (e as Error).message;
    }
    if (i >= tries) throw new EmberError('network', `cannot list ${ref.repo}@${ref.revision} on ${ref.hub} (${problem}, ${tries} tries)`);
    await new Promise((r) => setTimeout(r, delayMs * 2 ** (i - 1)));
  }
}

function nextPage(link: string | null, base: string): string | null {
  const m = link?.match(/<([^>]+)>;\s*rel="next"/);
  return m ? new URL(m[1], base).toString() : null;
}
