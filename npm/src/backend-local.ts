// The engine in this thread: files from the cache (downloaded first when needed), weights read
// synchronously by the wasm loader, generation on WebGPU or the CPU backend (`device`).
import type { Backend, Embedded, OnPiece, RunInput, RunParams, RunResult, WasmToolCall } from './backend.js';
import { LogprobTracker, StopStringFilter, toToolCall } from './backend.js';
import { openCache } from './cache/index.js';
import type { StoredFile } from './cache/types.js';
import { EmberError, throwIfAborted } from './errors.js';
import { pickDevice } from './gpu.js';
import { modelRef } from './hub.js';
import { isLocalModelPath, openLocalGguf } from './local-file.js';
import { fetchModelFiles, type LoadProgress, type ModelFiles } from './model-files.js';
import type { EngineInfo, EngineOptions, LoadStats, ToolCall } from './types.js';
import { cpuThreadPlan } from './cpu-threads.js';
import { discardWasm, isWasmTrap, loadThreadedWasm, loadWasm, wasmHashers, type Wasm } from './wasm.js';

type EmberModel = Wasm['EmberModel']['prototype'];
interface WasmSource {
  name: string;
  length: number;
  read(offset: number, length: number): Uint8Array;
}

/**
 * The wasm build for `device`: the threads build when the CPU backend can have threads here
 * (see cpu-threads.ts), else the plain one; `threadsWhy` says why the CPU runs on one thread.
 */
async function loadEngineWasm(device: 'webgpu' | 'cpu', o: EngineOptions): Promise<{ wasm: Wasm; threadsWhy?: string }> {
  if (device !== 'cpu') return { wasm: await loadWasm(o.wasmUrl) };
  const plan = cpuThreadPlan(o.threads);
  if (plan.threads === 1) return { wasm: await loadWasm(o.wasmUrl), threadsWhy: plan.why };
  try {
    return { wasm: await loadThreadedWasm(plan.threads, o.wasmThreadsUrl) };
  } catch (e) {
    return { wasm: await loadWasm(o.wasmUrl), threadsWhy: `the threads build did not start (${e instanceof Error ? e.message : String(e)})` };
  }
}

/** Errors thrown by the wasm engine are strings; give them a code. A trap while loading: the model file is what made it. */
/** Tokens per piece of a prefill that reports its progress (a second or less on a CPU). */
const PREFILL_PIECE = 128;
/** Tokens per piece of a next turn's opening run ahead: what a request arriving meanwhile may wait for. */
const AHEAD_PIECE = 16;

function engineError(e: unknown, wasm?: Wasm): EmberError {
  if (e instanceof EmberError) return e;
  if (wasm && isWasmTrap(e)) return new EmberError('model', `the engine crashed while loading this model: ${discardWasm(wasm, e)}`, { cause: e });
  const message = typeof e === 'string' ? e : e instanceof Error ? e.message : String(e);
  // The request's own schema, grammar or regex was refused (checked before any token).
  if (message.startsWith('output constraint:')) return new EmberError('bad-request', message);
  return new EmberError(/device|adapter|WebGPU/i.test(message) && /lost|no adapter|not supported/i.test(message) ? 'no-webgpu' : 'model', message);
}

/**
 * A cached file as the `{name, length, read}` source the wasm loader reads from, synchronously,
 * and what to close when loading is over. Reads are few and large (the loader buffers headers,
 * streams tensors in 8 MiB pieces), but each may be a round trip to the browser process.
 */
async function wasmSource(name: string, f: StoredFile, onRead: (n: number) => void): Promise<WasmSource & { close(): void; via: LoadStats['reader'] }> {
  let read: (offset: number, length: number) => Uint8Array;
  let via: LoadStats['reader'];
  let close = () => f.close?.();
  const reader = f.readSync ? null : await f.openSyncReader?.();
  if (f.readSync) {
    read = f.readSync.bind(f);
    via = 'read-sync';
  } else if (reader) {
    // OPFS in a worker: a sync access handle reading into one reused buffer.
    read = reader.read.bind(reader);
    via = 'sync-access-handle';
    close = () => {
      reader.close();
      f.close?.();
    };
  } else if (f.blob && typeof FileReaderSync !== 'undefined') {
    // In a worker: read each piece from the (disk-backed) Blob, never the whole file at once.
    const blobReader = new FileReaderSync();
    const blob = f.blob;
    read = (offset, length) => new Uint8Array(blobReader.readAsArrayBuffer(blob.slice(offset, offset + length)));
    via = 'file-reader-sync';
  } else if (f.blob) {
    // A page cannot read a Blob synchronously: hold the file in JS memory while loading.
    const bytes = new Uint8Array(await f.blob.arrayBuffer());
    read = (offset, length) => bytes.subarray(offset, offset + length);
    via = 'memory';
  } else {
    throw new EmberError('model', `${name}: the cache gave no way to read this file`);
  }
  return {
    name,
    length: f.size,
    read(offset, length) {
      const out = read(offset, length);
      onRead(length);
      return out;
    },
    close,
    via,
  };
}

