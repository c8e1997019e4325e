//! Time per op kind, when asked for (`emberlm bench --profile`, the npm package's `profile:
//! true`): each op holds a [`Scope`] while it runs. Off by default (one relaxed atomic load per
//! op); timed with `web_time`, which is `performance.now()` in wasm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use web_time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<(&'static str, u64, f64)>> = Mutex::new(Vec::new());

/// Starts (or restarts) collecting: clears the totals.
pub fn enable(on: bool) {
    TOTALS.lock().unwrap().clear();
    ON.store(on, Ordering::Relaxed);
}

/// `(op, calls, seconds)` since [`enable`], slowest first.
pub fn report() -> Vec<(&'static str, u64, f64)> {
    let mut v = TOTALS.lock().unwrap().clone();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// Adds its lifetime to `op`'s total when dropped (if profiling is on).
pub struct Scope {
    started: Option<(&'static str, Instant)>,
}

pub fn scope(op: &'static str) -> Scope {
    Scope { started: ON.load(Ordering::Relaxed).then(|| (op, Instant::now())) }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((op, t)) = self.started {
            let secs = t.elapsed().as_secs_f64();
            let mut totals = TOTALS.lock().unwrap();
            match totals.iter_mut().find(|e| e.0 == op) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += secs;
                }
                None => totals.push((op, 1, secs)),
            }
        }
    }
}
