//! Evaluates reusing candle-core's quantized CPU kernels (issue 17) against emberlm's own, on
//! SmolLM2-135M's shapes, in one process on the same threads: a decode matvec (one token) and
//! a 60-token prefill matmul per shape, both libraries given the same random weights. candle
//! has no SIMD kernel for Q4_1 (SmolLM2's GGUF format; it runs the scalar one), so its Q4_0 and
//! Q8_0 AVX2 kernels are timed too as its best case. Not part of the test suite:
//!   cargo run --release --manifest-path tests/bench/candle-eval/Cargo.toml
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use emberlm_core::{DType, PackedMatrix};
use emberlm_cpu::int8::Activations;
use emberlm_cpu::{ops, CpuDevice, CpuTensor};

/// Median seconds of `f` over 7 runs after one warm-up.
fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[3]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cpu = CpuDevice::new(None);
    println!("emberlm: {}; candle-core 0.9.2 on {} rayon threads", cpu.describe(), rayon_threads());
    let m = 60;
    println!("| shape | kernel | matvec µs | matmul m={m} µs | matmul GFLOP/s |");
    println!("|---|---|---:|---:|---:|");
    for (rows, k, what) in [(576usize, 576usize, "q/o 576×576"), (3072, 576, "gate|up 3072×576"), (576, 1536, "down 576×1536"), (49152, 576, "lm head 49152×576")] {
        let values: Vec<f32> = (0..rows * k).map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect();
        let xs: Vec<f32> = (0..m * k).map(|i| ((i * 40503) % 997) as f32 / 997.0 - 0.5).collect();
        let flop = 2.0 * (rows * k * m) as f64;
        let row = |kernel: &str, tv: f64, tm: f64| println!("| {what} | {kernel} | {:.1} | {:.1} | {:.1} |", tv * 1e6, tm * 1e6, flop / tm / 1e9);

        for (dtype, name) in [(DType::Q4, "emberlm Q4 (= Q4_1), 8-bit x"), (DType::Q8, "emberlm Q8 (= Q8_0), 8-bit x")] {
            let w = CpuTensor::zeroed("w", &[rows, k], dtype)?;
            w.write_rows(0, &PackedMatrix::pack(dtype, rows, k, &values))?;
            let x = CpuTensor::from_f32("x", &[m, k], &xs)?;
            let y = CpuTensor::zeroed("y", &[m, rows], DType::F32)?;
            let tv = time(&mut || ops::matvec_into(&w, &x, 0, None, &y, 0, Activations::Int8).unwrap());
            let tm = time(&mut || ops::matmul_into(&x, &w, None, &y, m, rows, 0, Activations::Int8).unwrap());
            row(name, tv, tm);
        }

        let dense = Tensor::from_vec(values.clone(), (rows, k), &Device::Cpu)?;
        let x1 = Tensor::from_vec(xs[..k].to_vec(), (1, k), &Device::Cpu)?;
        let xm = Tensor::from_vec(xs.clone(), (m, k), &Device::Cpu)?;
        for (dtype, name) in [(GgmlDType::Q4_1, "candle Q4_1 (scalar)"), (GgmlDType::Q4_0, "candle Q4_0 (AVX2)"), (GgmlDType::Q8_0, "candle Q8_0 (AVX2)")] {
            let mm = QMatMul::from_qtensor(QTensor::quantize(&dense, dtype)?)?;
            let tv = time(&mut || {
                mm.forward(&x1).unwrap();
            });
            let tm = time(&mut || {
                mm.forward(&xm).unwrap();
            });
            row(name, tv, tm);
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
