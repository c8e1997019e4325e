//! safetensors reader: an 8-byte little-endian header length, a JSON header
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`) and the
//! tensor bytes. Only the header is read up front; rows are read on demand through a
//! [`ByteSource`], so a multi-GB model never sits whole in memory. Sharded models
//! (`model.safetensors.index.json`) are a list of such files. Tensor names are translated to
//! llama.cpp's so the loader sees one vocabulary (see `weights.rs`).

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
}

impl StDType {
    fn size(self) -> u64 {
        if self == StDType::F32 {
            4
        } else {
            2
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
            Some(other) => return Err(bad(format!("dtype {other} is not supported (F32, F16, BF16)"))),
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
        ("mixer" | "mamba", "dt_bias") => return Some(format!("blk.{layer}.ssm_dt.bias")),
        ("mixer" | "mamba", "A_log") => return Some(format!("blk.{layer}.ssm_a_log")),
        ("mixer" | "mamba", "D") => return Some(format!("blk.{layer}.ssm_d")),
        _ => {}
    }
    let name = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
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
}

impl<S: ByteSource> SafetensorsStore<S> {
    /// The files' byte sources, in order.
    pub fn sources(&self) -> impl Iterator<Item = &S> {
        self.files.iter()
    }

    /// `files`: (file name for messages, source) of every shard.
    pub fn new(files: Vec<(String, S)>, arch: Architecture) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut sources = Vec::with_capacity(files.len());
        for (i, (file_name, src)) in files.into_iter().enumerate() {
            for t in read_header(&file_name, &src)? {
                if let Some(name) = canonical_name(&t.name, arch) {
                    if let Some((_, prev)) = tensors.insert(name.clone(), (i, t)) {
                        return Err(invalid(&file_name, format!("`{}` and another tensor both map to `{name}`", prev.name)));
                    }
                }
            }
            sources.push(src);
        }
        Ok(Self { files: sources, tensors })
    }

    fn find(&self, name: &str) -> Result<(&S, &StTensor)> {
        self.tensors.get(name).map(|(i, t)| (&self.files[*i], t)).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    fn rows_f32(&self, name: &str, rows: Range<usize>) -> Result<(usize, Vec<f32>)> {
        let (src, t) = self.find(name)?;
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
    }
}

/// One tensor of a small safetensors file held in memory (a header already read by
/// [`read_header`], so its byte range lies inside `file`), as f32.
pub fn tensor_f32(file: &[u8], t: &StTensor) -> Vec<f32> {
    decode(t.dtype, &file[t.bytes.start as usize..t.bytes.end as usize])
}

impl<S: ByteSource> WeightStore for SafetensorsStore<S> {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<(usize, usize)> {
        self.tensors.get(name).map(|(_, t)| t.rows_k())
    }

    fn exact_dtype(&self, name: &str) -> Result<DType> {
        // bf16 → f16 would round small values; f32 holds bf16 exactly.
        Ok(if self.find(name)?.1.dtype == StDType::F16 { DType::F16 } else { DType::F32 })
    }

    fn row_bytes(&self, name: &str) -> Result<u64> {
        let t = self.find(name)?.1;
        Ok(t.rows_k().1 as u64 * t.dtype.size())
    }

    fn read_rows(&self, name: &str, rows: Range<usize>, dtype: DType) -> Result<PackedMatrix> {
        let n = rows.len();
        let (k, values) = self.rows_f32(name, rows)?;
        if k % dtype.k_multiple() != 0 {
            return Err(ModelError::Tensor { tensor: name.into(), reason: format!("row length {k} does not fit {}", dtype.name()) });
        }
        Ok(PackedMatrix::pack(dtype, n, k, &values))
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let rows = self.find(name)?.1.rows_k().0;
        Ok(self.rows_f32(name, 0..rows)?.1)
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
