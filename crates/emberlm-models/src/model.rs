//! A decoder-only transformer (Llama family) on emberlm-core: weights loaded from GGUF, a KV
//! cache, and the forward step recorded into one plan. Per layer:
//!
//! ```text
//! normed = rms_norm(residual += previous output)          (first layer: rms_norm(embedding))
//! qkv    = [normed·Wqᵀ | normed·Wkᵀ | normed·Wvᵀ] (+ biases)  one fused row per token
//! rope(q heads), rope(k heads); append k, v to the cache
//! attn   = attention(q, cache)
//! out    = attn·Woᵀ
//! normed = rms_norm(residual += out)
//! out    = (act(normed·Wgateᵀ) · normed·Wupᵀ)·Wdownᵀ
//! ```
//! then `logits = rms_norm(residual += out)[last]·Woutᵀ` and the argmax on the GPU.

use emberlm_core::rope_table::{self, RopeTable};
use emberlm_core::{ops, DType, GpuDevice, Plan, Tensor};

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::ggml;
use crate::gguf::{ByteSource, GgufFile};

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

struct Layer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

pub struct Model {
    pub config: ModelConfig,
    pub context: usize,
    /// Bytes of weights on the GPU.
    pub weight_bytes: u64,
    embed: Tensor,
    /// `None` when the output projection is tied to the embedding.
    output: Option<Tensor>,
    output_norm: Tensor,
    layers: Vec<Layer>,
    rope: RopeTable,
}

struct Loader<'a, S: ByteSource + ?Sized> {
    dev: &'a GpuDevice,
    file: &'a GgufFile,
    src: &'a S,
    dtype: Option<DType>,
    bytes: u64,
}

impl<S: ByteSource + ?Sized> Loader<'_, S> {
    /// A [rows, k] matrix, streamed in pieces and packed into the requested (or exact) dtype.
    fn matrix(&mut self, name: &str, rows: usize, k: usize) -> Result<Tensor> {
        let info = self.file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.rows_k() != (rows, k) {
            return Err(ModelError::ShapeMismatch { tensor: name.into(), expected: vec![rows, k], found: info.dims.iter().rev().map(|&d| d as usize).collect() });
        }
        let mut dtype = self.dtype.unwrap_or_else(|| ggml::exact_dtype(info.ty));
        if k % dtype.k_multiple() != 0 {
            dtype = DType::F32;
        }
        let tensor = Tensor::new_weight(self.dev, name, &[rows, k], dtype)?;
        let row_bytes = info.ty.size_of(k as u64).map_err(|reason| ModelError::Tensor { tensor: name.into(), reason })?;
        let rows_per_piece = (LOAD_PIECE_BYTES / row_bytes).max(1) as usize;
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rows_per_piece).min(rows);
            let bytes = self.file.read_rows(self.src, info, r0..r1)?;
            let packed = ggml::pack_rows(info.ty, &bytes, r1 - r0, k, dtype).map_err(|reason| ModelError::Tensor { tensor: name.into(), reason })?;
            tensor.write_rows(self.dev, r0, packed.qs_bytes(), packed.scale_bytes())?;
            r0 = r1;
        }
        self.bytes += tensor.chunks.iter().map(|c| c.buffer.size()).sum::<u64>();
        Ok(tensor)
    }

    /// A vector (norm weights, biases), always f32.
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        let info = self.file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.numel() != len as u64 {
            return Err(ModelError::ShapeMismatch { tensor: name.into(), expected: vec![len], found: info.dims.iter().map(|&d| d as usize).collect() });
        }
        let bytes = self.file.read_rows(self.src, info, 0..info.rows_k().0)?;
        let mut values = vec![0f32; len];
        ggml::dequantize(info.ty, &bytes, &mut values).map_err(|reason| ModelError::Tensor { tensor: name.into(), reason })?;
        self.bytes += len as u64 * 4;
        Ok(Tensor::from_f32(self.dev, name, &[len], &values)?)
    }

    fn optional_vector(&mut self, name: &str, len: usize) -> Result<Option<Tensor>> {
        if self.file.tensor(name).is_some() {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Model {
    /// Loads a GGUF model. Tensor data is streamed from `src` piece by piece.
    pub fn load_gguf<S: ByteSource + ?Sized>(dev: &GpuDevice, file: &GgufFile, src: &S, options: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_gguf(file)?;
        let c = &config;
        if options.context == 0 {
            return Err(ModelError::Config("context must be at least 1".into()));
        }
        let mut ld = Loader { dev, file, src, dtype: options.dtype, bytes: 0 };
        let (h, d) = (c.hidden, c.head_dim);
        let embed = ld.matrix("token_embd.weight", c.vocab, h)?;
        let output = if file.tensor("output.weight").is_some() { Some(ld.matrix("output.weight", c.vocab, h)?) } else { None };
        let output_norm = ld.vector("output_norm.weight", h)?;
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: ld.vector(&n("attn_norm.weight"), h)?,
                q: ld.matrix(&n("attn_q.weight"), c.heads * d, h)?,
                k: ld.matrix(&n("attn_k.weight"), c.kv_heads * d, h)?,
                v: ld.matrix(&n("attn_v.weight"), c.kv_heads * d, h)?,
                q_bias: ld.optional_vector(&n("attn_q.bias"), c.heads * d)?,
                k_bias: ld.optional_vector(&n("attn_k.bias"), c.kv_heads * d)?,
                v_bias: ld.optional_vector(&n("attn_v.bias"), c.kv_heads * d)?,
                o: ld.matrix(&n("attn_output.weight"), h, c.heads * d)?,
                ffn_norm: ld.vector(&n("ffn_norm.weight"), h)?,
                gate: ld.matrix(&n("ffn_gate.weight"), c.ffn, h)?,
                up: ld.matrix(&n("ffn_up.weight"), c.ffn, h)?,
                down: ld.matrix(&n("ffn_down.weight"), h, c.ffn)?,
            });
        }
        if c.arch == Architecture::Qwen2 && layers.iter().any(|l| l.q_bias.is_none()) {
            return Err(ModelError::Config("qwen2 models need q/k/v biases".into()));
        }
        let inv_freq = rope_table::inv_freq(c.rope_dims, c.rope_theta, c.rope_scaling);
        let rope = RopeTable::new(dev, &inv_freq, options.context)?;
        Ok(Self { config, context: options.context, weight_bytes: ld.bytes, embed, output, output_norm, layers, rope })
    }
}