/** sentence-transformers Dense modules as the engine takes them: folder, config.json text, weights. */
function denseModules(files: ModelFiles): { path: string; config: string; weights: Uint8Array }[] {
  return Object.entries(files.modules).flatMap(([path, weights]) => {
    const folder = path.slice(0, path.indexOf('/'));
    const config = files.text[`${folder}/config.json`];
    return config === undefined ? [] : [{ path: folder, config, weights }];
  });
}

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

export class LocalBackend implements Backend {
  private busy: Promise<unknown> = Promise.resolve();
  private model: EmberModel | null;
  /** Set by `unload()`: a generation in progress stops at its next token. */
  private unloading = false;
  /** Set when the module trapped: every later call fails with it. */
  private crashed: EmberError | null = null;
  /** Requests waiting for their turn (`exclusive`); work run ahead gives way to them. */
  private waiting = 0;
  /** Requests started so far: work run ahead for one is dropped once another has run. */
  private started = 0;

  private constructor(
    model: EmberModel,
    readonly info: EngineInfo,
    private readonly wasm: Wasm,
    private readonly prefillNextTurn: boolean,
  ) {
    this.model = model;
  }

  static async load(repo: string, o: EngineOptions = {}): Promise<LocalBackend> {
    const started = now();
    const progress = (p: LoadProgress) => o.onProgress?.(p);
    // A .gguf on disk is read in place; anything else is a Hub repo.
    const localFile = isLocalModelPath(repo) ? await openLocalGguf(repo) : null;
    const ref = localFile?.ref ?? modelRef(repo, { hub: o.hub, revision: o.revision });
    // Picked before downloading: `device: 'webgpu'` without an adapter fails before any bytes move.
    const picked = await pickDevice(o.device);
    const { wasm, threadsWhy } = await loadEngineWasm(picked.device, o);
    const fetchStarted = now();
    const files =
      localFile ??
      (await fetchModelFiles(ref, { file: o.file, quant: o.quant }, {
        cache: await openCache(o.cache, o.cacheDir),
        fetch: o.fetch ?? globalThis.fetch.bind(globalThis),
        hasher: wasmHashers(wasm),
        signal: o.signal,
        offline: o.offline,
        onProgress: progress,
      }));
    throwIfAborted(o.signal);
    const filesMs = now() - fetchStarted;

    const total = files.weights.reduce((n, w) => n + w.file.size, 0);
    let loaded = 0;
    let reported = 0;
    const onRead = (n: number) => {
      loaded += n;
      if (loaded - reported >= total / 100 || loaded >= total) {
        reported = loaded;
        progress({ phase: 'upload', loaded: Math.min(loaded, total), total });
      }
    };
    const sources: Awaited<ReturnType<typeof wasmSource>>[] = [];
    progress({ phase: 'upload', loaded: 0, total });
    const options = { dtype: o.dtype ?? 'auto', context: o.context ?? 2048, device: picked.device };
    let model: EmberModel;
    try {
      for (const w of files.weights) sources.push(await wasmSource(w.path, w.file, onRead));
      if (files.format === 'gguf') {
        model = await wasm.EmberModel.fromGguf(sources, options);
      } else {
        const t = files.text;
        model = await wasm.EmberModel.fromSafetensors(
          t['config.json'],
          t['generation_config.json'],
          t['tokenizer.json'],
          t['tokenizer_config.json'],
          sources,
          { ...options, modulesJson: t['modules.json'], poolingJson: t['1_Pooling/config.json'], denseModules: denseModules(files) },
        );
      }
    } catch (e) {
      throw engineError(e, wasm);
    } finally {
      for (const s of sources) s.close();
      for (const w of files.weights.slice(sources.length)) w.file.close?.();
    }
    const compileStarted = now();
    if (o.warmUp !== false) {
      // One token compiles the shaders now rather than inside the first request's TTFT.
      progress({ phase: 'compile', loaded: 0, total: 1 });
      try {
        await model.generate(new Uint32Array([0]), { maxNewTokens: 1, temperature: 0 }, undefined);
      } catch (e) {
        if (!isWasmTrap(e)) model.free();
        throw engineError(e, wasm);
      }
      progress({ phase: 'compile', loaded: 1, total: 1 });
    }
    const info: EngineInfo = {
      model: ref.repo,
      revision: ref.revision,
      format: files.format,
      architecture: model.architecture(),
      contextLength: model.contextLength,
      weightBytes: model.weightBytes,
      fromCache: files.fromCache,
      loadMs: now() - started,
      load: { reader: sources[0]?.via ?? 'memory', filesMs, ...(model.loadStats() as Omit<LoadStats, 'reader' | 'filesMs' | 'compileMs'>), compileMs: now() - compileStarted },
      device: { backend: picked.device, name: model.deviceName, reason: threadsWhy ? `${picked.reason}; one thread: ${threadsWhy}` : picked.reason },
    };
    progress({ phase: 'ready', loaded: total, total });
    return new LocalBackend(model, info, wasm, o.prefillNextTurn !== false);
  }

