//! GPU tensors. A tensor is a shape, a dtype and one or more row chunks; each chunk is one
//! buffer holding the value segment and (for quantised dtypes) the scale segment of a range of
//! rows. A matrix bigger than the device's storage-binding limit is split into row chunks so
//! that every binding fits, and kernels are dispatched once per chunk.

use std::ops::Range;

use crate::device::GpuDevice;
use crate::dtype::{DType, PackedMatrix};
use crate::error::{Error, Result};

/// How large a single `write_buffer` call may be while streaming an upload. Keeps the staging
/// memory (and, in wasm, the JS heap copy) small whatever the tensor size.
pub const UPLOAD_PIECE_BYTES: usize = 8 << 20;

/// Byte ranges of one chunk's segments inside its buffer.
#[derive(Debug, Clone)]
pub struct TensorChunk {
    pub rows: Range<usize>,
    pub buffer: wgpu::Buffer,
    pub qs: Range<u64>,
    /// Empty for unquantised dtypes.
    pub scales: Range<u64>,
}

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub chunks: Vec<TensorChunk>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?} {}, {} chunk(s))", self.name, self.shape, self.dtype.name(), self.chunks.len())
    }
}

const ALIGN: u64 = 256;

impl Tensor {
    /// Rows (the product of all but the last dimension) and row length.
    pub fn rows_k(shape: &[usize]) -> (usize, usize) {
        let k = *shape.last().unwrap_or(&1);
        let rows = shape[..shape.len().saturating_sub(1)].iter().product();
        (rows, k)
    }

    pub fn rows(&self) -> usize {
        Self::rows_k(&self.shape).0
    }

