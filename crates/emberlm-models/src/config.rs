//! Model hyper-parameters: from GGUF metadata (`{arch}.*` keys) or from a Hugging Face
//! `config.json` (transformers 4.x `rope_theta`/`rope_scaling` and 5.x `rope_parameters` both).
//! Everything the forward pass branches on is decided here, so `model.rs` reads as one
//! architecture with switches.

use emberlm_core::ops::{Activation, GroupScore, MoeRouteParams, RopeLayout, RouterScoring, Routing};
use emberlm_core::rope_table::{self, RopeScaling};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, SmolLM2, TinyLlama.
    Llama,
    /// Mistral: Llama with an optional sliding window (llama.cpp writes it as `llama`).
    Mistral,
    /// Qwen2 / Qwen2.5: q/k/v biases.
    Qwen2,
    /// Qwen3: per-head q/k RMSNorm, no biases.
    Qwen3,
    /// Phi-3 / 3.5: fused qkv and gate|up projections, LongRoPE.
    Phi3,
    /// Gemma 2: (1 + w) norms, post-norms, embedding scale, soft-caps, alternating windows.
    Gemma2,
    /// Gemma 3 text: Gemma 2 without soft-caps, plus q/k norms and local/global RoPE.
    Gemma3,
    /// SmolLM3: Llama with NoPE layers (no RoPE on every 4th layer by default).
    SmolLM3,
    /// LFM2 (LiquidAI): gated short-convolution layers between GQA attention layers with q/k
    /// norms.
    Lfm2,
    /// Mamba2: state-space (SSD) mixer layers only, no attention and no MLP.
    Mamba2,
    /// Granite 4.0 hybrids (IBM Granite-4.0-H): Mamba2 layers and NoPE GQA attention layers,
    /// each with an MLP; multipliers on the embedding, the blocks' outputs, the attention scores
    /// and the logits. Its mixture-of-experts variants are not supported yet.
    GraniteHybrid,
    /// Qwen3-MoE: Qwen3's attention, mixture-of-experts MLPs (softmax router, top-k, weights
    /// renormalised with `norm_topk_prob`), dense MLPs on `mlp_only_layers`.
    Qwen3Moe,
    /// Mixtral: Mistral's attention, a mixture of experts in every layer (renormalised top-k).
    /// llama.cpp writes it as `llama` with an expert count.
    Mixtral,
    /// GPT-OSS (OpenAI): attention with biases and per-head sinks, alternating sliding-window and
    /// full layers, YaRN RoPE; a mixture of experts in every layer (router with a bias, top-k
    /// then a softmax over the picks, experts with biases, a clamped SwiGLU), experts in MXFP4.
    GptOss,
    /// DeepSeek-V2 / V2-Lite: multi-head latent attention (a compressed KV cache, below), dense
    /// first layers then mixtures of experts with shared experts and a softmax router limited to
    /// the best expert groups. llama.cpp writes V2 and V3 as `deepseek2`.
    DeepseekV2,
    /// DeepSeek-V3 layout (V3, R1, Moonlight, Kimi-K2): V2's attention with a low-rank q, a
    /// sigmoid router with a choice bias, groups scored by their best two experts.
    DeepseekV3,
}

/// A mixture-of-experts MLP's sizes ([`ModelConfig::moe`]): which layers have one follows from
/// their tensors (a router, `ffn_gate_inp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    pub experts: usize,
    /// Experts each token uses.
    pub top_k: usize,
    /// Each expert's intermediate width.
    pub expert_ffn: usize,
    /// The picks' weights are divided by their sum (else: the scores at the picks).
    pub normalize: bool,
    /// DeepSeek's routing (scores, groups, scale); the plain top-k elsewhere. Whether a layer
    /// adds a choice bias follows from its tensors (`exp_probs_b`).
    pub routing: Routing,
    /// The shared experts' width (DeepSeek: `n_shared_experts · moe_intermediate_size`), which
    /// every token runs beside its picks; 0 for none.
    pub shared_ffn: usize,
}

impl MoeConfig {
    /// A plain top-k mixture (no groups, no scale, no shared experts).
    pub fn plain(experts: usize, top_k: usize, expert_ffn: usize, normalize: bool) -> Self {
        Self { experts, top_k, expert_ffn, normalize, routing: Routing::default(), shared_ffn: 0 }
    }

    fn check(&self) -> Result<()> {
        // The router's own check: the expert count, top_k, and groups that divide the experts
        // and hold top_k picks.
        MoeRouteParams { routing: self.routing, ..MoeRouteParams::new(1, self.experts, self.top_k, self.normalize) }
            .check("moe_route")
            .map_err(|e| ModelError::Config(format!("the mixture's routing is not supported: {e}")))?;
        if self.expert_ffn == 0 || self.expert_ffn as u64 > MAX_SIZE || self.shared_ffn as u64 > MAX_SIZE {
            return Err(ModelError::Config(format!("an expert width of {} (shared {}) is out of range", self.expert_ffn, self.shared_ffn)));
        }
        Ok(())
    }
}

/// Multi-head latent attention's sizes (DeepSeek). Each position's keys and values are
/// compressed into one `kv_rank`-wide latent (plus a `rope`-wide key part shared by the heads)
/// and that is all the cache holds; the heads' keys and values are its up-projections, absorbed
/// into the query and the output (see `model.rs`), so attention runs as one kv head of
/// `kv_rank + rope` dims — [`ModelConfig::head_dim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaConfig {
    /// `q_lora_rank`: q through a low-rank projection and its norm (V3); `None`: one q
    /// projection (V2-Lite).
    pub q_rank: Option<usize>,
    /// `kv_lora_rank`: the latent each position's cache row holds.
    pub kv_rank: usize,
    /// Per head: query/key dims without RoPE (`qk_nope_head_dim`), with (`qk_rope_head_dim`),
    /// and value dims (`v_head_dim`).
    pub nope: usize,
    pub rope: usize,
    pub v_dim: usize,
}

impl MlaConfig {
    /// One head's query width as projected: [nope | rope].
    pub fn q_head(&self) -> usize {
        self.nope + self.rope
    }

    /// The width of a layer's first projection: [q (or its low-rank q_a) | latent | rope key].
    pub fn proj_width(&self, heads: usize) -> usize {
        self.q_rank.unwrap_or(heads * self.q_head()) + self.kv_rank + self.rope
    }

    fn check(&self, heads: usize) -> Result<()> {
        // The per-head projections read vec4s, and their rows in octets (q_b's too).
        let octets = |v: usize| v > 0 && v % 8 == 0;
        let fits = octets(self.nope) && octets(self.kv_rank) && self.q_head() % 4 == 0 && self.v_dim > 0 && self.rope % 2 == 0 && self.rope > 0;
        if !fits || self.q_rank.is_some_and(|r| !octets(r) || r as u64 > MAX_SIZE) || heads as u64 * self.q_head().max(self.v_dim) as u64 > MAX_SIZE {
            return Err(ModelError::Config(format!(
                "latent attention of q rank {:?}, kv rank {}, {}+{} q/k dims and {} v dims per head is not supported (nope, q and kv ranks multiples of 8, nope + rope of 4, rope even)",
                self.q_rank, self.kv_rank, self.nope, self.rope, self.v_dim
            )));
        }
        Ok(())
    }
}

/// What mixes information across positions in a layer, and so what the layer keeps between
/// steps (see `model::LayerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Attention over a KV cache of every position.
    Attention,
    /// LFM2's gated short convolution over the last `conv_kernel` positions: a rolling state.
    ShortConv,
    /// Mamba2's mixer: a short convolution, then the selective scan over a state per head —
    /// two rolling states.
    Ssm,
    /// DeepSeek's multi-head latent attention: a cache of one compressed latent per position.
    LatentAttention,
}

/// The sizes of Mamba2 mixers ([`LayerKind::Ssm`] layers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsmConfig {
    pub heads: usize,
    pub head_dim: usize,
    /// State values per (head, channel): `state_size`.
    pub state: usize,
    /// Groups of heads sharing B and C (`n_groups`); also the gated norm's groups.
    pub groups: usize,
    /// transformers' `time_step_limit`: dt is clamped to it.
    pub dt_min: f32,
    pub dt_max: f32,
}

impl SsmConfig {
    /// Channels of x, z and the scan's output: heads · head_dim.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Channels the convolution runs over: [x | B | C].
    pub fn conv_channels(&self) -> usize {
        self.inner() + 2 * self.groups * self.state
    }

    /// Width of the in-projection's output: [z | x | B | C | dt].
    pub fn proj_width(&self) -> usize {
        self.inner() + self.conv_channels() + self.heads
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.heads == 0 || self.groups == 0 || self.heads % self.groups != 0 {
            return bad(format!("{} SSM heads do not split into {} groups", self.heads, self.groups));
        }
        if self.head_dim == 0 || self.head_dim > emberlm_core::ops::ssm_scan::MAX_SSM_HEAD_DIM {
            return bad(format!("an SSM head_dim of {} is not supported (1 to {})", self.head_dim, emberlm_core::ops::ssm_scan::MAX_SSM_HEAD_DIM));
        }
        if self.state == 0 || self.state > emberlm_core::ops::ssm_scan::MAX_SSM_STATE {
            return bad(format!("an SSM state of {} is not supported (1 to {})", self.state, emberlm_core::ops::ssm_scan::MAX_SSM_STATE));
        }
        if self.proj_width() as u64 > MAX_SIZE {
            return bad(format!("an SSM in-projection {} wide is out of range", self.proj_width()));
        }
        // One state slot in u64 first: on wasm32 the product of three checked sizes can wrap.
        let slot = self.heads as u64 * self.state as u64 * self.head_dim as u64;
        if slot > MAX_SSM_SLOT {
            return bad(format!("an SSM state of {slot} values per layer is out of range (at most {MAX_SSM_SLOT})"));
        }
        if !(self.dt_min >= 0.0 && self.dt_min <= self.dt_max) {
            return bad(format!("time-step limits ({}, {}) are not 0 ≤ min ≤ max", self.dt_min, self.dt_max));
        }
        Ok(())
    }
}