  private get loaded(): EmberModel {
    if (this.crashed) throw this.crashed;
    if (!this.model) throw new EmberError('unloaded', 'the engine was unloaded');
    return this.model;
  }

  /**
   * The module trapped (a panic in wasm aborts; or it ran out of memory): nothing in it can be
   * trusted, so this engine fails every later call with the same error, and the next engine
   * in this realm gets a fresh instance of the module.
   */
  private crash(trap: unknown): EmberError {
    if (!this.crashed) {
      this.crashed = new EmberError('crashed', `the engine crashed: ${discardWasm(this.wasm, trap)}. This engine can no longer be used: load the model again`, { cause: trap });
      this.model = null;
    }
    return this.crashed;
  }

  /** `call`, with a trap turned into the engine's crash and any other error into `otherwise`'s. */
  private async guard<T>(call: () => T | Promise<T>, otherwise: (e: unknown) => EmberError = engineError): Promise<T> {
    try {
      return await call();
    } catch (e) {
      throw isWasmTrap(e) ? this.crash(e) : otherwise(e);
    }
  }

  /** Runs `task` after every earlier one: the GPU session serves one generation at a time. */
  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    this.waiting++;
    const start = () => {
      this.waiting--;
      this.started++;
      return task();
    };
    const run = this.busy.then(start, start);
    this.busy = run.catch(() => {});
    return run;
  }

  /**
   * After chat request number `after` replied `reply`: runs the next user turn's opening into
   * the cache in pieces (see `EngineOptions.prefillNextTurn`), stopping as soon as a request
   * waits or once another has run. Only a speed-up: its errors are dropped (the next request
   * meets any real fault itself), except a trap, which ends the engine as anywhere else.
   */
  private prefillAhead(input: RunInput, reply: string, after: number): void {
    const messages = [...input.messages!, { role: 'assistant', content: reply }];
    const still = () => this.started === after && this.waiting === 0 && !this.unloading && this.model !== null && !this.crashed;
    this.busy = this.busy.then(async () => {
      try {
        while (still() && (await this.model!.prefillNextTurn(messages, input.tools ?? null, input.templateKwargs ?? null, AHEAD_PIECE)) > 0);
      } catch (e) {
        if (isWasmTrap(e)) this.crash(e);
      }
    });
  }

  run(input: RunInput, p: RunParams, onPiece: OnPiece, signal?: AbortSignal): Promise<RunResult> {
    const asked = now();
    throwIfAborted(signal);
    return this.exclusive(async () => {
      // Aborted while it waited for its turn (behind another request, or a piece of the next
      // turn's opening run ahead): it ends as a request aborted at its first token does.
      if (signal?.aborted) return { text: '', tokens: [], finish_reason: 'abort', prompt_tokens: 0, cached_tokens: 0, ttft_ms: now() - asked, prefill_tok_s: 0, decode_tok_s: 0 };
      const model = this.loaded;
      const ids = await this.guard(
        () => (input.messages ? model.chatPromptIds(input.messages, input.tools ?? null, input.templateKwargs ?? null) : model.promptIds(input.prompt ?? '')),
        (e) => new EmberError('bad-request', String(e)),
      );
      const room = model.contextLength - ids.length;
      if (ids.length === 0) throw new EmberError('bad-request', 'the prompt is empty');
      if (room <= 0) {
        throw new EmberError('bad-request', `the prompt is ${ids.length} tokens but the context holds ${model.contextLength}; load with a larger \`context\``);
      }
      const maxNew = Math.min(p.max_tokens ?? room, room);
      // A long prompt asked to report its prefill runs in pieces first (the last ≥ 2 tokens are
      // generate's): what the cache held before is the first piece's answer.
      let held: number | undefined;
      const prefillFrom = now();
      if (p.prefill_progress && ids.length > 2 * PREFILL_PIECE) {
        for (let end = PREFILL_PIECE; end + 2 <= ids.length; end += PREFILL_PIECE) {
          throwIfAborted(signal);
          const was = await this.guard(
            () => model.prefillTo(ids, end),
            (e) => new EmberError('model', String(e)),
          );
          held ??= was;
          onPiece('', undefined, undefined, { done: end, total: ids.length });
        }
      }
      const filter = new StopStringFilter(p.stop);
      const logprobs = p.logprobs === undefined ? null : new LogprobTracker();
      const toolCalls: ToolCall[] = [];
      let reasoning = '';
      let firstAt = 0;
      let aborted = false;
      const out: {
        generatedIds: number[];
        reusedTokens: number;
        stoppedByEos: boolean;
        prefillTokS: number;
        decodeTokS: number;
        profile?: RunResult['profile'] | null;
      } = await this.guard(() =>
        model.generate(
          ids,
          {
            maxNewTokens: maxNew,
            temperature: p.temperature,
            topK: p.top_k,
            topP: p.top_p,
            minP: p.min_p,
            repetitionPenalty: p.repetition_penalty,
            seed: p.seed,
            ignoreEos: p.ignore_eos,
            profile: p.profile,
            logprobs: p.logprobs,
            grammar: p.grammar,
            tools: input.tools,
            // A chat reply: GPT-OSS's harmony channels are parsed (the final one is content).
            chat: Boolean(input.messages),
          },
          // `id` is undefined for the last piece, what the tool-call parser held to the end.
          (_id: number | undefined, piece: string, entry?: Parameters<LogprobTracker['add']>[1], calls?: WasmToolCall[], thought?: string) => {
            firstAt ||= now();
            logprobs?.add(piece, entry);
            const shown = filter.push(piece);
            const made = calls?.map(toToolCall);
            if (made) toolCalls.push(...made);
            if (thought) reasoning += thought;
            if (shown || made || thought) onPiece(shown, logprobs?.release(filter.shown), made, undefined, thought || undefined);
            if (signal?.aborted || this.unloading) aborted = true;
            return !filter.stopped && !aborted;
          },
        ),
      );
      if (!filter.stopped) {
        const rest = filter.flush();
        if (rest) onPiece(rest, logprobs?.release(filter.shown));
      }
      const finish = aborted ? 'abort' : filter.stopped || out.stoppedByEos ? (toolCalls.length ? 'tool_calls' : 'stop') : 'length';
      // The client sends the reply back as `{role: 'assistant', content}` (after tool calls,
      // tool results come next instead: nothing to guess).
      if (this.prefillNextTurn && input.messages && !aborted && !toolCalls.length && this.waiting === 0) this.prefillAhead(input, filter.output, this.started);
      return {
        text: filter.output,
        tokens: Array.from(out.generatedIds),
        finish_reason: finish,
        prompt_tokens: ids.length,
        cached_tokens: held ?? out.reusedTokens,
        ttft_ms: (firstAt || now()) - asked,
        // In pieces: the prompt's new tokens over the time from the first piece to the first token.
        prefill_tok_s: held === undefined ? out.prefillTokS : (ids.length - held) / (((firstAt || now()) - prefillFrom) / 1000),
        decode_tok_s: out.decodeTokS,
        ...(out.profile ? { profile: out.profile } : {}),
        ...(logprobs ? { logprobs: logprobs.content } : {}),
        ...(input.tools ? { tool_calls: toolCalls } : {}),
        ...(reasoning ? { reasoning } : {}),
      };
    });
  }

  embed(texts: string[], signal?: AbortSignal): Promise<Embedded> {
    return this.exclusive(async () => {
      throwIfAborted(signal);
      const model = this.loaded;
      const out = await this.guard(
        () => model.embed(texts),
        (e) => new EmberError('bad-request', String(e)),
      );
      return { vectors: out.vectors, promptTokens: out.promptTokens };
    });
  }

  async encode(text: string): Promise<number[]> {
    const model = this.loaded;
    return this.guard(() => Array.from(model.encode(text)));
  }

  async decode(ids: number[]): Promise<string> {
    const model = this.loaded;
    return this.guard(() => model.decode(new Uint32Array(ids)));
  }

  async unload(): Promise<void> {
    this.unloading = true;
    await this.busy;
    // After a crash the model is not freed: its instance is not to be called into again.
    this.model?.free();
    this.model = null;
  }
}