    pub fn k(&self) -> usize {
        Self::rows_k(&self.shape).1
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A zeroed tensor in one binding (activations, caches, norms): a clear `LimitExceeded`
    /// error if it does not fit, since kernels bind these whole.
    pub fn new_zeroed(dev: &GpuDevice, name: &str, shape: &[usize], dtype: DType) -> Result<Self> {
        let (rows, k) = Self::rows_k(shape);
        let bytes = rows as u64 * (dtype.qs_row_bytes(k) + dtype.scale_row_bytes(k));
        if bytes > dev.caps.max_storage_binding {
            return Err(Error::LimitExceeded {
                what: format!("tensor `{name}` {shape:?}"),
                needed: bytes,
                limit: dev.caps.max_storage_binding,
                limit_name: "maxStorageBufferBindingSize",
            });
        }
        Self::new_weight(dev, name, shape, dtype)
    }

    /// A zeroed weight matrix, split into row chunks so each segment fits one binding; the
    /// weight kernels dispatch once per chunk.
    pub fn new_weight(dev: &GpuDevice, name: &str, shape: &[usize], dtype: DType) -> Result<Self> {
        Self::new_weight_limited(dev, name, shape, dtype, dev.caps.max_storage_binding)
    }

    /// As [`Tensor::new_weight`] with chunks of at most `limit` value bytes (the checks force
    /// small chunks to exercise the per-chunk dispatches; at most the device's binding limit).
    pub fn new_weight_limited(dev: &GpuDevice, name: &str, shape: &[usize], dtype: DType, limit: u64) -> Result<Self> {
        let limit = limit.min(dev.caps.max_storage_binding);
        let (rows, k) = Self::rows_k(shape);
        if k % dtype.k_multiple() != 0 {
            return Err(Error::Shape {
                op: "tensor",
                detail: format!("`{name}`: row length {k} is not a multiple of {} required by {}", dtype.k_multiple(), dtype.name()),
            });
        }
        let qs_row = dtype.qs_row_bytes(k);
        let sc_row = dtype.scale_row_bytes(k);
        // One row must fit one binding; beyond that we split. A 3-D weight ([experts, rows, k])
        // splits only between experts, so that each expert's rows share one binding.
        let unit = if shape.len() == 3 { shape[1].max(1) } else { 1 };
        let rows_per_chunk = if qs_row == 0 { rows.max(1) } else { (limit / qs_row) as usize / unit * unit };
        if rows_per_chunk == 0 {
            return Err(Error::LimitExceeded {
                what: format!("{} of tensor `{name}` ({} × {k})", if unit > 1 { "one expert" } else { "one row" }, dtype.name()),
                needed: qs_row * unit as u64,
                limit,
                limit_name: "maxStorageBufferBindingSize",
            });
        }
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows || (rows == 0 && chunks.is_empty()) {
            let end = (start + rows_per_chunk).min(rows);
            let n = (end - start) as u64;
            let qs_bytes = (n * qs_row).max(4);
            let sc_offset = qs_bytes.next_multiple_of(ALIGN);
            let total = if sc_row == 0 { qs_bytes } else { sc_offset + n * sc_row };
            let label = if rows_per_chunk >= rows { name.to_string() } else { format!("{name}[{start}..{end}]") };
            let buffer = dev.create_buffer(&label, total, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC)?;
            let scales = if sc_row == 0 { 0..0 } else { sc_offset..sc_offset + n * sc_row };
            chunks.push(TensorChunk { rows: start..end, buffer, qs: 0..qs_bytes, scales });
            if rows == 0 {
                break;
            }
            start = end;
        }
        Ok(Self { name: name.to_string(), shape: shape.to_vec(), dtype, chunks })
    }

    /// Uploads a packed matrix, streamed in pieces of at most `UPLOAD_PIECE_BYTES`.
    pub fn from_packed(dev: &GpuDevice, name: &str, shape: &[usize], packed: &PackedMatrix) -> Result<Self> {
        let (rows, k) = Self::rows_k(shape);
        if rows != packed.rows || k != packed.k {
            return Err(Error::Shape { op: "tensor", detail: format!("`{name}`: shape {shape:?} does not match packed data {} × {}", packed.rows, packed.k) });
        }
        let tensor = Self::new_weight(dev, name, shape, packed.dtype)?;
        tensor.write_rows(dev, 0, packed.qs_bytes(), packed.scale_bytes())?;
        Ok(tensor)
    }

    /// An f32 tensor with the given values (activations, norms, biases, test inputs).
    pub fn from_f32(dev: &GpuDevice, name: &str, shape: &[usize], values: &[f32]) -> Result<Self> {
        let (rows, k) = Self::rows_k(shape);
        if values.len() != rows * k {
            return Err(Error::Shape { op: "tensor", detail: format!("`{name}`: {} values for shape {shape:?}", values.len()) });
        }
        let tensor = Self::new_zeroed(dev, name, shape, DType::F32)?;
        tensor.write_rows(dev, 0, bytemuck::cast_slice(values), &[])?;
        Ok(tensor)
    }

    pub fn from_u32(dev: &GpuDevice, name: &str, values: &[u32]) -> Result<Self> {
        let tensor = Self::new_zeroed(dev, name, &[values.len()], DType::F32)?;
        tensor.write_rows(dev, 0, bytemuck::cast_slice(values), &[])?;
        Ok(tensor)
    }

    /// Writes whole rows starting at `row0`: `qs` holds their value segments back to back and
    /// `scales` their scale segments. Callers stream a large tensor by calling this repeatedly.
    pub fn write_rows(&self, dev: &GpuDevice, row0: usize, qs: &[u8], scales: &[u8]) -> Result<()> {
        dev.check_alive()?;
        let k = self.k();
        let qs_row = self.dtype.qs_row_bytes(k) as usize;
        let sc_row = self.dtype.scale_row_bytes(k) as usize;
        if qs_row == 0 {
            return Ok(());
        }
        let n = qs.len() / qs_row;
        if qs.len() != n * qs_row || scales.len() != n * sc_row || row0 + n > self.rows() {
            return Err(Error::Shape {
                op: "tensor upload",
                detail: format!(
                    "`{}`: {} value bytes / {} scale bytes at row {row0} do not form whole rows of {}",
                    self.name,
                    qs.len(),
                    scales.len(),
                    self.rows()
                ),
            });
        }
        for chunk in &self.chunks {
            let lo = row0.max(chunk.rows.start);
            let hi = (row0 + n).min(chunk.rows.end);
            if lo >= hi {
                continue;
            }
            let src = (lo - row0)..(hi - row0);
            let dst = (lo - chunk.rows.start) as u64;
            write_streamed(dev, &chunk.buffer, chunk.qs.start + dst * qs_row as u64, &qs[src.start * qs_row..src.end * qs_row]);
            if sc_row > 0 {
                write_streamed(dev, &chunk.buffer, chunk.scales.start + dst * sc_row as u64, &scales[src.start * sc_row..src.end * sc_row]);
            }
        }
        Ok(())
    }

    /// The only chunk of an unchunked tensor (activations), or an error naming the tensor.
    pub fn single_chunk(&self) -> Result<&TensorChunk> {
        match self.chunks.as_slice() {
            [only] => Ok(only),
            _ => Err(Error::InvalidArgument(format!("tensor `{}` is split into {} chunks; this op needs it in one binding", self.name, self.chunks.len()))),
        }
    }

    pub fn buffer(&self) -> Result<&wgpu::Buffer> {
        Ok(&self.single_chunk()?.buffer)
    }

    pub async fn read_f32(&self, dev: &GpuDevice) -> Result<Vec<f32>> {
        dev.read_f32(self.buffer()?, 0, self.numel()).await
    }

    pub async fn read_u32(&self, dev: &GpuDevice) -> Result<Vec<u32>> {
        dev.read_u32(self.buffer()?, 0, self.numel()).await
    }
}

fn write_streamed(dev: &GpuDevice, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    // `write_buffer` needs 4-byte multiples; every segment here is made of u32 words.
    for (i, piece) in bytes.chunks(UPLOAD_PIECE_BYTES).enumerate() {
        dev.queue.write_buffer(buffer, offset + (i * UPLOAD_PIECE_BYTES) as u64, piece);
    }
}
