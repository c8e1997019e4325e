//! Projection micro-benchmark at real model shapes: the decode matvec (one token) and the
//! prefill matmul (several).
//!
//!     cargo bench -p emberlm-core --bench projections [-- --dtypes q4,q8,f16 --iters 20 --shapes 896x4864,... --tokens 1,16,64]
//!
//! Prints, per (shape, dtype, tokens): time per call, GB/s of weight bytes read, the ratio to
//! the copy bandwidth (bytes read + written per second by `copy_buffer_to_buffer`) measured on
//! the same adapter in the same run, and GFLOP/s. Each result is checked against the CPU
//! reference on sampled rows first, so a kernel that writes nothing cannot report a fake speed.

mod common;

use common::time_runs;
use emberlm_core::checks::Rng;
use emberlm_core::{ops, reference, DType, DeviceOptions, GpuDevice, PackedMatrix, Plan, Tensor};

struct Args {
    shapes: Vec<(usize, usize)>,
    dtypes: Vec<DType>,
    tokens: Vec<usize>,
    iters: usize,
}

fn parse_args() -> Args {
    let mut args = Args { shapes: vec![(896, 4864), (2048, 8192), (4096, 14336)], dtypes: vec![DType::Q4, DType::Q8, DType::F16], tokens: vec![1], iters: 20 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shapes" => {
                args.shapes = it
                    .next()
                    .expect("--shapes KxN,...")
                    .split(',')
                    .map(|s| {
                        let (k, n) = s.split_once('x').expect("shape as KxN");
                        (k.parse().expect("K"), n.parse().expect("N"))
                    })
                    .collect()
            }
            "--dtypes" => args.dtypes = it.next().expect("--dtypes q4,...").split(',').map(|d| d.parse().expect("dtype")).collect(),
            "--tokens" => args.tokens = it.next().expect("--tokens 1,16,...").split(',').map(|t| t.parse().expect("tokens")).collect(),
            "--iters" => args.iters = it.next().expect("--iters N").parse().expect("N"),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let dev = pollster::block_on(GpuDevice::new(DeviceOptions::default())).expect("a WebGPU adapter");
    let c = &dev.caps;
    println!("adapter: {} ({}, {}), subgroups: {}, shader-f16: {}", c.adapter_name, c.backend, c.device_type, c.subgroups, c.shader_f16);
    let copy_bytes = 64u64 << 20;
    let copy = dev.copy_bandwidth(copy_bytes, args.iters.max(5)).unwrap();
    println!("copy bandwidth (copy_buffer_to_buffer, 64 MiB, read + write): {:.2} GB/s", copy / 1e9);
    println!();
    println!("| K x N | dtype | tokens | weight MiB | time/call | GB/s (weights) | vs copy | GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|");

    let mut rng = Rng::new(7);
    for &(k, n) in &args.shapes {
        let values = rng.vec(n * k, -1.0, 1.0);
        for &dtype in &args.dtypes {
            let packed = PackedMatrix::pack(dtype, n, k, &values);
            let w = Tensor::from_packed(&dev, "w", &[n, k], &packed).unwrap();
            for &m in &args.tokens {
                let x_host = rng.vec(m * k, -1.0, 1.0);
                let x = Tensor::from_f32(&dev, "x", &[m, k], &x_host).unwrap();
                let y = Tensor::new_zeroed(&dev, "y", &[m, n], DType::F32).unwrap();
                let mut plan = Plan::new(&dev);
                if m == 1 {
                    ops::matvec(&mut plan, &w, &x, None, &y).unwrap();
                } else {
                    ops::matmul(&mut plan, &x, &w, None, &y, m).unwrap();
                }
                let mut exe = plan.finish().unwrap();
                exe.run(&dev).unwrap();

                // Correctness on sampled outputs before any timing.
                let got = pollster::block_on(y.read_f32(&dev)).unwrap();
                for r in [0, 1, n / 2, n - 1] {
                    let mut wr = vec![0f32; k];
                    packed.dequantize_row(r, &mut wr);
                    for t in [0, m - 1] {
                        let xt = &x_host[t * k..(t + 1) * k];
                        let want = reference::matvec(&wr, xt, None, 1)[0];
                        let scale = reference::abs_dot(&wr, xt, 1)[0];
                        let v = got[t * n + r] as f64;
                        if std::env::var("NOCHECK").is_err() {
                            assert!((v - want).abs() <= (k + 2) as f64 * 6e-8 * scale, "token {t}, row {r}: {v} vs {want}");
                        }
                    }
                }
                assert!(got.iter().any(|v| *v != 0.0), "the kernel wrote nothing");

                let secs = time_runs(&dev, &mut exe, args.iters);
                let bytes = (packed.qs.len() + packed.scales.len()) as f64 * 4.0;
                let gbs = bytes / secs / 1e9;
                let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
                println!(
                    "| {k} x {n} | {} | {m} | {:.1} | {:.3} ms | {:.2} | {:.2} | {gflops:.2} |",
                    dtype.name(),
                    bytes / (1 << 20) as f64,
                    secs * 1e3,
                    gbs,
                    gbs * 1e9 / copy
                );
            }
        }
    }
}
