//! GPU time per kernel from timestamp queries, for `emberlm bench --profile` and the npm
//! package's `profile: true` (on adapters with `TIMESTAMP_QUERY`: lavapipe and SwiftShader have
//! it, as most GPUs do; browsers round the timestamps, Chromium to 100 µs).
//!
//! While profiling, a step's dispatches each get a compute pass of their own whose start and
//! end are timestamped (WebGPU allows timestamps only at pass boundaries), the queries are
//! resolved into a buffer after the step and read back once it is done. One pass per dispatch
//! adds a little time of its own, so totals run slightly high; the split between kernels is
//! what to read. CPU time to build bind groups, encode and submit a step is reported beside.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::device::GpuDevice;
use crate::error::{Error, Result};

/// Dispatches timed per step (two queries each); later ones in a step run untimed.
pub const MAX_TIMED_DISPATCHES: u32 = 2048;

/// The CPU-side entries of the report: building (or, from a `StepCache`, updating) a step's
/// executable — pipelines looked up, bind groups created —, and encoding and submitting it.
/// While profiling, every dispatch gets its own timestamped pass, so encoding reads high.
pub const CPU_BUILD: &str = "(cpu) build";
pub const CPU_ENCODE: &str = "(cpu) encode";

pub struct GpuProfiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// The kernels of the step encoded last, in query order.
    step: Mutex<Vec<&'static str>>,
    /// kernel → (dispatches, seconds).
    totals: Mutex<HashMap<&'static str, (u64, f64)>>,
}

impl GpuProfiler {
    pub fn new(dev: &GpuDevice) -> Self {
        let count = 2 * MAX_TIMED_DISPATCHES;
        let bytes = count as u64 * 8;
        let queries = dev.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("emberlm profile"), ty: wgpu::QueryType::Timestamp, count });
        let buffer = |label, usage| dev.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: bytes, usage, mapped_at_creation: false });
        Self {
            queries,
            resolved: buffer("emberlm profile resolved", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer("emberlm profile read-back", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            step: Mutex::new(Vec::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }

    /// Where dispatch `i` of the step writes its start and end, if it is timed.
    pub fn timestamp_writes(&self, i: usize) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        (i < MAX_TIMED_DISPATCHES as usize).then(|| wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i as u32),
            end_of_pass_write_index: Some(2 * i as u32 + 1),
        })
    }

    /// Notes the step's timed kernels and adds the copy of their queries to `encoder`.
    pub fn finish_step(&self, encoder: &mut wgpu::CommandEncoder, kernels: Vec<&'static str>) {
        let n = kernels.len().min(MAX_TIMED_DISPATCHES as usize) as u32;
        if n > 0 {
            encoder.resolve_query_set(&self.queries, 0..2 * n, &self.resolved, 0);
            encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, 16 * n as u64);
        }
        *self.step.lock().unwrap() = kernels;
    }

    /// After the step's submit: waits for it, reads its timestamps and adds them up per kernel.
    /// Awaits the mapping (not a blocking poll), so it works in browsers too.
    pub async fn collect(&self, dev: &GpuDevice) -> Result<()> {
        let kernels = std::mem::take(&mut *self.step.lock().unwrap());
        let n = kernels.len().min(MAX_TIMED_DISPATCHES as usize);
        if n == 0 {
            return Ok(());
        }
        let slice = self.readback.slice(..16 * n as u64);
        dev.await_mapped(crate::device::request_map(slice), None).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&slice.get_mapped_range().map_err(|e| Error::ReadBack(e.to_string()))?);
        self.readback.unmap();
        let seconds_per_tick = f64::from(dev.queue.get_timestamp_period()) * 1e-9;
        let mut totals = self.totals.lock().unwrap();
        for (i, kernel) in kernels.into_iter().take(n).enumerate() {
            let t = totals.entry(kernel).or_default();
            t.0 += 1;
            t.1 += ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * seconds_per_tick;
        }
        Ok(())
    }

    /// Adds CPU time (`calls` 0 adds to the last call's time, as a step's parts do).
    pub fn add(&self, what: &'static str, calls: u64, seconds: f64) {
        let mut totals = self.totals.lock().unwrap();
        let t = totals.entry(what).or_default();
        t.0 += calls;
        t.1 += seconds;
    }

    /// `(kernel, dispatches, seconds)` so far, slowest first.
    pub fn report(&self) -> Vec<(&'static str, u64, f64)> {
        let mut v: Vec<_> = self.totals.lock().unwrap().iter().map(|(&k, &(calls, secs))| (k, calls, secs)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}