/// Per-layer key and value caches, [kv_heads, capacity, head_dim] f32 each.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    pub capacity: usize,
}

/// Activation buffers for steps of `tokens` tokens; reused across decode steps.
struct Workspace {
    tokens: usize,
    ids: Tensor,
    residual: Tensor,
    normed: Tensor,
    qkv: Tensor,
    attn: Tensor,
    out: Tensor,
    gate_up: Tensor,
    act: Tensor,
    logits: Tensor,
    next: Tensor,
}

impl Workspace {
    fn new(dev: &GpuDevice, c: &ModelConfig, t: usize) -> Result<Self> {
        let f32t = |name: &str, cols: usize| Tensor::new_zeroed(dev, name, &[t, cols], DType::F32);
        Ok(Self {
            tokens: t,
            ids: Tensor::from_u32(dev, "token ids", &vec![0; t])?,
            residual: f32t("residual", c.hidden)?,
            normed: f32t("normed", c.hidden)?,
            qkv: f32t("qkv", c.qkv_width())?,
            attn: f32t("attention out", c.heads * c.head_dim)?,
            out: f32t("block out", c.hidden)?,
            gate_up: f32t("gate|up", 2 * c.ffn)?,
            act: f32t("activation", c.ffn)?,
            logits: Tensor::new_zeroed(dev, "logits", &[c.vocab], DType::F32)?,
            next: Tensor::from_u32(dev, "next token", &[0])?,
        })
    }
}

/// What a step hands back: the greedy next token, and the last position's logits if asked.
pub struct StepOutput {
    pub argmax: u32,
    pub logits: Option<Vec<f32>>,
}

/// One conversation's state: the KV cache and the position reached.
pub struct Session<'m> {
    pub model: &'m Model,
    cache: KvCache,
    pub position: usize,
    decode: Option<Workspace>,
}