/// Parses a JSON file as Python's `json` writes it: bare `Infinity`, `-Infinity` and `NaN`
/// (transformers writes Mamba2's `time_step_limit` as `[0.0, Infinity]`) read as null.
pub fn parse_json(text: &str) -> serde_json::Result<Json> {
    match serde_json::from_str(text) {
        Err(e) if text.contains("Infinity") || text.contains("NaN") => {
            let mut out = String::with_capacity(text.len());
            let (mut in_string, mut escaped) = (false, false);
            let mut rest = text;
            while let Some(ch) = rest.chars().next() {
                if in_string {
                    (in_string, escaped) = (escaped || ch != '"', !escaped && ch == '\\');
                } else if ch == '"' {
                    in_string = true;
                } else if let Some(word) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
                    out.push_str("null");
                    rest = &rest[word.len()..];
                    continue;
                }
                out.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
            serde_json::from_str(&out).map_err(|_| e)
        }
        parsed => parsed,
    }
}

/// `(config.json model_type, GGUF general.architecture, architecture)`.
const NAMES: &[(&str, &str, Architecture)] = &[
    ("llama", "llama", Architecture::Llama),
    ("mistral", "llama", Architecture::Mistral),
    ("qwen2", "qwen2", Architecture::Qwen2),
    ("qwen3", "qwen3", Architecture::Qwen3),
    ("phi3", "phi3", Architecture::Phi3),
    ("gemma2", "gemma2", Architecture::Gemma2),
    ("gemma3_text", "gemma3", Architecture::Gemma3),
    ("smollm3", "smollm3", Architecture::SmolLM3),
    ("lfm2", "lfm2", Architecture::Lfm2),
    ("mamba2", "mamba2", Architecture::Mamba2),
    ("granitemoehybrid", "granitehybrid", Architecture::GraniteHybrid),
    ("qwen3_moe", "qwen3moe", Architecture::Qwen3Moe),
    // GGUF writes Mixtral as `llama` with an expert count (from_gguf tells them apart).
    ("mixtral", "mixtral", Architecture::Mixtral),
    ("gpt_oss", "gpt-oss", Architecture::GptOss),
    // GGUF writes both as `deepseek2` (from_gguf tells V3's sigmoid router apart).
    ("deepseek_v2", "deepseek2", Architecture::DeepseekV2),
    ("deepseek_v3", "deepseek2", Architecture::DeepseekV3),
];

fn supported_list() -> String {
    "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3 (gemma3_text), smollm3, lfm2, mamba2, granitemoehybrid (dense), qwen3_moe, mixtral, gpt_oss, deepseek_v2, deepseek_v3".to_string()
}

impl Architecture {
    pub fn name(self) -> &'static str {
        NAMES.iter().find(|n| n.2 == self).map(|n| n.0).unwrap_or("?")
    }

    fn unsupported(name: &str) -> ModelError {
        ModelError::UnsupportedArchitecture { name: name.to_string(), supported: supported_list() }
    }

    /// DeepSeek-V2/V3: multi-head latent attention.
    pub fn is_deepseek(self) -> bool {
        matches!(self, Self::DeepseekV2 | Self::DeepseekV3)
    }

    pub fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// Per-head RMSNorm of q and k before RoPE.
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Self::Qwen3 | Self::Qwen3Moe | Self::Gemma3 | Self::Lfm2)
    }

    /// Whether Gemma layer `layer` uses the sliding window when the model does not list its
    /// layers: Gemma 2 alternates (even layers slide), Gemma 3 makes every `gemma3_period`-th
    /// layer global. `None` for other architectures.
    pub fn gemma_layer_slides(self, layer: usize, gemma3_period: usize) -> Option<bool> {
        match self {
            Self::Gemma2 => Some(layer % 2 == 0),
            Self::Gemma3 => Some((layer + 1) % gemma3_period.max(1) != 0),
            _ => None,
        }
    }

    /// Whether layers have a feed-forward block after the mixer (all but Mamba2).
    pub fn has_ffn(self) -> bool {
        self != Self::Mamba2
    }

    /// Gemma's extra norms on the attention and MLP outputs before they join the residual.
    pub fn has_post_norms(self) -> bool {
        self.is_gemma()
    }

    /// Which layers rotate q and k when the model does not list them: all but SmolLM3's every
    /// `period`-th (its NoPE layers; llama.cpp hard-codes period 4 and GGUF stores none).
    fn default_layer_rope(self, layers: usize, period: usize) -> Vec<bool> {
        (0..layers).map(|i| self != Self::SmolLM3 || (i + 1) % period.max(1) != 0).collect()
    }
}

/// Phi-3's LongRoPE: per-frequency divisors, the short set within the original context.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
    pub original_context: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    /// Rotated dimensions per head (≤ head_dim: Phi-3-style partial rotary).
    pub dims: usize,
    pub scaling: RopeScaling,
    /// Per-frequency divisors (llama.cpp's `rope_freqs` for Llama 3.1 scaling).
    pub freq_factors: Option<Vec<f32>>,
    pub long_rope: Option<LongRope>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub attention_factor: f32,
}

impl RopeConfig {
    fn plain(theta: f32, dims: usize) -> Self {
        Self { theta, dims, scaling: RopeScaling::None, freq_factors: None, long_rope: None, attention_factor: 1.0 }
    }

    /// Inverse frequencies for a KV cache of `context` positions. LongRoPE uses the long factors
    /// only when the context exceeds the original one (transformers switches per sequence length;
    /// the two agree whenever the whole cache fits the original context).
    pub fn inv_freq(&self, context: usize) -> Result<Vec<f32>> {
        let mut f = rope_table::inv_freq(self.dims, self.theta, self.scaling);
        let factors = match &self.long_rope {
            Some(lr) => Some(if context > lr.original_context { &lr.long } else { &lr.short }),
            None => self.freq_factors.as_ref(),
        };
        if let Some(factors) = factors {
            if factors.len() != f.len() {
                return Err(ModelError::Config(format!("{} RoPE frequency factors for {} frequencies", factors.len(), f.len())));
            }
            for (v, d) in f.iter_mut().zip(factors) {
                *v /= d;
            }
        }
        Ok(f)
    }
}

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
    pub rope: RopeConfig,
    /// Gemma 3's RoPE for sliding-window layers (its own base, no scaling).
    pub rope_local: Option<RopeConfig>,
    pub rope_layout: RopeLayout,
    /// Sliding window per layer in positions, 0 for full attention.
    pub layer_windows: Vec<usize>,
    /// Per layer: whether q and k are rotated (false: a NoPE layer, positions only implicit).
    pub layer_rope: Vec<bool>,
    /// Per layer: attention or a short convolution (LFM2).
    pub layer_kinds: Vec<LayerKind>,
    /// Positions a layer's causal convolution spans (LFM2's `conv_L_cache`, Mamba2's
    /// `conv_kernel`); 0 without such layers.
    pub conv_kernel: usize,
    /// Mamba2's mixer sizes, for [`LayerKind::Ssm`] layers.
    pub ssm: Option<SsmConfig>,
    /// Mixture-of-experts sizes, for layers with a router.
    pub moe: Option<MoeConfig>,
    /// Multi-head latent attention's sizes, for [`LayerKind::LatentAttention`] layers.
    pub mla: Option<MlaConfig>,
    pub attn_scale: f32,
    pub attn_softcap: f32,
    pub final_softcap: f32,
    /// Multiplies the embedding (Gemma: √hidden; Granite's `embedding_multiplier`).
    pub embed_scale: f32,
    /// Multiplies each block's output on its way into the residual stream (Granite's
    /// `residual_multiplier`; 1 elsewhere).
    pub residual_scale: f32,
    /// Multiplies the logits (1 / Granite's `logits_scaling`; 1 elsewhere): folded into the
    /// output norm's weight at load.
    pub logit_scale: f32,
    /// Added to norm weights: 1 for Gemma checkpoints (`1 + w`); 0 for GGUF, which stores `1 + w`.
    pub norm_offset: f32,
    pub activation: Activation,
    pub tie_embeddings: bool,
    /// The context length the model was trained for.
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Every token attends to every other (EmbeddingGemma's `use_bidirectional_attention`;
    /// sliding windows then reach `window / 2` either side), not only to earlier ones.
    pub bidirectional: bool,
}

/// The largest size (hidden, ffn, vocab, heads, ...) a config may state, and the most layers:
/// far above any real model, low enough that nothing sized by them is allocated absurdly
/// before the tensors are compared with them.
const MAX_SIZE: u64 = 1 << 24;
const MAX_LAYERS: usize = 4096;
/// The most values one Mamba2 layer's scan state may hold (256 MiB of f32; Codestral's 7B
/// holds 2^20).
const MAX_SSM_SLOT: u64 = 1 << 26;

/// A size from a model file as a usize: values past [`MAX_SIZE`] (which would also truncate on
/// wasm32) become `MAX_SIZE + 1`, which every check rejects.
fn clamp_size(v: u64) -> usize {
    v.min(MAX_SIZE + 1) as usize
}

/// Refuses a layer count before anything per layer is built.
fn check_layers(layers: usize) -> Result<usize> {
    if layers == 0 || layers > MAX_LAYERS {
        return Err(ModelError::Config(format!("a layer count of {layers} is out of range (1 to {MAX_LAYERS})")));
    }
    Ok(layers)
}

impl ModelConfig {
    /// Width of an attention layer's first projection row: [q | k | v] heads, or MLA's
    /// [q (or q_a) | latent | rope key], rounded up to whole vec4s (kernels read its q part so).
    pub fn qkv_width(&self) -> usize {
        match &self.mla {
            Some(m) => m.proj_width(self.heads).next_multiple_of(4),
            None => (self.heads + 2 * self.kv_heads) * self.head_dim,
        }
    }

