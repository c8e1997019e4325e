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

/// What makes a model an embedding model: its pooling, and whether vectors are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingSpec {
    pub pooling: Pooling,
    pub normalize: bool,
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
        Some(Self { pooling, normalize: true })
    }

    /// sentence-transformers' `modules.json` and its pooling module's `config.json`; `None`
    /// without a pooling module. Pooling modes other than last, mean and CLS, and modules this
    /// engine does not run (dense projections), are errors rather than wrong vectors.
    pub fn from_sentence_transformers(modules: &Json, pooling_config: Option<&Json>) -> Result<Option<Self>> {
        let bad = |why: String| ModelError::Config(format!("sentence-transformers modules.json: {why}"));
        let list = modules.as_array().ok_or_else(|| bad("not an array".into()))?;
        let kinds: Vec<&str> = list.iter().map(|m| m.get("type").and_then(Json::as_str).unwrap_or_default()).collect();
        if !kinds.iter().any(|k| k.ends_with(".Pooling")) {
            return Ok(None);
        }
        if let Some(other) = kinds.iter().find(|k| !k.ends_with(".Transformer") && !k.ends_with(".Pooling") && !k.ends_with(".Normalize")) {
            return Err(bad(format!("module {other} is not supported (only Transformer, Pooling and Normalize)")));
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
        Ok(Some(Self { pooling: modes[0], normalize: kinds.iter().any(|k| k.ends_with(".Normalize")) }))
    }

    /// One vector from `tokens` rows of `dim` hidden values.
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
    let hidden = session.hidden_states(dev, model, ids).await?;
    Ok(spec.pool(&hidden, ids.len(), model.config.hidden))
}
