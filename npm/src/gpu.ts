// Makes `navigator.gpu` available to the wasm engine in every runtime, or says clearly why not,
// and picks the backend for `device: 'auto'`: WebGPU on a real GPU, the CPU otherwise.
import { EmberError } from './errors.js';
import { IS_SERVER_RUNTIME, runtimeName } from './runtime.js';

type AdapterInfo = { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
type Adapter = { info?: AdapterInfo; isFallbackAdapter?: boolean };
type Gpu = { requestAdapter(o?: object): Promise<Adapter | null> };
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

/** The adapter, or a clear error when none is available (blocklisted GPU, headless without a driver). */
export async function requireAdapter(): Promise<Adapter> {
  await ensureWebGpu();
  const adapter = await g.navigator!.gpu!.requestAdapter();
  if (!adapter) throw new EmberError('no-webgpu', `${runtimeName()} offers WebGPU but no adapter (no usable GPU or driver)`);
  return adapter;
}

export type DeviceChoice = 'auto' | 'webgpu' | 'cpu';

/** The backend a load runs on, and why it was picked. */
export interface PickedDevice {
  device: 'webgpu' | 'cpu';
  reason: string;
}

/**
 * Software rasterisers (what Chrome falls back to without a usable GPU driver, in VMs and CI):
 * WebGPU on them is many times slower than the CPU backend on the same cores.
 */
const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe|\bwarp\b|basic render|software/i;

/**
 * `auto`: WebGPU when there is an adapter and it is a real GPU; the CPU backend when WebGPU is
 * missing, has no adapter, or offers only a fallback (software) adapter. `webgpu` fails clearly
 * without an adapter (before any download); `cpu` never touches WebGPU.
 */
export async function pickDevice(choice: DeviceChoice = 'auto'): Promise<PickedDevice> {
  if (choice === 'cpu') return { device: 'cpu', reason: 'asked for (device: cpu)' };
  if (choice === 'webgpu') {
    await requireAdapter();
    return { device: 'webgpu', reason: 'asked for (device: webgpu)' };
  }
  let adapter;
  try {
    adapter = await requireAdapter();
  } catch (e) {
    return { device: 'cpu', reason: `auto: ${e instanceof Error ? e.message : String(e)}` };
  }
  const info = adapter.info ?? {};
  const named = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ');
  if (adapter.isFallbackAdapter || info.isFallbackAdapter || SOFTWARE_ADAPTER.test(named)) {
    return { device: 'cpu', reason: `auto: the only WebGPU adapter (${named || 'a fallback adapter'}) is a software one` };
  }
  return { device: 'webgpu', reason: `auto: GPU adapter ${named || '(unnamed)'}` };
}
