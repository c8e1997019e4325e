// The repos the tests and examples serve: tiny fixture models under Hub-like names, and the
// SmolLM2 GGUF when scripts/setup.sh has fetched it.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const tiny = (arch) => join(ROOT, 'tests', 'fixtures', 'tiny', arch);

const GEMMA_EMBEDDING_FILES = [
  'config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'model.safetensors',
  'modules.json',
  '1_Pooling/config.json',
  '2_Dense/config.json',
  '2_Dense/model.safetensors',
  '3_Dense/config.json',
  '3_Dense/model.safetensors',
];

export function fixtureRepos() {
  const repos = {
    // A GGUF repo as llama.cpp users publish them: several quantisations side by side.
    'emberlm-test/tiny-qwen2-GGUF': { dir: tiny('qwen2'), files: { 'tiny-qwen2-BF16.gguf': 'model.gguf' } },
    // Two quantisations side by side (of two different tiny llamas, each with its reference):
    // K-quants (fixtures/tiny/llama-kquant) and F16 (fixtures/tiny/llama).
    'emberlm-test/tiny-llama-GGUF': {
      dir: tiny('.'),
      files: { 'tiny-llama-Q4_K_M.gguf': 'llama-kquant/model.gguf', 'tiny-llama-F16.gguf': 'llama/model.gguf' },
    },
    // The tiny llama with 60k unused tokens appended to its GGUF vocabulary (fixtures/tiny/
    // make_big_vocab_gguf.mjs): a header as large as a real model's, the llama reference.
    'emberlm-test/tiny-llama-bigvocab-GGUF': { dir: tiny('llama-bigvocab'), files: { 'tiny-llama-bigvocab-F16.gguf': 'model.gguf' } },
    // SmolLM3 (NoPE layers) as llama.cpp's converter writes it (fixtures/tiny/make_tiny_smollm3.py).
    'emberlm-test/tiny-smollm3-GGUF': { dir: tiny('smollm3'), files: { 'tiny-smollm3-F16.gguf': 'model.gguf' } },
    // LFM2 (short convolutions + attention, fixtures/tiny/make_tiny_lfm2.py): as llama.cpp's
    // converter writes it, and as a transformers repo.
    'emberlm-test/tiny-lfm2-GGUF': { dir: tiny('lfm2'), files: { 'tiny-lfm2-F16.gguf': 'model.gguf' } },
    'emberlm-test/tiny-lfm2': {
      dir: tiny('lfm2'),
      files: Object.fromEntries(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((f) => [f, f])),
    },
    // Mamba2 (state-space layers only, fixtures/tiny/make_tiny_mamba2.py): as llama.cpp's
    // converter writes it, and as a transformers repo (its config.json holds `Infinity`).
    'emberlm-test/tiny-mamba2-GGUF': { dir: tiny('mamba2'), files: { 'tiny-mamba2-F16.gguf': 'model.gguf' } },
    'emberlm-test/tiny-mamba2': {
      dir: tiny('mamba2'),
      files: Object.fromEntries(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((f) => [f, f])),
    },
    // Granite-4.0-H's dense hybrid (Mamba2 and attention layers, fixtures/tiny/make_tiny_granitehybrid.py).
    'emberlm-test/tiny-granitehybrid-GGUF': { dir: tiny('granitehybrid'), files: { 'tiny-granitehybrid-F16.gguf': 'model.gguf' } },
    // Qwen3-MoE (a mixture of experts, fixtures/tiny/make_tiny_moe.py): its GGUF with the experts
    // stacked as llama.cpp's converter writes them, and the transformers repo (one tensor per expert).
    'emberlm-test/tiny-qwen3moe-GGUF': { dir: tiny('qwen3moe'), files: { 'tiny-qwen3moe-F16.gguf': 'model.gguf' } },
    'emberlm-test/tiny-qwen3moe': {
      dir: tiny('qwen3moe'),
      files: Object.fromEntries(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((f) => [f, f])),
    },
    // GPT-OSS (sinks, YaRN, MXFP4 experts; fixtures/tiny/make_tiny_gptoss.py): its GGUF, and the
    // transformers repo with the experts as OpenAI's MXFP4 blocks and scales.
    'emberlm-test/tiny-gptoss-GGUF': { dir: tiny('gptoss'), files: { 'tiny-gptoss-MXFP4.gguf': 'model.gguf' } },
    'emberlm-test/tiny-gptoss': {
      dir: tiny('gptoss'),
      files: Object.fromEntries(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((f) => [f, f])),
    },
    // DeepSeek-V2 and V3 (multi-head latent attention, shared experts, grouped routers;
    // fixtures/tiny/make_tiny_deepseek.py): as llama.cpp's converter writes `deepseek2`, and as
    // transformers repos (kv_b_proj whole, split by the loader).
    ...Object.fromEntries(
      ['deepseek2', 'deepseek3'].flatMap((family) => [
        [`emberlm-test/tiny-${family}-GGUF`, { dir: tiny(family), files: { [`tiny-${family}-F16.gguf`]: 'model.gguf' } }],
        [
          `emberlm-test/tiny-${family}`,
          {
            dir: tiny(family),
            files: Object.fromEntries(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((f) => [f, f])),
          },
        ],
      ]),
    ),
    // A transformers repo with sharded safetensors.
    'emberlm-test/tiny-llama': {
      dir: tiny('llama'),
      files: Object.fromEntries(
        ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors.index.json', 'model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'].map((f) => [f, f]),
      ),
      revisions: ['main', 'v1.0'],
    },
    // An embedding model as Qwen publishes Qwen3-Embedding (sentence-transformers modules, last-token
    // pooling), and as llama.cpp's converter writes its GGUF (fixtures/tiny/make_tiny_embedding.py).
    'emberlm-test/tiny-qwen3-embedding': {
      dir: tiny('qwen3-embedding'),
      files: Object.fromEntries(
        ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors', 'modules.json', '1_Pooling/config.json', 'sentence_bert_config.json'].map((f) => [f, f]),
      ),
    },
    'emberlm-test/tiny-qwen3-embedding-GGUF': { dir: tiny('qwen3-embedding'), files: { 'tiny-qwen3-embedding-F32.gguf': 'model.gguf' } },
    // EmbeddingGemma style (bidirectional, mean pooling, two dense projections: fixtures/tiny/
    // make_tiny_embeddinggemma.py), as llama.cpp's gemma-embedding GGUF and as safetensors with
    // its sentence-transformers modules; and that repo with one Dense module's weights missing.
    'emberlm-test/tiny-embeddinggemma-GGUF': { dir: tiny('gemma-embedding'), files: { 'tiny-embeddinggemma-F32.gguf': 'model.gguf' } },
    'emberlm-test/tiny-embeddinggemma': { dir: tiny('gemma-embedding'), files: Object.fromEntries(GEMMA_EMBEDDING_FILES.map((f) => [f, f])) },
    'emberlm-test/tiny-embeddinggemma-no-dense-weights': {
      dir: tiny('gemma-embedding'),
      files: Object.fromEntries(GEMMA_EMBEDDING_FILES.filter((f) => f !== '3_Dense/model.safetensors').map((f) => [f, f])),
    },
  };
  const smol = join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  if (existsSync(smol)) {
    repos['HuggingFaceTB/SmolLM2-135M-Instruct-GGUF'] = { dir: join(ROOT, 'models'), files: { 'SmolLM2-135M-Instruct.Q4_1.gguf': 'SmolLM2-135M-Instruct.Q4_1.gguf' } };
  }
  return repos;
}

