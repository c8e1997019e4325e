// Which files of a repo make up the model: a GGUF (one file or its split shards, picked by name
// or quantisation) or Hugging Face safetensors with config and tokenizer.
import { EmberError, formatBytes } from './errors.js';
import { checkRepoPath } from './hub.js';
import type { RepoFile } from './hub.js';

export type ModelFormat = 'gguf' | 'safetensors';

export interface FileChoice {
  /** A `.gguf` file name in the repo (the first shard of a split file). */
  file?: string;
  /** A quantisation such as `Q4_K_M` or `Q8_0`, matched against the repo's `.gguf` names. */
  quant?: string;
}

/** The selected files; `weights` are fetched by the engine, `text` are small JSON files. */
export interface Selection {
  format: ModelFormat;
  weights: RepoFile[];
  /** safetensors only: config.json, generation_config.json, tokenizer.json, tokenizer_config.json, modules.json, 1_Pooling/config.json, Dense modules' config.json, index. */
  text: RepoFile[];
  /** safetensors only: sentence-transformers Dense modules' `model.safetensors`, read whole (small projections). */
  modules?: RepoFile[];
}

/** The largest Dense module file fetched: 2^26 f32 values (the engine's bound) and a header. */
export const MAX_DENSE_FILE_BYTES = 2 ** 26 * 4 + 2 ** 20;

/**
 * Preferred quantisations when a GGUF repo is given without a choice: 4-bit first (the engine
 * decodes every one of these on the GPU at the file's size), K-quants before the legacy types
 * for their accuracy, then larger; F16/BF16 last.
 */
export const QUANT_PREFERENCE = ['Q4_K_M', 'Q4_K_S', 'Q4_0', 'Q4_1', 'Q5_K_M', 'Q5_K_S', 'Q5_0', 'Q6_K', 'Q8_0', 'F16', 'BF16'];

const SHARD = /-(\d{5})-of-(\d{5})\.gguf$/;

/** The quantisation named in a GGUF file name (`SmolLM2-135M-Instruct.Q4_K_M.gguf` → `Q4_K_M`). */
export function quantOf(name: string): string | undefined {
  const base = name.split('/').pop()!.replace(SHARD, '.gguf');
  const m = base.match(/[-._](I?Q\d(?:_[0-9A-Z]+)*|F16|BF16|F32)(?=[-._])/i);
  return m?.[1].toUpperCase();
}

/** All shards belonging to `first` (itself if it is not split), in order; missing shards are an error. */
function shardsOf(first: RepoFile, files: RepoFile[]): RepoFile[] {
  const m = first.path.match(SHARD);
  if (!m) return [first];
  const count = Number(m[2]);
  const out: RepoFile[] = [];
  for (let i = 1; i <= count; i++) {
    const path = first.path.replace(SHARD, `-${String(i).padStart(5, '0')}-of-${m[2]}.gguf`);
    const f = files.find((x) => x.path === path);
    if (!f) throw new EmberError('not-found', `split GGUF ${first.path}: shard ${path} is missing from the repo`);
    out.push(f);
  }
  return out;
}

function isFirstShard(f: RepoFile): boolean {
  const m = f.path.match(SHARD);
  return !m || Number(m[1]) === 1;
}

export function selectFiles(repo: string, files: RepoFile[], choice: FileChoice = {}): Selection {
  const ggufs = files.filter((f) => f.path.endsWith('.gguf') && !/mmproj/i.test(f.path) && isFirstShard(f));
  if (choice.file) {
    const f = files.find((x) => x.path === choice.file);
    if (!f) throw new EmberError('not-found', `${repo} has no file "${choice.file}"`);
    if (!f.path.endsWith('.gguf')) throw new EmberError('bad-request', `"${choice.file}" is not a .gguf file`);
    return { format: 'gguf', weights: shardsOf(f, files), text: [] };
  }
  if (choice.quant) {
    const want = choice.quant.toUpperCase();
    const f = ggufs.find((x) => quantOf(x.path) === want);
    if (!f) {
      const have = [...new Set(ggufs.map((x) => quantOf(x.path)).filter(Boolean))];
      throw new EmberError('not-found', `${repo} has no ${want} GGUF file (${have.length ? `it has ${have.join(', ')}` : 'it has no GGUF files'})`);
    }
    return { format: 'gguf', weights: shardsOf(f, files), text: [] };
  }
  const byPath = new Map(files.map((f) => [f.path, f]));
  const config = byPath.get('config.json');
  const single = byPath.get('model.safetensors');
  const index = byPath.get('model.safetensors.index.json');
  if (config && (single || index)) {
    // sentence-transformers' modules and pooling config make an embedding model (Qwen3-Embedding).
    const text = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'modules.json', '1_Pooling/config.json'].flatMap((p) => byPath.get(p) ?? []);
    // Dense projections after the pooling (EmbeddingGemma's `2_Dense`, `3_Dense`), named as
    // sentence-transformers saves them; which of them count is modules.json's say, in the engine.
    const dense = files.filter((f) => /^[0-9]+_Dense\/(config\.json|model\.safetensors)$/.test(f.path));
    const modules = dense.filter((f) => f.path.endsWith('.safetensors'));
    for (const f of modules) {
      if (f.size > MAX_DENSE_FILE_BYTES) throw new EmberError('model', `${repo}: ${f.path} is ${formatBytes(f.size)}, more than a Dense projection may hold`);
    }
    text.push(...dense.filter((f) => f.path.endsWith('.json')));
    if (index) text.push(index);
    // Shards of an index are resolved once the index is read (see `indexShards`).
    return { format: 'safetensors', weights: single && !index ? [single] : [], text, modules };
  }
  if (ggufs.length) {
    const ranked = [...ggufs].sort((a, b) => rank(a) - rank(b) || a.size - b.size);
    return { format: 'gguf', weights: shardsOf(ranked[0], files), text: [] };
  }
  throw new EmberError('model', `${repo} has neither safetensors weights with a config.json nor .gguf files`);
}

function rank(f: RepoFile): number {
  const i = QUANT_PREFERENCE.indexOf(quantOf(f.path) ?? '');
  return i < 0 ? QUANT_PREFERENCE.length : i;
}

/** The shard files a `model.safetensors.index.json` names, in first-use order. */
export function indexShards(repo: string, indexJson: string, files: RepoFile[]): RepoFile[] {
  let map: Record<string, string>;
  try {
    map = JSON.parse(indexJson).weight_map;
  } catch (e) {
    throw new EmberError('model', `${repo}: model.safetensors.index.json is not valid JSON (${(e as Error).message})`);
  }
  if (!map || typeof map !== 'object') throw new EmberError('model', `${repo}: model.safetensors.index.json has no weight_map`);
  const names = [...new Set(Object.values(map))];
  for (const n of names) checkRepoPath(`${repo}: shard named by model.safetensors.index.json`, n);
  return names.map((n) => {
    const f = files.find((x) => x.path === n);
    if (!f) throw new EmberError('not-found', `${repo}: shard ${n} named by the index is not in the repo`);
    return f;
  });
}
