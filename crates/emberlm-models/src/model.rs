//! A decoder-only transformer on emberlm-core, covering Llama, Mistral, Qwen2/3, Phi-3,
//! Gemma 2/3, SmolLM3 and LFM2 with the switches in [`ModelConfig`]. Weights come from any
//! [`WeightStore`] (GGUF or safetensors). Per layer, an attention layer:
//!
//! ```text
//! normed = rms_norm(residual += previous output)          (first layer: rms_norm(embedding·scale))
//! qkv    = normed·[Wq | Wk | Wv]ᵀ (+ biases)               one fused row per token
//! q, k   = head_rms_norm(q), head_rms_norm(k)             Qwen3, Gemma 3
//! rope(q heads) in place, rope(k heads) into the cache, v into the cache   one op
//!                                                         (NoPE layers: no rotation, a copy)
//! attn   = attention(q, cache)                            causal, per-layer window, soft-cap
//! out    = attn·Woᵀ;  out = rms_norm(out)                 Gemma's post-attention norm
//! normed = rms_norm(residual += out)
//! act    = act(normed·Wgateᵀ) · normed·Wupᵀ                 one op when decoding (gated_matvec)
//! out    = act·Wdownᵀ;  out = rms_norm(out)                 Gemma's post-MLP norm
//! ```
//! then `logits = rms_norm(residual += out)[last]·Woutᵀ`, Gemma 2's soft-cap, and the argmax
//! on the GPU. An LFM2 short-convolution layer replaces the attention lines with
//!
//! ```text
//! bcx    = normed·Win_projᵀ                                 [B | C | x] per token
//! conv   = C · conv1d(B · x) over the last conv_kernel positions   one op, rolling state
//! out    = conv·Wout_projᵀ
//! ```
//!
//! A Mamba2 layer (no MLP after it) mixes with
//!
//! ```text
//! proj   = normed·Win_projᵀ                                 [z | x | B | C | dt] per token
//! xbc    = silu(conv1d([x | B | C]) + bias)                 one op, rolling state
//! y      = ssm_scan(x, B, C, dt) · silu(z)                  one op (decode) or two (prefill)
//! out    = group_rms_norm(y)·Wout_projᵀ
//! ```
//!
//! What each layer keeps between steps — a KV cache, a rolling convolution state, or
//! Mamba2's convolution and scan states — is its [`LayerState`]; a [`Session`] holds one per
//! layer.

use emberlm_core::ops::{AttentionParams, ConvStyle, HeadLinearParams, LatentRopeParams, MoeRouteParams, ShortConvParams, SsmScanParams};
use emberlm_core::{DType, GpuDevice, PackedMatrix};

use crate::backend::{Backend, FoldedNorm};

use crate::config::{Architecture, LayerKind, LongRope, MlaConfig, ModelConfig, MoeConfig, RopeConfig, SsmConfig};
use crate::error::{ModelError, Result};
use crate::gguf::ByteSource;
use crate::text::NextTurnOpening;
use crate::weights::{GgufStore, WeightStore};

/// The most KV cache positions a model may be loaded with (the per-layer binding limit usually
/// bites first).
pub const MAX_CONTEXT: usize = 1 << 20;

/// File bytes read per upload piece while loading a tensor.
const LOAD_PIECE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight dtype for the matrices; `None` keeps each tensor's own precision (exact).
    pub dtype: Option<DType>,
    /// KV cache capacity in positions.
    pub context: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: None, context: 2048 }
    }
}

/// One part of a projection: its rows land at column `offset` of the output row.
struct LinearPart<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
    offset: usize,
}

/// A projection stored as one tensor (fused at load when the parts share a dtype) or as
/// several parts writing side by side into one output row.
struct Linear<B: Backend> {
    parts: Vec<LinearPart<B>>,
}

/// What mixes positions in a layer.
enum Mixer<B: Backend> {
    Attention {
        /// Writes [q | k | v].
        qkv: Linear<B>,
        q_norm: Option<B::Tensor>,
        k_norm: Option<B::Tensor>,
        /// GPT-OSS's per-head sink logits.
        sinks: Option<B::Tensor>,
        o: Linear<B>,
    },
    /// LFM2's gated short convolution.
    ShortConv {
        /// Writes [B | C | x].
        in_proj: Linear<B>,
        /// [hidden, conv_kernel] f32.
        conv: B::Tensor,
        conv_bias: Option<B::Tensor>,
        out_proj: Linear<B>,
    },
    /// DeepSeek's multi-head latent attention (see [`LayerState::Latent`]): the heads' keys
    /// and values are up-projections of one cached latent per position, absorbed into each
    /// head's query (`k_b`) and output (`v_b`), so attention reads only the latent.
    LatentAttention {
        /// Writes [q (or the low-rank q_a) | latent | rope key].
        a: Linear<B>,
        /// V3's low-rank q: q_a's norm and its up-projection to every head's [nope | rope].
        q_a_norm: Option<B::Tensor>,
        q_b: Option<B::Tensor>,
        kv_a_norm: B::Tensor,
        /// `[heads · kv_rank, nope]`: per head, its key up-projection transposed (llama.cpp's
        /// `attn_k_b`): a head's query times it is that query in the latent space.
        k_b: B::Tensor,
        /// `[heads · v_dim, kv_rank]`: per head, its value up-projection (`attn_v_b`).
        v_b: B::Tensor,
        o: Linear<B>,
    },
    /// Mamba2's state-space mixer.
    Ssm {
        /// Writes [z | x | B | C | dt].
        in_proj: Linear<B>,
        /// [x | B | C channels, conv_kernel] f32.
        conv: B::Tensor,
        conv_bias: Option<B::Tensor>,
        /// [A | D | dt_bias], one value per head each (A = -exp(A_log)).
        head_params: B::Tensor,
        /// The gated norm's weight, heads·head_dim.
        norm: B::Tensor,
        out_proj: Linear<B>,
    },
}

/// The MLP after the mixer: its norm, a gated MLP or a mixture of experts, Gemma's post-norm.
struct FeedForward<B: Backend> {
    norm: B::Tensor,
    mlp: Mlp<B>,
    post_norm: Option<B::Tensor>,
}

/// A gated MLP.
struct DenseMlp<B: Backend> {
    /// Writes [gate | up].
    gate_up: Linear<B>,
    down: Linear<B>,
    /// The intermediate width (a mixture's shared experts' may differ from the model's).
    width: usize,
}

enum Mlp<B: Backend> {
    Dense(DenseMlp<B>),
    /// A mixture of experts: only the router's top-k experts run for each token.
    Experts {
        /// Writes one logit per expert.
        router: Linear<B>,
        /// `[experts, 2·expert_ffn, hidden]`: each expert's gate rows, then its up rows.
        gate_up: B::Tensor,
        /// `[experts, hidden, expert_ffn]`.
        down: B::Tensor,
        /// GPT-OSS's expert biases: `[experts · 2·expert_ffn]` ([gate | up] per expert) and
        /// `[experts · hidden]`.
        gate_up_bias: Option<B::Tensor>,
        down_bias: Option<B::Tensor>,
        /// DeepSeek-V3's per-expert bias for choosing the experts (not for their weights).
        selection_bias: Option<B::Tensor>,
        /// DeepSeek's shared experts: an MLP every token runs beside its picks.
        shared: Option<DenseMlp<B>>,
    },
}

struct Layer<B: Backend> {
    /// The norm before the mixer (attention or convolution).
    mixer_norm: B::Tensor,
    mixer: Mixer<B>,
    post_attn_norm: Option<B::Tensor>,
    /// `None` in Mamba2, whose layers are a mixer only.
    ffn: Option<FeedForward<B>>,
}

/// A loaded model on backend `B` (the GPU unless said otherwise).
pub struct Model<B: Backend = GpuDevice> {
    pub config: ModelConfig,
    pub context: usize,
    /// Bytes of weights on the backend (GPU buffers or CPU memory).
    pub weight_bytes: u64,
    /// Bytes of the mixtures' expert weights (within `weight_bytes`), of which a decode step
    /// reads top_k / experts.
    pub expert_bytes: u64,
    /// The widest dense MLP a layer runs (its own, or a mixture's shared experts); 0 when every
    /// layer is a mixture without shared experts (Mixtral), which then gets no dense buffers.
    dense_ffn: usize,
    embed: B::Tensor,
    /// `None` when the output projection is tied to the embedding.
    output: Option<B::Tensor>,
    output_norm: B::Tensor,
    layers: Vec<Layer<B>>,
    rope: B::Rope,
    rope_local: Option<B::Rope>,
    /// A table that rotates nothing, for NoPE layers (SmolLM3).
    rope_none: Option<B::Rope>,
}

struct Loader<'a, B: Backend> {
    dev: &'a B,
    store: &'a dyn WeightStore,
    dtype: Option<DType>,
    bytes: u64,
}

/// Bytes of one layer's key (or value) cache: f32 × kv_heads × head_dim × positions. In u64: on
/// wasm32 the product of config sizes (each up to 2^24) overflows a usize.
fn kv_layer_bytes(c: &ModelConfig, context: usize) -> u64 {
    c.kv_heads as u64 * c.head_dim as u64 * context as u64 * 4
}

/// Slots of a rolling convolution state: two that steps alternate between by position parity,
/// and a checkpoint (see [`RollingSlots`]).
const CONV_STATE_SLOTS: usize = 3;
const CONV_CHECKPOINT_SLOT: usize = 2;

/// f32 values of a convolution state over `channels`: every slot of `[conv_kernel - 1][channels]`.
fn conv_state_len(c: &ModelConfig, channels: usize) -> usize {
    CONV_STATE_SLOTS * c.conv_kernel.saturating_sub(1) * channels
}

/// f32 values of a Mamba2 scan state: every slot of `[heads][state][head_dim]`.
fn ssm_state_len(s: &SsmConfig) -> usize {
    CONV_STATE_SLOTS * s.heads * s.state * s.head_dim
}

/// Bytes a session's per-layer state takes: both KV caches of each attention layer, the
/// rolling states of each convolution and Mamba2 layer.
pub fn state_bytes(c: &ModelConfig, context: usize) -> u64 {
    c.layer_kinds
        .iter()
        .map(|kind| match (kind, c.ssm_layers()) {
            (LayerKind::Attention, _) => 2 * kv_layer_bytes(c, context),
            // One latent row per position (kv_heads 1, head_dim kv_rank + rope), no values.
            (LayerKind::LatentAttention, _) => kv_layer_bytes(c, context),
            (LayerKind::ShortConv, _) => conv_state_len(c, c.hidden) as u64 * 4,
            (LayerKind::Ssm, Some(s)) => (conv_state_len(c, s.conv_channels()) + ssm_state_len(s)) as u64 * 4,
            (LayerKind::Ssm, None) => 0,
        })
        .sum()
}

