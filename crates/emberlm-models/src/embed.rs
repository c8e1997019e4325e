//! Text embeddings from decoder models made for them (Qwen3-Embedding and its kind): the
//! model's final hidden states (after the output norm, no LM head) pooled into one vector per
//! input — the last token's, the mean, or the first token's — and L2-normalised, as
//! sentence-transformers' modules or llama.cpp's GGUF metadata (`{arch}.pooling_type`) say.
//!
//! Each input runs on its own from position 0 (causal attention, as the model was trained);
//! the tokenizer adds what the model's inputs end with (Qwen3-Embedding appends
//! `<|endoftext|>`: its tokenizer.json's post-processor, or GGUF `add_eos_token`).

use serde_json::Value as Json;

use crate::backend::Backend;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::model::{Model, Session};
use crate::weights::WeightStore;

/// How one input's hidden states become its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last token's state (decoder embedding models: it has seen the whole input).
    Last,
    /// The mean over the tokens.
    Mean,
    /// The first token's state.
    First,
}

/// What makes a model an embedding model: its pooling, the projections after it, and whether
/// vectors are normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    pub pooling: Pooling,
    pub dense: Vec<Dense>,
    pub normalize: bool,
}

/// The most values a projection may hold (EmbeddingGemma's are 768 × 3072 = 2.4M).
pub const MAX_DENSE_VALUES: usize = 1 << 26;

/// A sentence-transformers `Dense` module after the pooling: `y = W·x (+ b)`, its activation the
/// identity (EmbeddingGemma's two projections). A few million multiply-adds per vector: run on
/// the CPU, after the pooled vector is read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub in_features: usize,
    pub out_features: usize,
    /// `out_features` rows of `in_features`.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Dense {
    fn new(in_features: usize, out_features: usize, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Result<Self> {
        let ok = weight.len() == in_features * out_features && bias.as_ref().is_none_or(|b| b.len() == out_features);
        if !ok || in_features == 0 || out_features == 0 {
            return Err(ModelError::Config(format!("a dense projection of {in_features} → {out_features} with {} weights", weight.len())));
        }
        Ok(Self { in_features, out_features, weight, bias })
    }

    /// A module's `config.json` and `model.safetensors` (`linear.weight` [out, in], and
    /// `linear.bias` when the config says so). Sizes are checked before anything is read.
    pub fn from_sentence_transformers(config: &Json, safetensors: &[u8]) -> Result<Self> {
        let bad = |why: String| ModelError::Config(format!("sentence-transformers Dense module: {why}"));
        let size = |key: &str| config.get(key).and_then(Json::as_u64).filter(|&n| n > 0 && n <= 1 << 20).map(|n| n as usize);
        let (Some(n_in), Some(n_out)) = (size("in_features"), size("out_features")) else {
            return Err(bad(format!("in_features and out_features must be 1 to 2^20 ({config})")));
        };
        if n_in * n_out > MAX_DENSE_VALUES {
            return Err(bad(format!("{n_in} × {n_out} is more than the {MAX_DENSE_VALUES} values a projection may hold")));
        }
        let activation = config.get("activation_function").and_then(Json::as_str).unwrap_or("torch.nn.modules.linear.Identity");
        if !activation.ends_with("Identity") {
            return Err(bad(format!("activation {activation} is not supported (only Identity)")));
        }
        let tensors = crate::safetensors::read_header("model.safetensors", safetensors)?;
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = tensors.iter().find(|t| t.name == name).ok_or_else(|| bad(format!("no `{name}` in its model.safetensors")))?;
            if t.shape != shape {
                return Err(bad(format!("`{name}` has shape {:?}, the config says {shape:?}", t.shape)));
            }
            Ok(crate::safetensors::tensor_f32(safetensors, t))
        };
        let weight = tensor("linear.weight", &[n_out, n_in])?;
        let bias = if config.get("bias").and_then(Json::as_bool).unwrap_or(true) { Some(tensor("linear.bias", &[n_out])?) } else { None };
        Self::new(n_in, n_out, weight, bias)
    }

    /// llama.cpp's `dense_2.weight` / `dense_3.weight` (its converter's
    /// `--sentence-transformers-dense-modules`), in order; none when the file has none.
    pub fn from_gguf(store: &dyn WeightStore) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for name in ["dense_2.weight", "dense_3.weight"] {
            let Some((rows, k)) = store.shape(name) else { break };
            if rows.saturating_mul(k) > MAX_DENSE_VALUES {
                return Err(ModelError::Config(format!("{name}: {rows} × {k} is more than the {MAX_DENSE_VALUES} values a projection may hold")));
            }
            out.push(Self::new(k, rows, store.read_f32(name)?, None)?);
        }
        Ok(out)
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.in_features)
            .enumerate()
            .map(|(i, row)| {
                let dot: f64 = row.iter().zip(x).map(|(&w, &v)| w as f64 * v as f64).sum();
                (dot + self.bias.as_ref().map_or(0.0, |b| b[i] as f64)) as f32
            })
            .collect()
    }
}

/// A `modules.json` entry's folder: a plain name (letters, digits, `_`, `-`; at most 64 bytes),
/// never a path that could leave the model's directory.
pub fn module_folder(module: &Json) -> Result<String> {
    match module["path"].as_str() {
        Some(name) if !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => Ok(name.to_string()),
        other => Err(ModelError::Config(format!("sentence-transformers modules.json: module path {other:?} is not a folder name"))),
    }
}