    /// The widest dense MLP a layer runs: its own, or a mixture's shared experts.
    pub fn dense_ffn(&self) -> usize {
        self.ffn.max(self.moe.map_or(0, |m| m.shared_ffn))
    }

    /// The widest per-token row of a step's activation buffers, in f32s: a step of T tokens
    /// holds T of them in one binding, which bounds the tokens one step may take
    /// (`Session::max_step_tokens`).
    pub fn widest_step_row(&self) -> usize {
        let mut widest = [self.hidden, self.qkv_width(), self.heads * self.head_dim, 2 * self.dense_ffn(), 3 * self.hidden].into_iter().max().unwrap_or(1);
        if let Some(m) = &self.mla {
            widest = widest.max(self.heads * m.q_head().max(m.v_dim));
        }
        if let Some(s) = self.ssm_layers() {
            widest = widest.max(s.proj_width());
        }
        if let Some(m) = &self.moe {
            // Each pick's [gate | up] and down rows (a grouped prefill), the router's logits.
            widest = widest.max(m.top_k * (2 * m.expert_ffn).max(self.hidden)).max(m.experts);
        }
        widest.max(1)
    }

    /// Whether any layer is LFM2's short convolution.
    pub fn has_conv_layers(&self) -> bool {
        self.layer_kinds.contains(&LayerKind::ShortConv)
    }

    /// Whether any layer keeps a rolling state (LFM2's convolutions, Mamba2's mixers) rather
    /// than a KV cache: only the state at the end and at a checkpoint exist.
    pub fn has_rolling_state(&self) -> bool {
        self.layer_kinds.iter().any(|k| matches!(k, LayerKind::ShortConv | LayerKind::Ssm))
    }

    /// Whether any layer attends (a KV cache or MLA's latent one, RoPE tables).
    pub fn has_attention_layers(&self) -> bool {
        self.layer_kinds.iter().any(|k| matches!(k, LayerKind::Attention | LayerKind::LatentAttention))
    }

    /// Mamba2's mixer sizes when any layer is one.
    pub fn ssm_layers(&self) -> Option<&SsmConfig> {
        self.ssm.as_ref().filter(|_| self.layer_kinds.contains(&LayerKind::Ssm))
    }

    /// Mamba2's mixer sizes, for code that has an SSM layer in hand (an error if the config
    /// lacks them: `check` refuses that, but the fields are public).
    pub fn ssm_sizes(&self) -> Result<&SsmConfig> {
        self.ssm.as_ref().ok_or_else(|| ModelError::Config("SSM layers without SSM sizes".into()))
    }

