// Messages between the page (`WorkerBackend`) and the engine's worker (`worker.ts`).
import type { Embedded, PrefillProgress, RunInput, RunParams, RunResult } from './backend.js';
import type { EmberErrorCode } from './errors.js';
import type { LoadProgress } from './model-files.js';
import type { EngineInfo, EngineOptions, TokenLogprob, ToolCall } from './types.js';

/** Load options that survive structured cloning (no callbacks, signals or cache objects). */
export type WorkerLoadOptions = Omit<EngineOptions, 'onProgress' | 'signal' | 'fetch' | 'cache' | 'worker'> & {
  cache?: 'auto' | 'cache-api' | 'opfs' | 'memory';
};

export type ToWorker =
  | { id: number; type: 'load'; repo: string; options: WorkerLoadOptions }
  | { id: number; type: 'run'; input: RunInput; params: RunParams }
  | { id: number; type: 'embed'; texts: string[] }
  | { id: number; type: 'encode'; text: string }
  | { id: number; type: 'decode'; ids: number[] }
  | { id: number; type: 'unload' }
  | { id: number; type: 'abort' };

/** A request without its id (`Omit` does not distribute over a union). */
export type Request = ToWorker extends infer T ? (T extends ToWorker ? Omit<T, 'id'> : never) : never;

export type FromWorker =
  | { id: number; type: 'progress'; progress: LoadProgress }
  | { id: number; type: 'piece'; piece: string; logprobs?: TokenLogprob[]; toolCalls?: ToolCall[]; prefill?: PrefillProgress; reasoning?: string }
  | { id: number; type: 'done'; value: EngineInfo | RunResult | Embedded | number[] | string | null }
  | { id: number; type: 'error'; code: EmberErrorCode; message: string };
