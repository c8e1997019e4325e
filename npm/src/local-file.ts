// A GGUF file on disk as the model (Node, Deno and Bun): `createEngine('./model.gguf')` reads it
// in place, with no Hub, no copy into the cache and no network request.
import { FsCache } from './cache/fs.js';
import { EmberError } from './errors.js';
import type { ModelFiles } from './model-files.js';
import { IS_SERVER_RUNTIME, runtimeName } from './runtime.js';

/**
 * Whether `model` names a local file rather than a Hub repo (`owner/name[@revision]`): an
 * absolute or `./`/`../` path, a `file:` URL, a Windows path, or any name ending in `.gguf`.
 */
export function isLocalModelPath(model: string): boolean {
  return /^(\/|\.\.?[/\\]|file:|[A-Za-z]:[/\\]|\\\\)/.test(model) || /\.gguf$/i.test(model);
}

/** The file at `model` as the loader's one GGUF weight file; a clear error when it is not one. */
export async function openLocalGguf(model: string): Promise<ModelFiles> {
  if (!IS_SERVER_RUNTIME) {
    throw new EmberError('bad-request', `${model}: local files load in Node, Deno and Bun; in a ${runtimeName()}, give a Hub repo (owner/name)`);
  }
  const { fileURLToPath } = await import(/* @vite-ignore */ 'node:url');
  const path = await import(/* @vite-ignore */ 'node:path');
  const fs = await import(/* @vite-ignore */ 'node:fs/promises');
  const absolute = path.resolve(model.startsWith('file:') ? fileURLToPath(model) : model);
  if (!/\.gguf$/i.test(absolute)) {
    throw new EmberError('bad-request', `${model}: only a .gguf file loads from disk (a safetensors model comes from a Hub repo)`);
  }
  const stat = await fs.stat(absolute).catch(() => null);
  if (!stat) throw new EmberError('not-found', `${model}: no such file (${absolute})`);
  if (!stat.isFile()) throw new EmberError('bad-request', `${model}: not a file (${absolute})`);
  // A cache rooted at the file's folder reads it through the same synchronous reader.
  const file = await (await FsCache.create(path.dirname(absolute))).open(path.basename(absolute));
  if (!file) throw new EmberError('not-found', `${model}: no such file (${absolute})`);
  return {
    // Named by its file; `revision` says where it is.
    ref: { hub: 'file://', repo: path.basename(absolute), revision: absolute },
    format: 'gguf',
    weights: [{ path: path.basename(absolute), file }],
    text: {},
    modules: {},
    fromCache: true,
  };
}
