// The public API shapes: OpenAI's chat completions, plus emberlm's load options and figures.
import type { CacheChoice } from './cache/index.js';
import type { LoadProgress } from './model-files.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | (string & {});
  /** May be null on an assistant message that only calls tools. */
  content: string | null;
  /** An assistant message's calls, as a response gave them. */
  tool_calls?: ToolCall[];
  /** A `tool` message: the call it answers. */
  tool_call_id?: string;
  /** A `tool` message: the function's name (some templates show it). */
  name?: string;
}

/** A function the model may call (OpenAI's `tools` entries). */
export interface Tool {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean };
}

/** `auto` (default): the model decides; `none`: tools are not shown; `required`: at least one call; or one named function. */
export type ToolChoice = 'auto' | 'none' | 'required' | { type: 'function'; function: { name: string } };

/** A call the model made: `arguments` is a string of JSON. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** Sampling shared by `chat.completions.create` and `generate` (OpenAI names). */
export interface SamplingParams {
  /** Most new tokens; defaults to what fits the context. */
  max_tokens?: number;
  /** 0 = greedy. Default 0.7. */
  temperature?: number;
  /** Default 0.95. */
  top_p?: number;
  /** 0 = off (default). */
  top_k?: number;
  /** 0 = off (default). */
  min_p?: number;
  /** 1 = off (default). */
  repetition_penalty?: number;
  /** Same seed, same draws on every platform. Random when absent. */
  seed?: number;
  /** Generation ends before any of these strings; they are not part of the output. */
  stop?: string | string[];
  /** Keep generating past end-of-sequence tokens, to `max_tokens` (fixed-length benchmarks). */
  ignore_eos?: boolean;
  /**
   * Report each generated token's log-probability (OpenAI's `logprobs`): the log-softmax of the
   * model's logits at its position, before temperature, penalties and truncation.
   */
  logprobs?: boolean;
  /** With `logprobs`: also the likeliest tokens at each position, 0–20 of them. Default 0. */
  top_logprobs?: number;
  /**
   * What the output must be (constrained decoding: every token is picked among those the
   * grammar allows, so the output always parses). OpenAI's `json_object` and `json_schema`, and
   * two extensions: a Lark grammar (llguidance's dialect) and a regex for the whole output.
   */
  response_format?: ResponseFormat;
  /**
   * Time every op kind of this request (WebGPU timestamp queries, where the adapter has them,
   * or CPU time per op) and report it as `usage.extra.profile`. Slows the request down.
   */
  profile?: boolean;
  signal?: AbortSignal;
}

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name?: string; description?: string; schema: Record<string, unknown>; strict?: boolean } }
  | { type: 'grammar'; grammar: string }
  | { type: 'regex'; regex: string };

/** Where one phase of a request spent its time (`profile: true`). */
export interface PhaseProfile {
  /** Tokens the phase ran: the prompt tokens prefilled, or the decode steps. */
  tokens: number;
  /** Slowest first. `calls` are dispatches on WebGPU; `(cpu) …` entries are CPU-side work. */
  ops: { op: string; calls: number; ms: number }[];
}

export interface ChatCompletionRequest extends SamplingParams {
  messages: ChatMessage[];
  /**
   * Functions the model may call. They reach the prompt through the model's chat template as
   * transformers' `apply_chat_template(tools=…)` passes them (a template without tool support
   * gets them in a system prompt); the reply's calls come back as `message.tool_calls`.
   */
  tools?: Tool[];
  /** `required` and a named function are enforced: the reply is a valid call. */
  tool_choice?: ToolChoice;
  /**
   * More variables for the model's chat template, as vLLM's and llama-server's
   * `chat_template_kwargs`: `{ enable_thinking: false }` turns Qwen3's and SmolLM3's thinking off.
   */
  chat_template_kwargs?: Record<string, unknown>;
  stream?: boolean;
  /** OpenAI's newer name for `max_tokens`. */
  max_completion_tokens?: number;
  /** Accepted for OpenAI compatibility; the engine's model answers. */
  model?: string;
}

/** `stop`: end of turn or a stop string; `length`: max_tokens or the context; `abort`: the signal fired; `tool_calls`: the reply called tools. */
export type FinishReason = 'stop' | 'length' | 'abort' | 'tool_calls';

export interface CompletionUsage {
  prompt_tokens: number;
  /**
   * As OpenAI reports it: prompt tokens served from the cache. The engine keeps the last
   * conversation's keys and values, so a chat's next turn (or a regenerated reply) prefills
   * only what its prompt adds to the longest prefix it shares with the last one.
   */
  prompt_tokens_details: { cached_tokens: number };
  completion_tokens: number;
  total_tokens: number;
  extra: {
    /** Milliseconds from the request to the first generated token. */
    time_to_first_token_ms: number;
    prefill_tokens_per_s: number;
    decode_tokens_per_s: number;
    /** With `profile: true`, where the time went; absent where the backend cannot time its ops. */
    profile?: { prefill: PhaseProfile; decode: PhaseProfile };
  };
}