export const reference = (arch) => JSON.parse(readFileSync(join(tiny(arch), 'reference.json'), 'utf8'));

/** The repo `crashingTokenizerRepo` serves. */
export const CRASHING_REPO = 'emberlm-test/tiny-llama-crashing-tokenizer';

/**
 * The tiny safetensors llama with a tokenizer.json whose normalizer makes the tokenizers crate
 * panic on any text (a `Precompiled` charsmap with an empty trie; natively that is an error,
 * crates/emberlm-models/tests/tokenizer_chat.rs; in wasm a trap), as the repo CRASHING_REPO,
 * its files in a new temporary folder (returned as `dir`, for the caller to remove).
 */
export function crashingTokenizerRepo() {
  const good = fixtureRepos()['emberlm-test/tiny-llama'];
  const dir = mkdtempSync(join(tmpdir(), 'emberlm-crash-'));
  for (const f of Object.keys(good.files)) copyFileSync(join(good.dir, f), join(dir, f));
  const tokenizer = JSON.parse(readFileSync(join(good.dir, 'tokenizer.json'), 'utf8'));
  tokenizer.normalizer = { type: 'Precompiled', precompiled_charsmap: 'AAAAAA==' };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  return { dir, repos: { [CRASHING_REPO]: { dir, files: good.files } } };
}
