//! GGUF reader (versions 2 and 3, little-endian): metadata of every value type, tensor infos,
//! alignment and data offsets. Only the header is parsed into memory; tensor data is read on
//! demand through a [`ByteSource`], so a multi-GB file never sits whole in memory (or in the
//! wasm heap). Every count, length and offset is checked against the file size before anything
//! is allocated, so a malformed file gives an error naming the problem, never a panic or a
//! huge allocation.

use std::collections::BTreeMap;

use crate::ggml::GgmlType;
#[cfg(not(target_arch = "wasm32"))]
pub use crate::source::FileSource;
pub use crate::source::{ByteSource, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file: magic bytes are {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF file is truncated: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated { what: String, start: u64, end: u64, len: u64 },
    #[error("GGUF header is invalid: {0}")]
    Invalid(String),
    #[error("GGUF tensor `{name}` has unsupported type {ty}")]
    UnknownType { name: String, ty: u32 },
    #[error("GGUF metadata `{key}` is missing")]
    MissingKey { key: String },
    #[error("GGUF metadata `{key}` has type {found}, expected {expected}")]
    WrongType { key: String, found: &'static str, expected: &'static str },
    #[error("reading the GGUF file failed: {0}")]
    Read(#[from] SourceError),
}

pub type Result<T> = std::result::Result<T, GgufError>;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type that fits a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// (rows, row length) of the tensor seen as a matrix.
    pub fn rows_k(&self) -> (usize, usize) {
        let k = self.dims.first().copied().unwrap_or(1) as usize;
        (self.numel() as usize / k.max(1), k)
    }
}

#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// Limits that no real file reaches and that keep a corrupt header from asking for absurd
/// allocations before the file-size checks run.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;
const MAX_DIMS: u32 = 8;
const MAX_ARRAY_DEPTH: u32 = 4;
/// Metadata array elements in the whole header. The largest real vocabularies (Gemma 3's 262k
/// tokens with scores and types, Qwen's 151k tokens with merges) stay under 1M; each element
/// costs ~32 bytes of heap, so this bounds a hostile header to ~128 MiB.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 22;

/// The header is read through a window of the file that starts at 1 MiB and doubles up to
/// 16 MiB: a source's read may be a round trip to another process (a Blob read in a browser
/// worker), so parsing a vocabulary costs a handful of reads, not one per value.
const WINDOW_FIRST: u64 = 1 << 20;
const WINDOW_MAX: u64 = 16 << 20;

struct Cursor<'a, S: ByteSource + ?Sized> {
    src: &'a S,
    pos: u64,
    len: u64,
    /// Bytes `window_start..window_start + window.len()` of the file.
    window: Vec<u8>,
    window_start: u64,
    next_window: u64,
    elements: u64,
}

impl<'a, S: ByteSource + ?Sized> Cursor<'a, S> {
    fn new(src: &'a S) -> Self {
        Self { src, pos: 0, len: src.len(), window: Vec::new(), window_start: 0, next_window: WINDOW_FIRST, elements: 0 }
    }

    /// Where the next `n` bytes end, or the error naming `what` when the file ends first.
    fn end_of(&self, n: u64, what: &str) -> Result<u64> {
        self.pos.checked_add(n).filter(|&e| e <= self.len).ok_or_else(|| GgufError::Truncated {
            what: what.to_string(),
            start: self.pos,
            end: self.pos.saturating_add(n),
            len: self.len,
        })
    }

