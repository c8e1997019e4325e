use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
/// One quantised matmul through candle, so the wasm holds what the engine would use.
#[no_mangle]
pub extern "C" fn qmatmul(ptr: *const f32, rows: usize, k: usize, m: usize, out: *mut f32) -> i32 {
    let w = unsafe { std::slice::from_raw_parts(ptr, rows * k) };
    let x = unsafe { std::slice::from_raw_parts(ptr.add(rows * k), m * k) };
    let run = || -> candle_core::Result<Vec<f32>> {
        let wt = Tensor::from_slice(w, (rows, k), &Device::Cpu)?;
        let mut total = Vec::new();
        for dt in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let mm = QMatMul::from_qtensor(QTensor::quantize(&wt, dt)?)?;
            total.extend(mm.forward(&Tensor::from_slice(x, (m, k), &Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(total)
    };
    match run() { Ok(v) => { unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len()) }; 0 } Err(_) => 1 }
}