/** One token in OpenAI's `logprobs.content` shape. */
export interface TokenLogprob {
  /** The token's text (a partial UTF-8 character shows as U+FFFD; `bytes` are exact). */
  token: string;
  /** −9999 for a token the model rules out. */
  logprob: number;
  bytes: number[];
  /** The likeliest tokens at this position, best first (`top_logprobs` of them). */
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

/** With `logprobs: true`, one entry per token of the content (not the end-of-turn token). */
export interface ChoiceLogprobs {
  content: TokenLogprob[];
  refusal: null;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  /** `message.reasoning_content`: reasoning the model wrote apart from its answer (GPT-OSS's analysis channel), as vLLM and llama-server name it. */
  choices: { index: number; message: { role: 'assistant'; content: string | null; reasoning_content?: string; tool_calls?: ToolCall[] }; finish_reason: FinishReason; logprobs: ChoiceLogprobs | null }[];
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** `logprobs`: the entries of the tokens whose text this chunk carries. */
  /** `delta.tool_calls`: each call whole, in one chunk, once the model has finished writing it. */
  /** `delta.reasoning_content`: reasoning as it is written (GPT-OSS). */
  choices: { index: number; delta: { role?: 'assistant'; content?: string; reasoning_content?: string; tool_calls?: (ToolCall & { index: number })[] }; finish_reason: FinishReason | null; logprobs: ChoiceLogprobs | null }[];
  /** On the last chunk only. */
  usage?: CompletionUsage;
}

export interface GenerateOptions extends SamplingParams {
  /** Called with each new piece of text as it is generated. */
  onText?: (piece: string) => void;
  /** Treat `prompt` as raw text (default) or as a user message for the chat template. */
  chat?: boolean;
  /** See `CompletionOptions.onPrefill`. */
  onPrefill?: (done: number, total: number) => void;
}

export interface GenerateResult {
  text: string;
  /** Generated token ids (the stop string's tokens included when one ended the text). */
  tokens: number[];
  finish_reason: FinishReason;
  usage: CompletionUsage;
  /** With `logprobs: true`: one entry per token of `text`. */
  logprobs?: TokenLogprob[];
}

export interface EngineOptions {
  /** Hub server; default `https://huggingface.co`. */
  hub?: string;
  /** Branch, tag or commit; default `main`. Part of every cache key. */
  revision?: string;
  /** A `.gguf` file in the repo (the first shard of a split file). */
  file?: string;
  /** A GGUF quantisation picked from the repo's file list, such as `Q4_K_M`. */
  quant?: string;
  /** Weight format on the GPU: `auto` (GGUF as stored, safetensors as q4), `f32`, `f16`, `q8`, `q4`, ...; MXFP4 experts (GPT-OSS) stay MXFP4 under any quantised format. */
  dtype?: 'auto' | 'f32' | 'f16' | 'q8' | 'q4' | 'q4k' | 'q5k' | 'q6k';
  /** Most tokens per conversation (prompt + reply); sizes the KV cache. Default 2048. */
  context?: number;
  /** Where files are kept; default `auto` (see `openCache`). */
  cache?: CacheChoice;
  /** Folder of the file cache in Node/Deno/Bun (default `$EMBERLM_CACHE` or `~/.cache/emberlm`). */
  cacheDir?: string;
  /** Use only the cache; fail rather than touch the network. */
  offline?: boolean;
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
  /** Browser pages: run the engine in a dedicated Web Worker (default true where workers exist). */
  worker?: boolean;
  /** Where the engine's `.wasm` is served from (default: beside this package's JS, the relaxed-SIMD build where the engine has relaxed SIMD). */
  wasmUrl?: string;
  /** Where the threads build's `.wasm` is served from (default: `wasm-threads/` beside this package's JS, relaxed SIMD as for `wasmUrl`). */
  wasmThreadsUrl?: string;
  /**
   * Threads for the CPU backend in a browser (default: `navigator.hardwareConcurrency`, at most
   * 16). Threads need a cross-origin isolated page (COOP/COEP headers) and the engine worker;
   * elsewhere the CPU backend runs on one thread and `engine.info.device.reason` says why.
   * Natively (Node, Deno, Bun) the wasm CPU backend runs on one thread.
   */
  threads?: number;
  /** A fetch to use for the Hub (default: the global fetch). Not available with `worker: true`. */
  fetch?: typeof fetch;
  /** Run one token after loading so shaders are compiled before the first request (default true). */
  warmUp?: boolean;
  /**
   * After a chat reply, while the conversation waits for its user: run the opening of the next
   * user turn (the reply's last token, the template's end-of-turn and next-user markers) into
   * the cache, so that the next turn prefills only the user's words and what follows them
   * (default true). A few tokens of work, done ahead; a request that arrives meanwhile waits
   * for at most one 16-token piece of it. Off: that work waits for the next turn's prefill.
   */
  prefillNextTurn?: boolean;
  /**
   * Where the model runs: `auto` (default) uses WebGPU on a real GPU and the CPU backend when
   * WebGPU is missing or its only adapter is a software one (SwiftShader, llvmpipe, WARP);
   * `webgpu` and `cpu` force one. `engine.info.device` says what was picked and why.
   */
  device?: 'auto' | 'webgpu' | 'cpu';
}

/** Where a load's time went, phase by phase (milliseconds), and the reads it made of the model files. */
export interface LoadStats {
  /**
   * How the model files were read: `read-sync` (a file in Node/Deno/Bun, or the memory cache),
   * `sync-access-handle` (OPFS in a worker), `file-reader-sync` (Blob reads in a worker),
   * `memory` (a cached Blob copied into memory first: a page cannot read Blobs synchronously).
   */
  reader: 'read-sync' | 'sync-access-handle' | 'file-reader-sync' | 'memory';
  /** Listing and downloading, or finding the files in the cache. */
  filesMs: number;
  /** Parsing the model files' headers and metadata (GGUF, safetensors). */
  headerMs: number;
  /** Read calls that parsing the headers took (a few, however large the vocabulary). */
  headerReads: number;
  /** Building the tokenizer and chat template. */
  tokenizerMs: number;
  /** Getting the backend (the GPU device; ~0 for the CPU). */
  deviceMs: number;
  /** Reading, repacking and uploading the weights. */
  uploadMs: number;
  /** Compiling the shaders (the one-token warm-up; 0 with `warmUp: false`). */
  compileMs: number;
  /** Read calls and bytes over the whole load. */
  reads: number;
  readBytes: number;
}

export interface EngineInfo {
  model: string;
  revision: string;
  format: 'gguf' | 'safetensors';
  architecture: string;
  contextLength: number;
  weightBytes: number;
  fromCache: boolean;
  loadMs: number;
  load: LoadStats;
  /** The backend the model runs on, what runs it (`cpu (1 thread, simd128)`, `webgpu (adapter, …)`) and why it was picked. */
  device: { backend: 'webgpu' | 'cpu'; name: string; reason: string };
}

/** `chat.completions.create`'s second argument. */
export interface CompletionOptions {
  signal?: AbortSignal;
  /**
   * Reading a long prompt (over 256 new tokens) in pieces of 128 and calling this after each
   * with how many of its `total` tokens are in the cache: a progress bar before the first token.
   */
  onPrefill?: (done: number, total: number) => void;
}

export interface ChatCompletions {
  create(request: ChatCompletionRequest & { stream: true }, options?: CompletionOptions): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(request: ChatCompletionRequest & { stream?: false }, options?: CompletionOptions): Promise<ChatCompletion>;
  create(request: ChatCompletionRequest, options?: CompletionOptions): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
}

/** OpenAI's embeddings request. */
export interface EmbeddingsRequest {
  /** One text or several (each embedded on its own). Token-id inputs are not taken. */
  input: string | string[];
  /** Keep the first N dimensions (Matryoshka models such as Qwen3-Embedding), renormalised. */
  dimensions?: number;
  /** Only `float` (default). */
  encoding_format?: 'float';
  model?: string;
}

export interface EmbeddingsResponse {
  object: 'list';
  data: { object: 'embedding'; index: number; embedding: number[] }[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

export interface Engine {
  readonly info: EngineInfo;
  readonly chat: { completions: ChatCompletions };
  /**
   * Embedding models (Qwen3-Embedding and the like: sentence-transformers' last-token, mean or
   * CLS pooling, or a GGUF's pooling_type): one normalised vector per input. A `bad-request`
   * error on a generative model.
   */
  readonly embeddings: { create(request: EmbeddingsRequest, options?: { signal?: AbortSignal }): Promise<EmbeddingsResponse> };
  /** Continues `prompt` (raw text, or a user message with `chat: true`). */
  generate(prompt: string, options?: GenerateOptions): Promise<GenerateResult>;
  readonly tokenizer: {
    encode(text: string): Promise<number[]>;
    decode(ids: number[]): Promise<string>;
  };
  /** Frees the model's GPU memory (and the worker); the engine cannot be used afterwards. */
  unload(): Promise<void>;
}

export type { LoadProgress };