    fn check(self) -> Result<Self> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.layer_kinds.len() != self.layers {
            return bad(format!("{} layer kinds for {} layers", self.layer_kinds.len(), self.layers));
        }
        if self.has_attention_layers() {
            if self.heads == 0 || self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
                return bad(format!("{} attention heads cannot share {} kv heads", self.heads, self.kv_heads));
            }
            if self.head_dim == 0 || self.head_dim > emberlm_core::ops::attention::MAX_HEAD_DIM || self.head_dim % 2 != 0 {
                return bad(format!("head_dim {} is not supported (even, at most {})", self.head_dim, emberlm_core::ops::attention::MAX_HEAD_DIM));
            }
            if self.rope.dims == 0 || self.rope.dims > self.head_dim || self.rope.dims % 2 != 0 {
                return bad(format!("{} rotary dims do not fit head_dim {}", self.rope.dims, self.head_dim));
            }
            if !(self.rope.theta > 0.0) {
                return bad(format!("rope theta {} must be positive", self.rope.theta));
            }
            if !self.attn_scale.is_finite() {
                return bad(format!("the attention scale {} is not a finite number", self.attn_scale));
            }
        }
        let latent = self.layer_kinds.contains(&LayerKind::LatentAttention);
        match &self.mla {
            Some(m) if latent => {
                m.check(self.heads)?;
                // Attention runs over the latent as one kv head of kv_rank + rope dims.
                if self.kv_heads != 1 || self.head_dim != m.kv_rank + m.rope || self.rope.dims != m.rope {
                    return bad(format!("latent attention as {} kv heads of {} with {} rotary dims", self.kv_heads, self.head_dim, self.rope.dims));
                }
            }
            None if latent => return bad("latent attention layers without their sizes".into()),
            _ => {}
        }
        let ffn = if self.arch.has_ffn() { self.ffn } else { 1 };
        for (what, v) in [("hidden size", self.hidden), ("layer count", self.layers), ("intermediate size", ffn), ("vocab size", self.vocab)] {
            if v == 0 || v as u64 > MAX_SIZE {
                return bad(format!("{what} {v} is out of range"));
            }
        }
        if !(self.rms_eps > 0.0) {
            return bad(format!("rms eps {} must be positive", self.rms_eps));
        }
        for (what, v) in [("embedding", self.embed_scale), ("residual", self.residual_scale), ("logit", self.logit_scale)] {
            if !v.is_finite() {
                return bad(format!("the {what} scale {v} is not a finite number"));
            }
        }
        let convolves = self.has_conv_layers() || self.layer_kinds.contains(&LayerKind::Ssm);
        if convolves && !(2..=emberlm_core::ops::MAX_CONV_KERNEL).contains(&self.conv_kernel) {
            return bad(format!("a short convolution over {} positions is not supported (2 to {})", self.conv_kernel, emberlm_core::ops::MAX_CONV_KERNEL));
        }
        if self.layer_kinds.contains(&LayerKind::Ssm) {
            self.ssm_sizes()?.check()?;
        }
        if let Some(moe) = &self.moe {
            moe.check()?;
        }
        if let Activation::SwigluOai { alpha, limit } = self.activation {
            if !(alpha.is_finite() && limit > 0.0) {
                return bad(format!("a clamped SwiGLU with alpha {alpha} and limit {limit} is not supported (a positive limit)"));
            }
        }
        Ok(self)
    }

    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch_name = f.get_str("general.architecture")?;
        // `llama` finds Llama (listed before Mistral, which llama.cpp also writes as `llama`);
        // `gemma-embedding` is llama.cpp's name for EmbeddingGemma: Gemma 3, bidirectional.
        let key = |k: &str| format!("{arch_name}.{k}");
        let arch = match arch_name {
            "gemma-embedding" => Architecture::Gemma3,
            "llama" if f.get_u64(&key("expert_count")).is_ok_and(|n| n > 0) => Architecture::Mixtral,
            // llama.cpp's gating function 2: V3's sigmoid router.
            "deepseek2" if f.get_u64(&key("expert_gating_func")).is_ok_and(|g| g == 2) => Architecture::DeepseekV3,
            name => NAMES.iter().find(|n| n.1 == name).map(|n| n.2).ok_or_else(|| Architecture::unsupported(name))?,
        };
        let get = |k: &str| -> Result<usize> { Ok(clamp_size(f.get_u64(&key(k))?)) };
        let opt = |k: &str| f.get_u64(&key(k)).ok().map(clamp_size);
        let optf = |k: &str| f.get_f64(&key(k)).ok().map(|v| v as f32);
        let hidden = get("embedding_length")?;
        let heads = get("attention.head_count")?;
        let layers = check_layers(get("block_count")?)?;
        // One kv head count, or one per layer: LFM2 marks its conv layers with 0.
        // A count that is not an integer becomes MAX_SIZE + 1, which check() refuses.
        let count = |v: &crate::gguf::Value| v.as_u64().map_or(MAX_SIZE as usize + 1, clamp_size);
        let (kv_heads, layer_kinds) = match f.get(&key("attention.head_count_kv")) {
            Ok(crate::gguf::Value::Array(per_layer)) => {
                let counts: Vec<usize> = per_layer.iter().map(count).collect();
                if counts.len() != layers {
                    return Err(ModelError::Config(format!("{} kv head counts for {layers} layers", counts.len())));
                }
                let kv = counts.iter().copied().max().unwrap_or(0);
                // LFM2 and Granite's hybrids mark their other layers (convolutions, Mamba2) by 0.
                let other = match arch {
                    Architecture::Lfm2 => Some(LayerKind::ShortConv),
                    Architecture::GraniteHybrid => Some(LayerKind::Ssm),
                    _ => None,
                };
                let other = match other {
                    Some(kind) => kind,
                    None if counts.iter().all(|&n| n == kv) => LayerKind::Attention,
                    None => return Err(ModelError::Config("kv head counts that differ per layer are not supported".into())),
                };
                if counts.iter().any(|&n| n != kv && n != 0) {
                    return Err(ModelError::Config("attention layers with different kv head counts are not supported".into()));
                }
                (kv, counts.iter().map(|&n| if n == 0 { other } else { LayerKind::Attention }).collect())
            }
            Ok(v) => (count(v), vec![LayerKind::Attention; layers]),
            Err(_) => (heads, vec![LayerKind::Attention; layers]),
        };
        let layer_kinds = match arch {
            Architecture::Mamba2 => vec![LayerKind::Ssm; layers],
            _ if arch.is_deepseek() => vec![LayerKind::LatentAttention; layers],
            _ => layer_kinds,
        };
        let head_dim = opt("attention.key_length").unwrap_or(if heads > 0 { hidden / heads } else { 0 });
        let mla = if arch.is_deepseek() {
            let (kv_rank, rope) = (get("attention.kv_lora_rank")?, get("rope.dimension_count")?);
            // llama.cpp's files since its MLA rework: key_length is the latent's (kv_rank + rope),
            // the heads' own in key_length_mla; older ones state the heads' in key_length.
            let (q_head, v_dim) = match opt("attention.key_length_mla") {
                Some(k) => (k, get("attention.value_length_mla")?),
                None => (head_dim, get("attention.value_length")?),
            };
            Some(MlaConfig { q_rank: opt("attention.q_lora_rank").filter(|&r| r > 0), kv_rank, nope: q_head.saturating_sub(rope), rope, v_dim })
        } else {
            None
        };
        let head_dim = mla.map_or(head_dim, |m| m.kv_rank + m.rope);
        // MLA attends over its latent as one kv head (files from before llama.cpp's MLA rework
        // state the heads' count).
        let kv_heads = if mla.is_some() { 1 } else { kv_heads };
        let ssm = if matches!(arch, Architecture::Mamba2 | Architecture::GraniteHybrid) {
            let (inner, heads) = (get("ssm.inner_size")?, get("ssm.time_step_rank")?);
            if heads == 0 || inner % heads != 0 {
                return Err(ModelError::Config(format!("an SSM inner size of {inner} does not split into {heads} heads")));
            }
            // llama.cpp keeps no time-step limits (transformers' default: none).
            Some(SsmConfig { heads, head_dim: inner / heads, state: get("ssm.state_size")?, groups: get("ssm.group_count")?, dt_min: 0.0, dt_max: f32::MAX })
        } else {
            None
        };
        let moe = match opt("expert_count").filter(|&n| n > 0) {
            Some(experts) if matches!(arch, Architecture::Qwen3Moe | Architecture::Mixtral | Architecture::GptOss) => Some(MoeConfig {
                experts,
                top_k: get("expert_used_count")?,
                // Mixtral's experts are feed_forward_length wide.
                expert_ffn: opt("expert_feed_forward_length").map_or_else(|| get("feed_forward_length"), Ok)?,
                // llama.cpp renormalises for both unless the file says otherwise.
                normalize: !matches!(f.get(&key("expert_weights_norm")), Ok(crate::gguf::Value::Bool(false))),
                routing: Routing::default(),
                shared_ffn: 0,
            }),
            Some(experts) if arch.is_deepseek() => {
                let sigmoid = arch == Architecture::DeepseekV3;
                let expert_ffn = get("expert_feed_forward_length")?;
                Some(MoeConfig {
                    experts,
                    top_k: get("expert_used_count")?,
                    expert_ffn,
                    // llama.cpp's default for deepseek2: the scores as they are.
                    normalize: matches!(f.get(&key("expert_weights_norm")), Ok(crate::gguf::Value::Bool(true))),
                    routing: Routing {
                        scoring: if sigmoid { RouterScoring::Sigmoid } else { RouterScoring::Softmax },
                        groups: opt("expert_group_count").unwrap_or(1).max(1),
                        groups_used: opt("expert_group_used_count").unwrap_or(1).max(1),
                        // V2 scores a group by its best expert (transformers, DeepSeek's code;
                        // llama.cpp sums the best two for V2 as well).
                        group_score: if sigmoid { GroupScore::TopTwoSum } else { GroupScore::Max },
                        scale: optf("expert_weights_scale").unwrap_or(1.0),
                    },
                    shared_ffn: opt("expert_shared_count").unwrap_or(0).saturating_mul(expert_ffn),
                })
            }
            Some(_) => return Err(ModelError::Config(format!("{arch_name}'s mixture-of-experts layers are not supported"))),
            None if matches!(arch, Architecture::Qwen3Moe | Architecture::GptOss) || arch.is_deepseek() => {
                return Err(ModelError::Config(format!("a {arch_name} model without an expert count")))
            }
            None => None,
        };
        let vocab = match f.get_u64(&key("vocab_size")) {
            Ok(v) => clamp_size(v),
            Err(_) => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let scaling = match f.get_str(&key("rope.scaling.type")) {
            Ok("linear") => RopeScaling::Linear { factor: f.get_f64(&key("rope.scaling.factor"))? as f32 },
            Ok("yarn") => RopeScaling::Yarn {
                factor: f.get_f64(&key("rope.scaling.factor"))? as f32,
                beta_fast: optf("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                beta_slow: optf("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                original_max_position: get("rope.scaling.original_context_length")? as u32,
                // GPT-OSS's config.json says `truncate: false` (GGUF keeps no such key).
                truncate: arch != Architecture::GptOss,
            },
            Ok("none") | Err(_) => RopeScaling::None,
            // Llama 3.1 scaling arrives as the `rope_freqs` tensor; Phi-3's as `rope_factors_*`.
            Ok(_) if arch == Architecture::Phi3 => RopeScaling::None,
            Ok(other) => return Err(ModelError::Config(format!("rope scaling `{other}` is not supported"))),
        };
        let mut rope = RopeConfig::plain(optf("rope.freq_base").unwrap_or(10_000.0), opt("rope.dimension_count").unwrap_or(head_dim));
        rope.scaling = scaling;
        if let Some(a) = optf("rope.scaling.attn_factor") {
            rope.attention_factor = a;
        }
        if let RopeScaling::Yarn { factor, .. } = rope.scaling {
            // DeepSeek's mscale equals its mscale_all_dim, whose ratio transformers uses: 1.
            let default = if arch.is_deepseek() { 1.0 } else { yarn_attention_factor(factor) };
            rope.attention_factor = optf("rope.scaling.yarn_attn_factor").unwrap_or(default);
        }
        // Which layers slide: `attention.sliding_window_pattern` as per-layer flags or as a
        // period n (every n-th layer global); otherwise llama.cpp's defaults (Gemma 2 every
        // other layer, Gemma 3 five of six). A window on llama-arch files is Mistral's.
        let window = opt("attention.sliding_window").unwrap_or(0);
        let pattern: Option<Vec<bool>> = match f.get(&key("attention.sliding_window_pattern")) {
            Ok(crate::gguf::Value::Array(flags)) => Some(flags.iter().map(|v| matches!(v, crate::gguf::Value::Bool(true))).collect()),
            Ok(v) => v.as_u64().filter(|&n| n > 0).map(|n| (0..layers).map(|i| (i as u64 + 1) % n != 0).collect()),
            Err(_) => None,
        };
        if pattern.as_ref().is_some_and(|p| p.len() != layers) {
            return Err(ModelError::Config(format!("sliding_window_pattern does not have {layers} entries")));
        }
        let layer_windows = (0..layers)
            .map(|i| {
                let slides = match &pattern {
                    Some(p) => p[i],
                    // GPT-OSS: even layers slide (llama.cpp's swa pattern of 2).
                    None if arch == Architecture::GptOss => i % 2 == 0,
                    None => arch.gemma_layer_slides(i, 6).unwrap_or(true),
                };
                if slides {
                    window
                } else {
                    0
                }
            })
            .collect();
        // llama.cpp scales by 1/√(hidden/heads) for the 27B Gemmas (query_pre_attn_scalar), by
        // 1/√head_dim otherwise; GGUF has no key for it.
        let big_gemma = (arch == Architecture::Gemma2 && layers == 46) || (arch == Architecture::Gemma3 && layers == 62);
        let attn_scale = match &mla {
            // The heads' own q·k width, times YaRN's mscale² (mscale_all_dim stored ×0.1).
            Some(m) => mla_softmax_scale(m, rope.scaling, optf("rope.scaling.yarn_log_multiplier").map(|v| v / 0.1)),
            None => 1.0 / (if big_gemma { (hidden / heads.max(1)) as f32 } else { head_dim as f32 }).sqrt(),
        };
        let eos = f.get_u64("tokenizer.ggml.eos_token_id").ok().map(|v| v as u32);
        Self {
            arch,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn: match arch {
                Architecture::Mamba2 => 0,
                // The MLP every Granite hybrid layer has (its experts' width is another).
                Architecture::GraniteHybrid => opt("expert_shared_feed_forward_length").map_or_else(|| get("feed_forward_length"), Ok)?,
                // Qwen3-MoE's dense layers (none in llama.cpp's files): the expert width.
                Architecture::Qwen3Moe | Architecture::GptOss => opt("feed_forward_length").map_or_else(|| get("expert_feed_forward_length"), Ok)?,
                _ => get("feed_forward_length")?,
            },
            mla,
            vocab,
            rms_eps: f.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_local: (arch == Architecture::Gemma3).then(|| RopeConfig::plain(10_000.0, rope.dims)),
            rope,
            // llama.cpp permutes llama-arch Q/K rows so that its "normal" RoPE rotates adjacent
            // pairs; the interleaved rotation on those rows equals HF's rotate_half on the originals.
            // SmolLM3 goes through the same converter code as Llama.
            // DeepSeek's checkpoints rotate adjacent pairs themselves (llama.cpp keeps them).
            rope_layout: if matches!(arch, Architecture::Llama | Architecture::Mixtral | Architecture::SmolLM3 | Architecture::GraniteHybrid)
                || arch.is_deepseek()
            {
                RopeLayout::Interleaved
            } else {
                RopeLayout::Neox
            },
            layer_windows,
            // Granite's hybrids: llama.cpp reads `rope.scaling.finetuned` = false as NoPE.
            layer_rope: match f.get(&key("rope.scaling.finetuned")) {
                Ok(crate::gguf::Value::Bool(false)) if arch == Architecture::GraniteHybrid => vec![false; layers],
                _ => arch.default_layer_rope(layers, 4),
            },
            layer_kinds,
            conv_kernel: match arch {
                Architecture::Lfm2 => get("shortconv.l_cache")?,
                Architecture::Mamba2 | Architecture::GraniteHybrid => get("ssm.conv_kernel")?,
                _ => 0,
            },
            ssm,
            moe,
            attn_scale: optf("attention.scale").unwrap_or(attn_scale),
            attn_softcap: optf("attn_logit_softcapping").unwrap_or(0.0),
            final_softcap: optf("final_logit_softcapping").unwrap_or(0.0),
            embed_scale: if arch.is_gemma() { (hidden as f32).sqrt() } else { optf("embedding_scale").unwrap_or(1.0) },
            residual_scale: optf("residual_scale").unwrap_or(1.0),
            logit_scale: 1.0 / optf("logit_scale").unwrap_or(1.0),
            norm_offset: 0.0,
            activation: match arch {
                _ if arch.is_gemma() => Activation::GeluTanh,
                // llama.cpp hard-codes GPT-OSS's alpha and limit.
                Architecture::GptOss => Activation::SwigluOai { alpha: 1.702, limit: 7.0 },
                _ => Activation::Silu,
            },
            tie_embeddings: f.tensor("output.weight").is_none(),
            context_length: get("context_length")?,
            bos_token_id: f.get_u64("tokenizer.ggml.bos_token_id").ok().map(|v| v as u32),
            eos_token_ids: eos.into_iter().collect(),
            bidirectional: arch_name == "gemma-embedding",
        }
        .check()
    }

    /// From `config.json` (and the optional `generation_config.json` for stop tokens).
    pub fn from_hf(config: &Json, generation: Option<&Json>) -> Result<Self> {
        let model_type = config.get("model_type").and_then(Json::as_str).unwrap_or("");
        let arch =
            NAMES.iter().find(|n| n.0 == model_type).map(|n| n.2).or_else(|| (model_type == "gemma3").then_some(Architecture::Gemma3)).ok_or_else(|| {
                let archs = config.get("architectures").map(|a| a.to_string()).unwrap_or_default();
                Architecture::unsupported(&format!("{model_type} {archs}").trim().to_string())
            })?;
        // Gemma 3 multimodal configs nest the language model.
        let c = if model_type == "gemma3" { config.get("text_config").unwrap_or(config) } else { config };
        let usize_of = |k: &str| c.get(k).and_then(Json::as_u64).map(clamp_size);
        let f32_of = |k: &str| c.get(k).and_then(Json::as_f64).map(|v| v as f32);
        let need = |k: &str| usize_of(k).ok_or_else(|| ModelError::Config(format!("config.json has no integer `{k}`")));
        let hidden = need("hidden_size")?;
        // Mamba2 has no attention (its `head_dim` is the SSM's); Granite's heads are hidden/heads
        // wide whatever `head_dim` says (as in transformers).
        let attends = arch != Architecture::Mamba2;
        let heads = if attends { need("num_attention_heads")? } else { 0 };
        let mla = if arch.is_deepseek() {
            Some(MlaConfig {
                q_rank: usize_of("q_lora_rank").filter(|&r| r > 0),
                kv_rank: need("kv_lora_rank")?,
                nope: need("qk_nope_head_dim")?,
                rope: need("qk_rope_head_dim")?,
                v_dim: need("v_head_dim")?,
            })
        } else {
            None
        };
        // MLA attends over its latent as one kv head (its config's kv heads are the heads').
        let kv_heads = if mla.is_some() { 1 } else { usize_of("num_key_value_heads").unwrap_or(heads) };
        let head_dim = match arch {
            Architecture::Mamba2 => 0,
            Architecture::GraniteHybrid => hidden.checked_div(heads).unwrap_or(0),
            _ => match &mla {
                Some(m) => m.kv_rank + m.rope,
                None => usize_of("head_dim").unwrap_or(if heads > 0 { hidden / heads } else { 0 }),
            },
        };
        if arch == Architecture::GraniteHybrid && usize_of("num_local_experts").unwrap_or(0) > 0 {
            return Err(ModelError::Config("Granite's mixture-of-experts layers are not supported yet (its dense models are)".into()));
        }
        let moe = match arch {
            Architecture::Qwen3Moe => Some(MoeConfig {
                experts: need("num_experts")?,
                top_k: need("num_experts_per_tok")?,
                expert_ffn: need("moe_intermediate_size")?,
                normalize: c.get("norm_topk_prob").and_then(Json::as_bool).unwrap_or(false),
                routing: Routing::default(),
                shared_ffn: 0,
            }),
            Architecture::Mixtral | Architecture::GptOss => Some(MoeConfig {
                experts: need("num_local_experts")?,
                top_k: need("num_experts_per_tok")?,
                expert_ffn: need("intermediate_size")?,
                // GPT-OSS: a softmax over the picks' logits, which is the same.
                normalize: true,
                routing: Routing::default(),
                shared_ffn: 0,
            }),
            _ if arch.is_deepseek() => Some(deepseek_moe(c, arch, &need)?),
            _ => None,
        };
        let layers = check_layers(need("num_hidden_layers")?)?;

        // transformers 5 writes `rope_parameters` (per layer type for Gemma 3); 4.x writes
        // `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`).
        let params = c.get("rope_parameters");
        let global = params.and_then(|p| p.get("full_attention")).or(params).or_else(|| c.get("rope_scaling").filter(|v| !v.is_null()));
        let theta = global.and_then(|p| p.get("rope_theta")).and_then(Json::as_f64).map(|v| v as f32).or_else(|| f32_of("rope_theta")).unwrap_or(10_000.0);
        let partial = global
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Json::as_f64)
            .or_else(|| c.get("partial_rotary_factor").and_then(Json::as_f64))
            .unwrap_or(1.0);
        let mut rope = RopeConfig::plain(theta, mla.map_or((head_dim as f64 * partial) as usize, |m| m.rope));
        let max_pos = usize_of("max_position_embeddings").unwrap_or(4096);
        if let Some(p) = global {
            let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Json::as_str).unwrap_or("default");
            let num = |k: &str| p.get(k).and_then(Json::as_f64).map(|v| v as f32);
            match kind {
                "default" => {}
                "linear" => rope.scaling = RopeScaling::Linear { factor: num("factor").unwrap_or(1.0) },
                "yarn" => {
                    let factor = num("factor").unwrap_or(1.0);
                    rope.scaling = RopeScaling::Yarn {
                        factor,
                        beta_fast: num("beta_fast").unwrap_or(32.0),
                        beta_slow: num("beta_slow").unwrap_or(1.0),
                        original_max_position: num("original_max_position_embeddings").map_or(max_pos as u32, |v| v as u32),
                        truncate: p.get("truncate").and_then(Json::as_bool).unwrap_or(true),
                    };
                    rope.attention_factor = match (num("attention_factor"), num("mscale"), num("mscale_all_dim")) {
                        (Some(a), _, _) => a,
                        (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                        _ => yarn_attention_factor(factor),
                    };
                }
                "llama3" => {
                    rope.scaling = RopeScaling::Llama3 {
                        factor: num("factor").unwrap_or(1.0),
                        low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
                        original_max_position: num("original_max_position_embeddings").unwrap_or(8192.0) as u32,
                    }
                }
                "longrope" | "su" => {
                    let list = |k: &str| -> Result<Vec<f32>> {
                        p.get(k)
                            .and_then(Json::as_array)
                            .map(|a| a.iter().filter_map(Json::as_f64).map(|v| v as f32).collect())
                            .ok_or_else(|| ModelError::Config(format!("longrope needs `{k}`")))
                    };
                    let original =
                        num("original_max_position_embeddings").map(|v| v as usize).or_else(|| usize_of("original_max_position_embeddings")).unwrap_or(max_pos);
                    let factor = max_pos as f32 / original as f32;
                    rope.attention_factor =
                        num("attention_factor").unwrap_or(if factor > 1.0 { (1.0f32 + factor.ln() / (original as f32).ln()).sqrt() } else { 1.0 });
                    rope.long_rope = Some(LongRope { short: list("short_factor")?, long: list("long_factor")?, original_context: original });
                }
                other => return Err(ModelError::Config(format!("rope scaling `{other}` is not supported"))),
            }
        }
        let rope_local = (arch == Architecture::Gemma3).then(|| {
            let local = params.and_then(|p| p.get("sliding_attention"));
            let theta =
                local.and_then(|p| p.get("rope_theta")).and_then(Json::as_f64).map(|v| v as f32).or_else(|| f32_of("rope_local_base_freq")).unwrap_or(10_000.0);
            RopeConfig::plain(theta, rope.dims)
        });

        let window = usize_of("sliding_window").unwrap_or(0);
        // One entry per layer: which slide (Gemma 3, Qwen) and, for LFM2, which convolve.
        let layer_types = c.get("layer_types").and_then(Json::as_array);
        if let Some(types) = layer_types.filter(|t| t.len() != layers) {
            return Err(ModelError::Config(format!("{} layer_types for {layers} layers", types.len())));
        }
        let layer_kinds = match arch {
            _ if arch.is_deepseek() => vec![LayerKind::LatentAttention; layers],
            Architecture::Lfm2 => lfm2_layer_kinds(c, layer_types, layers)?,
            Architecture::Mamba2 => vec![LayerKind::Ssm; layers],
            Architecture::GraniteHybrid => granite_layer_kinds(layer_types, layers)?,
            _ => vec![LayerKind::Attention; layers],
        };
        let layer_windows: Vec<usize> = match layer_types {
            Some(types) => types.iter().map(|t| if t.as_str() == Some("sliding_attention") { window } else { 0 }).collect(),
            None => (0..layers)
                .map(|i| {
                    let slides = arch.gemma_layer_slides(i, usize_of("sliding_window_pattern").unwrap_or(6)).unwrap_or(match arch {
                        Architecture::Mistral | Architecture::Mixtral | Architecture::Phi3 => true,
                        Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Qwen3Moe => {
                            c.get("use_sliding_window").and_then(Json::as_bool) == Some(true) && i >= usize_of("max_window_layers").unwrap_or(0)
                        }
                        _ => false,
                    });
                    if slides {
                        window
                    } else {
                        0
                    }
                })
                .collect(),
        };
        // SmolLM3's `no_rope_layers`: 1 where the layer uses RoPE, 0 for NoPE; Granite's
        // hybrids rotate only with `position_embedding_type: "rope"`.
        let layer_rope = match c.get("no_rope_layers").and_then(Json::as_array) {
            _ if arch == Architecture::GraniteHybrid => vec![c.get("position_embedding_type").and_then(Json::as_str) == Some("rope"); layers],
            Some(flags) if arch == Architecture::SmolLM3 => {
                if flags.len() != layers {
                    return Err(ModelError::Config(format!("{} no_rope_layers for {layers} layers", flags.len())));
                }
                let flag = |f: &Json| match f {
                    Json::Bool(b) => Some(*b),
                    Json::Number(n) => n.as_u64().filter(|&v| v <= 1).map(|v| v == 1),
                    _ => None,
                };
                flags.iter().map(|f| flag(f).ok_or_else(|| ModelError::Config(format!("no_rope_layers holds {f}, not 0 or 1")))).collect::<Result<_>>()?
            }
            _ => arch.default_layer_rope(layers, usize_of("no_rope_layer_interval").unwrap_or(4)),
        };
        let act = c.get("hidden_activation").or_else(|| c.get("hidden_act")).and_then(Json::as_str).unwrap_or("silu");
        let activation = match act {
            // GPT-OSS's experts: alpha fixed in transformers, the limit from the config.
            _ if arch == Architecture::GptOss => Activation::SwigluOai { alpha: 1.702, limit: f32_of("swiglu_limit").unwrap_or(7.0) },
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" => Activation::GeluTanh,
            other => return Err(ModelError::Config(format!("activation `{other}` is not supported"))),
        };
        let ids = |v: Option<&Json>| -> Vec<u32> {
            match v {
                Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
                Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).map(|v| v as u32).collect(),
                _ => vec![],
            }
        };
        let eos = ids(generation.and_then(|g| g.get("eos_token_id")));
        let bos = ids(generation.and_then(|g| g.get("bos_token_id")).or_else(|| c.get("bos_token_id"))).first().copied();
        let qpas = f32_of("query_pre_attn_scalar").unwrap_or(head_dim as f32);
        let mscale_all_dim = global.and_then(|p| p.get("mscale_all_dim")).and_then(Json::as_f64).map(|v| v as f32);
        let mla_scale = mla.as_ref().map(|m| mla_softmax_scale(m, rope.scaling, mscale_all_dim));
        let mut config = Self {
            arch,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            mla,
            ffn: match arch {
                Architecture::Lfm2 => lfm2_ffn(c, &need)?,
                Architecture::Mamba2 => 0,
                Architecture::GraniteHybrid => need("shared_intermediate_size")?,
                _ => need("intermediate_size")?,
            },
            vocab: need("vocab_size")?,
            rms_eps: f32_of("rms_norm_eps").or_else(|| f32_of("norm_eps")).or_else(|| f32_of("layer_norm_epsilon")).unwrap_or(1e-6),
            rope,
            rope_local,
            // DeepSeek rotates adjacent pairs (V3 unless `rope_interleave` is false).
            rope_layout: if arch.is_deepseek() && c.get("rope_interleave").and_then(Json::as_bool) != Some(false) {
                RopeLayout::Interleaved
            } else {
                RopeLayout::Neox
            },
            layer_windows,
            layer_rope,
            layer_kinds,
            conv_kernel: match arch {
                Architecture::Lfm2 => usize_of("conv_L_cache").unwrap_or(3),
                Architecture::Mamba2 => usize_of("conv_kernel").unwrap_or(4),
                Architecture::GraniteHybrid => usize_of("mamba_d_conv").unwrap_or(4),
                _ => 0,
            },
            ssm: match arch {
                Architecture::Mamba2 => Some(mamba2_ssm(c, &need)?),
                Architecture::GraniteHybrid => Some(granite_ssm(c, hidden, &need)?),
                _ => None,
            },
            moe,
            attn_scale: match mla_scale {
                Some(s) => s,
                None if arch == Architecture::GraniteHybrid => f32_of("attention_multiplier").unwrap_or(1.0),
                None => 1.0 / qpas.sqrt(),
            },
            attn_softcap: f32_of("attn_logit_softcapping").unwrap_or(0.0),
            final_softcap: f32_of("final_logit_softcapping").unwrap_or(0.0),
            embed_scale: if arch.is_gemma() { (hidden as f32).sqrt() } else { f32_of("embedding_multiplier").unwrap_or(1.0) },
            residual_scale: f32_of("residual_multiplier").unwrap_or(1.0),
            logit_scale: 1.0 / f32_of("logits_scaling").unwrap_or(1.0),
            norm_offset: if arch.is_gemma() { 1.0 } else { 0.0 },
            activation,
            tie_embeddings: c
                .get("tie_word_embeddings")
                .or_else(|| c.get("tie_embedding"))
                .and_then(Json::as_bool)
                .unwrap_or(arch.is_gemma() || arch == Architecture::Lfm2),
            context_length: max_pos,
            bos_token_id: bos,
            eos_token_ids: eos,
            bidirectional: c.get("use_bidirectional_attention").and_then(Json::as_bool).unwrap_or(false),
        }
        .check()?;
        for id in ids(c.get("eos_token_id")) {
            config.add_stop_token(id);
        }
        Ok(config)
    }

    /// Generation also stops at `id` (kept once, in the order added).
    pub fn add_stop_token(&mut self, id: u32) {
        if !self.eos_token_ids.contains(&id) {
            self.eos_token_ids.push(id);
        }
    }
}

