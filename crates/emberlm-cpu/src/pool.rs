//! A fork/join pool whose idle threads spin before they sleep: the CPU backend's threads,
//! natively and in the wasm threads build.
//!
//! A decode token is ~120 parallel regions (one per projection), each a few tens of µs of work.
//! rayon's idle threads go to sleep almost at once in wasm (`yield_now` is a no-op there, so
//! its spin rounds take no time), and waking one through `Atomics.notify` costs 100–170 µs in
//! Chromium: measured, that is 12–20 ms of every token. Here idle threads spin for about a
//! millisecond before sleeping, so consecutive regions find them awake (llama.cpp's threads do
//! the same), and the caller works too, so `n` threads means the caller and `n - 1` workers.
//!
//! A job is `chunks` calls of one closure, `f(0) … f(chunks - 1)`, in any order on any thread.
//! Claiming is lock-free: `state` packs (epoch, chunks, next chunk) into one word, and a chunk is
//! taken by a compare-and-swap of that word, so a thread that wakes late can never take a chunk
//! of a job that has ended (the epoch differs). A job ends when all its chunks have run; the
//! caller waits for that before its closure goes out of scope. A chunk that panics still
//! counts as run; the caller re-raises the first panic once the job is over (natively; wasm
//! aborts on panic), so a panic neither hangs the caller nor outlives the closure.
//!
//! In wasm a panic is a trap that ends the worker's call into the module mid-chunk, so that
//! chunk never counts as run. The worker's JavaScript then calls [`Pool::thread_lost`], and
//! the caller, instead of waiting for good, panics once every other chunk is over (which traps
//! the engine's worker in turn, and the npm package fails the engine cleanly).

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

