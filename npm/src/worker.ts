// The engine's dedicated worker: loads and runs one model for the page that created it. Large
// files are read with FileReaderSync here, and the page's thread never blocks on the GPU.
import { LocalBackend } from './backend-local.js';
import { EmberError } from './errors.js';
import type { FromWorker, ToWorker } from './protocol.js';

const scope = globalThis as unknown as { onmessage: ((ev: MessageEvent<ToWorker>) => void) | null; postMessage(m: FromWorker): void };
let backend: LocalBackend | null = null;
const aborts = new Map<number, AbortController>();

function fail(id: number, e: unknown): void {
  const err = e instanceof EmberError ? e : new EmberError('model', e instanceof Error ? e.message : String(e));
  scope.postMessage({ id, type: 'error', code: err.code, message: err.message });
}

function engine(): LocalBackend {
  if (!backend) throw new EmberError('unloaded', 'no model is loaded in the worker');
  return backend;
}

scope.onmessage = async ({ data: m }) => {
  if (m.type === 'abort') {
    aborts.get(m.id)?.abort();
    return;
  }
  const ctl = new AbortController();
  aborts.set(m.id, ctl);
  try {
    let value: FromWorker & { type: 'done' };
    switch (m.type) {
      case 'load':
        if (backend) throw new EmberError('bad-request', 'this worker already holds a model');
        backend = await LocalBackend.load(m.repo, {
          ...m.options,
          signal: ctl.signal,
          onProgress: (progress) => scope.postMessage({ id: m.id, type: 'progress', progress }),
        });
        value = { id: m.id, type: 'done', value: backend.info };
        break;
      case 'run':
        value = { id: m.id, type: 'done', value: await engine().run(m.input, m.params, (piece, logprobs, toolCalls, prefill, reasoning) => scope.postMessage({ id: m.id, type: 'piece', piece, ...(logprobs ? { logprobs } : {}), ...(toolCalls ? { toolCalls } : {}), ...(prefill ? { prefill } : {}), ...(reasoning ? { reasoning } : {}) }), ctl.signal) };
        break;
      case 'embed':
        value = { id: m.id, type: 'done', value: await engine().embed(m.texts, ctl.signal) };
        break;
      case 'encode':
        value = { id: m.id, type: 'done', value: await engine().encode(m.text) };
        break;
      case 'decode':
        value = { id: m.id, type: 'done', value: await engine().decode(m.ids) };
        break;
      case 'unload':
        await backend?.unload();
        backend = null;
        value = { id: m.id, type: 'done', value: null };
        break;
    }
    scope.postMessage(value);
  } catch (e) {
    fail(m.id, e);
  } finally {
    aborts.delete(m.id);
  }
};