/// The dtype a matrix loads as: the requested one, else the file's own; f32 when the row
/// length does not fit the format's groups.
fn load_dtype(store: &dyn WeightStore, requested: Option<DType>, name: &str, k: usize) -> Result<DType> {
    let exact = store.exact_dtype(name)?;
    let dtype = match requested {
        // MXFP4 (GPT-OSS's experts) is already 4.25 bits: another quantised format would only
        // round it again, and q4 / q8 take more room. Only f32 / f16 widen it.
        Some(d) if exact == DType::Mxfp4 && d.is_quantized() => exact,
        Some(d) => d,
        None => exact,
    };
    Ok(if k % dtype.k_multiple() == 0 { dtype } else { DType::F32 })
}

impl<B: Backend> Loader<'_, B> {
    fn expect_shape(&self, name: &str, rows: usize, k: usize) -> Result<()> {
        let found = self.store.shape(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if found != (rows, k) {
            return Err(ModelError::ShapeMismatch { tensor: name.into(), expected: vec![rows, k], found: vec![found.0, found.1] });
        }
        Ok(())
    }

    /// The dtype a matrix is loaded as: the requested one, else the file's own; f32 when the
    /// row length does not fit the format's groups.
    fn dtype_of(&self, name: &str, k: usize) -> Result<DType> {
        load_dtype(self.store, self.dtype, name, k)
    }

    /// Streams `rows` rows of `name` into `tensor` starting at row `row0`, piece by piece.
    fn upload(&mut self, tensor: &B::Tensor, row0: usize, name: &str, rows: usize) -> Result<()> {
        self.upload_rows(tensor, row0, name, 0..rows)
    }

    /// Streams rows `src` of `name` into `tensor` from its row `row0`, piece by piece.
    fn upload_rows(&mut self, tensor: &B::Tensor, row0: usize, name: &str, src: std::ops::Range<usize>) -> Result<()> {
        let rows_per_piece = (LOAD_PIECE_BYTES / self.store.row_bytes(name)?.max(1)).max(1) as usize;
        let mut r = src.start;
        while r < src.end {
            let end = (r + rows_per_piece).min(src.end);
            let packed = self.store.read_rows(name, r..end, B::dtype(tensor))?;
            self.dev.write_rows(tensor, row0 + r - src.start, &packed)?;
            r = end;
        }
        Ok(())
    }

    /// As [`Loader::linear`] at the file's own precision whatever dtype the load asks for: a
    /// mixture's router, which llama.cpp's quantizer also leaves alone — it is small, and
    /// rounding it flips the experts a token picks wherever two are close.
    fn exact_linear(&mut self, parts: &[(String, usize)], k: usize) -> Result<Linear<B>> {
        let requested = self.dtype.take();
        let linear = self.linear(parts, k);
        self.dtype = requested;
        linear
    }

    /// A mixture's biases of `parts` (each `[experts, width]`), side by side per expert
    /// (gate then up), or `None` when the model has none.
    fn expert_biases(&mut self, parts: &[String], experts: usize, width: usize) -> Result<Option<B::Tensor>> {
        if parts.iter().all(|p| self.store.shape(p).is_none()) {
            return Ok(None);
        }
        let mut values = vec![0f32; experts * width * parts.len()];
        for (j, name) in parts.iter().enumerate() {
            let part = self.vector_values(name, experts * width)?;
            for (e, row) in part.chunks_exact(width).enumerate() {
                values[(e * parts.len() + j) * width..][..width].copy_from_slice(row);
            }
        }
        let label = parts.join("+");
        Ok(Some(self.dev.from_f32(&label, &[values.len()], &values)?))
    }

    /// Layer `i`'s experts of one projection (`gate`, `up`, `down`) as `[experts, rows, k]`
    /// parts: llama.cpp's stacked `ffn_{proj}_exps` or its per-expert `ffn_{proj}.{e}`
    /// (safetensors). Returns, per expert, the tensor and the rows to read.
    fn expert_parts(&self, i: usize, proj: &str, experts: usize, rows: usize, k: usize) -> Result<Vec<(String, std::ops::Range<usize>)>> {
        let stacked = format!("blk.{i}.ffn_{proj}_exps.weight");
        if let Some(found) = self.store.shape(&stacked) {
            // u64: experts · rows may overflow a wasm32 usize for a hostile config.
            if found.0 as u64 != experts as u64 * rows as u64 || found.1 != k {
                return Err(ModelError::ShapeMismatch { tensor: stacked, expected: vec![experts, rows, k], found: vec![found.0, found.1] });
            }
            return Ok((0..experts).map(|e| (stacked.clone(), e * rows..(e + 1) * rows)).collect());
        }
        (0..experts)
            .map(|e| {
                let name = format!("blk.{i}.ffn_{proj}.{e}.weight");
                self.expect_shape(&name, rows, k)?;
                Ok((name, 0..rows))
            })
            .collect()
    }

    /// One `[experts, rows, k]` weight from `parts` per expert, each expert's parts side by
    /// side (gate then up); its dtype is theirs, or f32 when they differ (exact either way).
    fn experts(&mut self, label: String, parts: &[Vec<(String, std::ops::Range<usize>)>], rows: usize, k: usize) -> Result<B::Tensor> {
        let mut dtypes = Vec::new();
        for (name, _) in parts.iter().flat_map(|p| p.first()) {
            dtypes.push(self.dtype_of(name, k)?);
        }
        let dtype = if dtypes.iter().all(|d| *d == dtypes[0]) { dtypes[0] } else { DType::F32 };
        let experts = parts[0].len();
        let tensor = self.dev.weight(&label, &[experts, rows, k], dtype)?;
        for e in 0..experts {
            let mut row0 = e * rows;
            for part in parts {
                let (name, src) = &part[e];
                self.upload_rows(&tensor, row0, name, src.clone())?;
                row0 += src.len();
            }
        }
        self.count(&tensor);
        Ok(tensor)
    }

    fn count(&mut self, t: &B::Tensor) {
        self.bytes += B::tensor_bytes(t);
    }

    fn matrix(&mut self, name: &str, rows: usize, k: usize) -> Result<B::Tensor> {
        self.expect_shape(name, rows, k)?;
        let tensor = self.dev.weight(name, &[rows, k], self.dtype_of(name, k)?)?;
        self.upload(&tensor, 0, name, rows)?;
        self.count(&tensor);
        Ok(tensor)
    }

    /// A vector (norm weights, biases), always f32.
    fn vector(&mut self, name: &str, len: usize) -> Result<B::Tensor> {
        let values = self.vector_values(name, len)?;
        Ok(self.dev.from_f32(name, &[len], &values)?)
    }

    /// A vector's values, its size checked (and counted as loaded).
    fn vector_values(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let found = self.store.shape(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if found.0 * found.1 != len {
            return Err(ModelError::ShapeMismatch { tensor: name.into(), expected: vec![len], found: vec![found.0 * found.1] });
        }
        self.bytes += len as u64 * 4;
        self.store.read_f32(name)
    }

    /// Mamba2's per-head [A | D | dt_bias] of layer `i`, A from llama.cpp's `ssm_a` or as
    /// -exp of a checkpoint's `A_log`.
    fn ssm_head_params(&mut self, i: usize, heads: usize) -> Result<B::Tensor> {
        let n = |s: &str| format!("blk.{i}.{s}");
        let mut values = match self.store.shape(&n("ssm_a")) {
            Some(_) => self.vector_values(&n("ssm_a"), heads)?,
            None => self.vector_values(&n("ssm_a_log"), heads)?.iter().map(|v| -v.exp()).collect(),
        };
        values.extend(self.vector_values(&n("ssm_d"), heads)?);
        values.extend(self.vector_values(&n("ssm_dt.bias"), heads)?);
        Ok(self.dev.from_f32(&n("ssm A|D|dt_bias"), &[values.len()], &values)?)
    }

    /// Layer `i`'s MLA up-projections, `k_b` `[heads · kv_rank, nope]` and `v_b` `[heads ·
    /// v_dim, kv_rank]`: llama.cpp's `attn_k_b` / `attn_v_b`, or split from the checkpoint's
    /// `kv_b_proj` (`attn_kv_b`, `[heads · (nope + v_dim), kv_rank]`; older llama.cpp files
    /// too), each head's key rows transposed.
    fn latent_up_projections(&mut self, i: usize, heads: usize, m: &MlaConfig) -> Result<(B::Tensor, B::Tensor)> {
        let n = |s: &str| format!("blk.{i}.{s}");
        if self.store.shape(&n("attn_k_b.weight")).is_some() {
            return Ok((self.matrix(&n("attn_k_b.weight"), heads * m.kv_rank, m.nope)?, self.matrix(&n("attn_v_b.weight"), heads * m.v_dim, m.kv_rank)?));
        }
        let name = n("attn_kv_b.weight");
        let per_head = m.nope + m.v_dim;
        self.expect_shape(&name, heads * per_head, m.kv_rank)?;
        let kv_b = self.store.read_f32(&name)?;
        if kv_b.len() != heads * per_head * m.kv_rank {
            return Err(ModelError::ShapeMismatch { tensor: name, expected: vec![heads * per_head, m.kv_rank], found: vec![kv_b.len()] });
        }
        let (mut k_b, mut v_b) = (Vec::with_capacity(heads * m.kv_rank * m.nope), Vec::with_capacity(heads * m.v_dim * m.kv_rank));
        for head in kv_b.chunks_exact(per_head * m.kv_rank) {
            let (keys, values) = head.split_at(m.nope * m.kv_rank);
            k_b.extend((0..m.kv_rank).flat_map(|c| (0..m.nope).map(move |j| keys[j * m.kv_rank + c])));
            v_b.extend_from_slice(values);
        }
        let mut derived = |label: String, rows: usize, k: usize, values: &[f32]| -> Result<B::Tensor> {
            let tensor = self.dev.weight(&label, &[rows, k], self.dtype_of(&name, k)?)?;
            self.dev.write_rows(&tensor, 0, &PackedMatrix::pack(B::dtype(&tensor), rows, k, values))?;
            self.count(&tensor);
            Ok(tensor)
        };
        Ok((derived(n("attn_k_b.weight"), heads * m.kv_rank, m.nope, &k_b)?, derived(n("attn_v_b.weight"), heads * m.v_dim, m.kv_rank, &v_b)?))
    }

    fn optional_vector(&mut self, name: &str, len: usize) -> Result<Option<B::Tensor>> {
        if self.store.shape(name).is_some() {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Matrices `(name, rows)` with row length `k` as one projection: fused into one tensor
    /// when they load as the same dtype (one dispatch instead of several), else side by side.
    /// Biases are the names with `.bias` for `.weight`.
    fn linear(&mut self, parts: &[(String, usize)], k: usize) -> Result<Linear<B>> {
        let mut dtypes = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            self.expect_shape(name, *rows, k)?;
            dtypes.push(self.dtype_of(name, k)?);
        }
        let bias_names: Vec<String> = parts.iter().map(|(n, _)| n.replace(".weight", ".bias")).collect();
        let any_bias = bias_names.iter().any(|b| self.store.shape(b).is_some());
        if parts.len() == 1 || dtypes.iter().any(|d| *d != dtypes[0]) {
            let mut out = Vec::with_capacity(parts.len());
            let mut offset = 0;
            for ((name, rows), bias) in parts.iter().zip(&bias_names) {
                let weight = self.matrix(name, *rows, k)?;
                out.push(LinearPart { weight, bias: self.optional_vector(bias, *rows)?, offset });
                offset += rows;
            }
            return Ok(Linear { parts: out });
        }
        let total: usize = parts.iter().map(|p| p.1).sum();
        let label = parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join("+");
        let weight = self.dev.weight(&label, &[total, k], dtypes[0])?;
        let mut bias = any_bias.then(|| vec![0f32; total]);
        let mut row0 = 0;
        for ((name, rows), bias_name) in parts.iter().zip(&bias_names) {
            self.upload(&weight, row0, name, *rows)?;
            if let (Some(b), Some(_)) = (bias.as_mut(), self.store.shape(bias_name)) {
                let values = self.store.read_f32(bias_name)?;
                if values.len() != *rows {
                    return Err(ModelError::ShapeMismatch { tensor: bias_name.clone(), expected: vec![*rows], found: vec![values.len()] });
                }
                b[row0..row0 + rows].copy_from_slice(&values);
            }
            row0 += rows;
        }
        self.count(&weight);
        let bias = match bias {
            Some(values) => {
                self.bytes += total as u64 * 4;
                Some(self.dev.from_f32(&format!("{label} bias"), &[total], &values)?)
            }
            None => None,
        };
        Ok(Linear { parts: vec![LinearPart { weight, bias, offset: 0 }] })
    }
}

impl<B: Backend> Model<B> {
    /// Whether every layer is a pre-norm attention block with a dense MLP and no post-norms,
    /// the shape whose decode steps fold their norms into the projections
    /// ([`Backend::folds_norms`]).
    fn norms_fold(&self) -> bool {
        self.layers.iter().all(|l| {
            matches!(l.mixer, Mixer::Attention { .. })
                && l.post_attn_norm.is_none()
                && l.ffn.as_ref().is_some_and(|f| matches!(f.mlp, Mlp::Dense(_)) && f.post_norm.is_none())
        })
    }

    /// Weight bytes one decode step reads: every projection, norm and bias once, the output
    /// head (the whole embedding when tied) and one embedding row. For a dense model this is
    /// about `weight_bytes`; the figure `emberlm bench` turns into GB/s.
    pub fn decode_weight_bytes(&self) -> u64 {
        let embed = B::tensor_bytes(&self.embed);
        let row = embed / self.config.vocab.max(1) as u64;
        let untied_embed = if self.output.is_some() { embed } else { 0 };
        // A mixture's decode step reads its top_k experts' rows, no others.
        let unread_experts = self.config.moe.map_or(0, |m| self.expert_bytes / m.experts as u64 * (m.experts - m.top_k) as u64);
        self.weight_bytes - untied_embed + row - unread_experts
    }

    /// Loads a GGUF model (one file or split shards); tensor data is streamed piece by piece.
    pub fn load_gguf<S: ByteSource>(dev: &B, store: &GgufStore<S>, options: &LoadOptions) -> Result<Self> {
        let meta = store.metadata();
        let mut config = ModelConfig::from_gguf(meta)?;
        // Scaling that llama.cpp stores as tensors: Llama 3.1's divisors, Phi-3's LongRoPE sets.
        if store.shape("rope_freqs.weight").is_some() {
            config.rope.freq_factors = Some(store.read_f32("rope_freqs.weight")?);
        }
        if store.shape("rope_factors_long.weight").is_some() {
            let original = meta.get_u64("phi3.rope.scaling.original_context_length").map(|v| v as usize).unwrap_or(config.context_length);
            config.rope.long_rope = Some(LongRope {
                short: store.read_f32("rope_factors_short.weight")?,
                long: store.read_f32("rope_factors_long.weight")?,
                original_context: original,
            });
        }
        Self::load(dev, config, store, options)
    }

    /// Bytes a load with `options` will hold: every tensor at the dtype it loads as (vectors in
    /// f32) plus both KV caches. Checked against [`Backend::memory_budget`] before loading.
    pub fn memory_needed(c: &ModelConfig, store: &dyn WeightStore, options: &LoadOptions) -> Result<u64> {
        let mut need = state_bytes(c, options.context);
        for name in store.names() {
            let Some((rows, k)) = store.shape(&name) else { continue };
            let dtype = if rows == 1 { DType::F32 } else { load_dtype(store, options.dtype, &name, k)? };
            need = need.saturating_add(rows as u64 * (dtype.qs_row_bytes(k) + dtype.scale_row_bytes(k)));
        }
        Ok(need)
    }

    /// Loads the weights of a model described by `config` from `store`.
    pub fn load(dev: &B, config: ModelConfig, store: &dyn WeightStore, options: &LoadOptions) -> Result<Self> {
        let c = &config;
        // Checked before the RoPE table and the KV cache are sized by it.
        if options.context == 0 || options.context > MAX_CONTEXT {
            return Err(ModelError::Config(format!("a context of {} positions is out of range (1 to {MAX_CONTEXT})", options.context)));
        }
        let kv_layer_bytes = kv_layer_bytes(c, options.context);
        if kv_layer_bytes > dev.max_tensor_bytes() {
            return Err(ModelError::Config(format!(
                "a context of {} positions needs {} MiB of KV cache per layer; this device binds at most {} MiB: load with a smaller context",
                options.context,
                kv_layer_bytes >> 20,
                dev.max_tensor_bytes() >> 20
            )));
        }
        let mut ld = Loader { dev, store, dtype: options.dtype, bytes: 0 };
        if let Some(budget) = dev.memory_budget() {
            // Refused before any allocation.
            let need = Self::memory_needed(c, store, options)?;
            if need > budget {
                return Err(ModelError::Config(format!(
                    "this model needs {} MiB for its weights and a {}-position KV cache, more than the {} MiB this backend can address: use a smaller model, quantisation or context",
                    need >> 20,
                    options.context,
                    budget >> 20
                )));
            }
        }
        let (h, d) = (c.hidden, c.head_dim);
        let (q_rows, kv_rows) = (c.heads * d, c.kv_heads * d);
        let embed = ld.matrix("token_embd.weight", c.vocab, h)?;
        let output = if store.shape("output.weight").is_some() { Some(ld.matrix("output.weight", c.vocab, h)?) } else { None };
        // LFM2's final norm keeps the name of its checkpoint's `embedding_norm`. Granite's logit
        // multiplier is folded into its weight: (w + offset)·s scales every logit by s.
        let output_norm_name = if c.arch == Architecture::Lfm2 { "token_embd_norm.weight" } else { "output_norm.weight" };
        let output_norm = if c.logit_scale == 1.0 {
            ld.vector(output_norm_name, h)?
        } else {
            let w: Vec<f32> = ld.vector_values(output_norm_name, h)?.iter().map(|w| (w + c.norm_offset) * c.logit_scale - c.norm_offset).collect();
            dev.from_f32(output_norm_name, &[h], &w)?
        };
        let mut layers = Vec::with_capacity(c.layers);
        let mut expert_bytes = 0;
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let gate_up_parts = if store.shape(&n("ffn_gate.weight")).is_some() {
                vec![(n("ffn_gate.weight"), c.ffn), (n("ffn_up.weight"), c.ffn)]
            } else {
                vec![(n("ffn_up.weight"), 2 * c.ffn)]
            };
            let post = |ld: &mut Loader<B>, s: &str| {
                if c.arch.has_post_norms() {
                    ld.vector(&n(s), h).map(Some)
                } else {
                    Ok(None)
                }
            };
            let qk_norm = |ld: &mut Loader<B>, s: &str| {
                if c.arch.has_qk_norm() {
                    ld.vector(&n(s), d).map(Some)
                } else {
                    Ok(None)
                }
            };
            let mixer = match c.layer_kinds[i] {
                LayerKind::Attention => {
                    let qkv_parts = if store.shape(&n("attn_qkv.weight")).is_some() {
                        vec![(n("attn_qkv.weight"), c.qkv_width())]
                    } else {
                        vec![(n("attn_q.weight"), q_rows), (n("attn_k.weight"), kv_rows), (n("attn_v.weight"), kv_rows)]
                    };
                    Mixer::Attention {
                        qkv: ld.linear(&qkv_parts, h)?,
                        q_norm: qk_norm(&mut ld, "attn_q_norm.weight")?,
                        k_norm: qk_norm(&mut ld, "attn_k_norm.weight")?,
                        sinks: ld.optional_vector(&n("attn_sinks.weight"), c.heads)?,
                        o: ld.linear(&[(n("attn_output.weight"), h)], q_rows)?,
                    }
                }
                LayerKind::LatentAttention => {
                    let m = c.mla.ok_or_else(|| ModelError::Config("latent attention without its sizes".into()))?;
                    let kv_a = (n("attn_kv_a_mqa.weight"), m.kv_rank + m.rope);
                    let (a, q_a_norm, q_b) = match m.q_rank {
                        Some(r) => (
                            ld.linear(&[(n("attn_q_a.weight"), r), kv_a], h)?,
                            Some(ld.vector(&n("attn_q_a_norm.weight"), r)?),
                            Some(ld.matrix(&n("attn_q_b.weight"), c.heads * m.q_head(), r)?),
                        ),
                        None => (ld.linear(&[(n("attn_q.weight"), c.heads * m.q_head()), kv_a], h)?, None, None),
                    };
                    let (k_b, v_b) = ld.latent_up_projections(i, c.heads, &m)?;
                    Mixer::LatentAttention {
                        a,
                        q_a_norm,
                        q_b,
                        kv_a_norm: ld.vector(&n("attn_kv_a_norm.weight"), m.kv_rank)?,
                        k_b,
                        v_b,
                        o: ld.linear(&[(n("attn_output.weight"), h)], c.heads * m.v_dim)?,
                    }
                }
                LayerKind::ShortConv => {
                    ld.expect_shape(&n("shortconv.conv.weight"), h, c.conv_kernel)?;
                    Mixer::ShortConv {
                        in_proj: ld.linear(&[(n("shortconv.in_proj.weight"), 3 * h)], h)?,
                        conv: ld.vector(&n("shortconv.conv.weight"), h * c.conv_kernel)?,
                        conv_bias: ld.optional_vector(&n("shortconv.conv.bias"), h)?,
                        out_proj: ld.linear(&[(n("shortconv.out_proj.weight"), h)], h)?,
                    }
                }
                LayerKind::Ssm => {
                    let s = c.ssm_sizes()?;
                    let channels = s.conv_channels();
                    ld.expect_shape(&n("ssm_conv1d.weight"), channels, c.conv_kernel)?;
                    Mixer::Ssm {
                        in_proj: ld.linear(&[(n("ssm_in.weight"), s.proj_width())], h)?,
                        conv: ld.vector(&n("ssm_conv1d.weight"), channels * c.conv_kernel)?,
                        conv_bias: ld.optional_vector(&n("ssm_conv1d.bias"), channels)?,
                        head_params: ld.ssm_head_params(i, s.heads)?,
                        norm: ld.vector(&n("ssm_norm.weight"), s.inner())?,
                        out_proj: ld.linear(&[(n("ssm_out.weight"), h)], s.inner())?,
                    }
                }
            };
            let mlp = match c.moe {
                // A layer with a router is a mixture (Qwen3-MoE's `mlp_only_layers` have none).
                Some(moe) if store.shape(&n("ffn_gate_inp.weight")).is_some() => {
                    let (experts, inter) = (moe.experts, moe.expert_ffn);
                    // llama.cpp's fused `ffn_gate_up_exps` (its --fuse-gate-up-exps; GPT-OSS's
                    // safetensors view) already holds each expert's gate rows then up rows.
                    let gate_up = if store.shape(&n("ffn_gate_up_exps.weight")).is_some() {
                        vec![ld.expert_parts(i, "gate_up", experts, 2 * inter, h)?]
                    } else {
                        vec![ld.expert_parts(i, "gate", experts, inter, h)?, ld.expert_parts(i, "up", experts, inter, h)?]
                    };
                    let down = [ld.expert_parts(i, "down", experts, h, inter)?];
                    let (gate_up, down) = (ld.experts(n("ffn_gate_up_exps"), &gate_up, 2 * inter, h)?, ld.experts(n("ffn_down_exps"), &down, h, inter)?);
                    expert_bytes += B::tensor_bytes(&gate_up) + B::tensor_bytes(&down);
                    let shared = match moe.shared_ffn {
                        0 => None,
                        s => Some(DenseMlp {
                            gate_up: ld.linear(&[(n("ffn_gate_shexp.weight"), s), (n("ffn_up_shexp.weight"), s)], h)?,
                            down: ld.linear(&[(n("ffn_down_shexp.weight"), h)], s)?,
                            width: s,
                        }),
                    };
                    Some(Mlp::Experts {
                        router: ld.exact_linear(&[(n("ffn_gate_inp.weight"), experts)], h)?,
                        gate_up,
                        down,
                        gate_up_bias: ld.expert_biases(&[n("ffn_gate_exps.bias"), n("ffn_up_exps.bias")], experts, inter)?,
                        down_bias: ld.expert_biases(&[n("ffn_down_exps.bias")], experts, h)?,
                        selection_bias: ld.optional_vector(&n("exp_probs_b.bias"), experts)?,
                        shared,
                    })
                }
                _ if c.arch.has_ffn() => {
                    Some(Mlp::Dense(DenseMlp { gate_up: ld.linear(&gate_up_parts, h)?, down: ld.linear(&[(n("ffn_down.weight"), h)], c.ffn)?, width: c.ffn }))
                }
                _ => None,
            };
            // llama.cpp names GPT-OSS's MLP norm `post_attention_norm`.
            let ffn_norm =
                if c.arch == Architecture::GptOss && store.shape(&n("ffn_norm.weight")).is_none() { "post_attention_norm.weight" } else { "ffn_norm.weight" };
            let ffn = match mlp {
                Some(mlp) => Some(FeedForward { norm: ld.vector(&n(ffn_norm), h)?, mlp, post_norm: post(&mut ld, "post_ffw_norm.weight")? }),
                None => None,
            };
            layers.push(Layer { mixer_norm: ld.vector(&n("attn_norm.weight"), h)?, mixer, post_attn_norm: post(&mut ld, "post_attention_norm.weight")?, ffn });
        }
        let table = |r: &RopeConfig| -> Result<B::Rope> { Ok(dev.rope_table(&r.inv_freq(options.context)?, options.context, r.attention_factor)?) };
        let rope = table(&c.rope)?;
        let rope_local = c.rope_local.as_ref().map(table).transpose()?;
        let rope_none = if c.layer_rope.contains(&false) { Some(dev.rope_table(&[], options.context, 1.0)?) } else { None };
        let weight_bytes = ld.bytes;
        let dense_ffn = layers
            .iter()
            .filter_map(|l| match &l.ffn.as_ref()?.mlp {
                Mlp::Dense(mlp) => Some(mlp.width),
                Mlp::Experts { shared, .. } => shared.as_ref().map(|s| s.width),
            })
            .max()
            .unwrap_or(0);
        Ok(Self { context: options.context, weight_bytes, expert_bytes, dense_ffn, embed, output, output_norm, layers, rope, rope_local, rope_none, config })
    }
}

/// What one layer keeps from step to step.
pub enum LayerState<B: Backend> {
    /// Attention: the keys and values of every position, [kv_heads, capacity, head_dim] f32 each.
    /// Any prefix of it stays valid: later positions are simply overwritten.
    Kv { k: B::Tensor, v: B::Tensor },
    /// Multi-head latent attention: one row per position, `[capacity, kv_rank + rope]` f32 —
    /// the compressed latent and the rope key every head shares; keys and values alike come
    /// from it. Prefixes stay valid as with `Kv`.
    Latent { cache: B::Tensor },
    /// A short convolution: its last `conv_kernel - 1` inputs, in [`CONV_STATE_SLOTS`] slots of
    /// `[conv_kernel - 1][hidden]` f32. Only the state at the end (and a checkpoint) exists: see
    /// [`RollingSlots`].
    Conv { slots: B::Tensor },
    /// Mamba2: its convolution's last inputs (slots of `[conv_kernel - 1][x | B | C channels]`)
    /// and its scan state (slots of `[heads][state][head_dim]`), rolling like `Conv`'s, in the
    /// same slots.
    Ssm { conv: B::Tensor, scan: B::Tensor },
}

/// Where the rolling states (every conv layer's, which advance together) are. A step at
/// position `p` of `t` tokens reads the slot holding the state at `p` and writes the state at
/// `p + t` to slot `(p + t) % 2`, so a step queued ahead and run in vain (greedy decoding stopped
/// by its caller) never overwrites the state the session is at. A step of several tokens also
/// writes the state before its last token to the checkpoint slot: a regenerated reply, whose
/// prompt is all but the last token of what the cache holds, restarts from there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RollingSlots {
    /// The slot holding the state at the session's position; `None`: zeros (position 0).
    current: Option<usize>,
    /// The position whose state the checkpoint slot holds.
    checkpoint: Option<usize>,
}

