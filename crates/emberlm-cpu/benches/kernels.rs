//! CPU kernel speed on SmolLM2-135M's shapes (hidden 576, ffn 1536, vocab 49152): matvec
//! (decode) and matmul (a 60-token prefill) per weight dtype, in GFLOP/s and weight GB/s.
//! Not a test: it prints figures.   cargo bench -p emberlm-cpu --bench kernels [-- q4 q8 … --tokens 60]
//! `-- attention --tokens 1024` times a causal prefill's attention instead (SmolLM2's 9 query
//! heads over 3 key/value heads of 64), in ms per prompt token, and a decode step over as many keys.
//! Builds for wasm32-wasip1 too, so the browser's simd128 kernels can be timed in Node's WASI
//! (see docs/PERFORMANCE.md).
use std::time::Instant;

use emberlm_core::ops::AttentionParams;
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
    if only.iter().any(|o| *o == "attention") {
        return prefill_attention(m);
    }
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

/// The fastest of at least 7 runs (and ~0.2 s of them) after warm-ups of at least two calls
/// and ~0.2 s: this kind of machine drifts by 2× within a minute, and in wasm the warm-ups let
/// V8 replace its baseline code with optimised code, which a short kernel otherwise never meets.
fn time(f: &dyn Fn()) -> f64 {
    let timed = || {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (mut spent, mut calls) = (0.0, 0);
    while calls < 2 || spent < 0.2 {
        spent += timed();
        calls += 1;
    }
    let (mut best, mut spent, mut calls) = (f64::INFINITY, 0.0, 0);
    while calls < 7 || spent < 0.2 {
        let s = timed();
        best = best.min(s);
        spent += s;
        calls += 1;
    }
    best
}

/// A causal prefill of `t` tokens from position 0 over SmolLM2's heads.
fn prefill_attention(t: usize) {
    let (hq, hkv, d) = (9usize, 3usize, 64usize);
    let fill = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| (((i + seed) * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect() };
    let q = CpuTensor::from_f32("q", &[t, hq * d], &fill(t * hq * d, 1)).unwrap();
    let k = CpuTensor::from_f32("k", &[hkv, t, d], &fill(hkv * t * d, 2)).unwrap();
    let v = CpuTensor::from_f32("v", &[hkv, t, d], &fill(hkv * t * d, 3)).unwrap();
    let out = CpuTensor::zeroed("out", &[t, hq * d], DType::F32).unwrap();
    let p =
        AttentionParams { tokens: t, heads_q: hq, heads_kv: hkv, head_dim: d, pos0: 0, window: 0, causal: true, scale: 0.125, softcap: 0.0, q_stride: hq * d };
    let s = time(&|| ops::attention(&q, &k, &v, None, &out, &p).unwrap());
    // Each query row meets on average (t + 1) / 2 keys: a score and a value update, 2·d FLOP each.
    let flop = (hq * t) as f64 * (t + 1) as f64 / 2.0 * 4.0 * d as f64;
    println!(
        "attention {hq}/{hkv} heads of {d}, causal prefill of {t} tokens: {:8.1} µs, {:.3} ms per token, {:5.1} GFLOP/s",
        s * 1e6,
        s * 1e3 / t as f64,
        flop / s / 1e9
    );
    // The decode step after them: the last token against all t keys.
    let one = AttentionParams { tokens: 1, pos0: t - 1, ..p };
    let s = time(&|| ops::attention(&q, &k, &v, None, &out, &one).unwrap());
    let flop = (hq * t) as f64 * 4.0 * d as f64;
    println!("attention {hq}/{hkv} heads of {d}, decode step over {t} keys: {:8.1} µs, {:5.1} GFLOP/s", s * 1e6, flop / s / 1e9);
}