impl<'m> Session<'m> {
    pub fn new(dev: &GpuDevice, model: &'m Model) -> Result<Self> {
        let c = &model.config;
        let len = c.kv_heads * model.context * c.head_dim;
        let mut k = Vec::with_capacity(c.layers);
        let mut v = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            k.push(Tensor::new_zeroed(dev, &format!("k cache {i}"), &[len], DType::F32)?);
            v.push(Tensor::new_zeroed(dev, &format!("v cache {i}"), &[len], DType::F32)?);
        }
        Ok(Self { model, cache: KvCache { k, v, capacity: model.context }, position: 0, decode: None })
    }

    /// Forgets the conversation (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Runs `tokens` at the next positions and returns the greedy next token; reads the last
    /// position's logits back only when `want_logits`.
    pub async fn step(&mut self, dev: &GpuDevice, tokens: &[u32], want_logits: bool) -> Result<StepOutput> {
        let c = &self.model.config;
        if tokens.is_empty() {
            return Err(ModelError::Config("a step needs at least one token".into()));
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab });
        }
        if self.position + tokens.len() > self.cache.capacity {
            return Err(ModelError::ContextFull { needed: self.position + tokens.len(), capacity: self.cache.capacity });
        }
        let ws = if tokens.len() == 1 {
            if self.decode.is_none() {
                self.decode = Some(Workspace::new(dev, c, 1)?);
            }
            None
        } else {
            Some(Workspace::new(dev, c, tokens.len())?)
        };
        let ws = ws.as_ref().unwrap_or_else(|| self.decode.as_ref().expect("decode workspace"));
        ws.ids.write_rows(dev, 0, bytemuck::cast_slice(tokens), &[])?;
        let mut plan = Plan::new(dev);
        self.record(&mut plan, ws, self.position)?;
        plan.finish()?.run(dev)?;
        self.position += tokens.len();
        let argmax = dev.read_u32(ws.next.buffer()?, 0, 1).await?[0];
        let logits = if want_logits { Some(ws.logits.read_f32(dev).await?) } else { None };
        Ok(StepOutput { argmax, logits })
    }

    fn record(&self, plan: &mut Plan, ws: &Workspace, pos0: usize) -> Result<()> {
        let m = self.model;
        let c = &m.config;
        let t = ws.tokens;
        let (d, qkv_w) = (c.head_dim, c.qkv_width());
        let project = |plan: &mut Plan, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, y_cols: usize, y_off: usize| -> Result<()> {
            if t == 1 {
                ops::matvec_into(plan, w, x, 0, bias, y, y_off)?;
            } else {
                ops::matmul_into(plan, x, w, bias, y, t, y_cols, y_off)?;
            }
            Ok(())
        };
        ops::embedding(plan, &ws.ids, &m.embed, &ws.residual, t, 1.0)?;
        for (i, layer) in m.layers.iter().enumerate() {
            if i == 0 {
                ops::rms_norm(plan, &ws.residual, &layer.attn_norm, None, &ws.normed, t, c.rms_eps, 0.0)?;
            } else {
                ops::rms_norm(plan, &ws.out, &layer.attn_norm, Some(&ws.residual), &ws.normed, t, c.rms_eps, 0.0)?;
            }
            let (q_cols, kv_cols) = (c.heads * d, c.kv_heads * d);
            project(plan, &ws.normed, &layer.q, layer.q_bias.as_ref(), &ws.qkv, qkv_w, 0)?;
            project(plan, &ws.normed, &layer.k, layer.k_bias.as_ref(), &ws.qkv, qkv_w, q_cols)?;
            project(plan, &ws.normed, &layer.v, layer.v_bias.as_ref(), &ws.qkv, qkv_w, q_cols + kv_cols)?;
            ops::rope(plan, &ws.qkv, &m.rope, c.rope_layout, t, c.heads, d, 0, qkv_w, pos0)?;
            ops::rope(plan, &ws.qkv, &m.rope, c.rope_layout, t, c.kv_heads, d, c.heads, qkv_w, pos0)?;
            ops::kv_cache_append(plan, &ws.qkv, &self.cache.k[i], t, c.kv_heads, d, c.heads, qkv_w, pos0)?;
            ops::kv_cache_append(plan, &ws.qkv, &self.cache.v[i], t, c.kv_heads, d, c.heads + c.kv_heads, qkv_w, pos0)?;
            let params = ops::AttentionParams {
                tokens: t,
                heads_q: c.heads,
                heads_kv: c.kv_heads,
                head_dim: d,
                pos0,
                window: 0,
                scale: 1.0 / (d as f32).sqrt(),
                softcap: 0.0,
                q_stride: qkv_w,
            };
            ops::attention(plan, &ws.qkv, &self.cache.k[i], &self.cache.v[i], &ws.attn, &params)?;
            project(plan, &ws.attn, &layer.o, None, &ws.out, c.hidden, 0)?;
            ops::rms_norm(plan, &ws.out, &layer.ffn_norm, Some(&ws.residual), &ws.normed, t, c.rms_eps, 0.0)?;
            project(plan, &ws.normed, &layer.gate, None, &ws.gate_up, 2 * c.ffn, 0)?;
            project(plan, &ws.normed, &layer.up, None, &ws.gate_up, 2 * c.ffn, c.ffn)?;
            ops::gated_activation(plan, &ws.gate_up, &ws.act, t, c.ffn, ops::Activation::Silu)?;
            project(plan, &ws.act, &layer.down, None, &ws.out, c.hidden, 0)?;
        }
        ops::rms_norm(plan, &ws.out, &m.output_norm, Some(&ws.residual), &ws.normed, t, c.rms_eps, 0.0)?;
        let head = m.output.as_ref().unwrap_or(&m.embed);
        ops::matvec_into(plan, head, &ws.normed, t - 1, None, &ws.logits, 0)?;
        ops::argmax(plan, &ws.logits, &ws.next, 1, c.vocab)?;
        Ok(())
    }
}
