//! A constrained greedy step's tail, both ways: from logits on the device to the token on the
//! CPU, with the grammar's mask applied
//! - on the CPU: the step's argmax and its logits read back together (one round trip), the
//!   mask applied to them and the argmax taken again there (what sampling and logprobs need);
//! - on the device: the mask (a bit per token) uploaded, `argmax` MASKED, 4 bytes read back.
//!
//!     cargo bench -p emberlm-core --features reference --bench masked_pick [-- --vocab 49152,151936,262144 --allowed 0.05,0.9 --iters 50]
//!
//! Prints the median and lower quartile of each tail per vocabulary size, runs interleaved; both
//! tokens are checked against `reference::masked_argmax` every run. The forward step itself and
//! llguidance's mask computation are the same either way and are not timed here.

use std::time::Instant;

use emberlm_core::checks::Rng;
use emberlm_core::ops;
use emberlm_core::{reference, DType, DeviceOptions, GpuDevice, Plan, Tensor};

struct Args {
    vocab: Vec<usize>,
    /// Shares of the vocabulary a mask allows (a JSON key's first token: a few percent; inside
    /// a string: most of it).
    allowed: Vec<f32>,
    iters: usize,
}

fn parse_args() -> Args {
    let mut a = Args { vocab: vec![49_152, 151_936, 262_144], allowed: vec![0.05, 0.9], iters: 50 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--vocab" => a.vocab = value().split(',').map(|t| t.parse().expect("vocab")).collect(),
            "--allowed" => a.allowed = value().split(',').map(|t| t.parse().expect("allowed share")).collect(),
            "--iters" => a.iters = value().parse().expect("iters"),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// (median, lower quartile) in milliseconds.
fn quartiles(mut secs: Vec<f64>) -> (f64, f64) {
    secs.sort_by(f64::total_cmp);
    (secs[secs.len() / 2] * 1e3, secs[secs.len() / 4] * 1e3)
}

fn main() {
    let a = parse_args();
    let dev = pollster::block_on(GpuDevice::new(DeviceOptions::default())).expect("a WebGPU adapter");
    println!("adapter: {} ({}); {} runs of each tail, interleaved", dev.caps.adapter_name, dev.caps.backend, a.iters);
    println!();
    println!("| vocabulary | allowed | mask on the CPU (logits read back) | mask on the device (mask uploaded) | bytes read back / uploaded |");
    println!("|---:|---:|---:|---:|---|");
    let mut rng = Rng::new(7);
    for (&vocab, &share) in a.vocab.iter().flat_map(|v| a.allowed.iter().map(move |s| (v, s))) {
        let host_logits = rng.vec(vocab, -10.0, 10.0);
        let logits = Tensor::from_f32(&dev, "logits", &[vocab], &host_logits).unwrap();
        let next = Tensor::from_u32(&dev, "next", &[0]).unwrap();
        let mask = Tensor::new_zeroed(&dev, "allowed tokens", &[ops::mask_words(vocab)], DType::F32).unwrap();
        let mut host_exe = {
            let mut plan = Plan::new(&dev);
            ops::argmax(&mut plan, &logits, None, &next, 1, vocab).unwrap();
            plan.finish().unwrap()
        };
        let mut device_exe = {
            let mut plan = Plan::new(&dev);
            ops::argmax(&mut plan, &logits, Some(&mask), &next, 1, vocab).unwrap();
            plan.finish().unwrap()
        };
        let (mut host_secs, mut device_secs) = (Vec::new(), Vec::new());
        for run in 0..a.iters + 2 {
            // A new mask every run.
            let allowed: Vec<bool> = (0..vocab).map(|_| rng.uniform(0.0, 1.0) < share).collect();
            let words = ops::mask_of(&allowed);
            let want = reference::masked_argmax(&host_logits, &allowed);

            let started = Instant::now();
            let read = host_exe.run_with_reads(&dev, &[(next.buffer().unwrap(), 0, 4), (logits.buffer().unwrap(), 0, vocab as u64 * 4)]).unwrap();
            let bytes = pollster::block_on(dev.finish_read(read)).unwrap();
            let mut got: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[4..]);
            for (i, l) in got.iter_mut().enumerate() {
                if !ops::mask_allows(&words, i) {
                    *l = f32::NEG_INFINITY;
                }
            }
            let host_token = got.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32;
            let host = started.elapsed().as_secs_f64();

            let started = Instant::now();
            mask.write_rows(&dev, 0, bytemuck::cast_slice(&words), &[]).unwrap();
            let read = device_exe.run_with_reads(&dev, &[(next.buffer().unwrap(), 0, 4)]).unwrap();
            let device_token = u32::from_le_bytes(pollster::block_on(dev.finish_read(read)).unwrap()[..4].try_into().unwrap());
            let device = started.elapsed().as_secs_f64();

            assert_eq!((host_token, device_token), (want, want), "vocabulary {vocab}, run {run}");
            if run >= 2 {
                host_secs.push(host);
                device_secs.push(device);
            }
        }
        let ((h, hq), (d, dq)) = (quartiles(host_secs), quartiles(device_secs));
        println!(
            "| {vocab} | {:.0}% | {h:.3} ms (q1 {hq:.3}) | {d:.3} ms (q1 {dq:.3}) | {} kB / {} kB |",
            share * 100.0,
            (vocab * 4 + 4).div_ceil(1000),
            (ops::mask_words(vocab) * 4).div_ceil(1000)
        );
    }
}