impl RollingSlots {
    /// The slots a step of `tokens` at `pos0` reads and writes, the session being at `position`
    /// (a queued step's `pos0` lies past it: it reads what the step before it writes).
    fn params(&self, pos0: usize, tokens: usize, position: usize) -> (Option<usize>, usize, Option<usize>) {
        let src = if pos0 == position { self.current } else { Some(pos0 % 2) };
        (src, (pos0 + tokens) % 2, (tokens > 1).then_some(CONV_CHECKPOINT_SLOT))
    }

    /// A step of `tokens` at `pos0` has run.
    fn advance(&mut self, pos0: usize, tokens: usize) {
        self.current = Some((pos0 + tokens) % 2);
        if tokens > 1 {
            self.checkpoint = Some(pos0 + tokens - 1);
        }
    }

    /// Moves back from `position` to the latest state at or before `keep`; returns its position.
    fn rewind(&mut self, keep: usize, position: usize) -> usize {
        if keep >= position {
            return position;
        }
        match self.checkpoint {
            Some(c) if c <= keep => {
                self.current = Some(CONV_CHECKPOINT_SLOT);
                c
            }
            _ => {
                *self = Self::default();
                0
            }
        }
    }
}

/// A conversation's per-layer state and what its rolling layers' slots hold.
pub struct GenerationState<B: Backend> {
    layers: Vec<LayerState<B>>,
    /// Positions the KV caches hold.
    pub capacity: usize,
    rolling: RollingSlots,
}

