// The public engine: OpenAI-style chat completions and `generate` over a backend (this thread
// or a worker).
import type { Backend, OnPiece, RunInput, RunParams, RunResult } from './backend.js';
import { EmberError } from './errors.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  ChatCompletions,
  ChatMessage,
  ChoiceLogprobs,
  CompletionOptions,
  CompletionUsage,
  EmbeddingsRequest,
  EmbeddingsResponse,
  Engine,
  EngineInfo,
  GenerateOptions,
  GenerateResult,
  SamplingParams,
  TokenLogprob,
} from './types.js';

function flag(v: unknown, name: string): boolean {
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new EmberError('bad-request', `${name} must be a boolean (got ${String(v)})`);
  return v;
}

function params(r: SamplingParams & { max_completion_tokens?: number }): RunParams {
  const num = (v: unknown, name: string, ok: (x: number) => boolean) => {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new EmberError('bad-request', `${name} must be a valid number (got ${String(v)})`);
    return v;
  };
  const stop = r.stop === undefined || r.stop === null ? [] : Array.isArray(r.stop) ? r.stop : [r.stop];
  if (stop.some((s) => typeof s !== 'string' || s === '')) throw new EmberError('bad-request', 'stop must be a non-empty string or an array of them');
  const logprobs = flag(r.logprobs, 'logprobs');
  const top = num(r.top_logprobs, 'top_logprobs', (x) => Number.isInteger(x) && x >= 0 && x <= 20);
  if (top !== undefined && !logprobs) throw new EmberError('bad-request', 'top_logprobs needs logprobs: true');
  return {
    max_tokens: num(r.max_completion_tokens ?? r.max_tokens, 'max_tokens', (x) => Number.isInteger(x) && x >= 1),
    temperature: num(r.temperature, 'temperature', (x) => x >= 0) ?? 0.7,
    top_p: num(r.top_p, 'top_p', (x) => x > 0 && x <= 1) ?? 0.95,
    top_k: num(r.top_k, 'top_k', (x) => Number.isInteger(x) && x >= 0 && x <= 2 ** 32) ?? 0,
    min_p: num(r.min_p, 'min_p', (x) => x >= 0 && x <= 1) ?? 0,
    repetition_penalty: num(r.repetition_penalty, 'repetition_penalty', (x) => x > 0) ?? 1,
    // Integers past 2^53 are not exact in JavaScript: refused rather than silently rounded.
    seed: num(r.seed, 'seed', (x) => Number.isSafeInteger(x) && x >= 0) ?? Math.floor(Math.random() * 2 ** 32),
    stop,
    ignore_eos: flag(r.ignore_eos, 'ignore_eos'),
    profile: flag(r.profile, 'profile'),
    ...(logprobs ? { logprobs: top ?? 0 } : {}),
    ...grammarOf(r.response_format),
  };
}

/** Asks the backend for prefill progress when someone listens (a long prompt then runs in pieces). */
function withPrefillProgress(p: RunParams, onPrefill: unknown): RunParams {
  if (onPrefill === undefined) return p;
  if (typeof onPrefill !== 'function') throw new EmberError('bad-request', 'onPrefill must be a function');
  return { ...p, prefill_progress: true };
}

/** `response_format` as the engine's output constraint (none for `text` or absent). */
function grammarOf(f: unknown): { grammar?: RunParams['grammar'] } {
  if (f === undefined || f === null) return {};
  const bad = (why: string) => new EmberError('bad-request', `response_format: ${why}`);
  if (typeof f !== 'object' || typeof (f as { type?: unknown }).type !== 'string') throw bad('must be an object with a `type`');
  const r = f as Record<string, unknown>;
  const text = (key: string) => {
    if (typeof r[key] !== 'string' || r[key] === '') throw bad(`type ${String(r.type)} needs a non-empty string \`${key}\``);
    return r[key] as string;
  };
  switch (r.type) {
    case 'text':
      return {};
    case 'json_object':
      return { grammar: { type: 'json_object' } };
    case 'json_schema': {
      const schema = (r.json_schema as { schema?: unknown } | undefined)?.schema;
      if (!schema || typeof schema !== 'object' || Array.isArray(schema)) throw bad('json_schema needs `json_schema.schema`, a JSON schema object');
      return { grammar: { type: 'json_schema', schema: schema as Record<string, unknown> } };
    }
    case 'grammar':
      return { grammar: { type: 'lark', grammar: text('grammar') } };
    case 'regex':
      return { grammar: { type: 'regex', regex: text('regex') } };
    default:
      throw bad(`unknown type ${JSON.stringify(r.type)} (text, json_object, json_schema, grammar, regex)`);
  }
}

/** The reply as an assistant message: its calls, and null content when it only called tools. */
function assistantMessage(r: RunResult): ChatCompletion['choices'][0]['message'] {
  const reasoning = r.reasoning ? { reasoning_content: r.reasoning } : {};
  if (!r.tool_calls?.length) return { role: 'assistant', content: r.text, ...reasoning };
  return { role: 'assistant', content: r.text === '' ? null : r.text, ...reasoning, tool_calls: r.tool_calls };
}

