//! Time per op kind, when asked for (`emberlm bench --profile`): each op holds a [`Scope`] while
//! it runs. Off by default (one relaxed atomic load per op); not available in wasm, whose
//! `std::time::Instant` does not work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<(&'static str, u64, f64)>> = Mutex::new(Vec::new());

/// Starts (or restarts) collecting: clears the totals.
pub fn enable(on: bool) {
    TOTALS.lock().unwrap().clear();
    ON.store(on && cfg!(not(target_arch = "wasm32")), Ordering::Relaxed);
}

/// `(op, calls, seconds)` since [`enable`], slowest first.
pub fn report() -> Vec<(&'static str, u64, f64)> {
    let mut v = TOTALS.lock().unwrap().clone();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// Adds its lifetime to `op`'s total when dropped (if profiling is on).
pub struct Scope {
    #[cfg(not(target_arch = "wasm32"))]
    started: Option<(&'static str, std::time::Instant)>,
}

pub fn scope(op: &'static str) -> Scope {
    #[cfg(not(target_arch = "wasm32"))]
    {
        Scope { started: ON.load(Ordering::Relaxed).then(|| (op, std::time::Instant::now())) }
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = op;
        Scope {}
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        #[cfg(not(target_arch = "wasm32"))]
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
