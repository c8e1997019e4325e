// The page side of the worker engine: the same Backend, each call a message to the worker.
import type { Backend, Embedded, OnPiece, RunInput, RunParams, RunResult } from './backend.js';
import { EmberError, type EmberErrorCode } from './errors.js';
import type { LoadProgress } from './model-files.js';
import type { FromWorker, Request, ToWorker, WorkerLoadOptions } from './protocol.js';
import type { EngineInfo, EngineOptions } from './types.js';

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  onPiece?: OnPiece;
  onProgress?: (p: LoadProgress) => void;
}

/** How long `unload()` waits for the worker to free the model before terminating it. */
const UNLOAD_TIMEOUT_MS = 5000;

export class WorkerBackend implements Backend {
  private next = 1;
  private readonly pending = new Map<number, Pending>();
  /** Set when the engine in the worker crashed: later calls fail with it. */
  private crashed: EmberError | null = null;
  info!: EngineInfo;

  private constructor(private worker: Worker | null) {
    worker!.onmessage = ({ data }: MessageEvent<FromWorker>) => this.receive(data);
    // An error nothing in the worker caught: its state is unknown, so it goes.
    worker!.onerror = (ev) => this.crash(new EmberError('crashed', `the engine worker failed: ${ev.message}`));
  }

  static async load(repo: string, o: EngineOptions, worker?: Worker): Promise<WorkerBackend> {
    if (o.fetch) throw new EmberError('bad-request', 'a custom `fetch` cannot cross into the worker; use `worker: false`');
    if (typeof o.cache === 'object' || o.cache === 'fs') throw new EmberError('bad-request', 'the worker opens its own cache; pass a cache name, or use `worker: false`');
    const b = new WorkerBackend(worker ?? new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'emberlm' }));
    const { onProgress, signal, fetch: _f, worker: _w, ...rest } = o;
    const options: WorkerLoadOptions = { ...rest, cache: rest.cache as WorkerLoadOptions['cache'] };
    try {
      b.info = (await b.call({ type: 'load', repo, options }, { onProgress }, signal)) as EngineInfo;
    } catch (e) {
      b.terminate();
      throw e;
    }
    return b;
  }

  private receive(m: FromWorker): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    switch (m.type) {
      case 'progress':
        p.onProgress?.(m.progress);
        return;
      case 'piece':
        p.onPiece?.(m.piece, m.logprobs, m.toolCalls, m.prefill, m.reasoning);
        return;
      case 'done':
        this.pending.delete(m.id);
        p.resolve(m.value);
        return;
      case 'error': {
        this.pending.delete(m.id);
        const e = new EmberError(m.code as EmberErrorCode, m.message);
        p.reject(e);
        // The module in the worker trapped: the worker (and its CPU threads) goes, and the
        // next engine starts in a fresh one.
        if (e.code === 'crashed') this.crash(e);
      }
    }
  }

  private crash(e: EmberError): void {
    this.crashed ??= e;
    this.worker?.terminate();
    this.worker = null;
    this.failAll(this.crashed);
  }

  private failAll(e: EmberError): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  private call(msg: Request, hooks: Partial<Pending> = {}, signal?: AbortSignal): Promise<unknown> {
    if (!this.worker) return Promise.reject(this.crashed ?? new EmberError('unloaded', 'the engine was unloaded'));
    const id = this.next++;
    const worker = this.worker;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...hooks });
      // Abort reaches the worker between tokens; the result then carries finish_reason "abort".
      signal?.addEventListener('abort', () => worker.postMessage({ id, type: 'abort' } satisfies ToWorker), { once: true });
      worker.postMessage({ ...msg, id } as ToWorker);
    });
  }

  async run(input: RunInput, params: RunParams, onPiece: OnPiece, signal?: AbortSignal): Promise<RunResult> {
    if (signal?.aborted) throw new EmberError('aborted', 'the operation was aborted');
    return (await this.call({ type: 'run', input, params }, { onPiece }, signal)) as RunResult;
  }

  async embed(texts: string[], signal?: AbortSignal): Promise<Embedded> {
    if (signal?.aborted) throw new EmberError('aborted', 'the operation was aborted');
    return (await this.call({ type: 'embed', texts }, {}, signal)) as Embedded;
  }

  async encode(text: string): Promise<number[]> {
    return (await this.call({ type: 'encode', text })) as number[];
  }

  async decode(ids: number[]): Promise<string> {
    return (await this.call({ type: 'decode', ids })) as string;
  }

  async unload(): Promise<void> {
    if (!this.worker) return;
    // A generation stops at its next token and the worker frees the GPU; a worker that does not
    // answer in time (stuck in a model's code) is terminated all the same.
    await Promise.race([this.call({ type: 'unload' }).catch(() => {}), new Promise((r) => setTimeout(r, UNLOAD_TIMEOUT_MS))]);
    this.terminate();
  }

  private terminate(): void {
    this.worker?.terminate();
    this.worker = null;
    this.failAll(new EmberError('unloaded', 'the engine was unloaded'));
  }
}
