// What the welcome screen says about a model family (from each model's card): what it is good
// at, its languages, its licence.
const SMOLLM2 = { about: 'Small and quick: everyday questions, rewriting and short summaries.', languages: 'English', licence: ['Apache 2.0', 'https://www.apache.org/licenses/LICENSE-2.0'] };
const QWEN25 = { about: 'Chat, coding help and structured answers (JSON).', languages: 'Chinese, English and 27 more', licence: ['Apache 2.0', 'https://www.apache.org/licenses/LICENSE-2.0'] };
export const CARDS = [
  [/SmolLM2/i, SMOLLM2],
  [/Qwen2\.5/i, QWEN25],
  [/Qwen3/i, { about: 'Step-by-step reasoning (thinking mode) and multilingual chat.', languages: 'over 100 languages', licence: ['Apache 2.0', 'https://www.apache.org/licenses/LICENSE-2.0'] }],
  [/Llama-3\.2/i, { about: 'Multilingual dialogue, summaries and rewriting.', languages: 'English, German, French, Italian, Portuguese, Hindi, Spanish, Thai', licence: ['Llama 3.2 Community License', 'https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct/blob/main/LICENSE.txt'] }],
  [/gemma-3/i, { about: 'Question answering, summaries and reasoning.', languages: 'English', licence: ['Gemma Terms of Use', 'https://ai.google.dev/gemma/terms'] }],
  [/Phi-3\.5/i, { about: 'Reasoning, code and maths, with a long (128k) context.', languages: 'English first, some others', licence: ['MIT', 'https://opensource.org/license/mit'] }],
];

/** The welcome screen's card for a repo id: `{ about, languages, licence: [name, url] }`, or null. */
export function cardFor(id) {
  return CARDS.find(([pattern]) => pattern.test(id))?.[1] ?? null;
}

// The curated Hub models of the picker. `download`: bytes fetched once; `memory`: about what
// the weights take on the GPU (q4 for safetensors, the file's own format for GGUF) plus a
// 2048-token KV cache. `gated`: the Hub asks for a licence click and a token first.
export const HUB_MODELS = [
  { id: 'HuggingFaceTB/SmolLM2-135M-Instruct', label: 'SmolLM2 135M Instruct', download: 269e6, memory: 0.16e9 },
  { id: 'HuggingFaceTB/SmolLM2-360M-Instruct', label: 'SmolLM2 360M Instruct', download: 724e6, memory: 0.33e9 },
  { id: 'HuggingFaceTB/SmolLM2-1.7B-Instruct', label: 'SmolLM2 1.7B Instruct', download: 3.42e9, memory: 1.45e9 },
  { id: 'Qwen/Qwen2.5-0.5B-Instruct', label: 'Qwen2.5 0.5B Instruct', download: 988e6, memory: 0.45e9 },
  { id: 'Qwen/Qwen2.5-1.5B-Instruct', label: 'Qwen2.5 1.5B Instruct', download: 3.09e9, memory: 1.2e9 },
  { id: 'Qwen/Qwen3-0.6B', label: 'Qwen3 0.6B', download: 1.5e9, memory: 0.6e9 },
  { id: 'unsloth/Llama-3.2-1B-Instruct', label: 'Llama 3.2 1B Instruct', download: 2.47e9, memory: 0.95e9 },
  { id: 'google/gemma-3-1b-it', label: 'Gemma 3 1B it (gated)', download: 2.0e9, memory: 0.9e9, gated: true },
  { id: 'microsoft/Phi-3.5-mini-instruct', label: 'Phi-3.5 mini instruct', download: 7.64e9, memory: 2.6e9 },
];

/** The welcome screen's example prompts. */
export const EXAMPLE_PROMPTS = [
  'Explain what a web browser does, in two sentences.',
  'Write a short poem about autumn leaves.',
  'Give me three ideas for a rainy weekend.',
  'Rewrite this more politely: send me the report now.',
];

/**
 * Sampling defaults per model family, from each model's generation_config.json or card (GGUF
 * repos carry none): applied to the Settings when a model loads. SmolLM2's card asks for 0.2,
 * and at the page's old 0.7 its 135M model named "L'Étoile" the capital of France.
 */
const SAMPLING = [
  [/SmolLM2/i, { temperature: 0.2, top_p: 0.9, top_k: 0 }],
  [/Qwen3/i, { temperature: 0.6, top_p: 0.95, top_k: 20 }],
  [/Qwen2\.5/i, { temperature: 0.7, top_p: 0.8, top_k: 20 }],
  [/Llama-3/i, { temperature: 0.6, top_p: 0.9, top_k: 0 }],
  [/gemma-3/i, { temperature: 1.0, top_p: 0.95, top_k: 64 }],
  [/^emberlm-test\//, { temperature: 0, top_p: 1, top_k: 0 }],
];
export const DEFAULT_SAMPLING = { temperature: 0.7, top_p: 0.95, top_k: 0 };

/** The sampling defaults for a repo id. */
export function samplingFor(id) {
  return SAMPLING.find(([pattern]) => pattern.test(id))?.[1] ?? DEFAULT_SAMPLING;
}

/** The default with Hub access. */
export const DEFAULT_HUB_MODEL = 'HuggingFaceTB/SmolLM2-360M-Instruct';

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'kB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}