/** A choice's `logprobs`: the entries when they were asked for, else null (OpenAI's shape). */
function choiceLogprobs(p: RunParams, entries: TokenLogprob[] | undefined): ChoiceLogprobs | null {
  return p.logprobs === undefined ? null : { content: entries ?? [], refusal: null };
}

function usage(r: RunResult): CompletionUsage {
  return {
    prompt_tokens: r.prompt_tokens,
    prompt_tokens_details: { cached_tokens: r.cached_tokens },
    completion_tokens: r.tokens.length,
    total_tokens: r.prompt_tokens + r.tokens.length,
    extra: {
      time_to_first_token_ms: r.ttft_ms,
      prefill_tokens_per_s: r.prefill_tok_s,
      decode_tokens_per_s: r.decode_tok_s,
      ...(r.profile ? { profile: r.profile } : {}),
    },
  };
}

function checkMessages(messages: unknown): void {
  if (!Array.isArray(messages) || messages.length === 0) throw new EmberError('bad-request', 'messages must be a non-empty array');
  for (const m of messages) {
    const calls = m?.tool_calls;
    if (calls !== undefined && calls !== null && (!Array.isArray(calls) || calls.some((c) => typeof c?.function?.name !== 'string'))) {
      throw new EmberError('bad-request', 'tool_calls must be an array of {id, type, function: {name, arguments}}');
    }
    // An assistant message that only calls tools may have no content.
    const contentOk = typeof m?.content === 'string' || (m?.role === 'assistant' && (m.content === null || m.content === undefined) && Array.isArray(calls));
    if (!m || typeof m.role !== 'string' || !contentOk) {
      throw new EmberError('bad-request', 'each message needs a string `role` and a string `content`');
    }
  }
}

/** A message as the template takes it: OpenAI's fields, nothing else the caller attached. */
function templateMessage(m: ChatMessage): ChatMessage {
  const out: ChatMessage = { role: m.role, content: m.content ?? null };
  if (m.tool_calls) out.tool_calls = m.tool_calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.function.name, arguments: c.function.arguments } }));
  if (typeof m.tool_call_id === 'string') out.tool_call_id = m.tool_call_id;
  if (typeof m.name === 'string') out.name = m.name;
  return out;
}

/** `tools` and `tool_choice`, checked in shape (the engine checks the rest). */
function toolsOf(r: ChatCompletionRequest): RunInput['tools'] {
  if (r.tools === undefined || r.tools === null) {
    if (r.tool_choice !== undefined && r.tool_choice !== null) throw new EmberError('bad-request', 'tool_choice needs tools');
    return undefined;
  }
  if (!Array.isArray(r.tools)) throw new EmberError('bad-request', 'tools must be an array of {type: "function", function: {name, parameters}}');
  const forced = r.tool_choice === 'required' || (typeof r.tool_choice === 'object' && r.tool_choice !== null);
  if (forced && r.response_format && r.response_format.type !== 'text') {
    throw new EmberError('bad-request', 'response_format cannot be combined with tool_choice "required" or a named function');
  }
  return { tools: r.tools, ...(r.tool_choice !== undefined && r.tool_choice !== null ? { tool_choice: r.tool_choice } : {}) };
}

/** `chat_template_kwargs`: a plain object (its names are checked against the template's own by the engine). */
function templateKwargsOf(k: unknown): Record<string, unknown> | undefined {
  if (k === undefined || k === null) return undefined;
  if (typeof k !== 'object' || Array.isArray(k)) throw new EmberError('bad-request', 'chat_template_kwargs must be an object, e.g. { enable_thinking: false }');
  return k as Record<string, unknown>;
}

/** Either signal aborts the result. */
function anySignal(a?: AbortSignal, b?: AbortSignal): AbortSignal | undefined {
  if (!a || !b) return a ?? b;
  const c = new AbortController();
  for (const s of [a, b]) {
    if (s.aborted) c.abort(s.reason);
    else s.addEventListener('abort', () => c.abort(s.reason), { once: true });
  }
  return c.signal;
}

/** Values pushed by a producer, read as an async iterable. */
class Channel<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private wake?: () => void;
  private done = false;
  private error?: unknown;

  push(v: T) {
    this.items.push(v);
    this.wake?.();
  }

  end(error?: unknown) {
    this.done = true;
    this.error = error;
    this.wake?.();
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      if (this.items.length) {
        yield this.items.shift()!;
        continue;
      }
      if (this.done) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}

let counter = 0;
const completionId = () => `chatcmpl-${Date.now().toString(36)}${(counter++).toString(36)}`;

export class EmberEngine implements Engine {
  readonly chat: { completions: ChatCompletions };
  readonly embeddings: Engine['embeddings'];
  readonly tokenizer: Engine['tokenizer'];

