// The engine below the public API: one generation at a time on a loaded model, streaming text
// pieces. `LocalBackend` runs the wasm in this thread; `WorkerBackend` forwards to a worker.
import type { ChatMessage, EngineInfo, FinishReason, PhaseProfile, TokenLogprob, Tool, ToolCall, ToolChoice } from './types.js';

export interface RunInput {
  /** Chat messages for the template, or a raw prompt. */
  messages?: ChatMessage[];
  prompt?: string;
  /** With `messages`: functions offered to the model, and how it must use them. */
  tools?: { tools: Tool[]; tool_choice?: ToolChoice };
  /** With `messages`: more chat-template variables (`chat_template_kwargs`). */
  templateKwargs?: Record<string, unknown>;
}

export interface RunParams {
  max_tokens?: number;
  temperature: number;
  top_p: number;
  top_k: number;
  min_p: number;
  repetition_penalty: number;
  seed: number;
  stop: string[];
  ignore_eos: boolean;
  profile: boolean;
  /** Prefill a long prompt in pieces, reporting each (`OnPiece`'s `prefill`). */
  prefill_progress?: boolean;
  /** Each token's log-probability and this many alternatives'; absent: none. */
  logprobs?: number;
  /** The output constraint, as the wasm engine takes it; absent: free text. */
  grammar?: { type: 'json_object' } | { type: 'json_schema'; schema: Record<string, unknown> } | { type: 'lark'; grammar: string } | { type: 'regex'; regex: string };
}

export interface RunResult {
  text: string;
  tokens: number[];
  finish_reason: FinishReason;
  prompt_tokens: number;
  /** Prompt tokens whose keys and values the engine still held from the last request. */
  cached_tokens: number;
  ttft_ms: number;
  prefill_tok_s: number;
  decode_tok_s: number;
  profile?: { prefill: PhaseProfile; decode: PhaseProfile };
  /** With `logprobs`: one entry per token of `text`. */
  logprobs?: TokenLogprob[];
  /** With `tools`: the calls the reply made (`text` is the rest of it). */
  tool_calls?: ToolCall[];
  /** The reasoning the model wrote apart from its answer (GPT-OSS's analysis channel). */
  reasoning?: string;
}

/**
 * Text as it is released, with the log-probabilities of the tokens it completes (if asked), and
 * the tool calls completed since the last piece.
 */
/** How far a long prompt's prefill has come (`RunParams.prefill_progress`): tokens of `total` in the cache. */
export interface PrefillProgress {
  done: number;
  total: number;
}

/** A piece of the reply; or, with `prefill` (and no text), how far the prompt has been read. */
export type OnPiece = (piece: string, logprobs?: TokenLogprob[], toolCalls?: ToolCall[], prefill?: PrefillProgress, reasoning?: string) => void;

/** A call as the wasm engine reports it. */
export interface WasmToolCall {
  id: string;
  name: string;
  arguments: string;
}

export function toToolCall(c: WasmToolCall): ToolCall {
  return { id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } };
}

/** An embedding model's vectors, one per text, and the tokens they took. */
export interface Embedded {
  vectors: number[][];
  promptTokens: number;
}

export interface Backend {
  readonly info: EngineInfo;
  run(input: RunInput, params: RunParams, onPiece: OnPiece, signal?: AbortSignal): Promise<RunResult>;
  embed(texts: string[], signal?: AbortSignal): Promise<Embedded>;
  encode(text: string): Promise<number[]>;
  decode(ids: number[]): Promise<string>;
  unload(): Promise<void>;
}

/**
 * Text released as it is generated, holding back any tail that could still grow into a stop
 * string, so a stop string never reaches the caller even in part.
 */
export class StopStringFilter {
  private text = '';
  private released = 0;
  stopped = false;

  constructor(private readonly stops: string[]) {}

  /** Adds a piece; returns what may be shown now. Sets `stopped` when a stop string appeared. */
  push(piece: string): string {
    if (this.stopped) return '';
    this.text += piece;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.text.indexOf(s, Math.max(0, this.released - s.length));
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      this.text = this.text.slice(0, cut);
      return this.take(cut);
    }
    return this.take(this.text.length - this.heldBack());
  }

  /** What is left once generation ends. */
  flush(): string {
    return this.take(this.text.length);
  }

  get output(): string {
    return this.text;
  }

  /** How much of the text has been released so far. */
  get shown(): number {
    return this.released;
  }

  private take(upTo: number): string {
    const out = this.text.slice(this.released, Math.max(this.released, upTo));
    this.released = Math.max(this.released, upTo);
    return out;
  }

  /** Length of the longest tail of the text that is a proper prefix of a stop string. */
  private heldBack(): number {
    let n = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.text.length); k > n; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          n = k;
          break;
        }
      }
    }
    return n;
  }
}

/** A token's entry as the wasm engine reports it. */
interface WasmLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs?: WasmLogprob[];
}

/**
 * Token log-probabilities lined up with the text a `StopStringFilter` releases: each token is
 * placed where its text starts in the generated text, released with the text that reaches past
 * that point, and kept in the result only if it starts inside the final text (a stop string's
 * tokens and the end-of-turn token are not part of the content, as in OpenAI's responses).
 */
export class LogprobTracker {
  private pending: { start: number; entry: TokenLogprob }[] = [];
  private kept: TokenLogprob[] = [];
  private length = 0;

  /** A generated token: its text piece and (when asked for) its entry. */
  add(piece: string, entry: WasmLogprob | undefined): void {
    if (entry) this.pending.push({ start: this.length, entry: toLogprob(entry) });
    this.length += piece.length;
  }

  /** The entries of tokens starting before `shown` characters, once each. */
  release(shown: number): TokenLogprob[] {
    let n = 0;
    while (n < this.pending.length && this.pending[n].start < shown) n++;
    const out = this.pending.splice(0, n).map((p) => p.entry);
    this.kept.push(...out);
    return out;
  }

  /** Every entry released, for the whole response. */
  get content(): TokenLogprob[] {
    return this.kept;
  }
}

function toLogprob(e: WasmLogprob): TokenLogprob {
  const alt = (a: WasmLogprob) => ({ token: a.token, logprob: a.logprob, bytes: Array.from(a.bytes) });
  return { ...alt(e), top_logprobs: (e.top_logprobs ?? []).map(alt) };
}
