//! What the benchmarks share.

use std::time::Instant;

use emberlm_core::{Executable, GpuDevice};

/// Seconds for `reps` executions of `exe`, submitted back to back and waited for once (after a
/// warm-up run).
pub fn time_runs(dev: &GpuDevice, exe: &mut Executable, reps: usize) -> f64 {
    exe.run(dev).unwrap();
    dev.poll_wait().unwrap(); // warm-up
    let start = Instant::now();
    for _ in 0..reps {
        exe.run(dev).unwrap();
    }
    dev.poll_wait().unwrap();
    start.elapsed().as_secs_f64() / reps as f64
}