impl EmbeddingSpec {
    /// llama.cpp's `{arch}.pooling_type` (1 mean, 2 cls, 3 last; its converter writes it for
    /// embedding models, which llama.cpp normalises); `None` for a generative model.
    pub fn from_gguf(meta: &GgufFile) -> Option<Self> {
        let arch = meta.get_str("general.architecture").ok()?;
        let pooling = match meta.get_u64(&format!("{arch}.pooling_type")).ok()? {
            1 => Pooling::Mean,
            2 => Pooling::First,
            3 => Pooling::Last,
            _ => return None,
        };
        Some(Self { pooling, dense: Vec::new(), normalize: true })
    }

    /// The folders of `modules.json`'s Dense modules, in order: plain names (letters, digits,
    /// `_`, `-`), never a path that could leave the model's directory.
    pub fn dense_folders(modules: &Json) -> Result<Vec<String>> {
        let list = modules.as_array().map(Vec::as_slice).unwrap_or_default();
        list.iter().filter(|m| m["type"].as_str().is_some_and(|t| t.ends_with(".Dense"))).map(module_folder).collect()
    }

    /// sentence-transformers' `modules.json`, its pooling module's `config.json` and its Dense
    /// modules, read in order; `None` without a pooling module. Pooling modes other than last,
    /// mean and CLS, other modules, and Dense modules without their weights are errors rather
    /// than wrong vectors.
    pub fn from_sentence_transformers(modules: &Json, pooling_config: Option<&Json>, dense: Vec<Dense>) -> Result<Option<Self>> {
        let bad = |why: String| ModelError::Config(format!("sentence-transformers modules.json: {why}"));
        let list = modules.as_array().ok_or_else(|| bad("not an array".into()))?;
        let kinds: Vec<&str> = list.iter().map(|m| m.get("type").and_then(Json::as_str).unwrap_or_default()).collect();
        if !kinds.iter().any(|k| k.ends_with(".Pooling")) {
            return Ok(None);
        }
        if let Some(other) = kinds.iter().find(|k| ![".Transformer", ".Pooling", ".Dense", ".Normalize"].iter().any(|s| k.ends_with(s))) {
            return Err(bad(format!("module {other} is not supported (only Transformer, Pooling, Dense and Normalize)")));
        }
        let dense_modules = kinds.iter().filter(|k| k.ends_with(".Dense")).count();
        if dense.len() != dense_modules {
            return Err(bad(format!("{dense_modules} Dense modules, {} read (their weights are needed: a model's GGUF carries them too)", dense.len())));
        }
        if dense.windows(2).any(|w| w[0].out_features != w[1].in_features) {
            return Err(bad("the Dense modules' sizes do not chain".into()));
        }
        let cfg = pooling_config.ok_or_else(|| bad("the pooling module has no config.json".into()))?;
        let on = |key: &str| cfg.get(key).and_then(Json::as_bool).unwrap_or(false);
        let modes: Vec<Pooling> =
            [("pooling_mode_lasttoken", Pooling::Last), ("pooling_mode_mean_tokens", Pooling::Mean), ("pooling_mode_cls_token", Pooling::First)]
                .into_iter()
                .filter(|(key, _)| on(key))
                .map(|(_, p)| p)
                .collect();
        let others = ["pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens"];
        if modes.len() != 1 || others.iter().any(|k| on(k)) {
            return Err(bad(format!("pooling config {cfg}: exactly one of last-token, mean or CLS pooling is supported")));
        }
        Ok(Some(Self { pooling: modes[0], dense, normalize: kinds.iter().any(|k| k.ends_with(".Normalize")) }))
    }

    /// One vector from `tokens` rows of `dim` hidden values: pooled, projected, normalised.
    pub fn pool(&self, hidden: &[f32], tokens: usize, dim: usize) -> Vec<f32> {
        let row = |i: usize| &hidden[i * dim..(i + 1) * dim];
        let mut v: Vec<f32> = match self.pooling {
            Pooling::Last => row(tokens - 1).to_vec(),
            Pooling::First => row(0).to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f64; dim];
                for i in 0..tokens {
                    for (s, &x) in sum.iter_mut().zip(row(i)) {
                        *s += x as f64;
                    }
                }
                sum.iter().map(|s| (s / tokens as f64) as f32).collect()
            }
        };
        for d in &self.dense {
            v = d.apply(&v);
        }
        if self.normalize {
            let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
        v
    }
}

/// The embedding of one input's token ids (as [`crate::text::TextSetup::embedding_ids`] gives
/// them), run from the start of `session` (its earlier contents are forgotten).
pub async fn embed<B: Backend>(dev: &B, model: &Model<B>, session: &mut Session<B>, ids: &[u32], spec: &EmbeddingSpec) -> Result<Vec<f32>> {
    if spec.dense.first().is_some_and(|d| d.in_features != model.config.hidden) {
        return Err(ModelError::Config(format!(
            "the first dense projection takes {} values, the model's hidden size is {}",
            spec.dense[0].in_features, model.config.hidden
        )));
    }
    let hidden = session.hidden_states(dev, model, ids).await?;
    Ok(spec.pool(&hidden, ids.len(), model.config.hidden))
}