/// YaRN's attention factor, transformers' `get_mscale`: 0.1 · mscale · ln(factor) + 1 (1 for
/// factors up to 1).
fn yarn_mscale(factor: f32, mscale: f32) -> f32 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

fn yarn_attention_factor(factor: f32) -> f32 {
    yarn_mscale(factor, 1.0)
}

/// MLA's softmax scale: 1/√(nope + rope), the heads' q·k width (not the latent's), times
/// mscale² with YaRN and an `mscale_all_dim` (DeepSeek's code, transformers' V3, llama.cpp).
fn mla_softmax_scale(m: &MlaConfig, scaling: RopeScaling, mscale_all_dim: Option<f32>) -> f32 {
    let base = 1.0 / (m.q_head() as f32).sqrt();
    match (scaling, mscale_all_dim) {
        (RopeScaling::Yarn { factor, .. }, Some(all)) if all != 0.0 => base * yarn_mscale(factor, all).powi(2),
        _ => base,
    }
}

/// DeepSeek's mixture from its config.json: V2's softmax router (limited to the best groups by
/// their best expert with `topk_method: group_limited_greedy`), V3's sigmoid one (groups by
/// their best two); weights normalised where `norm_topk_prob` says, scaled by
/// `routed_scaling_factor`; `n_shared_experts` experts' worth of shared MLP.
fn deepseek_moe(c: &Json, arch: Architecture, need: &dyn Fn(&str) -> Result<usize>) -> Result<MoeConfig> {
    let usize_of = |k: &str| c.get(k).and_then(Json::as_u64).map(clamp_size);
    let str_of = |k: &str| c.get(k).and_then(Json::as_str);
    let v3 = arch == Architecture::DeepseekV3;
    let sigmoid = v3 || str_of("scoring_func") == Some("sigmoid");
    let method = str_of("topk_method").unwrap_or(if v3 { "noaux_tc" } else { "greedy" });
    let group_score = match method {
        "greedy" => None,
        "group_limited_greedy" => Some(GroupScore::Max),
        "noaux_tc" => Some(GroupScore::TopTwoSum),
        other => return Err(ModelError::Config(format!("DeepSeek's topk_method `{other}` is not supported"))),
    };
    let expert_ffn = need("moe_intermediate_size")?;
    let (groups, groups_used) = match group_score {
        Some(_) => (usize_of("n_group").unwrap_or(1).max(1), usize_of("topk_group").unwrap_or(1).max(1)),
        None => (1, 1),
    };
    Ok(MoeConfig {
        experts: need("n_routed_experts")?,
        top_k: need("num_experts_per_tok")?,
        expert_ffn,
        normalize: c.get("norm_topk_prob").and_then(Json::as_bool).unwrap_or(v3),
        routing: Routing {
            scoring: if sigmoid { RouterScoring::Sigmoid } else { RouterScoring::Softmax },
            groups,
            groups_used,
            group_score: group_score.unwrap_or_default(),
            scale: c.get("routed_scaling_factor").and_then(Json::as_f64).unwrap_or(1.0) as f32,
        },
        shared_ffn: usize_of("n_shared_experts").unwrap_or(0).saturating_mul(expert_ffn),
    })
}