impl<B: Backend> GenerationState<B> {
    fn new(dev: &B, c: &ModelConfig, capacity: usize) -> Result<Self> {
        let kv_len = c.kv_heads * capacity * c.head_dim;
        let layers = c
            .layer_kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                Ok(match kind {
                    LayerKind::Attention => {
                        LayerState::Kv { k: dev.activation(&format!("k cache {i}"), &[kv_len])?, v: dev.activation(&format!("v cache {i}"), &[kv_len])? }
                    }
                    LayerKind::LatentAttention => LayerState::Latent { cache: dev.activation(&format!("latent cache {i}"), &[kv_len])? },
                    LayerKind::ShortConv => LayerState::Conv { slots: dev.activation(&format!("conv state {i}"), &[conv_state_len(c, c.hidden)])? },
                    LayerKind::Ssm => {
                        let s = c.ssm_sizes()?;
                        LayerState::Ssm {
                            conv: dev.activation(&format!("ssm conv state {i}"), &[conv_state_len(c, s.conv_channels())])?,
                            scan: dev.activation(&format!("ssm scan state {i}"), &[ssm_state_len(s)])?,
                        }
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, capacity, rolling: RollingSlots::default() })
    }

    /// Whether any layer's state rolls (LFM2's convolutions, Mamba2's mixers): only then is a
    /// prefix not free.
    fn has_rolling(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, LayerState::Conv { .. } | LayerState::Ssm { .. }))
    }
}

