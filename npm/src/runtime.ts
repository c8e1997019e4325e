// Which JavaScript runtime the package runs in, decided once at load (before the WebGPU shim
// below defines `WorkerGlobalScope` outside browsers).
const g = globalThis as Record<string, unknown> & { process?: { versions?: { node?: string } } };

/** Node, Deno or Bun: files on disk, Node built-ins, no DOM. */
export const IS_SERVER_RUNTIME = typeof g.process?.versions?.node === 'string' || typeof g.Deno !== 'undefined';
/** A browser's worker (only named in messages). */
export const IS_BROWSER_WORKER = !IS_SERVER_RUNTIME && typeof g.WorkerGlobalScope !== 'undefined' && typeof g.importScripts === 'function';
/** A browser page. */
export const IS_BROWSER_WINDOW = !IS_SERVER_RUNTIME && typeof g.window !== 'undefined';

export function runtimeName(): string {
  if (typeof g.Deno !== 'undefined') return 'Deno';
  if (typeof g.Bun !== 'undefined') return 'Bun';
  if (IS_SERVER_RUNTIME) return 'Node';
  return IS_BROWSER_WORKER ? 'browser worker' : 'browser';
}