  constructor(private readonly backend: Backend) {
    this.chat = { completions: { create: this.createCompletion.bind(this) as ChatCompletions['create'] } };
    this.embeddings = { create: this.createEmbeddings.bind(this) };
    this.tokenizer = { encode: (t) => backend.encode(t), decode: (ids) => backend.decode(ids) };
  }

  get info(): EngineInfo {
    return this.backend.info;
  }

  private async createCompletion(request: ChatCompletionRequest, options?: CompletionOptions): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>> {
    checkMessages(request?.messages);
    const p = withPrefillProgress(params(request), options?.onPrefill);
    const signal = anySignal(request.signal, options?.signal);
    const tools = toolsOf(request);
    const templateKwargs = templateKwargsOf(request.chat_template_kwargs);
    const input: RunInput = { messages: request.messages.map(templateMessage), ...(tools ? { tools } : {}), ...(templateKwargs ? { templateKwargs } : {}) };
    const id = completionId();
    const created = Math.floor(Date.now() / 1000);
    const model = this.info.model;
    const onPrefill = options?.onPrefill;
    if (!request.stream) {
      const r = await this.backend.run(input, p, (_piece, _logprobs, _calls, prefill) => prefill && onPrefill?.(prefill.done, prefill.total), signal);
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [{ index: 0, message: assistantMessage(r), finish_reason: r.finish_reason, logprobs: choiceLogprobs(p, r.logprobs) }],
        usage: usage(r),
      };
    }
    const chunks = new Channel<ChatCompletionChunk>();
    const chunk = (
      delta: ChatCompletionChunk['choices'][0]['delta'],
      finish: ChatCompletionChunk['choices'][0]['finish_reason'] = null,
      logprobs: TokenLogprob[] | undefined = undefined,
    ): ChatCompletionChunk => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: logprobs?.length ? choiceLogprobs(p, logprobs) : null }],
    });
    chunks.push(chunk({ role: 'assistant', content: '' }));
    let calls = 0;
    const onPiece: OnPiece = (piece, logprobs, toolCalls, prefill, reasoning) => {
      if (prefill) return onPrefill?.(prefill.done, prefill.total);
      const delta: ChatCompletionChunk['choices'][0]['delta'] = piece ? { content: piece } : {};
      if (reasoning) delta.reasoning_content = reasoning;
      if (toolCalls?.length) delta.tool_calls = toolCalls.map((c) => ({ index: calls++, ...c }));
      chunks.push(chunk(delta, null, logprobs));
    };
    this.backend.run(input, p, onPiece, signal).then(
      (r) => {
        chunks.push({ ...chunk({}, r.finish_reason), usage: usage(r) });
        chunks.end();
      },
      (e) => chunks.end(e),
    );
    return chunks;
  }

  private async createEmbeddings(request: EmbeddingsRequest, options?: { signal?: AbortSignal }): Promise<EmbeddingsResponse> {
    const input = typeof request?.input === 'string' ? [request.input] : request?.input;
    if (!Array.isArray(input) || input.length === 0 || input.some((t) => typeof t !== 'string' || t === '')) {
      throw new EmberError('bad-request', 'input must be a non-empty string or a non-empty array of them');
    }
    const dims = request.dimensions;
    if (dims !== undefined && (!Number.isInteger(dims) || dims < 1)) throw new EmberError('bad-request', `dimensions must be a positive integer (got ${String(dims)})`);
    if (request.encoding_format !== undefined && request.encoding_format !== 'float') throw new EmberError('bad-request', 'encoding_format: only float is supported');
    const out = await this.backend.embed(input, options?.signal);
    const shorten = (v: number[]) => {
      if (dims === undefined || dims >= v.length) return v;
      // Matryoshka: the leading dimensions, scaled back to unit length.
      const head = v.slice(0, dims);
      const norm = Math.hypot(...head) || 1;
      return head.map((x) => x / norm);
    };
    return {
      object: 'list',
      data: out.vectors.map((v, index) => ({ object: 'embedding', index, embedding: shorten(v) })),
      model: this.info.model,
      usage: { prompt_tokens: out.promptTokens, total_tokens: out.promptTokens },
    };
  }

  async generate(prompt: string, options: GenerateOptions = {}): Promise<GenerateResult> {
    if (typeof prompt !== 'string') throw new EmberError('bad-request', 'prompt must be a string');
    const input: RunInput = options.chat ? { messages: [{ role: 'user', content: prompt }] } : { prompt };
    const onText = options.onText;
    const r = await this.backend.run(
      input,
      withPrefillProgress(params(options), options.onPrefill),
      (piece, _logprobs, _calls, prefill) => (prefill ? options.onPrefill?.(prefill.done, prefill.total) : onText?.(piece)),
      options.signal,
    );
    return { text: r.text, tokens: r.tokens, finish_reason: r.finish_reason, usage: usage(r), ...(r.logprobs ? { logprobs: r.logprobs } : {}) };
  }

  unload(): Promise<void> {
    return this.backend.unload();
  }
}