/// Activation buffers for steps of `tokens` tokens; reused across decode steps.
struct Workspace<B: Backend> {
    tokens: usize,
    ids: B::Tensor,
    residual: B::Tensor,
    normed: B::Tensor,
    qkv: B::Tensor,
    attn: B::Tensor,
    out: B::Tensor,
    /// Gemma's post-norm outputs, before they join the residual.
    post: Option<B::Tensor>,
    gate_up: B::Tensor,
    act: B::Tensor,
    /// LFM2's conv layers: the [B | C | x] rows and the convolution's output.
    bcx: Option<B::Tensor>,
    conv_out: Option<B::Tensor>,
    ssm: Option<SsmWorkspace<B>>,
    moe: Option<MoeWorkspace<B>>,
    mla: Option<MlaWorkspace<B>>,
    logits: B::Tensor,
    /// A prefill's greedy token. A decode step (`None` here) writes its token over its own
    /// input id instead, where the next decode step reads it: greedy decoding can then queue a
    /// step before the previous token has reached the CPU.
    next: Option<B::Tensor>,
}

/// A Mamba2 mixer's activations for a step of `tokens` tokens.
struct SsmWorkspace<B: Backend> {
    /// [z | x | B | C | dt] rows.
    proj: B::Tensor,
    /// The convolution's output: [x | B | C] rows.
    xbc: B::Tensor,
    /// The gated scan output, and it normalised.
    y: B::Tensor,
    y_normed: B::Tensor,
    /// A prefill's chunk states and dt (see `ssm_scan`); `None` for one token.
    scratch: Option<(B::Tensor, B::Tensor)>,
}

/// Latent attention's activations for a step (its first projection's rows are `qkv`, the
/// attention's output `attn`: heads × (kv_rank + rope)).
struct MlaWorkspace<B: Backend> {
    /// V3's low-rank q up-projected: [heads, nope + rope] rows (V2 reads q from `qkv`).
    q: Option<B::Tensor>,
    /// The attention queries: per head, the absorbed latent query then the rotated rope part.
    query: B::Tensor,
    /// Each head's values (its latent output up-projected): the output projection's input.
    values: B::Tensor,
}

/// A mixture's activations for a step of `tokens` tokens.
struct MoeWorkspace<B: Backend> {
    /// [tokens, experts] router logits.
    logits: B::Tensor,
    /// Per token, top_k expert ids then weights (`MoeRouteParams::route_len`).
    route: B::Tensor,
    /// [tokens · top_k, expert_ffn]: each pick's weighted activations.
    act: B::Tensor,
    /// A prefill's grouped passes ([`Backend::groups_experts`]): the groups, each pick's
    /// [gate | up] rows and its down projection.
    grouped: Option<[B::Tensor; 3]>,
}

/// A step groups a mixture's picks by expert when they average at least this many per expert
/// (one full token tile of the grouped matmul): each picked expert's rows are then read once
/// per tile instead of once per pick. Below it, the per-pick matvecs do less work: a grouped
/// tile multiplies as many zeros as its group falls short, and software adapters pay per
/// workgroup (docs/PERFORMANCE.md, "Mixtures of experts").
const GROUPED_MIN_PICKS_PER_EXPERT: usize = 8;

impl<B: Backend> MoeWorkspace<B> {
    fn new(dev: &B, m: &MoeConfig, hidden: usize, t: usize) -> Result<Self> {
        let slots = t * m.top_k;
        let grouped = if t > 1 && B::groups_experts() && slots >= GROUPED_MIN_PICKS_PER_EXPERT * m.experts {
            Some([
                dev.activation("expert groups", &[emberlm_core::ops::moe::groups_len(m.experts, slots)])?,
                dev.activation("pick gate|up", &[slots, 2 * m.expert_ffn])?,
                dev.activation("pick down", &[slots, hidden])?,
            ])
        } else {
            None
        };
        Ok(Self {
            logits: dev.activation("router logits", &[t, m.experts])?,
            route: dev.activation("route", &[t * 2 * m.top_k])?,
            act: dev.activation("expert activations", &[slots, m.expert_ffn])?,
            grouped,
        })
    }
}

impl<B: Backend> SsmWorkspace<B> {
    fn new(dev: &B, s: &SsmConfig, t: usize) -> Result<Self> {
        let f32t = |name: &str, cols: usize| dev.activation(name, &[t, cols]);
        let p = scan_params(s, t, None, 0, None);
        let scratch =
            if t > 1 { Some((dev.activation("ssm chunk states", &[p.chunk_states_len()])?, dev.activation("ssm dt", &[p.dt_cum_len()])?)) } else { None };
        Ok(Self {
            proj: f32t("ssm in", s.proj_width())?,
            xbc: f32t("ssm x|B|C", s.conv_channels())?,
            y: f32t("ssm y", s.inner())?,
            y_normed: f32t("ssm y normed", s.inner())?,
            scratch,
        })
    }
}

/// The scan of a step of `tokens` over Mamba2 sizes `s`, with the slots the rolling state uses.
fn scan_params(s: &SsmConfig, tokens: usize, src_slot: Option<usize>, dst_slot: usize, snap_slot: Option<usize>) -> SsmScanParams {
    SsmScanParams {
        tokens,
        heads: s.heads,
        head_dim: s.head_dim,
        state: s.state,
        groups: s.groups,
        proj_stride: s.proj_width(),
        dt_offset: s.inner() + s.conv_channels(),
        dt_min: s.dt_min,
        dt_max: s.dt_max,
        src_slot,
        dst_slot,
        snap_slot,
    }
}

impl<B: Backend> Workspace<B> {
    fn new(dev: &B, model: &Model<B>, t: usize) -> Result<Self> {
        let c = &model.config;
        let f32t = |name: &str, cols: usize| dev.activation(name, &[t, cols]);
        // A model without attention layers or dense MLPs (Mamba2; Mixtral's mixtures) still
        // gets (one-column) buffers for them: nothing reads them.
        Ok(Self {
            tokens: t,
            ids: dev.activation("token ids", &[t])?,
            residual: f32t("residual", c.hidden)?,
            normed: f32t("normed", c.hidden)?,
            qkv: f32t("qkv", c.qkv_width().max(1))?,
            attn: f32t("attention out", (c.heads * c.head_dim).max(1))?,
            out: f32t("block out", c.hidden)?,
            post: if c.arch.has_post_norms() { Some(f32t("post-norm out", c.hidden)?) } else { None },
            gate_up: f32t("gate|up", (2 * model.dense_ffn).max(1))?,
            act: f32t("activation", model.dense_ffn.max(1))?,
            bcx: if c.has_conv_layers() { Some(f32t("conv in", 3 * c.hidden)?) } else { None },
            conv_out: if c.has_conv_layers() { Some(f32t("conv out", c.hidden)?) } else { None },
            ssm: c.ssm_layers().map(|s| SsmWorkspace::new(dev, s, t)).transpose()?,
            moe: c.moe.as_ref().map(|m| MoeWorkspace::new(dev, m, c.hidden, t)).transpose()?,
            mla: match &c.mla {
                Some(m) => Some(MlaWorkspace {
                    q: if m.q_rank.is_some() { Some(f32t("mla q", c.heads * m.q_head())?) } else { None },
                    query: f32t("mla query", c.heads * c.head_dim)?,
                    values: f32t("mla values", c.heads * m.v_dim)?,
                }),
                None => None,
            },
            logits: dev.activation("logits", &[c.vocab])?,
            next: if t == 1 { None } else { Some(dev.activation("next token", &[1])?) },
        })
    }

    fn next(&self) -> &B::Tensor {
        self.next.as_ref().unwrap_or(&self.ids)
    }
}

/// The model's RMSNorm with weight `weight`, for a projection to apply ([`Backend::folds_norms`]).
fn folded_norm<'a, T>(weight: &'a T, c: &ModelConfig) -> FoldedNorm<'a, T> {
    FoldedNorm { weight, eps: c.rms_eps, offset: c.norm_offset }
}

/// Where a recorded step ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    /// The last layer's cache or state write: a piece of a prompt whose outputs nobody reads
    /// (no output norm, no head, and the last layer stops once its state holds the step).
    Cache,
    /// The output norm: hidden states in `normed` (embeddings).
    Hidden,
    /// The last position's logits, for a masked argmax in a pass of its own.
    Logits,
    /// The logits and their argmax, the greedy next token, in `next()`.
    Argmax,
}

/// What a step hands back: the greedy next token, and the last position's logits if asked.
pub struct StepOutput {
    pub argmax: u32,
    pub logits: Option<Vec<f32>>,
}

/// A step [`Session::submit_step`] handed to the backend, for [`Session::finish_step`].
#[must_use = "a submitted step is finished with Session::finish_step"]
pub struct PendingStep<B: Backend> {
    read: B::PendingStep,
    tokens: Vec<u32>,
}

/// One conversation's state: each layer's state (KV cache or rolling state, [`GenerationState`])
/// and the tokens it covers. It borrows no model, so an engine can keep it between requests and
/// prefill only what a new prompt adds ([`Session::reuse_prefix`]); each step takes the model it
/// was made for.
pub struct Session<B: Backend = GpuDevice> {
    state: GenerationState<B>,
    /// The tokens at positions `0..tokens.len()` of the cache.
    tokens: Vec<u32>,
    decode: Option<Workspace<B>>,
    /// Kept across decode steps, which record the same ops over `decode` every time.
    decode_cache: B::StepCache,
    /// A step is submitted and not yet finished.
    in_flight: bool,
    /// The allowed tokens' bits for [`Session::step_masked`]'s argmax, made at its first use,
    /// and that argmax's executable.
    mask: Option<B::Tensor>,
    mask_cache: B::StepCache,
}

