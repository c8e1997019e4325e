//! CPU tensors: the GPU tensor's layout in host memory. A tensor is a shape, a dtype, a value
//! segment and (quantised dtypes) a scale segment, both u32 words exactly as uploaded to a GPU
//! buffer; f32 activations and u32 ids live in the value segment. Ops take `&CpuTensor` for
//! outputs too, as the GPU ops take buffers, so the segments sit in `RefCell`s.

use std::cell::{Ref, RefCell, RefMut};

use emberlm_core::{DType, Error, PackedMatrix, Result};

pub struct CpuTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    qs: RefCell<Vec<u32>>,
    scales: RefCell<Vec<u32>>,
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuTensor({} {:?} {})", self.name, self.shape, self.dtype.name())
    }
}

/// Allocates `len` zeroed words, or a clear error when memory runs out (wasm32's 4 GiB heap
/// fills long before a GPU's memory would).
fn zeroed_words(name: &str, len: usize) -> Result<Vec<u32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory(format!("allocating {} MiB for `{name}` in CPU memory", (len as u64 * 4) >> 20)))?;
    v.resize(len, 0);
    Ok(v)
}

impl CpuTensor {
    /// A zeroed tensor; `k` (the last dimension) must be a multiple of the dtype's group.
    pub fn zeroed(name: &str, shape: &[usize], dtype: DType) -> Result<Self> {
        let (rows, k) = emberlm_core::Tensor::rows_k(shape);
        if k % dtype.k_multiple() != 0 {
            return Err(Error::Shape {
                op: "tensor",
                detail: format!("`{name}`: row length {k} is not a multiple of {} required by {}", dtype.k_multiple(), dtype.name()),
            });
        }
        let words = |bytes: u64| -> Result<usize> {
            usize::try_from(rows as u64 * bytes / 4).map_err(|_| Error::OutOfMemory(format!("`{name}` {shape:?} does not fit in this address space")))
        };
        Ok(Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype,
            qs: RefCell::new(zeroed_words(name, words(dtype.qs_row_bytes(k))?)?),
            scales: RefCell::new(zeroed_words(name, words(dtype.scale_row_bytes(k))?)?),
        })
    }

    pub fn from_f32(name: &str, shape: &[usize], values: &[f32]) -> Result<Self> {
        let t = Self::zeroed(name, shape, DType::F32)?;
        if values.len() != t.numel() {
            return Err(Error::Shape { op: "tensor", detail: format!("`{name}`: {} values for shape {shape:?}", values.len()) });
        }
        t.f32s_mut().copy_from_slice(values);
        Ok(t)
    }

    pub fn rows(&self) -> usize {
        emberlm_core::Tensor::rows_k(&self.shape).0
    }

    pub fn k(&self) -> usize {
        emberlm_core::Tensor::rows_k(&self.shape).1
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes held (both segments).
    pub fn bytes(&self) -> u64 {
        (self.qs.borrow().len() + self.scales.borrow().len()) as u64 * 4
    }

    /// Writes whole rows from `row0` (the CPU twin of `Tensor::write_rows`).
    pub fn write_rows(&self, row0: usize, packed: &PackedMatrix) -> Result<()> {
        let k = self.k();
        if packed.dtype != self.dtype || packed.k != k || row0 + packed.rows > self.rows() {
            return Err(Error::Shape {
                op: "tensor upload",
                detail: format!(
                    "`{}`: {} rows of {} × {} at row {row0} do not fit {:?} {}",
                    self.name,
                    packed.rows,
                    packed.dtype.name(),
                    packed.k,
                    self.shape,
                    self.dtype.name()
                ),
            });
        }
        let (qw, sw) = crate::matvec::row_words(self.dtype, k);
        self.qs.borrow_mut()[row0 * qw..(row0 + packed.rows) * qw].copy_from_slice(&packed.qs);
        self.scales.borrow_mut()[row0 * sw..(row0 + packed.rows) * sw].copy_from_slice(&packed.scales);
        Ok(())
    }

    pub fn words(&self) -> Ref<'_, [u32]> {
        Ref::map(self.qs.borrow(), |v| v.as_slice())
    }

    pub fn words_mut(&self) -> RefMut<'_, [u32]> {
        RefMut::map(self.qs.borrow_mut(), |v| v.as_mut_slice())
    }

    pub fn scale_words(&self) -> Ref<'_, [u32]> {
        Ref::map(self.scales.borrow(), |v| v.as_slice())
    }

    /// The values of an f32 tensor (activations).
    pub fn f32s(&self) -> Ref<'_, [f32]> {
        Ref::map(self.qs.borrow(), |v| bytemuck::cast_slice(v.as_slice()))
    }

    pub fn f32s_mut(&self) -> RefMut<'_, [f32]> {
        RefMut::map(self.qs.borrow_mut(), |v| bytemuck::cast_slice_mut(v.as_mut_slice()))
    }

    /// Fails unless this is an f32 tensor of at least `len` values (the GPU ops' check).
    pub fn expect_f32(&self, op: &'static str, len: usize) -> Result<()> {
        if self.dtype != DType::F32 || self.numel() < len {
            return Err(Error::Shape {
                op,
                detail: format!("`{}` must be f32 with at least {len} values, is {} {:?}", self.name, self.dtype.name(), self.shape),
            });
        }
        Ok(())
    }

    /// Fails if `self` and `other` are the same tensor (an op that reads one while writing the
    /// other would otherwise hit a `RefCell` borrow panic).
    pub fn expect_distinct(&self, op: &'static str, other: &CpuTensor) -> Result<()> {
        if std::ptr::eq(self, other) {
            return Err(Error::InvalidArgument(format!("{op}: `{}` is both an input and the output", self.name)));
        }
        Ok(())
    }
}
