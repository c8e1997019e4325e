use emberlm_core::{DType, PackedMatrix};
use emberlm_cpu::int8::Activations;
use emberlm_cpu::{ops, CpuTensor};
/// The same job as the candle probe: quantise, then matmul, for each 4–8-bit format.
#[no_mangle]
pub extern "C" fn qmatmul(ptr: *const f32, rows: usize, k: usize, m: usize, out: *mut f32) -> i32 {
    let w = unsafe { std::slice::from_raw_parts(ptr, rows * k) };
    let x = unsafe { std::slice::from_raw_parts(ptr.add(rows * k), m * k) };
    let run = || -> emberlm_core::Result<Vec<f32>> {
        let mut total = Vec::new();
        let xt = CpuTensor::from_f32("x", &[m, k], x)?;
        for dt in [DType::Q4, DType::Q8, DType::Q4K, DType::Q5K, DType::Q6K] {
            let wt = CpuTensor::zeroed("w", &[rows, k], dt)?;
            wt.write_rows(0, &PackedMatrix::pack(dt, rows, k, w))?;
            let y = CpuTensor::zeroed("y", &[m, rows], DType::F32)?;
            ops::matmul_into(&xt, &wt, None, &y, m, rows, 0, Activations::Int8)?;
            ops::matvec_into(&wt, &xt, 0, None, &y, 0, Activations::Int8)?;
            total.extend_from_slice(&y.f32s());
        }
        Ok(total)
    };
    match run() { Ok(v) => { unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len()) }; 0 } Err(_) => 1 }
}