thread_local! {
    /// Set while this thread runs a chunk: a region started inside one runs serially (a
    /// nested job would wait for the pool its own job holds).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Spin iterations (a load and a pause each, a few ns) before an idle worker sleeps: ~1 ms.
const SPINS_BEFORE_SLEEP: u32 = 200_000;
const CHUNK_BITS: u32 = 20;
const CHUNK_MASK: u64 = (1 << CHUNK_BITS) - 1;
/// Most chunks one job may have.
pub const MAX_CHUNKS: usize = CHUNK_MASK as usize;

/// The job's closure, with its lifetime erased: valid while the job has unfinished chunks.
type Task = dyn Fn(usize) + Sync;

pub struct Pool {
    threads: usize,
    /// epoch (high 24 bits) | chunks (20 bits) | next chunk to take (low 20 bits).
    state: AtomicU64,
    /// Points at the running job's `&Task` (a fat pointer, so one more indirection).
    task: AtomicPtr<&'static Task>,
    /// Chunks of the current job that have finished.
    done: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// One job at a time: a second caller waits (the engine is one caller in practice).
    caller: Mutex<()>,
    /// The first panic of the current job's chunks, re-raised by `run`.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// A thread died (see [`Pool::thread_lost`]): no job can be trusted to finish any more.
    lost: AtomicBool,
    /// Chunks that died with their thread: claimed, never to count as run.
    abandoned: AtomicUsize,
}

fn pack(epoch: u64, chunks: u64, next: u64) -> u64 {
    (epoch << (2 * CHUNK_BITS)) | (chunks << CHUNK_BITS) | next
}

fn unpack(s: u64) -> (u64, u64, u64) {
    (s >> (2 * CHUNK_BITS), (s >> CHUNK_BITS) & CHUNK_MASK, s & CHUNK_MASK)
}

impl Pool {
    /// A pool for `threads` threads in all: the caller of [`Pool::run`] and `threads - 1`
    /// workers, each of which must call [`Pool::work`].
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            state: AtomicU64::new(0),
            task: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            caller: Mutex::new(()),
            panic: Mutex::new(None),
            lost: AtomicBool::new(false),
            abandoned: AtomicUsize::new(0),
        }
    }

    /// Called on a thread whose work for the pool ended abnormally (a wasm trap, caught by the
    /// worker's JavaScript, which calls this on the same thread): its chunk, if it held one,
    /// will never finish. The job's caller panics rather than wait for it, and so does every
    /// later job.
    pub fn thread_lost(&self) {
        // A trap skips the reset after the chunk, so the flag says whether one was held.
        if IN_TASK.with(|t| t.replace(false)) {
            self.abandoned.fetch_add(1, Ordering::AcqRel);
        }
        self.lost.store(true, Ordering::SeqCst);
    }

    fn check_not_lost(&self) {
        if self.lost.load(Ordering::Acquire) {
            panic!("a CPU thread crashed in the middle of its work; this engine cannot go on");
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Takes the next chunk of the job that `state` shows, if it has one left.
    fn claim(&self) -> Option<usize> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let (epoch, chunks, next) = unpack(s);
            if next >= chunks {
                return None;
            }
            match self.state.compare_exchange_weak(s, pack(epoch, chunks, next + 1), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(next as usize),
                Err(now) => s = now,
            }
        }
    }

    /// Runs chunks of the current job until none is left.
    fn help(&self) {
        while let Some(i) = self.claim() {
            // SAFETY: a claimed chunk keeps its job unfinished (`done` < chunks), and the caller
            // of `run` keeps the closure alive until the job is finished.
            let task = unsafe { &**self.task.load(Ordering::Acquire) };
            IN_TASK.with(|t| t.set(true));
            let outcome = catch_unwind(AssertUnwindSafe(|| task(i)));
            IN_TASK.with(|t| t.set(false));
            if let Err(payload) = outcome {
                self.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn has_work(&self) -> bool {
        let (_, chunks, next) = unpack(self.state.load(Ordering::SeqCst));
        next < chunks
    }

    /// A worker's life: take chunks of whatever job runs; spin when there is none, then sleep.
    pub fn work(&self) -> ! {
        loop {
            self.help();
            let mut spins = 0;
            while !self.has_work() {
                if spins < SPINS_BEFORE_SLEEP {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                // Counted before the last look, so `run` either sees the sleeper and wakes it
                // or published its job before that look (both SeqCst).
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                while !self.has_work() {
                    guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                drop(guard);
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Calls `task(i)` for every `i` in `0..chunks`, spread over the pool's threads (this one
    /// included), and returns when all have run.
    pub fn run(&self, chunks: usize, task: &(dyn Fn(usize) + Sync)) {
        assert!(chunks <= MAX_CHUNKS, "a pool job has at most {MAX_CHUNKS} chunks");
        if chunks <= 1 || self.threads == 1 || IN_TASK.with(Cell::get) {
            (0..chunks).for_each(task);
            return;
        }
        let _one_job = self.caller.lock().unwrap_or_else(|p| p.into_inner());
        self.check_not_lost();
        // SAFETY: the lifetime is erased only for the time this call waits below: every chunk
        // has run (`done == chunks`) before it returns, and no thread reads the pointer after
        // claiming nothing.
        let task: &'static Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(task) };
        let mut slot = task;
        self.task.store(&mut slot, Ordering::Release);
        self.done.store(0, Ordering::Release);
        let (epoch, _, _) = unpack(self.state.load(Ordering::Acquire));
        self.state.store(pack((epoch + 1) & ((1 << 24) - 1), chunks as u64, 0), Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
        self.help();
        loop {
            let done = self.done.load(Ordering::Acquire);
            if done >= chunks {
                break;
            }
            // A chunk that died with its thread never counts: once every other one is over
            // (so no thread still uses the closure), give up on the job.
            if self.lost.load(Ordering::Acquire) && done + self.abandoned.load(Ordering::Acquire) >= chunks {
                self.task.store(std::ptr::null_mut(), Ordering::Release);
                self.check_not_lost();
            }
            std::hint::spin_loop();
        }
        self.task.store(std::ptr::null_mut(), Ordering::Release);
        if let Some(payload) = self.panic.lock().unwrap_or_else(|p| p.into_inner()).take() {
            resume_unwind(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A pool of `threads` with its `threads - 1` workers started (detached, as in the engine).
    fn pool_with_workers(threads: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool::new(threads));
        for _ in 1..threads {
            let p = pool.clone();
            std::thread::spawn(move || p.work());
        }
        pool
    }

    /// Many small jobs back to back, with gaps that let the workers fall asleep, on more
    /// threads than cores: every chunk runs exactly once per job and results are complete.
    #[test]
    fn every_chunk_runs_once_per_job() {
        let pool = pool_with_workers(4);
        for job in 0..3000usize {
            let chunks = 1 + job % 37;
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(chunks, &|i| {
                hits[i].fetch_add(job + 1, Ordering::Relaxed);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(h.load(Ordering::Relaxed), job + 1, "job {job} chunk {i}");
            }
            if job % 500 == 0 {
                // Long enough for the workers to go to sleep, so the wake path runs too.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    #[test]
    fn a_region_inside_a_chunk_runs_serially() {
        let pool = pool_with_workers(2);
        let sum = AtomicUsize::new(0);
        pool.run(4, &|i| {
            pool.run(3, &|j| {
                sum.fetch_add(i * 3 + j, Ordering::Relaxed);
            })
        });
        assert_eq!(sum.into_inner(), (0..12).sum::<usize>());
    }

    /// A panicking chunk reaches the caller after the job, and the pool keeps working.
    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_pool_goes_on() {
        let pool = pool_with_workers(3);
        let ran = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(16, &|i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert_ne!(i, 5, "chunk 5 fails");
            })
        }));
        assert!(caught.is_err(), "the panic is re-raised in the caller");
        assert_eq!(ran.load(Ordering::Relaxed), 16, "every chunk still ran");
        let sum = AtomicUsize::new(0);
        pool.run(8, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.into_inner(), 28);
    }

    /// A worker that dies in the middle of a chunk (a wasm trap: its JavaScript then calls
    /// `thread_lost`) makes the caller panic once the other chunks are over, not wait for good;
    /// later jobs refuse to start.
    #[test]
    fn a_thread_lost_mid_chunk_fails_the_job_instead_of_hanging_it() {
        let pool = pool_with_workers(3);
        let caller = std::thread::current().id();
        let died = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, &|_| {
                if std::thread::current().id() == caller {
                    // Leave chunks for the workers until one of them has died.
                    while died.load(Ordering::Acquire) == 0 {
                        std::hint::spin_loop();
                    }
                } else if died.fetch_add(1, Ordering::AcqRel) == 0 {
                    // Dies here for good, as a trapped wasm worker does.
                    pool.thread_lost();
                    loop {
                        std::thread::park();
                    }
                }
            })
        }));
        let message = caught.expect_err("the job fails").downcast::<&str>().map(|m| m.to_string()).unwrap_or_default();
        assert!(message.contains("CPU thread crashed"), "{message}");
        assert!(catch_unwind(AssertUnwindSafe(|| pool.run(4, &|_| {}))).is_err(), "a later job refuses to start");
    }

    #[test]
    fn a_pool_without_workers_runs_everything_on_the_caller() {
        let pool = Pool::new(3);
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.into_inner(), 45);
    }
}
