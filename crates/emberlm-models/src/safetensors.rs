//! safetensors reader: an 8-byte little-endian header length, a JSON header
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`) and the
//! tensor bytes. Only the header is read up front; rows are read on demand through a
//! [`ByteSource`], so a multi-GB model never sits whole in memory. Sharded models
//! (`model.safetensors.index.json`) are a list of such files. Tensor names are translated to
//! llama.cpp's so the loader sees one vocabulary (see `weights.rs`).
//!
//! GPT-OSS checkpoints keep their experts in MXFP4 as OpenAI ships them: `*_blocks` (U8,
//! `[experts, rows, k/32, 16]`, value 2j in the low nibble of byte j) and `*_scales` (U8
//! e8m0, `[experts, rows, k/32]`), gate and up rows interleaved. They appear to the loader as
//! llama.cpp's `ffn_{gate,up,down}_exps` in MXFP4 ([`Mxfp4View`]), gate and up apart, as
//! llama.cpp's converter splits them; the interleaved biases likewise.

use std::collections::HashMap;
use std::ops::Range;

use emberlm_core::{DType, PackedMatrix};
use half::{bf16, f16};
use serde_json::Value as Json;

use crate::config::Architecture;
use crate::error::{ModelError, Result};
use crate::source::ByteSource;
use crate::weights::WeightStore;

/// No real header comes near this; a larger claim means a corrupt or hostile file.
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDType {
    F32,
    F16,
    BF16,
    /// Bytes: GPT-OSS's MXFP4 blocks and scales (read only through an [`Mxfp4View`]).
    U8,
}

impl StDType {
    fn size(self) -> u64 {
        match self {
            StDType::F32 => 4,
            StDType::F16 | StDType::BF16 => 2,
            StDType::U8 => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StTensor {
    /// The name in the file (Hugging Face naming).
    pub name: String,
    pub dtype: StDType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub bytes: Range<u64>,
}

impl StTensor {
    /// (rows, row length) seen as a matrix; a vector is one row.
    pub fn rows_k(&self) -> (usize, usize) {
        let k = self.shape.last().copied().unwrap_or(1);
        (self.shape.iter().product::<usize>() / k.max(1), k)
    }
}

fn invalid(file: &str, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Safetensors { file: file.to_string(), reason: msg.to_string() }
}

/// Parses and validates a safetensors header: every tensor must be f32/f16/bf16, its byte
/// range must match its shape and lie inside the file, and ranges must not overlap.
pub fn read_header<S: ByteSource + ?Sized>(file: &str, src: &S) -> Result<Vec<StTensor>> {
    let len = src.len();
    if len < 8 {
        return Err(invalid(file, format!("{len} bytes is too short for a safetensors file")));
    }
    let mut n = [0u8; 8];
    src.read_at(0, &mut n).map_err(|e| invalid(file, e))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || 8 + n > len {
        return Err(invalid(file, format!("header claims {n} bytes, the file has {len}")));
    }
    let mut header = vec![0u8; n as usize];
    src.read_at(8, &mut header).map_err(|e| invalid(file, e))?;
    let json: Json = serde_json::from_slice(&header).map_err(|e| invalid(file, format!("header is not valid JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| invalid(file, "header is not a JSON object"))?;
    let data_start = 8 + n;
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: String| invalid(file, format!("tensor `{name}`: {m}"));
        let dtype = match entry.get("dtype").and_then(Json::as_str) {
            Some("F32") => StDType::F32,
            Some("F16") => StDType::F16,
            Some("BF16") => StDType::BF16,
            Some("U8") => StDType::U8,
            Some(other) => return Err(bad(format!("dtype {other} is not supported (F32, F16, BF16, U8)"))),
            None => return Err(bad("no dtype".into())),
        };
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("no shape".into()))?
            .iter()
            .map(|d| d.as_u64().filter(|&d| d <= 1 << 40).map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of sizes".into()))?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_u64).collect())
            .filter(|v: &Vec<u64>| v.len() == 2)
            .ok_or_else(|| bad("data_offsets is not [begin, end]".into()))?;
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let want = numel.checked_mul(dtype.size()).ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let (b, e) = (offsets[0], offsets[1]);
        if e < b || e - b != want {
            return Err(bad(format!("data_offsets {b}..{e} hold {} bytes, shape {shape:?} needs {want}", e.saturating_sub(b))));
        }
        let (Some(start), Some(end)) = (data_start.checked_add(b), data_start.checked_add(e)) else {
            return Err(bad(format!("data_offsets {b}..{e} overflow")));
        };
        if end > len {
            return Err(bad(format!("data {start}..{end} is past the end of the file ({len} bytes); the file is truncated")));
        }
        tensors.push(StTensor { name: name.clone(), dtype, shape, bytes: start..end });
    }
    let mut ranges: Vec<_> = tensors.iter().map(|t| (t.bytes.start, t.bytes.end, t.name.as_str())).collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(invalid(file, format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2)));
        }
    }
    Ok(tensors)
}

/// The llama.cpp name for a Hugging Face tensor name, `None` for tensors the model does not use.
pub fn canonical_name(hf: &str, arch: Architecture) -> Option<String> {
    let hf = ["model.language_model.", "language_model.model.", "model.", "backbone."].iter().find_map(|p| hf.strip_prefix(p)).unwrap_or(hf);
    match hf {
        "embed_tokens.weight" | "embeddings.weight" => return Some("token_embd.weight".into()),
        "norm.weight" | "norm_f.weight" => return Some("output_norm.weight".into()),
        // LFM2's final norm (llama.cpp keeps the name as token_embd_norm).
        "embedding_norm.weight" => return Some("token_embd_norm.weight".into()),
        "lm_head.weight" | "language_model.lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    // Mamba2's per-head parameters, named as llama.cpp names them. llama.cpp stores
    // A = -exp(A_log); the checkpoint's A_log keeps a name of its own (the loader converts it).
    // (Granite's hybrids call the mixer `mamba`.)
    match (module, suffix) {
        // GPT-OSS: sinks, the down projection's biases (its other expert tensors are views).
        ("self_attn", "sinks") => return Some(format!("blk.{layer}.attn_sinks.weight")),
        ("mlp.experts", "down_proj_bias") => return Some(format!("blk.{layer}.ffn_down_exps.bias")),
        // DeepSeek-V3's bias for choosing experts.
        ("mlp.gate", "e_score_correction_bias") => return Some(format!("blk.{layer}.exp_probs_b.bias")),
        ("mixer" | "mamba", "dt_bias") => return Some(format!("blk.{layer}.ssm_dt.bias")),
        ("mixer" | "mamba", "A_log") => return Some(format!("blk.{layer}.ssm_a_log")),
        ("mixer" | "mamba", "D") => return Some(format!("blk.{layer}.ssm_d")),
        _ => {}
    }
    // Mixture-of-experts experts, by llama.cpp's per-expert names (its converter stacks them
    // into `ffn_*_exps`; the loader takes either).
    for experts in ["mlp.experts.", "block_sparse_moe.experts."] {
        if let Some((e, proj)) = module.strip_prefix(experts).and_then(|rest| rest.split_once('.')) {
            let e: usize = e.parse().ok()?;
            let name = match proj {
                "gate_proj" | "w1" => "ffn_gate",
                "up_proj" | "w3" => "ffn_up",
                "down_proj" | "w2" => "ffn_down",
                _ => return None,
            };
            return Some(format!("blk.{layer}.{name}.{e}.{suffix}"));
        }
    }
    let name = match module {
        // A mixture's router (Qwen3-MoE, Mixtral, GPT-OSS).
        "mlp.gate" | "block_sparse_moe.gate" | "mlp.router" => "ffn_gate_inp",
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        // DeepSeek's latent attention (kv_b_proj is split by the loader).
        "self_attn.q_a_proj" => "attn_q_a",
        "self_attn.q_a_layernorm" => "attn_q_a_norm",
        "self_attn.q_b_proj" => "attn_q_b",
        "self_attn.kv_a_proj_with_mqa" => "attn_kv_a_mqa",
        "self_attn.kv_a_layernorm" => "attn_kv_a_norm",
        "self_attn.kv_b_proj" => "attn_kv_b",
        "mlp.shared_experts.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_experts.up_proj" => "ffn_up_shexp",
        "mlp.shared_experts.down_proj" => "ffn_down_shexp",
        // Gemma normalises the attention output here; the others normalise the MLP input.
        "post_attention_layernorm" if arch.has_post_norms() => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        // Phi-3's fused [gate; up] is llama.cpp's 2·ffn-row `ffn_up`.
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // LFM2.
        "operator_norm" => "attn_norm",
        "ffn_norm" => "ffn_norm",
        "self_attn.out_proj" => "attn_output",
        "self_attn.q_layernorm" => "attn_q_norm",
        "self_attn.k_layernorm" => "attn_k_norm",
        "conv.in_proj" => "shortconv.in_proj",
        "conv.conv" => "shortconv.conv",
        "conv.out_proj" => "shortconv.out_proj",
        "feed_forward.w1" => "ffn_gate",
        "feed_forward.w3" => "ffn_up",
        "feed_forward.w2" => "ffn_down",
        // Mamba2.
        "norm" => "attn_norm",
        "mixer.in_proj" | "mamba.in_proj" => "ssm_in",
        "mixer.conv1d" | "mamba.conv1d" => "ssm_conv1d",
        "mixer.norm" | "mamba.norm" => "ssm_norm",
        "mixer.out_proj" | "mamba.out_proj" => "ssm_out",
        // Granite's hybrids: the MLP every layer has, [gate | up] fused as Phi-3's.
        "shared_mlp.input_linear" => "ffn_up",
        "shared_mlp.output_linear" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.{suffix}"))
}

/// A safetensors model: one or more files, tensors found by llama.cpp name.
pub struct SafetensorsStore<S: ByteSource> {
    files: Vec<S>,
    /// canonical name → (file index, tensor).
    tensors: HashMap<String, (usize, StTensor)>,
    /// Tensors the loader sees that the files hold another way (GPT-OSS's experts).
    views: HashMap<String, View>,
}

/// A tensor made from others (see the module docs).
enum View {
    /// MXFP4 rows from OpenAI's `*_blocks` and `*_scales`, `per_expert` rows an expert: view
    /// row r is source row r; or, with `deinterleave`, each expert's even source rows then its
    /// odd ones (GPT-OSS's interleaved gate|up as llama.cpp's fused `ffn_gate_up_exps`: gate
    /// rows, then up rows).
    Mxfp4 { blocks: (usize, StTensor), scales: (usize, StTensor), rows: usize, k: usize, per_expert: usize, deinterleave: bool },
    /// Every `stride`-th value of each source row from `offset` (an interleaved bias): [rows, k].
    Columns { tensor: (usize, StTensor), rows: usize, k: usize, stride: usize, offset: usize },
}

impl View {
    fn rows_k(&self) -> (usize, usize) {
        match self {
            View::Mxfp4 { rows, k, .. } | View::Columns { rows, k, .. } => (*rows, *k),
        }
    }
}

/// `(layer, tensor)` of a GPT-OSS expert tensor's HF name (`model.layers.{l}.mlp.experts.{t}`).
fn gpt_oss_expert(hf: &str) -> Option<(usize, &str)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, rest.strip_prefix("mlp.experts.")?))
}

/// GPT-OSS's expert views from its raw `*_blocks`, `*_scales` and `gate_up_proj_bias`
/// tensors (`raw`: HF name → (file, tensor)), shapes checked.
fn gpt_oss_views(file: &str, raw: &HashMap<String, (usize, StTensor)>) -> Result<HashMap<String, View>> {
    let mut views = HashMap::new();
    for (hf, blocks) in raw {
        let Some((layer, tensor)) = gpt_oss_expert(hf) else { continue };
        let bad = |m: String| invalid(file, format!("`{hf}`: {m}"));
        if let Some(proj) = tensor.strip_suffix("_blocks") {
            let scales_name = hf.replace("_blocks", "_scales");
            let scales = raw.get(&scales_name).ok_or_else(|| bad(format!("no `{scales_name}` beside it")))?;
            let (b, s) = (&blocks.1, &scales.1);
            let &[experts, rows, groups, 16] = b.shape.as_slice() else {
                return Err(bad(format!("blocks of shape {:?}, not [experts, rows, k/32, 16]", b.shape)));
            };
            if b.dtype != StDType::U8 || s.dtype != StDType::U8 || s.shape != [experts, rows, groups] || experts == 0 || rows == 0 || groups == 0 {
                return Err(bad(format!("blocks {:?} {:?} and scales {:?} {:?} do not form MXFP4", b.dtype, b.shape, s.dtype, s.shape)));
            }
            let view = |deinterleave: bool| View::Mxfp4 {
                blocks: blocks.clone(),
                scales: scales.clone(),
                rows: experts * rows,
                k: groups * 32,
                per_expert: rows,
                deinterleave,
            };
            match proj {
                // One view, so each expert's interleaved rows are read once, not once for gate
                // and again for up.
                "gate_up_proj" if rows % 2 == 0 => {
                    views.insert(format!("blk.{layer}.ffn_gate_up_exps.weight"), view(true));
                }
                "down_proj" => {
                    views.insert(format!("blk.{layer}.ffn_down_exps.weight"), view(false));
                }
                _ => return Err(bad(format!("an MXFP4 tensor of {rows} rows the loader does not know"))),
            }
        } else if tensor == "gate_up_proj_bias" {
            let &[experts, width] = blocks.1.shape.as_slice() else { return Err(bad(format!("shape {:?}, not [experts, 2·ffn]", blocks.1.shape))) };
            if width % 2 != 0 || blocks.1.dtype == StDType::U8 {
                return Err(bad(format!("{:?} {:?} is not an interleaved [gate, up] bias", blocks.1.dtype, blocks.1.shape)));
            }
            for (offset, proj) in ["gate", "up"].into_iter().enumerate() {
                let columns = View::Columns { tensor: blocks.clone(), rows: experts, k: width / 2, stride: 2, offset };
                views.insert(format!("blk.{layer}.ffn_{proj}_exps.bias"), columns);
            }
        }
    }
    Ok(views)
}

impl<S: ByteSource> SafetensorsStore<S> {
    /// The files' byte sources, in order.
    pub fn sources(&self) -> impl Iterator<Item = &S> {
        self.files.iter()
    }

    /// `files`: (file name for messages, source) of every shard.
    pub fn new(files: Vec<(String, S)>, arch: Architecture) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut raw = HashMap::new();
        let mut sources = Vec::with_capacity(files.len());
        let mut first_file = String::new();
        for (i, (file_name, src)) in files.into_iter().enumerate() {
            for t in read_header(&file_name, &src)? {
                if arch == Architecture::GptOss && t.name.contains(".mlp.experts.") && (t.dtype == StDType::U8 || t.name.ends_with("gate_up_proj_bias")) {
                    raw.insert(t.name.clone(), (i, t));
                } else if let Some(name) = canonical_name(&t.name, arch) {
                    if let Some((_, prev)) = tensors.insert(name.clone(), (i, t)) {
                        return Err(invalid(&file_name, format!("`{}` and another tensor both map to `{name}`", prev.name)));
                    }
                }
            }
            if i == 0 {
                first_file = file_name;
            }
            sources.push(src);
        }
        let views = gpt_oss_views(&first_file, &raw)?;
        Ok(Self { files: sources, tensors, views })
    }

    /// Rows `rows` of an MXFP4 view, as OpenAI's blocks hold them: each expert's rows in one
    /// read of the source rows they span.
    fn mxfp4_rows(&self, name: &str, view: &View, rows: Range<usize>) -> Result<PackedMatrix> {
        let &View::Mxfp4 { ref blocks, ref scales, rows: total, k, per_expert, deinterleave } = view else {
            return Err(ModelError::Tensor { tensor: name.into(), reason: "not an MXFP4 tensor".into() });
        };
        if rows.end > total {
            return Err(ModelError::Tensor { tensor: name.into(), reason: format!("rows {rows:?} of {total}") });
        }
        let groups = k / 32;
        let (mut codes, mut exponents) = (Vec::with_capacity(rows.len() * k), Vec::with_capacity(rows.len() * groups));
        let read = |(file, t): &(usize, StTensor), first: usize, count: usize, row_bytes: usize| -> Result<Vec<u8>> {
            let mut bytes = vec![0u8; count * row_bytes];
            self.files[*file]
                .read_at(t.bytes.start + (first * row_bytes) as u64, &mut bytes)
                .map_err(|e| ModelError::Tensor { tensor: format!("{name} ({})", t.name), reason: e.to_string() })?;
            Ok(bytes)
        };
        let source_row = |r: usize| {
            let (expert, i) = (r / per_expert, r % per_expert);
            let within = match deinterleave {
                true if i < per_expert / 2 => 2 * i,
                true => 2 * (i - per_expert / 2) + 1,
                false => i,
            };
            expert * per_expert + within
        };
        let mut r = rows.start;
        while r < rows.end {
            // This expert's rows of the range: one read of the source rows between them.
            let n = (per_expert - r % per_expert).min(rows.end - r);
            let sources: Vec<usize> = (r..r + n).map(source_row).collect();
            let first = sources.iter().copied().min().unwrap_or(0);
            let span = sources.iter().copied().max().unwrap_or(0) + 1 - first;
            let (b, s) = (read(blocks, first, span, groups * 16)?, read(scales, first, span, groups)?);
            for src in sources {
                for byte in &b[(src - first) * groups * 16..][..groups * 16] {
                    codes.extend([byte & 0xf, byte >> 4]);
                }
                exponents.extend_from_slice(&s[(src - first) * groups..][..groups]);
            }
            r += n;
        }
        Ok(PackedMatrix::mxfp4_from_blocks(rows.len(), k, &codes, &exponents))
    }

    fn find(&self, name: &str) -> Result<(&S, &StTensor)> {
        self.tensors.get(name).map(|(i, t)| (&self.files[*i], t)).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    fn rows_f32(&self, name: &str, rows: Range<usize>) -> Result<(usize, Vec<f32>)> {
        let (file, t) = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        self.rows_f32_of(*file, t, name, rows)
    }

    fn rows_f32_of(&self, file: usize, t: &StTensor, name: &str, rows: Range<usize>) -> Result<(usize, Vec<f32>)> {
        let src = &self.files[file];
        if t.dtype == StDType::U8 {
            return Err(ModelError::Tensor { tensor: format!("{name} ({})", t.name), reason: "U8 tensors are read as MXFP4 blocks only".into() });
        }
        let (n_rows, k) = t.rows_k();
        if rows.end > n_rows {
            return Err(ModelError::Tensor { tensor: name.into(), reason: format!("rows {rows:?} of {n_rows}") });
        }
        let size = t.dtype.size();
        let mut bytes = vec![0u8; rows.len() * k * size as usize];
        src.read_at(t.bytes.start + (rows.start * k) as u64 * size, &mut bytes)
            .map_err(|e| ModelError::Tensor { tensor: format!("{name} ({})", t.name), reason: e.to_string() })?;
        Ok((k, decode(t.dtype, &bytes)))
    }
}

fn decode(dtype: StDType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        StDType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        StDType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        StDType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        StDType::U8 => bytes.iter().map(|&b| b as f32).collect(),
    }
}

/// One tensor of a small safetensors file held in memory (a header already read by
/// [`read_header`], so its byte range lies inside `file`), as f32.
pub fn tensor_f32(file: &[u8], t: &StTensor) -> Vec<f32> {
    decode(t.dtype, &file[t.bytes.start as usize..t.bytes.end as usize])
}

impl<S: ByteSource> WeightStore for SafetensorsStore<S> {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().chain(self.views.keys()).cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<(usize, usize)> {
        self.tensors.get(name).map(|(_, t)| t.rows_k()).or_else(|| self.views.get(name).map(View::rows_k))
    }

    fn exact_dtype(&self, name: &str) -> Result<DType> {
        if let Some(view) = self.views.get(name) {
            return Ok(if matches!(view, View::Mxfp4 { .. }) { DType::Mxfp4 } else { DType::F32 });
        }
        // bf16 → f16 would round small values; f32 holds bf16 exactly.
        Ok(if self.find(name)?.1.dtype == StDType::F16 { DType::F16 } else { DType::F32 })
    }

    fn row_bytes(&self, name: &str) -> Result<u64> {
        if let Some(view) = self.views.get(name) {
            let k = view.rows_k().1 as u64;
            return Ok(if matches!(view, View::Mxfp4 { .. }) { k / 2 + k / 32 } else { k * 4 });
        }
        let t = self.find(name)?.1;
        Ok(t.rows_k().1 as u64 * t.dtype.size())
    }

    fn read_rows(&self, name: &str, rows: Range<usize>, dtype: DType) -> Result<PackedMatrix> {
        let n = rows.len();
        if let Some(view @ View::Mxfp4 { .. }) = self.views.get(name) {
            let packed = self.mxfp4_rows(name, view, rows)?;
            if dtype == DType::Mxfp4 {
                return Ok(packed);
            }
            // Another format asked for: from the exact values.
            return Ok(PackedMatrix::pack(dtype, n, packed.k, &packed.dequantize()));
        }
        let (k, values) = self.rows_f32(name, rows)?;
        if k % dtype.k_multiple() != 0 {
            return Err(ModelError::Tensor { tensor: name.into(), reason: format!("row length {k} does not fit {}", dtype.name()) });
        }
        Ok(PackedMatrix::pack(dtype, n, k, &values))
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        match self.views.get(name) {
            Some(View::Columns { tensor: (file, t), rows, k, stride, offset }) => {
                let whole = self.rows_f32_of(*file, t, name, 0..*rows)?.1;
                Ok(whole.chunks_exact(k * stride).flat_map(|row| row.iter().skip(*offset).step_by(*stride)).copied().collect())
            }
            Some(view) => Ok(self.read_rows(name, 0..view.rows_k().0, DType::F32)?.dequantize()),
            None => {
                let rows = self.find(name)?.1.rows_k().0;
                Ok(self.rows_f32(name, 0..rows)?.1)
            }
        }
    }
}

/// The shard file names listed by a `model.safetensors.index.json`, in first-use order.
pub fn index_files(index: &Json) -> Result<Vec<String>> {
    let map = index
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| ModelError::Config("model.safetensors.index.json has no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for v in map.values() {
        let f = v.as_str().ok_or_else(|| ModelError::Config("weight_map values must be file names".into()))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(ModelError::Config(format!("weight_map names a file outside the model directory: `{f}`")));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of U8 tensors `(name, shape)`, byte i of the data i·7 mod 251 (rows
    /// that differ).
    fn file(tensors: &[(&str, &[usize])]) -> Vec<u8> {
        let (mut header, mut at) = (serde_json::Map::new(), 0usize);
        for (name, shape) in tensors {
            let n: usize = shape.iter().product();
            header.insert(name.to_string(), serde_json::json!({"dtype": "U8", "shape": shape, "data_offsets": [at, at + n]}));
            at += n;
        }
        let text = Json::Object(header).to_string();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text.as_bytes());
        out.extend((0..at).map(|i| (i * 7 % 251) as u8));
        out
    }

    fn open(tensors: &[(&str, &[usize])]) -> Result<SafetensorsStore<Vec<u8>>> {
        SafetensorsStore::new(vec![("model.safetensors".into(), file(tensors))], Architecture::GptOss)
    }

    const BLOCKS: &str = "model.layers.0.mlp.experts.gate_up_proj_blocks";
    const SCALES: &str = "model.layers.0.mlp.experts.gate_up_proj_scales";

    /// GPT-OSS's MXFP4 blocks become gate and up views of half the rows each; blocks without
    /// their scales, scales of another shape, an odd number of gate|up rows or blocks that are
    /// not 16 bytes a group are errors naming the tensor, and a raw U8 tensor is never read as
    /// values.
    #[test]
    fn gpt_oss_mxfp4_views_and_malformed_blocks() {
        let store = open(&[(BLOCKS, &[2, 6, 3, 16]), (SCALES, &[2, 6, 3])]).unwrap();
        let fused = "blk.0.ffn_gate_up_exps.weight";
        assert_eq!(store.shape(fused), Some((12, 96)));
        assert_eq!(store.exact_dtype(fused).unwrap(), DType::Mxfp4);
        assert_eq!(store.read_rows(fused, 0..12, DType::Mxfp4).unwrap().rows, 12);
        assert!(store.read_rows(fused, 10..13, DType::Mxfp4).is_err(), "rows past the end");
        // Expert e's view rows: its even source rows (gate), then its odd ones (up); a range that
        // splits an expert reads the same rows.
        let bytes = file(&[(BLOCKS, &[2, 6, 3, 16]), (SCALES, &[2, 6, 3])]);
        let data = &bytes[8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize..];
        let (blocks, scales) = data.split_at(2 * 6 * 48);
        for r in 0..12 {
            let (e, i) = (r / 6, r % 6);
            let src = e * 6 + if i < 3 { 2 * i } else { 2 * (i - 3) + 1 };
            let codes: Vec<u8> = blocks[src * 48..][..48].iter().flat_map(|b| [b & 0xf, b >> 4]).collect();
            let want = PackedMatrix::mxfp4_from_blocks(1, 96, &codes, &scales[src * 3..][..3]);
            let got = store.read_rows(fused, r..r + 1, DType::Mxfp4).unwrap();
            assert_eq!((got.qs, got.scales), (want.qs, want.scales), "view row {r}");
        }
        let whole = store.read_rows(fused, 0..12, DType::Mxfp4).unwrap();
        let mut pieces = store.read_rows(fused, 0..5, DType::Mxfp4).unwrap().qs;
        pieces.extend(store.read_rows(fused, 5..12, DType::Mxfp4).unwrap().qs);
        assert_eq!(pieces, whole.qs);
        for (tensors, want) in [
            (&[(BLOCKS, &[2usize, 6, 3, 16][..])][..], "gate_up_proj_scales"),
            (&[(BLOCKS, &[2, 6, 3, 16]), (SCALES, &[2, 6, 4])], "do not form MXFP4"),
            (&[(BLOCKS, &[2, 5, 3, 16]), (SCALES, &[2, 5, 3])], "does not know"),
            (&[(BLOCKS, &[2, 6, 3, 8]), (SCALES, &[2, 6, 3])], "not [experts, rows, k/32, 16]"),
        ] {
            let e = open(tensors).err().expect("refused").to_string();
            assert!(e.contains(want) && e.contains("gate_up_proj_blocks"), "{tensors:?}: {e}");
        }
        let lone = SafetensorsStore::new(vec![("m.safetensors".into(), file(&[("model.norm.weight", &[4])]))], Architecture::Llama).unwrap();
        assert!(lone.read_f32("output_norm.weight").unwrap_err().to_string().contains("U8"));
    }
}