/// Mamba2's mixer sizes from its config.json (transformers' `Mamba2Config` defaults where a
/// key is missing). `time_step_limit` as written by Python may hold `Infinity`, read as null:
/// no limit.
fn mamba2_ssm(c: &Json, need: &dyn Fn(&str) -> Result<usize>) -> Result<SsmConfig> {
    let limit = c.get("time_step_limit").and_then(Json::as_array);
    let bound = |i: usize, default: f32| limit.and_then(|l| l.get(i)).and_then(Json::as_f64).map_or(default, |v| v.min(f32::MAX as f64) as f32);
    Ok(SsmConfig {
        heads: need("num_heads")?,
        head_dim: need("head_dim")?,
        state: c.get("state_size").and_then(Json::as_u64).map_or(128, clamp_size),
        groups: c.get("n_groups").and_then(Json::as_u64).map_or(8, clamp_size),
        dt_min: bound(0, 0.0),
        dt_max: bound(1, f32::MAX),
    })
}

/// Granite 4.0 hybrids' Mamba2 sizes (`mamba_*` keys, transformers' defaults where missing;
/// no time-step limits, as transformers has it).
fn granite_ssm(c: &Json, hidden: usize, need: &dyn Fn(&str) -> Result<usize>) -> Result<SsmConfig> {
    let size = |k: &str, default: usize| c.get(k).and_then(Json::as_u64).map_or(default, clamp_size);
    let heads = need("mamba_n_heads")?;
    // "auto" (or absent): the inner width (expand · hidden) over the heads.
    let inner = size("mamba_expand", 2).saturating_mul(hidden);
    let head_dim = c.get("mamba_d_head").and_then(Json::as_u64).map_or_else(|| inner.checked_div(heads).unwrap_or(0), clamp_size);
    if heads.saturating_mul(head_dim) != inner {
        return Err(ModelError::Config(format!("{heads} SSM heads of {head_dim} do not make the inner width {inner} (mamba_expand · hidden)")));
    }
    Ok(SsmConfig { heads, head_dim, state: size("mamba_d_state", 256), groups: size("mamba_n_groups", 1), dt_min: 0.0, dt_max: f32::MAX })
}