impl<B: Backend> Session<B> {
    pub fn new(dev: &B, model: &Model<B>) -> Result<Self> {
        let state = GenerationState::new(dev, &model.config, model.context)?;
        Ok(Self { state, tokens: Vec::new(), decode: None, decode_cache: Default::default(), in_flight: false, mask: None, mask_cache: Default::default() })
    }

    /// Bytes the per-layer state holds (KV caches, MLA's latent caches, rolling states).
    pub fn state_bytes(&self) -> u64 {
        self.state
            .layers
            .iter()
            .map(|l| match l {
                LayerState::Kv { k, v } => B::tensor_bytes(k) + B::tensor_bytes(v),
                LayerState::Latent { cache } => B::tensor_bytes(cache),
                LayerState::Conv { slots } => B::tensor_bytes(slots),
                LayerState::Ssm { conv, scan } => B::tensor_bytes(conv) + B::tensor_bytes(scan),
            })
            .sum()
    }

    /// The next position: how many tokens the cache holds.
    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    /// The tokens the cache holds, in position order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the conversation (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.tokens.clear();
        self.state.rolling = RollingSlots::default();
    }

    /// Keeps the longest prefix of the cache that `prompt` starts with — all but at least its
    /// last token, which the next step must run to produce logits — and forgets the rest.
    /// Returns how many tokens of `prompt` need no prefill. Positions past the kept prefix are
    /// simply overwritten: every layer's KV cache is full-length, sliding-window ones included.
    /// A model with rolling states (LFM2) keeps the whole cache (a follow-up), the checkpoint
    /// (a regenerated reply), or nothing.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let shared = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let mut keep = shared.min(prompt.len().saturating_sub(1));
        if self.state.has_rolling() {
            keep = self.state.rolling.rewind(keep, self.position());
        }
        self.tokens.truncate(keep);
        keep
    }

    /// Makes the session hold `ids[..end]` of prompt `ids` (`end` short of its end): keeps
    /// what generation on the whole prompt would keep ([`Session::reuse_prefix`], a rolling
    /// state rewound as it would be) and runs the rest up to `end` as one step without reading
    /// logits. Returns how many tokens were kept — on a request's first piece, what generation
    /// would report as reused. A long prompt run this way in pieces can report progress between
    /// them; generation on the whole prompt then runs only what follows.
    pub async fn prefill_to(&mut self, dev: &B, model: &Model<B>, ids: &[u32], end: usize) -> Result<usize> {
        if end == 0 || end >= ids.len() {
            return Err(ModelError::Config(format!("a prefill to {end} of {} tokens must leave the last ones to generate from", ids.len())));
        }
        let held = self.reuse_prefix(ids);
        if held < end {
            self.fill(dev, model, &ids[held..end]).await?;
        }
        Ok(held)
    }

    /// Runs up to `max_tokens` more of a next turn's opening
    /// ([`crate::text::TextSetup::next_turn_opening`]) into the cache while the conversation
    /// waits for its user: the next request then finds the reply's last token and the
    /// template's turn markers held and prefills only the user's words and what follows them.
    /// What the cache held past the shared prefix is forgotten, as the next request would.
    /// Returns the opening's tokens left to run (0: done). Models with rolling states run
    /// nothing: a step would move the checkpoint a regenerated reply restarts from; nor does a
    /// conversation whose next request would not fit the context (it fails or drops turns on
    /// its own).
    pub async fn prefill_ahead(&mut self, dev: &B, model: &Model<B>, opening: &NextTurnOpening, max_tokens: usize) -> Result<usize> {
        if self.state.has_rolling() || opening.shared >= opening.probe_ids.len() || opening.probe_ids.len() >= model.context {
            return Ok(0);
        }
        let held = self.reuse_prefix(&opening.probe_ids);
        let end = opening.shared.min(held.saturating_add(max_tokens.max(1)));
        if held < end {
            self.fill(dev, model, &opening.probe_ids[held..end]).await?;
        }
        Ok(opening.shared.saturating_sub(end.max(held)))
    }

    /// `tokens` ran at the next positions.
    fn commit(&mut self, tokens: &[u32]) {
        self.state.rolling.advance(self.position(), tokens.len());
        self.tokens.extend_from_slice(tokens);
    }

    /// Runs `tokens` at the next positions into the cache only: a leading piece of a prompt.
    /// Computes no output — no head, and the last layer only up to its cache or state — so
    /// a piece costs one head matvec and most of a layer less than a [`Session::step`].
    pub async fn fill(&mut self, dev: &B, model: &Model<B>, tokens: &[u32]) -> Result<()> {
        // Reads back a stale id, so the step is done and its errors known before it counts.
        let pending = self.submit_to(dev, model, tokens, StepEnd::Cache, false)?;
        self.finish_step(dev, pending).await?;
        Ok(())
    }

    /// Runs `tokens` at the next positions and returns the greedy next token; reads the last
    /// position's logits back only when `want_logits`.
    pub async fn step(&mut self, dev: &B, model: &Model<B>, tokens: &[u32], want_logits: bool) -> Result<StepOutput> {
        let pending = self.submit_step(dev, model, tokens, want_logits)?;
        self.finish_step(dev, pending).await
    }

    /// [`Session::step`] without waiting: the GPU runs the step while the caller works (on
    /// the next token's constraint mask); [`Session::finish_step`] waits for it. One step at a
    /// time.
    pub fn submit_step(&mut self, dev: &B, model: &Model<B>, tokens: &[u32], want_logits: bool) -> Result<PendingStep<B>> {
        self.submit_to(dev, model, tokens, StepEnd::Argmax, want_logits)
    }

    /// Records a step of `tokens` up to `end` and submits it, reading its `next()` id back (and
    /// the logits if `want_logits`).
    fn submit_to(&mut self, dev: &B, model: &Model<B>, tokens: &[u32], end: StepEnd, want_logits: bool) -> Result<PendingStep<B>> {
        let (fresh, pass) = self.record_step(dev, model, tokens, end)?;
        let ws = fresh.as_ref().unwrap_or_else(|| self.decode.as_ref().expect("decode workspace"));
        // A prefill's workspace is new every time, so only decode steps keep what `run` builds;
        // a one-token fill has a shape of its own that would evict theirs.
        let mut fresh_cache = B::StepCache::default();
        let cache = if tokens.len() == 1 && end == StepEnd::Argmax { &mut self.decode_cache } else { &mut fresh_cache };
        let read = dev.submit(pass, cache, ws.next(), want_logits.then_some(&ws.logits))?;
        self.in_flight = true;
        Ok(PendingStep { read, tokens: tokens.to_vec() })
    }

    /// Checks a step of `tokens`, writes them into its workspace (the session's decode one for
    /// one token, returned `None`; a new one for a prefill) and records the step up to `end`.
    fn record_step<'d>(&mut self, dev: &'d B, model: &Model<B>, tokens: &[u32], end: StepEnd) -> Result<(Option<Workspace<B>>, B::Pass<'d>)> {
        if self.in_flight {
            return Err(ModelError::Config("a step is already submitted on this session".into()));
        }
        self.check_step(model, tokens)?;
        let fresh = if tokens.len() == 1 {
            self.decode_workspace(dev, model)?;
            None
        } else {
            Some(Workspace::new(dev, model, tokens.len())?)
        };
        let ws = fresh.as_ref().unwrap_or_else(|| self.decode.as_ref().expect("decode workspace"));
        dev.write_u32(&ws.ids, tokens)?;
        let mut pass = dev.pass();
        self.record(model, &mut pass, ws, self.position(), end)?;
        Ok((fresh, pass))
    }

    /// Runs `tokens` at the next positions and returns the argmax of the last position's logits
    /// over the tokens a grammar allows, picked on the device: the logits stay there and only
    /// the token comes back (a constrained greedy step; see docs/PERFORMANCE.md). `allowed`
    /// runs while the device computes the step and gives the allowed tokens as bits
    /// ([`emberlm_core::ops::mask_words`] words over the vocabulary), uploaded for the argmax.
    /// No allowed token is an error, after the step counts as run.
    pub async fn step_masked(&mut self, dev: &B, model: &Model<B>, tokens: &[u32], allowed: impl FnOnce() -> Result<Vec<u32>>) -> Result<u32> {
        let vocab = model.config.vocab;
        let words = emberlm_core::ops::mask_words(vocab);
        if self.mask.is_none() {
            self.mask = Some(dev.activation("allowed tokens", &[words])?);
        }
        let (fresh, pass) = self.record_step(dev, model, tokens, StepEnd::Logits)?;
        let ws = fresh.as_ref().unwrap_or_else(|| self.decode.as_ref().expect("decode workspace"));
        let mut prefill_cache = B::StepCache::default();
        let cache = if tokens.len() == 1 { &mut self.decode_cache } else { &mut prefill_cache };
        dev.enqueue(pass, cache).await?;
        // Uncommitted until the token is back: an error leaves the step's cache writes past
        // `position()`, where the next step overwrites them.
        let bits = allowed()?;
        if bits.len() != words {
            return Err(ModelError::Config(format!("a token mask of {} words for a vocabulary of {vocab} (needs {words})", bits.len())));
        }
        let mask = self.mask.as_ref().expect("made above");
        dev.write_u32(mask, &bits)?;
        let mut pass = dev.pass();
        B::argmax(&mut pass, &ws.logits, Some(mask), ws.next(), 1, vocab)?;
        let read = dev.submit(pass, &mut self.mask_cache, ws.next(), None)?;
        let token = match dev.finish(read).await {
            Ok((token, _)) => token,
            Err(e) => {
                if self.state.has_rolling() {
                    self.reset();
                }
                return Err(e.into());
            }
        };
        self.commit(tokens);
        if token == u32::MAX {
            return Err(ModelError::Constraint("the grammar allows no token here".into()));
        }
        Ok(token)
    }

    /// Waits for a step [`Session::submit_step`] submitted: its token and, if asked for, logits.
    pub async fn finish_step(&mut self, dev: &B, pending: PendingStep<B>) -> Result<StepOutput> {
        self.in_flight = false;
        let (argmax, logits) = match dev.finish(pending.read).await {
            Ok(done) => done,
            Err(e) => {
                // A KV cache keeps its prefix, but a step that failed on the device may have
                // rolled a convolution state part way: start over then.
                if self.state.has_rolling() {
                    self.reset();
                }
                return Err(e.into());
            }
        };
        // Counted only once the step has run.
        self.commit(&pending.tokens);
        Ok(StepOutput { argmax, logits })
    }

    /// Greedy decoding from `first`, the last token produced (not yet run): runs steps and
    /// hands each new token to `on_token` until it returns `false` or `max_tokens` are made;
    /// returns how many were. On a backend whose steps overlap the read-back
    /// ([`Backend::overlaps_steps`]), each step is queued before the previous token is read: it
    /// takes that token on the GPU, so the GPU is not idle while a token travels to the CPU
    /// (one step is computed in vain when `on_token` stops). Every token is read back, so
    /// stop tokens and stop strings act as soon as they appear.
    pub async fn decode_greedy(&mut self, dev: &B, model: &Model<B>, first: u32, max_tokens: usize, mut on_token: impl FnMut(u32) -> bool) -> Result<usize> {
        self.check_step(model, &[first])?;
        self.decode_workspace(dev, model)?;
        let depth = if dev.overlaps_steps() { 2 } else { 1 };
        // Steps submitted and not yet read, oldest first; the oldest one's input is `input`,
        // each later one's the token of the step before it.
        let mut queued = std::collections::VecDeque::with_capacity(depth);
        let mut input = first;
        let mut made = 0;
        while made < max_tokens {
            while queued.len() < depth && made + queued.len() < max_tokens {
                if self.position() + queued.len() >= self.state.capacity {
                    if queued.is_empty() {
                        self.check_step(model, &[input])?;
                    }
                    break;
                }
                let ws = self.decode.as_ref().expect("decode workspace");
                if queued.is_empty() {
                    dev.write_u32(&ws.ids, &[input])?;
                }
                let mut pass = dev.pass();
                self.record(model, &mut pass, ws, self.position() + queued.len(), StepEnd::Argmax)?;
                queued.push_back(dev.submit(pass, &mut self.decode_cache, ws.next(), None)?);
            }
            let (token, _) = dev.finish(queued.pop_front().expect("a step was queued")).await?;
            self.commit(&[input]);
            input = token;
            made += 1;
            if !on_token(token) {
                break;
            }
        }
        // A step still queued ran ahead in vain: its cache writes lie past `position()`, where
        // the next step overwrites them, and its rolling state went to the other slot.
        Ok(made)
    }

    /// The final hidden states (after the output norm; the LM head is not run) of `tokens`,
    /// run from position 0: `tokens × hidden` values, for embeddings. The session then holds
    /// these tokens.
    pub async fn hidden_states(&mut self, dev: &B, model: &Model<B>, tokens: &[u32]) -> Result<Vec<f32>> {
        self.reset();
        self.check_step(model, tokens)?;
        let ws = Workspace::new(dev, model, tokens.len())?;
        dev.write_u32(&ws.ids, tokens)?;
        let mut pass = dev.pass();
        self.record(model, &mut pass, &ws, 0, StepEnd::Hidden)?;
        let (_, hidden) = dev.run(pass, &mut B::StepCache::default(), ws.next(), Some(&ws.normed)).await?;
        self.commit(tokens);
        let mut hidden = hidden.ok_or_else(|| ModelError::Config("the backend returned no hidden states".into()))?;
        hidden.truncate(tokens.len() * model.config.hidden);
        Ok(hidden)
    }

    /// The most tokens one step may take on `dev`: each of a step's activation buffers must fit
    /// one binding ([`Backend::max_tensor_bytes`]; a mixture's per-pick rows are the widest).
    /// [`crate::generate`] runs a longer prompt in steps of this many.
    pub fn max_step_tokens(dev: &B, model: &Model<B>) -> usize {
        (dev.max_tensor_bytes() / (4 * model.config.widest_step_row() as u64)).clamp(1, MAX_CONTEXT as u64) as usize
    }

    /// Checks a step of `tokens` at the next position.
    fn check_step(&self, model: &Model<B>, tokens: &[u32]) -> Result<()> {
        let c = &model.config;
        if self.state.layers.len() != c.layers || self.state.capacity != model.context {
            return Err(ModelError::Config("this session was made for another model".into()));
        }
        if tokens.is_empty() {
            return Err(ModelError::Config("a step needs at least one token".into()));
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab });
        }
        let needed = self.position() + tokens.len();
        if needed > self.state.capacity {
            return Err(ModelError::ContextFull { needed, capacity: self.state.capacity });
        }
        Ok(())
    }

    fn decode_workspace(&mut self, dev: &B, model: &Model<B>) -> Result<()> {
        if self.decode.is_none() {
            self.decode = Some(Workspace::new(dev, model, 1)?);
        }
        Ok(())
    }

    /// Records a forward step of `ws.tokens` tokens at `pos0`, up to `end`.
    fn record(&self, m: &Model<B>, plan: &mut B::Pass<'_>, ws: &Workspace<B>, pos0: usize, end: StepEnd) -> Result<()> {
        let c = &m.config;
        let t = ws.tokens;
        let (d, qkv_w) = (c.head_dim, c.qkv_width());
        let project = |plan: &mut B::Pass<'_>, x: &B::Tensor, lin: &Linear<B>, y: &B::Tensor, y_cols: usize| -> Result<()> {
            for p in &lin.parts {
                if t == 1 {
                    B::matvec_into(plan, &p.weight, x, 0, p.bias.as_ref(), y, p.offset)?;
                } else {
                    B::matmul_into(plan, x, &p.weight, p.bias.as_ref(), y, t, y_cols, p.offset)?;
                }
            }
            Ok(())
        };
        // Decode on a backend that folds norms: each block's RMSNorm happens in the projections
        // that read it, from the residual stream, and each block's output projection adds into
        // the residual stream itself — no norm dispatches and no normed vector (two dispatches
        // fewer per layer, one for the output norm).
        let fold = t == 1 && B::folds_norms(plan) && m.norms_fold();
        // A block's input projection: of `normed`, or (folded) of the residual stream normalised
        // by `norm` in the matvec.
        let project_in = |plan: &mut B::Pass<'_>, lin: &Linear<B>, norm: &B::Tensor, y: &B::Tensor, y_cols: usize| -> Result<()> {
            if !fold {
                return project(plan, &ws.normed, lin, y, y_cols);
            }
            for p in &lin.parts {
                B::matvec_folded(plan, &p.weight, &ws.residual, p.bias.as_ref(), y, p.offset, Some(folded_norm(norm, c)), None)?;
            }
            Ok(())
        };
        // A block's output projection: into `out`, or (folded) added into the residual stream.
        let project_out = |plan: &mut B::Pass<'_>, x: &B::Tensor, lin: &Linear<B>| -> Result<()> {
            if !fold {
                return project(plan, x, lin, &ws.out, c.hidden);
            }
            for p in &lin.parts {
                B::matvec_folded(plan, &p.weight, x, p.bias.as_ref(), &ws.residual, p.offset, None, Some(c.residual_scale))?;
            }
            Ok(())
        };
        // Gemma's post-norm: normalise a block's output on its own before it joins the residual.
        let post_norm = |plan: &mut B::Pass<'_>, x: &B::Tensor, norm: Option<&B::Tensor>| -> Result<()> {
            if let (Some(w), Some(post)) = (norm, ws.post.as_ref()) {
                B::rms_norm(plan, x, w, None, post, t, c.rms_eps, c.norm_offset)?;
            }
            Ok(())
        };
        // A gated MLP from the normed input (folded: the residual stream and its `norm`) into
        // `out` (folded: added into the residual stream).
        let dense = |plan: &mut B::Pass<'_>, mlp: &DenseMlp<B>, norm: &B::Tensor| -> Result<()> {
            match mlp.gate_up.parts.as_slice() {
                // Decode: the projection and the activation in one op where the backend fuses them.
                [p] if t == 1 && B::fuses_gated_matvec(&p.weight) => {
                    let (x, norm) = if fold { (&ws.residual, Some(folded_norm(norm, c))) } else { (&ws.normed, None) };
                    B::gated_matvec(plan, &p.weight, x, 0, p.bias.as_ref(), &ws.act, c.activation, norm)?
                }
                _ => {
                    project_in(plan, &mlp.gate_up, norm, &ws.gate_up, 2 * mlp.width)?;
                    B::gated_activation(plan, &ws.gate_up, &ws.act, t, mlp.width, c.activation)?;
                }
            }
            project_out(plan, &ws.act, &mlp.down)
        };
        let block_out = |norm: Option<&B::Tensor>| {
            if norm.is_some() {
                ws.post.as_ref().expect("post buffer")
            } else {
                &ws.out
            }
        };
        B::embedding(plan, &ws.ids, &m.embed, &ws.residual, t, c.embed_scale)?;
        let (conv_src, conv_dst, conv_snap) = self.state.rolling.params(pos0, t, self.position());
        let mut pending: Option<&B::Tensor> = None;
        for (i, (layer, state)) in m.layers.iter().zip(&self.state.layers).enumerate() {
            // A cache-only step's last layer ends once its cache or state holds the step.
            let fill_ends_here = end == StepEnd::Cache && i + 1 == m.layers.len();
            match pending {
                _ if fold => {}
                None => B::rms_norm(plan, &ws.residual, &layer.mixer_norm, None, &ws.normed, t, c.rms_eps, c.norm_offset)?,
                Some(x) => B::rms_norm(plan, x, &layer.mixer_norm, Some((&ws.residual, c.residual_scale)), &ws.normed, t, c.rms_eps, c.norm_offset)?,
            };
            match (&layer.mixer, state) {
                (Mixer::Attention { qkv, q_norm, k_norm, sinks, o }, LayerState::Kv { k: k_cache, v: v_cache }) => {
                    project_in(plan, qkv, &layer.mixer_norm, &ws.qkv, qkv_w)?;
                    if let (Some(qn), Some(kn)) = (q_norm, k_norm) {
                        B::head_rms_norm(plan, &ws.qkv, qn, t, c.heads, 0, qkv_w, c.rms_eps, c.norm_offset)?;
                        B::head_rms_norm(plan, &ws.qkv, kn, t, c.kv_heads, c.heads * d, qkv_w, c.rms_eps, c.norm_offset)?;
                    }
                    let window = c.layer_windows[i];
                    let rope = match (&m.rope_none, &m.rope_local) {
                        (Some(none), _) if !c.layer_rope[i] => none,
                        (_, Some(local)) if window > 0 => local,
                        _ => &m.rope,
                    };
                    B::rope_kv_append(plan, &ws.qkv, rope, c.rope_layout, t, c.heads, c.kv_heads, d, qkv_w, k_cache, v_cache, pos0)?;
                    if fill_ends_here {
                        return Ok(());
                    }
                    let params = AttentionParams {
                        tokens: t,
                        heads_q: c.heads,
                        heads_kv: c.kv_heads,
                        head_dim: d,
                        pos0,
                        window,
                        causal: !c.bidirectional,
                        scale: c.attn_scale,
                        softcap: c.attn_softcap,
                        q_stride: qkv_w,
                    };
                    B::attention(plan, &ws.qkv, k_cache, v_cache, sinks.as_ref(), &ws.attn, &params)?;
                    project_out(plan, &ws.attn, o)?;
                }
                (Mixer::LatentAttention { a, q_a_norm, q_b, kv_a_norm, k_b, v_b, o }, LayerState::Latent { cache }) => {
                    let (mla, mw) = (c.mla.as_ref().expect("latent sizes"), ws.mla.as_ref().expect("latent buffers"));
                    let (h, q_head, q_cols) = (c.heads, mla.q_head(), mla.q_rank.unwrap_or(c.heads * mla.q_head()));
                    // [q or q_a | latent | rope key], then the latent's norm in place.
                    project(plan, &ws.normed, a, &ws.qkv, qkv_w)?;
                    B::head_rms_norm(plan, &ws.qkv, kv_a_norm, t, 1, q_cols, qkv_w, c.rms_eps, 0.0)?;
                    // Every head's [nope | rope] query: in the projection's rows, or V3's from q_a.
                    let (q, q_stride) = match (q_a_norm, q_b, &mw.q) {
                        (Some(norm), Some(q_b), Some(q)) => {
                            B::head_rms_norm(plan, &ws.qkv, norm, t, 1, 0, qkv_w, c.rms_eps, 0.0)?;
                            let up = HeadLinearParams {
                                tokens: t,
                                heads: 1,
                                x_stride: qkv_w,
                                x_offset: 0,
                                x_head_step: 0,
                                y_stride: h * q_head,
                                y_offset: 0,
                                y_head_step: 0,
                            };
                            B::head_linear(plan, q_b, &ws.qkv, q, &up)?;
                            (q, h * q_head)
                        }
                        _ => (&ws.qkv, qkv_w),
                    };
                    // The queries in the latent space, per head k_b · q_nope, beside their
                    // rotated rope parts; the cache gets this step's latents and rope keys.
                    let absorb = HeadLinearParams {
                        tokens: t,
                        heads: h,
                        x_stride: q_stride,
                        x_offset: 0,
                        x_head_step: q_head,
                        y_stride: h * d,
                        y_offset: 0,
                        y_head_step: d,
                    };
                    B::head_linear(plan, k_b, q, &mw.query, &absorb)?;
                    let append = LatentRopeParams {
                        tokens: t,
                        heads: h,
                        latent: mla.kv_rank,
                        pos0,
                        q_stride,
                        q_offset: mla.nope,
                        q_head_step: q_head,
                        kv_stride: qkv_w,
                        kv_offset: q_cols,
                    };
                    B::latent_rope_append(plan, q, &ws.qkv, &m.rope, c.rope_layout, &mw.query, cache, &append)?;
                    if fill_ends_here {
                        return Ok(());
                    }
                    // One kv head: keys are the cache rows, values their latent part (the
                    // output's rope columns go unread).
                    let params = AttentionParams {
                        tokens: t,
                        heads_q: h,
                        heads_kv: 1,
                        head_dim: d,
                        pos0,
                        window: 0,
                        causal: true,
                        scale: c.attn_scale,
                        softcap: 0.0,
                        q_stride: h * d,
                    };
                    B::attention(plan, &mw.query, cache, cache, None, &ws.attn, &params)?;
                    // Each head's latent output to its values, v_b · o_latent, then the output.
                    let values = HeadLinearParams {
                        tokens: t,
                        heads: h,
                        x_stride: h * d,
                        x_offset: 0,
                        x_head_step: d,
                        y_stride: h * mla.v_dim,
                        y_offset: 0,
                        y_head_step: mla.v_dim,
                    };
                    B::head_linear(plan, v_b, &ws.attn, &mw.values, &values)?;
                    project(plan, &mw.values, o, &ws.out, c.hidden)?;
                }
                (Mixer::ShortConv { in_proj, conv, conv_bias, out_proj }, LayerState::Conv { slots }) => {
                    let (bcx, conv_out) = (ws.bcx.as_ref().expect("conv buffers"), ws.conv_out.as_ref().expect("conv buffers"));
                    project(plan, &ws.normed, in_proj, bcx, 3 * c.hidden)?;
                    let params = ShortConvParams {
                        tokens: t,
                        channels: c.hidden,
                        kernel: c.conv_kernel,
                        style: ConvStyle::GatedBcx,
                        in_stride: 3 * c.hidden,
                        in_offset: 0,
                        src_slot: conv_src,
                        dst_slot: conv_dst,
                        snap_slot: conv_snap,
                    };
                    B::short_conv(plan, bcx, conv, conv_bias.as_ref(), slots, conv_out, &params)?;
                    if fill_ends_here {
                        return Ok(());
                    }
                    project(plan, conv_out, out_proj, &ws.out, c.hidden)?;
                }
                (Mixer::Ssm { in_proj, conv, conv_bias, head_params, norm, out_proj }, LayerState::Ssm { conv: conv_state, scan }) => {
                    let (s, sw) = (c.ssm_sizes()?, ws.ssm.as_ref().expect("ssm buffers"));
                    project(plan, &ws.normed, in_proj, &sw.proj, s.proj_width())?;
                    let conv_params = ShortConvParams {
                        tokens: t,
                        channels: s.conv_channels(),
                        kernel: c.conv_kernel,
                        style: ConvStyle::Silu,
                        in_stride: s.proj_width(),
                        in_offset: s.inner(),
                        src_slot: conv_src,
                        dst_slot: conv_dst,
                        snap_slot: conv_snap,
                    };
                    B::short_conv(plan, &sw.proj, conv, conv_bias.as_ref(), conv_state, &sw.xbc, &conv_params)?;
                    let scratch = sw.scratch.as_ref().map(|(chunks, dt)| (chunks, dt));
                    B::ssm_scan(plan, &sw.xbc, &sw.proj, head_params, scan, &sw.y, scratch, &scan_params(s, t, conv_src, conv_dst, conv_snap))?;
                    if fill_ends_here {
                        return Ok(());
                    }
                    B::group_rms_norm(plan, &sw.y, norm, &sw.y_normed, t, s.groups, c.rms_eps)?;
                    project(plan, &sw.y_normed, out_proj, &ws.out, c.hidden)?;
                }
                _ => return Err(ModelError::Config(format!("layer {i}'s state does not match its kind"))),
            }
            post_norm(plan, &ws.out, layer.post_attn_norm.as_ref())?;
            let attn_out = block_out(layer.post_attn_norm.as_ref());
            let Some(ffn) = &layer.ffn else {
                // A mixer-only layer (Mamba2): its output joins the residual at the next norm.
                pending = Some(attn_out);
                continue;
            };
            if !fold {
                B::rms_norm(plan, attn_out, &ffn.norm, Some((&ws.residual, c.residual_scale)), &ws.normed, t, c.rms_eps, c.norm_offset)?;
            }
            match &ffn.mlp {
                Mlp::Dense(mlp) => dense(plan, mlp, &ffn.norm)?,
                Mlp::Experts { router, gate_up, down, gate_up_bias, down_bias, selection_bias, shared } => {
                    let (moe, mw) = (c.moe.as_ref().expect("experts have sizes"), ws.moe.as_ref().expect("moe buffers"));
                    // DeepSeek's shared experts first: the picks' outputs add to theirs.
                    if let Some(mlp) = shared {
                        dense(plan, mlp, &ffn.norm)?;
                    }
                    let accumulate = shared.is_some();
                    project(plan, &ws.normed, router, &mw.logits, moe.experts)?;
                    let route = MoeRouteParams { routing: moe.routing, ..MoeRouteParams::new(t, moe.experts, moe.top_k, moe.normalize) };
                    B::moe_route(plan, &mw.logits, selection_bias.as_ref(), &mw.route, &route)?;
                    match &mw.grouped {
                        // A prefill on the GPU: the picks grouped by expert, each picked
                        // expert's rows decoded once per tile of its tokens.
                        Some([groups, gate_up_out, down_out]) => {
                            let scratch = [groups, gate_up_out, &mw.act, down_out];
                            let biases = [gate_up_bias.as_ref(), down_bias.as_ref()];
                            B::grouped_experts(plan, gate_up, down, biases, &ws.normed, &mw.route, scratch, &ws.out, t, moe.top_k, c.activation, accumulate)?
                        }
                        None => {
                            B::expert_gated_matvec(plan, gate_up, &ws.normed, &mw.route, gate_up_bias.as_ref(), &mw.act, t, moe.top_k, c.activation)?;
                            B::expert_matvec(plan, down, &mw.act, &mw.route, down_bias.as_ref(), &ws.out, t, moe.top_k, accumulate)?;
                        }
                    }
                }
            }
            post_norm(plan, &ws.out, ffn.post_norm.as_ref())?;
            pending = Some(block_out(ffn.post_norm.as_ref()));
        }
        if end == StepEnd::Cache {
            return Ok(()); // a model without layers
        }
        let head = m.output.as_ref().unwrap_or(&m.embed);
        if fold && end != StepEnd::Hidden {
            B::matvec_folded(plan, head, &ws.residual, None, &ws.logits, 0, Some(folded_norm(&m.output_norm, c)), None)?;
        } else {
            // Folded, the residual stream is complete already (a one-token embedding).
            let (x, residual) = if fold { (&ws.residual, None) } else { (pending.unwrap_or(&ws.out), Some((&ws.residual, c.residual_scale))) };
            B::rms_norm(plan, x, &m.output_norm, residual, &ws.normed, t, c.rms_eps, c.norm_offset)?;
            if end == StepEnd::Hidden {
                return Ok(());
            }
            B::matvec_into(plan, head, &ws.normed, t - 1, None, &ws.logits, 0)?;
        }
        if c.final_softcap > 0.0 {
            B::logit_softcap(plan, &ws.logits, c.vocab, c.final_softcap)?;
        }
        if end == StepEnd::Argmax {
            B::argmax(plan, &ws.logits, None, ws.next(), 1, c.vocab)?;
        }
        Ok(())
    }
}
