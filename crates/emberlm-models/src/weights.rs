//! Where the loader gets tensors from. Every format answers by llama.cpp's tensor names
//! (`token_embd.weight`, `blk.N.attn_q.weight`, ...), the model's one vocabulary: GGUF files
//! use them already, safetensors names are translated when the file is opened.

use std::ops::Range;

use emberlm_core::{DType, PackedMatrix};

use crate::error::{ModelError, Result};
use crate::ggml::{self, GgmlType};
use crate::gguf::{ByteSource, GgufFile, TensorInfo};

/// Read access to a model's tensors by canonical (llama.cpp) name. 2-D tensors are [rows, k]
/// with k contiguous; vectors are [1, len].
pub trait WeightStore {
    /// `(rows, k)` of the tensor, or `None` when the model has no such tensor.
    fn shape(&self, name: &str) -> Option<(usize, usize)>;
    /// The dtype that holds the stored values without loss.
    fn exact_dtype(&self, name: &str) -> Result<DType>;
    /// Stored bytes per row (sizes the streaming pieces).
    fn row_bytes(&self, name: &str) -> Result<u64>;
    /// Rows `rows` packed into `dtype` (exact when `dtype` is `exact_dtype`).
    fn read_rows(&self, name: &str, rows: Range<usize>, dtype: DType) -> Result<PackedMatrix>;
    /// The whole tensor as f32.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// Every tensor's canonical name (sizes a load before it allocates).
    fn names(&self) -> Vec<String>;
}

/// A GGUF model: one file, or the shards of a split model (`-00001-of-0000N.gguf`), each with
/// its own byte source. Metadata comes from the first shard.
pub struct GgufStore<S: ByteSource> {
    pub shards: Vec<(GgufFile, S)>,
}

impl<S: ByteSource> GgufStore<S> {
    /// The shards' byte sources, in order.
    pub fn sources(&self) -> impl Iterator<Item = &S> {
        self.shards.iter().map(|(_, s)| s)
    }

    /// Checks that the shards form one split model, in order, with no tensor twice.
    pub fn new(shards: Vec<(GgufFile, S)>) -> Result<Self> {
        let Some((first, _)) = shards.first() else {
            return Err(ModelError::Config("no GGUF file given".into()));
        };
        let declared = first.get_u64("split.count").unwrap_or(1) as usize;
        if declared != shards.len() {
            return Err(ModelError::Config(format!("the GGUF model is split into {declared} files, {} given", shards.len())));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, (f, _)) in shards.iter().enumerate() {
            let no = f.get_u64("split.no").unwrap_or(0) as usize;
            if no != i {
                return Err(ModelError::Config(format!("GGUF shard {} is split number {no}; shards must be given in order", i + 1)));
            }
            for t in &f.tensors {
                if !seen.insert(t.name.as_str()) {
                    return Err(ModelError::Config(format!("tensor `{}` appears in two GGUF shards", t.name)));
                }
            }
        }
        Ok(Self { shards })
    }

    pub fn metadata(&self) -> &GgufFile {
        &self.shards[0].0
    }

    fn find(&self, name: &str) -> Result<(&GgufFile, &S, &TensorInfo)> {
        self.shards.iter().find_map(|(f, s)| f.tensor(name).map(|t| (f, s, t))).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    fn bytes(&self, name: &str, rows: Range<usize>) -> Result<(GgmlType, usize, Vec<u8>)> {
        let (f, s, t) = self.find(name)?;
        Ok((t.ty, t.rows_k().1, f.read_rows(s, t, rows)?))
    }
}

fn tensor_err(name: &str) -> impl FnOnce(String) -> ModelError + '_ {
    move |reason| ModelError::Tensor { tensor: name.into(), reason }
}

impl<S: ByteSource> WeightStore for GgufStore<S> {
    fn names(&self) -> Vec<String> {
        self.shards.iter().flat_map(|(f, _)| f.tensors.iter().map(|t| t.name.clone())).collect()
    }

    fn shape(&self, name: &str) -> Option<(usize, usize)> {
        self.find(name).ok().map(|(_, _, t)| t.rows_k())
    }

    fn exact_dtype(&self, name: &str) -> Result<DType> {
        Ok(ggml::exact_dtype(self.find(name)?.2.ty))
    }

    fn row_bytes(&self, name: &str) -> Result<u64> {
        let t = self.find(name)?.2;
        t.ty.size_of(t.rows_k().1 as u64).map_err(tensor_err(name))
    }

    fn read_rows(&self, name: &str, rows: Range<usize>, dtype: DType) -> Result<PackedMatrix> {
        let n = rows.len();
        let (ty, k, bytes) = self.bytes(name, rows)?;
        ggml::pack_rows(ty, &bytes, n, k, dtype).map_err(tensor_err(name))
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (_, _, t) = self.find(name)?;
        let (rows, k) = t.rows_k();
        let (ty, _, bytes) = self.bytes(name, 0..rows)?;
        let mut values = vec![0f32; rows * k];
        ggml::dequantize(ty, &bytes, &mut values).map_err(tensor_err(name))?;
        Ok(values)
    }
}

/// The file names of a split GGUF model, given any one shard's name
/// (`name-00002-of-00003.gguf` → the three names in order); `None` for a single file.
pub fn gguf_shard_names(file_name: &str) -> Option<Vec<String>> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, _) = head.rsplit_once('-')?;
    let width = count.len();
    let n: usize = count.parse().ok()?;
    if n == 0 || n > 10_000 {
        return None;
    }
    Some((1..=n).map(|i| format!("{prefix}-{i:0width$}-of-{count}.gguf")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_llama_cpp_split_naming() {
        assert_eq!(
            gguf_shard_names("Qwen2.5-7B-Instruct-Q4_K_M-00002-of-00002.gguf").unwrap(),
            vec!["Qwen2.5-7B-Instruct-Q4_K_M-00001-of-00002.gguf", "Qwen2.5-7B-Instruct-Q4_K_M-00002-of-00002.gguf"]
        );
        assert_eq!(gguf_shard_names("model.gguf"), None);
        assert_eq!(gguf_shard_names("x-1-of-0.gguf"), None);
    }
}
