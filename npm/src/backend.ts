// The engine below the public API: one generation at a time on a loaded model, streaming text
// pieces. `LocalBackend` runs the wasm in this thread; `WorkerBackend` forwards to a worker.
import type { ChatMessage, EngineInfo, FinishReason, PhaseProfile } from './types.js';

export interface RunInput {
  /** Chat messages for the template, or a raw prompt. */
  messages?: ChatMessage[];
  prompt?: string;
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
}

export interface Backend {
  readonly info: EngineInfo;
  run(input: RunInput, params: RunParams, onPiece: (piece: string) => void, signal?: AbortSignal): Promise<RunResult>;
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