/// Granite 4.0 hybrids' `layer_types` ("mamba" or "attention"; its length already checked),
/// else every layer Mamba2 (transformers' default).
fn granite_layer_kinds(layer_types: Option<&Vec<Json>>, layers: usize) -> Result<Vec<LayerKind>> {
    let Some(types) = layer_types else { return Ok(vec![LayerKind::Ssm; layers]) };
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("mamba") => Ok(LayerKind::Ssm),
            Some("attention") => Ok(LayerKind::Attention),
            _ => Err(ModelError::Config(format!("layer type {t} is not supported (mamba, attention)"))),
        })
        .collect()
}

/// LFM2's layer kinds: `layer_types` ("conv" or "full_attention"; its length already checked),
/// else the layers `full_attn_idxs` lists attend and the rest convolve, else every layer attends
/// (transformers' defaults).
fn lfm2_layer_kinds(c: &Json, layer_types: Option<&Vec<Json>>, layers: usize) -> Result<Vec<LayerKind>> {
    if let Some(types) = layer_types {
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("conv") => Ok(LayerKind::ShortConv),
                Some("full_attention") => Ok(LayerKind::Attention),
                _ => Err(ModelError::Config(format!("layer type {t} is not supported (conv, full_attention)"))),
            })
            .collect();
    }
    match c.get("full_attn_idxs").and_then(Json::as_array) {
        Some(idxs) => {
            let idxs: Vec<u64> = idxs.iter().filter_map(Json::as_u64).collect();
            Ok((0..layers as u64).map(|i| if idxs.contains(&i) { LayerKind::Attention } else { LayerKind::ShortConv }).collect())
        }
        None => Ok(vec![LayerKind::Attention; layers]),
    }
}