    /// Copies the next `out.len()` bytes into `out`, refilling the window when they are not in it.
    fn fill(&mut self, out: &mut [u8], what: &str) -> Result<()> {
        let n = out.len() as u64;
        let end = self.end_of(n, what)?;
        let window_end = self.window_start + self.window.len() as u64;
        if self.pos < self.window_start || end > window_end {
            if n >= self.next_window {
                // Longer than a window: read it straight into place.
                self.src.read_at(self.pos, out)?;
                self.pos = end;
                return Ok(());
            }
            let size = self.next_window.min(self.len - self.pos);
            self.window.resize(size as usize, 0);
            self.src.read_at(self.pos, &mut self.window)?;
            self.window_start = self.pos;
            self.next_window = (self.next_window * 2).min(WINDOW_MAX);
        }
        let at = (self.pos - self.window_start) as usize;
        out.copy_from_slice(&self.window[at..at + out.len()]);
        self.pos = end;
        Ok(())
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        self.end_of(n, what)?; // before allocating n bytes
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        self.fill(&mut out, what)?;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes).map_err(|_| GgufError::Invalid(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Invalid(format!("`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte: a count past the remaining bytes is corrupt.
                if n > self.len - self.pos {
                    return Err(GgufError::Invalid(format!("`{key}`: array of {n} elements in {} remaining bytes", self.len - self.pos)));
                }
                self.elements += n;
                if self.elements > MAX_METADATA_ELEMENTS {
                    return Err(GgufError::Invalid(format!(
                        "`{key}`: metadata arrays hold more than {MAX_METADATA_ELEMENTS} elements in all, beyond any real model"
                    )));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(GgufError::Invalid(format!("`{key}`: unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Parses the header: metadata and tensor infos, with every offset checked.
    pub fn read<S: ByteSource + ?Sized>(src: &S) -> Result<Self> {
        let len = src.len();
        let mut c = Cursor::new(src);
        let magic: [u8; 4] = c.array("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > MAX_TENSORS || n_kv > MAX_KV {
            return Err(GgufError::Invalid(format!("{n_tensors} tensors and {n_kv} metadata entries is beyond any real model")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty_raw = c.u32(&name)?;
            let ty = GgmlType::from_u32(ty_raw).ok_or(GgufError::UnknownType { name: name.clone(), ty: ty_raw })?;
            let rel_offset = c.u64(&name)?;
            infos.push((name, dims, ty, rel_offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| GgufError::Invalid("general.alignment is not a power of two".into()))?,
            None => 32,
        };
        let data_offset = c.pos.next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ty, rel_offset) in infos {
            let numel = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Invalid(format!("tensor `{name}` dims {dims:?}: size overflows")))?;
            if dims[0] % ty.block().0 != 0 {
                return Err(GgufError::Invalid(format!("tensor `{name}` rows of {} are not whole {} blocks of {}", dims[0], ty.name(), ty.block().0)));
            }
            let size = ty.size_of(numel).map_err(|e| GgufError::Invalid(format!("tensor `{name}` dims {dims:?}: {e}")))?;
            if rel_offset % alignment != 0 {
                return Err(GgufError::Invalid(format!("tensor `{name}` offset {rel_offset} is not aligned to {alignment}")));
            }
            let offset = data_offset.checked_add(rel_offset).ok_or_else(|| GgufError::Invalid(format!("tensor `{name}` offset overflows")))?;
            let end = offset.checked_add(size).unwrap_or(u64::MAX);
            if end > len {
                return Err(GgufError::Truncated { what: format!("tensor `{name}` data"), start: offset, end, len });
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }
        Ok(Self { version, metadata, tensors, alignment, data_offset })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        v.as_u64().ok_or(GgufError::WrongType { key: key.to_string(), found: v.type_name(), expected: "integer" })
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.as_f64().ok_or(GgufError::WrongType { key: key.to_string(), found: v.type_name(), expected: "number" })
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(GgufError::WrongType { key: key.to_string(), found: v.type_name(), expected: "string" }),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            v => Err(GgufError::WrongType { key: key.to_string(), found: v.type_name(), expected: "array" }),
        }
    }

    /// Raw bytes of rows `rows` of a tensor seen as a matrix (whole blocks per row).
    pub fn read_rows<S: ByteSource + ?Sized>(&self, src: &S, t: &TensorInfo, rows: std::ops::Range<usize>) -> Result<Vec<u8>> {
        let (n, k) = t.rows_k();
        if rows.end > n {
            return Err(GgufError::Invalid(format!("rows {rows:?} of `{}` with {n} rows", t.name)));
        }
        let row_bytes = t.ty.size_of(k as u64).map_err(GgufError::Invalid)?;
        let mut buf = vec![0u8; (row_bytes * rows.len() as u64) as usize];
        src.read_at(t.offset + row_bytes * rows.start as u64, &mut buf)?;
        Ok(buf)
    }
}
