//! CPU kernel speed on SmolLM2-135M's shapes (hidden 576, ffn 1536, vocab 49152): matvec
//! (decode) and matmul (a 60-token prefill) per weight dtype, in GFLOP/s and weight GB/s.
//! Not a test: it prints figures.   cargo bench -p emberlm-cpu --bench kernels [-- q4 q8 … --tokens 60]
//! Builds for wasm32-wasip1 too, so the browser's simd128 kernels can be timed in Node's WASI
//! (see docs/PERFORMANCE.md).
use std::time::Instant;

use emberlm_core::{DType, PackedMatrix};
use emberlm_cpu::int8::Activations;
use emberlm_cpu::{ops, CpuDevice, CpuTensor};

fn main() {
    let cpu = CpuDevice::new(None);
    println!("{}", cpu.describe());
    let shapes = [(576usize, 576usize, "q/o"), (3072, 576, "gate|up"), (576, 1536, "down"), (49152, 576, "lm head")];
    // `cargo bench … -- q4 q8` times those dtypes only; `--tokens N` the matmul's token count.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokens_at = args.iter().position(|a| a == "--tokens");
    let m: usize = tokens_at.and_then(|i| args.get(i + 1)).map_or(60, |n| n.parse().expect("--tokens takes a number"));
    let only: Vec<&String> = args.iter().enumerate().filter(|(i, a)| !a.starts_with('-') && Some(i.wrapping_sub(1)) != tokens_at).map(|(_, a)| a).collect();
    for dtype in [DType::Q4, DType::Q8, DType::Q4K, DType::F16, DType::F32] {
        if !only.is_empty() && !only.iter().any(|o| *o == dtype.name()) {
            continue;
        }
        for &(rows, k, what) in &shapes {
            if k % dtype.k_multiple() != 0 {
                continue;
            }
            let values: Vec<f32> = (0..rows.max(m) * k).map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect();
            let packed = PackedMatrix::pack(dtype, rows, k, &values);
            let w = CpuTensor::zeroed("w", &[rows, k], dtype).unwrap();
            w.write_rows(0, &packed).unwrap();
            let bytes = w.bytes() as f64;
            let x = CpuTensor::from_f32("x", &[m, k], &values[..m * k]).unwrap();
            let y = CpuTensor::zeroed("y", &[m, rows], DType::F32).unwrap();
            // The fastest of 7 runs after two warm-ups: this kind of machine drifts by 2× within
            // a minute, and in wasm the warm-ups let V8 replace its baseline code with optimised code.
            let time = |f: &dyn Fn()| {
                f();
                f();
                (0..7)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            for activations in [Activations::Exact, Activations::Int8] {
                if activations == Activations::Int8 && !activations.rounds(dtype) {
                    continue;
                }
                let tv = time(&|| ops::matvec_into(&w, &x, 0, None, &y, 0, activations).unwrap());
                let tm = time(&|| ops::matmul_into(&x, &w, None, &y, m, rows, 0, activations).unwrap());
                let flop = 2.0 * rows as f64 * k as f64;
                println!(
                    "{:>4} {:>5} {what:>8} {rows}x{k}: matvec {:7.1} µs {:6.1} GB/s {:5.1} GFLOP/s | matmul m={m} {:8.1} µs {:6.1} GFLOP/s",
                    dtype.name(),
                    if activations == Activations::Int8 { "x int8" } else { "x f32" },
                    tv * 1e6,
                    bytes / tv / 1e9,
                    flop / tv / 1e9,
                    tm * 1e6,
                    flop * m as f64 / tm / 1e9
                );
            }
        }
    }
}