/// LFM2's MLP width as transformers' `Lfm2MLP` derives it: with `block_auto_adjust_ff_dim`
/// (the default), 2/3 of `intermediate_size` (or `block_ff_dim`), then, when
/// `block_ffn_dim_multiplier` is set, times it and rounded up to `block_multiple_of`.
fn lfm2_ffn(c: &Json, need: &dyn Fn(&str) -> Result<usize>) -> Result<usize> {
    let base = match c.get("block_ff_dim").and_then(Json::as_u64) {
        Some(v) => clamp_size(v),
        None => need("intermediate_size")?,
    };
    if c.get("block_auto_adjust_ff_dim").and_then(Json::as_bool) == Some(false) {
        return Ok(base);
    }
    let mut ff = 2 * base / 3;
    if let Some(m) = c.get("block_ffn_dim_multiplier").and_then(Json::as_f64) {
        // A hostile multiplier (negative, NaN, huge) ends as 0 or past MAX_SIZE: refused by check().
        ff = clamp_size((m * ff as f64).max(0.0) as u64);
        let multiple = c.get("block_multiple_of").and_then(Json::as_u64).map_or(256, clamp_size).max(1);
        ff = ff.div_ceil(multiple).saturating_mul(multiple);
    }
    Ok(ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `base`'s config with `extra`'s keys set over it, parsed.
    fn with_keys(base: &Json, extra: Json) -> Result<ModelConfig> {
        let mut c = base.clone();
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        ModelConfig::from_hf(&c, None)
    }

    fn hf(model_type: &str, extra: Json) -> ModelConfig {
        let base = serde_json::json!({"model_type": model_type, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 7,
            "intermediate_size": 128, "vocab_size": 512, "sliding_window": 8});
        with_keys(&base, extra).unwrap()
    }

    /// Hub configs written before transformers 5 list no `layer_types`: the per-architecture
    /// defaults decide which layers slide.
    #[test]
    fn sliding_layers_without_layer_types() {
        assert_eq!(hf("gemma2", serde_json::json!({})).layer_windows, [8, 0, 8, 0, 8, 0, 8]);
        assert_eq!(hf("gemma3_text", serde_json::json!({"sliding_window_pattern": 3})).layer_windows, [8, 8, 0, 8, 8, 0, 8]);
        assert_eq!(hf("mistral", serde_json::json!({})).layer_windows, [8; 7]);
        assert_eq!(hf("llama", serde_json::json!({})).layer_windows, [0; 7]);
        assert_eq!(hf("qwen2", serde_json::json!({"use_sliding_window": true, "max_window_layers": 5})).layer_windows, [0, 0, 0, 0, 0, 8, 8]);
        assert_eq!(hf("qwen2", serde_json::json!({})).layer_windows, [0; 7]);
    }

    /// SmolLM3's NoPE layers: listed in `no_rope_layers`, else every `no_rope_layer_interval`-th
    /// (4 by default, and always 4 in GGUF, as llama.cpp has it); other families rotate every layer.
    #[test]
    fn nope_layers() {
        assert_eq!(hf("smollm3", serde_json::json!({})).layer_rope, [true, true, true, false, true, true, true]);
        assert_eq!(hf("smollm3", serde_json::json!({"no_rope_layer_interval": 3})).layer_rope, [true, true, false, true, true, false, true]);
        let listed = hf("smollm3", serde_json::json!({"no_rope_layers": [0, 1, 1, 1, 1, 1, true]}));
        assert_eq!(listed.layer_rope, [false, true, true, true, true, true, true]);
        assert_eq!(hf("llama", serde_json::json!({"no_rope_layers": [0, 0, 0, 0, 0, 0, 0]})).layer_rope, [true; 7], "only SmolLM3 reads it");
        let bad = |flags: Json| {
            let mut c = serde_json::json!({"model_type": "smollm3", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 7,
                "intermediate_size": 128, "vocab_size": 512});
            c["no_rope_layers"] = flags;
            ModelConfig::from_hf(&c, None).unwrap_err().to_string()
        };
        assert!(bad(serde_json::json!([1, 1])).contains("2 no_rope_layers for 7 layers"));
        assert!(bad(serde_json::json!([1, 1, 1, 2, 1, 1, 1])).contains("not 0 or 1"));
        assert!(bad(serde_json::json!([1, 1, 1, "x", 1, 1, 1])).contains("not 0 or 1"));
    }

    /// LFM2: which layers convolve, its MLP width rule (as transformers' `Lfm2MLP`), its norm eps
    /// key; hostile values are errors.
    #[test]
    fn lfm2_layers_and_mlp_width() {
        let kinds = |extra: Json| hf("lfm2", extra).layer_kinds;
        use LayerKind::{Attention as A, ShortConv as C};
        let types = serde_json::json!({"layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv"]});
        assert_eq!(kinds(types), [C, C, A, C, C, A, C]);
        assert_eq!(kinds(serde_json::json!({"full_attn_idxs": [1, 6]})), [C, A, C, C, C, C, A]);
        assert_eq!(hf("llama", serde_json::json!({})).layer_kinds, [A; 7]);
        let c = hf("lfm2", serde_json::json!({"norm_eps": 3e-5, "conv_L_cache": 4}));
        assert_eq!((c.rms_eps, c.conv_kernel, c.tie_embeddings), (3e-5, 4, true));
        // LFM2-350M: block_ff_dim 6656 → 4437 → ×1.0 → 4608 (multiple of 256).
        let ffn = |extra: Json| hf("lfm2", extra).ffn;
        assert_eq!(ffn(serde_json::json!({"block_ff_dim": 6656, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256})), 4608);
        assert_eq!(ffn(serde_json::json!({"intermediate_size": 200, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 32})), 160);
        assert_eq!(ffn(serde_json::json!({"intermediate_size": 200, "block_ffn_dim_multiplier": null})), 133, "no multiplier: no rounding");
        assert_eq!(ffn(serde_json::json!({"intermediate_size": 200, "block_auto_adjust_ff_dim": false})), 200);
        let lfm2 = serde_json::json!({"model_type": "lfm2", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 128, "vocab_size": 512});
        let bad = |extra: Json| with_keys(&lfm2, extra).unwrap_err().to_string();
        assert!(bad(serde_json::json!({"layer_types": ["conv", "mamba"]})).contains("not supported"));
        assert!(bad(serde_json::json!({"layer_types": ["conv"]})).contains("1 layer_types for 2 layers"));
        assert!(bad(serde_json::json!({"layer_types": ["conv", "conv"], "conv_L_cache": 99})).contains("99 positions"));
        assert!(bad(serde_json::json!({"layer_types": ["conv", "conv"], "conv_L_cache": 1})).contains("1 positions"));
        assert!(bad(serde_json::json!({"block_ffn_dim_multiplier": -2.0})).contains("intermediate size 0"));
        assert!(bad(serde_json::json!({"block_ffn_dim_multiplier": 1e30})).contains("out of range"));
    }

    /// Mamba2: the SSM sizes from config.json as transformers writes it (`Infinity` included)
    /// and from llama.cpp's GGUF keys' names; no attention or MLP sizes needed; hostile sizes
    /// are errors.
    #[test]
    fn mamba2_sizes() {
        let text = r#"{"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 512, "num_heads": 8,
            "head_dim": 16, "state_size": 16, "n_groups": 2, "conv_kernel": 4, "layer_norm_epsilon": 1e-5,
            "time_step_limit": [0.001, Infinity], "note": "NaN and Infinity in a string stay"}"#;
        let json = parse_json(text).unwrap();
        assert_eq!(json["note"], "NaN and Infinity in a string stay");
        let c = ModelConfig::from_hf(&json, None).unwrap();
        assert_eq!(c.layer_kinds, [LayerKind::Ssm; 3]);
        assert_eq!((c.ffn, c.heads, c.conv_kernel, c.rms_eps, c.tie_embeddings), (0, 0, 4, 1e-5, false));
        let s = c.ssm.unwrap();
        assert_eq!((s.inner(), s.conv_channels(), s.proj_width(), s.dt_min, s.dt_max), (128, 192, 328, 0.001, f32::MAX));
        assert!(parse_json(r#"{"a": Infinityx}"#).is_err(), "only the bare literal");
        let bad = |extra: Json| with_keys(&json, extra).unwrap_err().to_string();
        assert!(bad(serde_json::json!({"n_groups": 3})).contains("do not split into 3 groups"));
        assert!(bad(serde_json::json!({"n_groups": 0})).contains("groups"));
        assert!(bad(serde_json::json!({"head_dim": 100000})).contains("head_dim"));
        assert!(bad(serde_json::json!({"state_size": 1u64 << 40})).contains("state"));
        assert!(bad(serde_json::json!({"conv_kernel": 1})).contains("1 positions"));
        assert!(bad(serde_json::json!({"time_step_limit": [0.5, 0.1]})).contains("time-step limits"));
        assert!(bad(serde_json::json!({"time_step_limit": [-1.0, 0.1]})).contains("time-step limits"));
        assert!(bad(serde_json::json!({"num_heads": null})).contains("num_heads"));
        let e = bad(serde_json::json!({"num_heads": 1 << 16, "head_dim": 256, "state_size": 1024, "n_groups": 1}));
        assert!(e.contains("out of range"), "{e}");
    }

    /// Granite 4.0's dense hybrid: layer kinds, the shared MLP's width, its multipliers,
    /// hidden/heads-wide attention heads, NoPE unless `position_embedding_type` is "rope";
    /// its mixture-of-experts variants and unknown layer types are refused.
    #[test]
    fn granite_hybrid_config() {
        let base = serde_json::json!({"model_type": "granitemoehybrid", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 99, "num_hidden_layers": 4, "vocab_size": 512, "intermediate_size": 1000, "shared_intermediate_size": 96,
            "num_local_experts": 0, "layer_types": ["mamba", "attention", "mamba", "mamba"], "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22, "attention_multiplier": 0.015625, "logits_scaling": 8.0, "position_embedding_type": "nope",
            "mamba_n_heads": 8, "mamba_d_head": "auto", "mamba_d_state": 16, "mamba_n_groups": 1, "mamba_d_conv": 4, "mamba_expand": 2});
        let with = |extra: Json| with_keys(&base, extra);
        let c = with(serde_json::json!({})).unwrap();
        use LayerKind::{Attention as A, Ssm as S};
        assert_eq!(c.layer_kinds, [S, A, S, S]);
        assert_eq!((c.ffn, c.head_dim, c.conv_kernel), (96, 16, 4));
        assert_eq!((c.embed_scale, c.residual_scale, c.logit_scale, c.attn_scale), (12.0, 0.22, 0.125, 0.015625));
        assert_eq!(c.layer_rope, [false; 4]);
        let s = c.ssm.unwrap();
        assert_eq!((s.heads, s.head_dim, s.state, s.groups), (8, 16, 16, 1));
        assert_eq!(with(serde_json::json!({"position_embedding_type": "rope"})).unwrap().layer_rope, [true; 4]);
        assert_eq!(with(serde_json::json!({"layer_types": null})).unwrap().layer_kinds, [S; 4]);
        let err = |extra: Json| with(extra).unwrap_err().to_string();
        assert!(err(serde_json::json!({"num_local_experts": 8})).contains("mixture-of-experts"));
        assert!(err(serde_json::json!({"layer_types": ["mamba", "conv", "mamba", "mamba"]})).contains("not supported"));
        assert!(err(serde_json::json!({"mamba_n_heads": 7})).contains("SSM"));
    }

    #[test]
    fn mixture_of_experts_configs() {
        let qwen = serde_json::json!({"model_type": "qwen3_moe", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "num_hidden_layers": 3, "vocab_size": 512, "intermediate_size": 128, "num_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 48, "norm_topk_prob": true});
        let c = with_keys(&qwen, serde_json::json!({})).unwrap();
        assert_eq!(c.moe, Some(MoeConfig::plain(8, 2, 48, true)));
        assert_eq!((c.arch, c.ffn), (Architecture::Qwen3Moe, 128));
        assert!(c.arch.has_qk_norm());
        // transformers' default: the softmax over all experts, not renormalised.
        assert!(!with_keys(&qwen, serde_json::json!({"norm_topk_prob": null})).unwrap().moe.unwrap().normalize);
        let mixtral = serde_json::json!({"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "vocab_size": 512, "intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2});
        let m = with_keys(&mixtral, serde_json::json!({})).unwrap().moe.unwrap();
        assert_eq!(m, MoeConfig::plain(4, 2, 64, true));
        let err = |base: &Json, extra: Json| with_keys(base, extra).unwrap_err().to_string();
        assert!(err(&qwen, serde_json::json!({"num_experts_per_tok": 9})).contains("9 of 8 experts"));
        assert!(err(&qwen, serde_json::json!({"num_experts_per_tok": 0})).contains("experts per token"));
        assert!(err(&qwen, serde_json::json!({"num_experts": 1u64 << 40})).contains("experts per token"));
        assert!(err(&qwen, serde_json::json!({"moe_intermediate_size": 0})).contains("expert width"));
        assert!(err(&mixtral, serde_json::json!({"num_local_experts": null})).contains("num_local_experts"));
    }

    /// DeepSeek: MLA's sizes (attention as one kv head over kv_rank + rope, the softmax scale
    /// over the heads' own q·k width, × mscale² with YaRN), V2's and V3's routers; hostile
    /// sizes and routings are errors.
    #[test]
    fn deepseek_configs() {
        let v2 = serde_json::json!({"model_type": "deepseek_v2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
            "num_hidden_layers": 3, "vocab_size": 512, "intermediate_size": 128, "q_lora_rank": null, "kv_lora_rank": 32,
            "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 32, "n_shared_experts": 2, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
            "routed_scaling_factor": 1.5});
        let c = with_keys(&v2, serde_json::json!({})).unwrap();
        assert_eq!((c.arch, c.heads, c.kv_heads, c.head_dim, c.rope.dims), (Architecture::DeepseekV2, 4, 1, 40, 8));
        assert_eq!(c.mla, Some(MlaConfig { q_rank: None, kv_rank: 32, nope: 16, rope: 8, v_dim: 16 }));
        assert_eq!(c.layer_kinds, [LayerKind::LatentAttention; 3]);
        assert_eq!((c.rope_layout, c.attn_scale), (RopeLayout::Interleaved, 1.0 / 24f32.sqrt()));
        let m = c.moe.unwrap();
        assert_eq!((m.shared_ffn, m.normalize, m.routing.scoring, m.routing.groups, m.routing.groups_used), (64, false, RouterScoring::Softmax, 4, 2));
        assert_eq!((m.routing.group_score, m.routing.scale), (GroupScore::Max, 1.5));
        assert_eq!(with_keys(&v2, serde_json::json!({"topk_method": "greedy"})).unwrap().moe.unwrap().routing.groups, 1);
        let v3 = with_keys(
            &v2,
            serde_json::json!({"model_type": "deepseek_v3", "q_lora_rank": 24, "topk_method": null, "norm_topk_prob": null,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 1.0}}),
        )
        .unwrap();
        let m = v3.moe.unwrap();
        assert_eq!(
            (v3.mla.unwrap().q_rank, m.normalize, m.routing.scoring, m.routing.group_score),
            (Some(24), true, RouterScoring::Sigmoid, GroupScore::TopTwoSum)
        );
        // mscale = 0.1 · ln 4 + 1; cos and sin unscaled (mscale / mscale_all_dim).
        let mscale = 0.1 * 4f32.ln() + 1.0;
        assert!((v3.attn_scale - mscale * mscale / 24f32.sqrt()).abs() < 1e-6 && v3.rope.attention_factor == 1.0);
        let err = |extra: Json| with_keys(&v2, extra).unwrap_err().to_string();
        assert!(err(serde_json::json!({"kv_lora_rank": 30})).contains("latent attention"), "kv rank not a multiple of 8");
        assert!(err(serde_json::json!({"q_lora_rank": 12})).contains("latent attention"), "q rank not a multiple of 8");
        assert!(err(serde_json::json!({"qk_nope_head_dim": 0, "qk_rope_head_dim": 8})).contains("latent attention"), "no nope dims");
        assert!(err(serde_json::json!({"qk_rope_head_dim": 7})).contains("not supported"));
        assert!(err(serde_json::json!({"kv_lora_rank": 1u64 << 40})).contains("not supported"));
        assert!(err(serde_json::json!({"n_group": 3})).contains("routing"), "groups must divide the experts");
        assert!(err(serde_json::json!({"topk_group": 9})).contains("routing"));
        assert!(err(serde_json::json!({"n_group": 64, "n_routed_experts": 64})).contains("routing"), "at most 32 groups");
        assert!(err(serde_json::json!({"topk_method": "noaux_tc", "n_group": 8})).contains("routing"), "best-two groups of one expert");
        assert!(err(serde_json::json!({"topk_method": "cosine"})).contains("topk_method"));
        assert!(err(serde_json::json!({"n_shared_experts": 1u64 << 40})).contains("out of range"));
        assert!(err(serde_json::json!({"kv_lora_rank": null})).contains("kv_lora_rank"));
    }

    /// Sizes are checked before anything is allocated by them (2^40 layers aborted the process).
    #[test]
    fn absurd_sizes_are_errors_before_allocating() {
        let base = serde_json::json!({"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 7,
            "intermediate_size": 128, "vocab_size": 512, "sliding_window": 8});
        let with = |k: &str, v: Json| {
            let mut c = base.clone();
            c[k] = v;
            ModelConfig::from_hf(&c, None).unwrap_err().to_string()
        };
        assert!(with("num_hidden_layers", serde_json::json!(1u64 << 40)).contains("layer count"));
        assert!(with("num_hidden_layers", serde_json::json!(0)).contains("layer count"));
        let e = with("hidden_size", serde_json::json!(1u64 << 40));
        assert!(e.contains("out of range") || e.contains("head_dim 4194304 is not supported"), "{e}");
        assert!(with("vocab_size", serde_json::json!(u64::MAX)).contains("out of range"));
        assert!(with("intermediate_size", serde_json::json!((1u64 << 32) + 128)).contains("out of range"), "no wrap to 128 on wasm32");
    }
}
