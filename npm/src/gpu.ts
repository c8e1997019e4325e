// Makes `navigator.gpu` available to the wasm engine in every runtime, or says clearly why not.
import { EmberError } from './errors.js';
import { IS_SERVER_RUNTIME, runtimeName } from './runtime.js';

type Gpu = { requestAdapter(o?: object): Promise<{ info?: { vendor?: string; architecture?: string; description?: string } } | null> };
const g = globalThis as Record<string, unknown> & { navigator?: { gpu?: Gpu } };

let shimmed: Promise<void> | undefined;

/** Node and Bun get WebGPU from the optional `webgpu` package (Dawn); Deno and browsers have it. */
export function ensureWebGpu(): Promise<void> {
  shimmed ??= (async () => {
    if (!g.navigator?.gpu && IS_SERVER_RUNTIME) {
      let mod: { create(flags: string[]): Gpu; globals: object };
      try {
        mod = await import(/* @vite-ignore */ 'webgpu' as string);
      } catch (e) {
        throw new EmberError('no-webgpu', `${runtimeName()} has no WebGPU: install the optional peer dependency \`webgpu\` (npm install webgpu)`, {
          cause: e,
        });
      }
      Object.assign(g, mod.globals);
      const gpu = mod.create([]);
      if (g.navigator) Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
      else g.navigator = { gpu };
    }
    if (!g.navigator?.gpu) {
      throw new EmberError('no-webgpu', 'this browser has no WebGPU (navigator.gpu is missing); use a recent Chrome, Edge or Safari, or enable WebGPU');
    }
    // wgpu's wasm backend looks for navigator.gpu only where `Window` or `WorkerGlobalScope` exists.
    if (IS_SERVER_RUNTIME) g.WorkerGlobalScope ??= class {};
  })();
  return shimmed;
}

/** Throws a clear error when no adapter is available (blocklisted GPU, headless without a driver). */
export async function requireAdapter(): Promise<void> {
  await ensureWebGpu();
  const adapter = await g.navigator!.gpu!.requestAdapter();
  if (!adapter) throw new EmberError('no-webgpu', `${runtimeName()} offers WebGPU but no adapter (no usable GPU or driver)`);
}
