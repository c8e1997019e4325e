//! Model hyper-parameters, read from GGUF metadata (`{arch}.*` keys).

use emberlm_core::ops::RopeLayout;
use emberlm_core::rope_table::RopeScaling;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, TinyLlama, Mistral (llama.cpp writes Mistral as `llama`).
    Llama,
    /// Qwen2 / Qwen2.5: q/k/v biases, "neox" RoPE.
    Qwen2,
}

pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_dims: usize,
    pub rope_scaling: RopeScaling,
    pub rope_layout: RopeLayout,
    /// The context length the model was trained for.
    pub context_length: usize,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch_name = f.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    name: other.to_string(),
                    supported: SUPPORTED_GGUF_ARCHITECTURES.join(", "),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| -> Result<usize> { Ok(f.get_u64(&key(k))? as usize) };
        let hidden = get("embedding_length")?;
        let heads = get("attention.head_count")?;
        let kv_heads = f.get_u64(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
            return Err(ModelError::Config(format!("{heads} heads, {kv_heads} kv heads and hidden size {hidden} do not fit together")));
        }
        let head_dim = f.get_u64(&key("attention.key_length")).map(|v| v as usize).unwrap_or(hidden / heads);
        let vocab = match f.get_u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_dims = f.get_u64(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim);
        let rope_scaling = match f.get_str(&key("rope.scaling.type")) {
            Ok("linear") => RopeScaling::Linear { factor: f.get_f64(&key("rope.scaling.factor"))? as f32 },
            Ok("none") | Err(_) => RopeScaling::None,
            Ok(other) => return Err(ModelError::Config(format!("rope scaling `{other}` is not supported yet"))),
        };
        Ok(Self {
            arch,
            hidden,
            layers: get("block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: get("feed_forward_length")?,
            vocab,
            rms_eps: f.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_theta: f.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rope_dims,
            rope_scaling,
            // llama.cpp permutes llama-arch Q/K rows so that its "normal" RoPE rotates adjacent
            // pairs; applying the interleaved rotation to those rows equals HF's rotate_half on
            // the original rows. Other architectures keep HF's layout.
            rope_layout: if arch == Architecture::Llama { RopeLayout::Interleaved } else { RopeLayout::Neox },
            context_length: get("context_length")?,
        })
    }

    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}
