//! Mixture-of-experts micro-benchmark: one MoE MLP (router top-k, the picked experts' gate|up,
//! activation and down projections) per call, for a decode token and prompts, through both GPU
//! paths — one matvec workgroup per pick (`expert_gated_matvec` + `expert_matvec`, what decode
//! runs) and the picks grouped by expert (`grouped_experts`, what a prefill runs).
//!
//!     cargo bench -p emberlm-core --features reference --bench experts [-- --experts 32 --top-k 4 --hidden 1024 --inter 512 --dtype q4 --tokens 1,16,64 --iters 5]
//!
//! Prints, per token count: time per call of each path, and the weight bytes each reads at
//! most (per pick, the picked experts' rows once per pick; grouped, once per expert picked).
//! Both outputs are checked against `reference::moe_mlp` on sampled tokens first.

mod common;

use common::time_runs;
use emberlm_core::checks::Rng;
use emberlm_core::ops::{self, Activation, MoeRouteParams};
use emberlm_core::{reference, DType, DeviceOptions, GpuDevice, PackedMatrix, Plan, Tensor};

struct Args {
    experts: usize,
    top_k: usize,
    hidden: usize,
    inter: usize,
    dtype: DType,
    tokens: Vec<usize>,
    iters: usize,
}

fn parse_args() -> Args {
    let mut a = Args { experts: 32, top_k: 4, hidden: 1024, inter: 512, dtype: DType::Q4, tokens: vec![1, 16, 64], iters: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--experts" => a.experts = value().parse().expect("experts"),
            "--top-k" => a.top_k = value().parse().expect("top-k"),
            "--hidden" => a.hidden = value().parse().expect("hidden"),
            "--inter" => a.inter = value().parse().expect("inter"),
            "--dtype" => a.dtype = value().parse().expect("dtype"),
            "--tokens" => a.tokens = value().split(',').map(|t| t.parse().expect("tokens")).collect(),
            "--iters" => a.iters = value().parse().expect("iters"),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn main() {
    let a = parse_args();
    let dev = pollster::block_on(GpuDevice::new(DeviceOptions::default())).expect("a WebGPU adapter");
    println!(
        "adapter: {} ({}); {} of {} experts, hidden {}, expert width {}, {}",
        dev.caps.adapter_name,
        dev.caps.backend,
        a.top_k,
        a.experts,
        a.hidden,
        a.inter,
        a.dtype.name()
    );
    let (e, h, i, k) = (a.experts, a.hidden, a.inter, a.top_k);
    let mut rng = Rng::new(11);
    let gate_up = PackedMatrix::pack(a.dtype, e * 2 * i, h, &rng.vec(e * 2 * i * h, -0.5, 0.5));
    let down = PackedMatrix::pack(a.dtype, e * h, i, &rng.vec(e * h * i, -0.5, 0.5));
    let expert_bytes = |p: &PackedMatrix| (p.qs.len() + p.scales.len()) as f64 * 4.0 / e as f64;
    let per_expert = expert_bytes(&gate_up) + expert_bytes(&down);
    let weight = |name: &str, rows: usize, kk: usize, p: &PackedMatrix| {
        let t = Tensor::new_weight(&dev, name, &[e, rows, kk], a.dtype).unwrap();
        t.write_rows(&dev, 0, p.qs_bytes(), p.scale_bytes()).unwrap();
        t
    };
    let (gate_up_t, down_t) = (weight("gate|up", 2 * i, h, &gate_up), weight("down", h, i, &down));
    let (gu, dn) = (gate_up.dequantize(), down.dequantize());
    println!();
    println!("| tokens | path | time/call | experts' MiB read (at most) |");
    println!("|---:|---|---:|---:|");
    for &t in &a.tokens {
        let logits_host = rng.vec(t * e, -2.0, 2.0);
        let x_host = rng.vec(t * h, -1.0, 1.0);
        let p = MoeRouteParams::new(t, e, k, true);
        let f32t = |name: &str, n: usize| Tensor::new_zeroed(&dev, name, &[n], DType::F32).unwrap();
        let logits = Tensor::from_f32(&dev, "logits", &[t, e], &logits_host).unwrap();
        let x = Tensor::from_f32(&dev, "x", &[t, h], &x_host).unwrap();
        let (route, act, y) = (f32t("route", p.route_len()), f32t("act", t * k * i), f32t("y", t * h));
        let (groups, gu_out, dn_out) = (f32t("groups", ops::moe::groups_len(e, t * k)), f32t("pick gate|up", t * k * 2 * i), f32t("pick down", t * k * h));
        let routes = reference::moe_route(&logits_host, e, k, true);
        let picked = routes.iter().flatten().map(|&(ex, _)| ex).collect::<std::collections::BTreeSet<_>>().len();
        for grouped in [false, true] {
            let mut plan = Plan::new(&dev);
            ops::moe_route(&mut plan, &logits, None, &route, &p).unwrap();
            if grouped {
                let w = ops::ExpertWeights { gate_up: &gate_up_t, down: &down_t, gate_up_bias: None, down_bias: None };
                let s = ops::GroupedScratch { groups: &groups, gate_up: &gu_out, act: &act, down: &dn_out };
                ops::grouped_experts(&mut plan, w, &x, &route, &s, &y, t, k, Activation::Silu, false).unwrap();
            } else {
                ops::expert_gated_matvec(&mut plan, &gate_up_t, &x, &route, None, &act, t, k, Activation::Silu).unwrap();
                ops::expert_matvec(&mut plan, &down_t, &act, &route, None, &y, t, k, false).unwrap();
            }
            let mut exe = plan.finish().unwrap();
            exe.run(&dev).unwrap();
            let got = pollster::block_on(y.read_f32(&dev)).unwrap();
            for tok in [0, t - 1] {
                let (want, mag) = reference::moe_mlp(&x_host[tok * h..(tok + 1) * h], &routes[tok], &gu, &dn, None, i, h, Activation::Silu);
                for r in 0..h {
                    let v = got[tok * h + r] as f64;
                    assert!((v - want[r]).abs() <= 1e-4 * mag[r] + 1e-6, "token {tok}, row {r}: {v} vs {}", want[r]);
                }
            }
            let secs = time_runs(&dev, &mut exe, a.iters);
            let reads = if grouped { picked } else { t * k };
            let path = if grouped { "grouped by expert" } else { "a matvec per pick" };
            println!("| {t} | {path} | {:.2} ms | {:.1} |", secs * 1e3, reads as f64 * per_expert / (1 << 20) as f64);
        }
    }
}
