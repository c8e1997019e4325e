//! Adapter and device set-up. We ask for the adapter's real limits (the defaults cap storage
//! bindings at 128 MiB, which no real model fits) and for `shader-f16` / subgroups only as
//! optional extras: every kernel has a path that needs neither.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::buffer_pool::{size_class, BufferPool};
use crate::error::{Error, Result};
use crate::pipeline_cache::PipelineCache;

/// What the caller may ask of the device. Turning a feature off is how tests exercise the
/// portable kernel paths on adapters that do have the feature.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Use subgroup operations when the adapter has them.
    pub allow_subgroups: bool,
    /// Request `shader-f16` when the adapter has it. Kernels store f16 packed in u32 and do not
    /// need it; it is recorded so future f16-arithmetic variants can be chosen.
    pub allow_shader_f16: bool,
    /// Prefer a high-performance (discrete) adapter.
    pub high_performance: bool,
    /// Cap on the storage binding size we use, below the adapter's own limit. Tests set this low
    /// to exercise chunked tensors; `None` uses the adapter's limit.
    pub max_binding_bytes: Option<u64>,
    /// Fold decode's RMSNorms into the projections that read them ([`Capabilities::fold_norms`]);
    /// `None`: on hardware GPUs, not on software adapters.
    pub fold_norms: Option<bool>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self { allow_subgroups: true, allow_shader_f16: true, high_performance: true, max_binding_bytes: None, fold_norms: None }
    }
}

/// What the device turned out to support, recorded once so every kernel dispatcher chooses its
/// variant from the same facts.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub adapter_name: String,
    pub backend: String,
    pub device_type: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamp_query: bool,
    pub max_buffer_size: u64,
    /// The largest storage binding we will create: min(adapter limit, max_buffer_size, option cap).
    pub max_storage_binding: u64,
    pub max_workgroup_storage: u32,
    pub max_storage_buffers_per_stage: u32,
    pub max_workgroups_per_dim: u32,
    pub min_storage_offset_alignment: u32,
    pub min_uniform_offset_alignment: u32,
    /// Decode steps fold each RMSNorm into the projections after it and the residual add into
    /// the projection before it (shaders/matvec.wgsl NORMED, ACCUMULATE): two dispatches fewer
    /// per layer, for the norm's arithmetic redone by every workgroup of those projections. A
    /// GPU hides that arithmetic behind the weight reads, a software adapter pays it (lavapipe:
    /// decode 7–15% slower in two measurements, docs/PERFORMANCE.md), so by default only
    /// hardware GPUs fold.
    pub fold_norms: bool,
}

impl Capabilities {
    /// A software rasteriser rather than a GPU (lavapipe/llvmpipe, SwiftShader, WARP): the CPU
    /// backend is much faster than WebGPU on these.
    pub fn is_software(&self) -> bool {
        let name = self.adapter_name.to_ascii_lowercase();
        self.device_type == "Cpu" || ["llvmpipe", "lavapipe", "swiftshader", "warp", "basic render"].iter().any(|s| name.contains(s))
    }
}

/// A WebGPU device with its queue and the capabilities it was created with.
pub struct GpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: Capabilities,
    pub pipelines: PipelineCache,
    pub pool: Arc<BufferPool>,
    buffers_created: AtomicU64,
    lost: Arc<AtomicBool>,
    lost_reason: Arc<Mutex<Option<String>>>,
    /// Set while `emberlm bench --profile` times kernels (see `profile`).
    profiler: Mutex<Option<Arc<crate::profile::GpuProfiler>>>,
}

impl GpuDevice {
    /// Finds an adapter and creates a device with the adapter's limits.
    pub async fn new(options: DeviceOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let power_preference = if options.high_performance { wgpu::PowerPreference::HighPerformance } else { wgpu::PowerPreference::LowPower };
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!("{e}. WebGPU needs a GPU driver (or a software one such as Mesa lavapipe); in browsers it needs WebGPU enabled"))
            })?;
        Self::from_adapter(&adapter, options).await
    }

    pub async fn from_adapter(adapter: &wgpu::Adapter, options: DeviceOptions) -> Result<Self> {
        let info = adapter.get_info();
        let adapter_features = adapter.features();
        let adapter_limits = adapter.limits();

        let mut features = wgpu::Features::empty();
        let subgroups = options.allow_subgroups && adapter_features.contains(wgpu::Features::SUBGROUP);
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let shader_f16 = options.allow_shader_f16 && adapter_features.contains(wgpu::Features::SHADER_F16);
        if shader_f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        let timestamp_query = adapter_features.contains(wgpu::Features::TIMESTAMP_QUERY);
        if timestamp_query {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }

        // Everything the adapter allows: model weights need large buffers and bindings.
        let limits = adapter_limits.clone();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("emberlm"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;

        let lost = Arc::new(AtomicBool::new(false));
        let lost_reason = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            let lost_reason = lost_reason.clone();
            device.set_device_lost_callback(move |reason, message| {
                lost.store(true, Ordering::SeqCst);
                if let Ok(mut slot) = lost_reason.lock() {
                    *slot = Some(format!("{reason:?}: {message}"));
                }
            });
        }

        let mut max_storage_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        if let Some(cap) = options.max_binding_bytes {
            max_storage_binding = max_storage_binding.min(cap);
        }
        // Bindings must be a multiple of 4 bytes; round down to a 256-byte boundary for offsets.
        max_storage_binding &= !255;

        let mut caps = Capabilities {
            adapter_name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            shader_f16,
            subgroups,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamp_query,
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            min_storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            min_uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
            fold_norms: false,
        };
        caps.fold_norms = options.fold_norms.unwrap_or(!caps.is_software());
        Ok(Self {
            device,
            queue,
            caps,
            pipelines: PipelineCache::default(),
            pool: Arc::new(BufferPool::default()),
            buffers_created: AtomicU64::new(0),
            lost,
            lost_reason,
            profiler: Mutex::new(None),
        })
    }

    /// Starts (afresh) or stops timing kernels with timestamp queries; false where the adapter
    /// has none. A step's times are collected once its result is read back.
    pub fn set_profiling(&self, on: bool) -> bool {
        let can = self.caps.timestamp_query;
        let profiler = (on && can).then(|| Arc::new(crate::profile::GpuProfiler::new(self)));
        *self.profiler.lock().unwrap() = profiler;
        can
    }

    pub fn profiler(&self) -> Option<Arc<crate::profile::GpuProfiler>> {
        self.profiler.lock().unwrap().clone()
    }

    /// `(kernel, dispatches, seconds)` since profiling started, slowest first.
    pub fn profile_report(&self) -> Vec<(&'static str, u64, f64)> {
        self.profiler().map(|p| p.report()).unwrap_or_default()
    }

    /// Fails with `DeviceLost` once the device is gone, so callers get a clear error instead of
    /// silently empty results.
    pub fn check_alive(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            let reason = self.lost_reason.lock().ok().and_then(|r| r.clone()).unwrap_or_default();
            return Err(Error::DeviceLost(reason));
        }
        Ok(())
    }

    /// Creates a storage buffer, refusing sizes past the device limit with a clear error rather
    /// than a validation panic.
    pub fn create_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        self.check_alive()?;
        if size > self.caps.max_buffer_size {
            return Err(Error::LimitExceeded {
                what: format!("buffer `{label}`"),
                needed: size,
                limit: self.caps.max_buffer_size,
                limit_name: "maxBufferSize",
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // wgpu requires sizes that are multiples of 4 for copies; round up.
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        });
        if poll_now(scope.pop()).flatten().is_some() {
            return Err(Error::OutOfMemory(format!("allocating {size} bytes for `{label}`")));
        }
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        Ok(buffer)
    }

    /// How many buffers this device has created; tests use it to prove a warm step allocates nothing.
    pub fn buffers_created(&self) -> u64 {
        self.buffers_created.load(Ordering::Relaxed)
    }

    /// A buffer of at least `size` bytes from the pool, created (at its size class) if none is free.
    /// Hand it back with `self.pool.give_back`.
    pub fn pooled_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        self.check_alive()?;
        match self.pool.take(size, usage) {
            Some(buffer) => Ok(buffer),
            None => self.create_buffer(label, size_class(size), usage),
        }
    }

    /// Waits for submitted work natively; a no-op on the web where the browser drives the queue.
    pub fn poll_wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::DeviceLost(e.to_string()))?;
        }
        Ok(())
    }

    /// Bytes per second the adapter moves with `copy_buffer_to_buffer` (read + write counted),
    /// over two `bytes`-sized buffers, `reps` copies: the yardstick a bandwidth-bound kernel's
    /// GB/s is held against. Native only (it waits on the queue).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn copy_bandwidth(&self, bytes: u64, reps: usize) -> Result<f64> {
        let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let src = self.create_buffer("copy bandwidth src", bytes, usage)?;
        let dst = self.create_buffer("copy bandwidth dst", bytes, usage)?;
        let submit = || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
            self.queue.submit([encoder.finish()]);
        };
        // The first copy pays for first touches.
        submit();
        self.poll_wait()?;
        let start = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            submit();
        }
        self.poll_wait()?;
        Ok(2.0 * bytes as f64 * reps.max(1) as f64 / start.elapsed().as_secs_f64())
    }

    /// Copies `size` bytes from `src` at `offset` into CPU memory. The only way data leaves the
    /// GPU, so callers read back just what they need (a token id, not the logits).
    pub async fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.check_alive()?;
        let encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read-back") });
        let pending = self.submit_with_read(encoder, src, offset, size)?;
        self.finish_read(pending).await
    }

    /// Appends a copy of `size` bytes of `src` into a staging buffer to `encoder`, submits it
    /// and asks for the staging buffer's mapping, without waiting: [`GpuDevice::finish_read`]
    /// waits. Work submitted in between runs while the read-back travels (a decode step queued
    /// behind the one whose token is read).
    pub fn submit_with_read(&self, encoder: wgpu::CommandEncoder, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<PendingRead> {
        self.submit_with_reads(encoder, &[(src, offset, size)])
    }

    /// [`GpuDevice::submit_with_read`] of several `(buffer, offset, size)` ranges (offsets and
    /// sizes multiples of 4) into one staging buffer, read back as their bytes end to end: one
    /// round trip for a step's token and its logits.
    pub fn submit_with_reads(&self, mut encoder: wgpu::CommandEncoder, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<PendingRead> {
        let size: u64 = ranges.iter().map(|r| r.2).sum();
        let padded = size.next_multiple_of(4);
        if ranges.iter().any(|&(_, offset, size)| offset % 4 != 0 || (size % 4 != 0 && ranges.len() > 1)) {
            return Err(Error::InvalidArgument("read-back ranges must be 4-byte aligned".into()));
        }
        let staging = self.pooled_buffer("read-back staging", padded.max(4), wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        let mut at = 0;
        for &(src, offset, size) in ranges {
            let copied = size.next_multiple_of(4);
            encoder.copy_buffer_to_buffer(src, offset, &staging, at, copied);
            at += copied;
        }
        let submission = self.queue.submit([encoder.finish()]);
        let mapped = request_map(staging.slice(..padded));
        Ok(PendingRead { staging, size, padded, submission, mapped })
    }

    /// Waits for a read-back [`GpuDevice::submit_with_read`] started (natively, for its own
    /// submission only, not for work queued after it) and returns its bytes.
    pub async fn finish_read(&self, pending: PendingRead) -> Result<Vec<u8>> {
        let PendingRead { staging, size, padded, submission, mapped } = pending;
        self.await_mapped(mapped, Some(submission)).await?;
        self.check_alive()?;
        let data = staging.slice(..padded).get_mapped_range().map_err(|e| Error::ReadBack(e.to_string()))?[..size as usize].to_vec();
        staging.unmap();
        self.pool.give_back(staging);
        Ok(data)
    }

    /// Waits for a mapping [`request_map`] asked for: natively by polling until `submission`
    /// (or, if `None`, everything submitted) is done, in browsers by letting the event loop run.
    pub(crate) async fn await_mapped(&self, mapped: MapReceiver, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let wait = wgpu::PollType::Wait { submission_index: submission, timeout: None };
            self.device.poll(wait).map_err(|e| Error::DeviceLost(e.to_string()))?;
        }
        #[cfg(target_arch = "wasm32")]
        let _ = submission;
        // Awaiting a channel (not spinning) lets the browser's event loop run the map callback.
        match mapped.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::ReadBack(e.to_string())),
            Err(_) => Err(Error::ReadBack("the map callback was dropped (device lost?)".into())),
        }
    }

    pub async fn read_f32(&self, src: &wgpu::Buffer, offset_elems: u64, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(src, offset_elems * 4, len as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub async fn read_u32(&self, src: &wgpu::Buffer, offset_elems: u64, len: usize) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(src, offset_elems * 4, len as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// A read-back in flight: its copy submitted, the staging buffer's mapping asked for. Dropping
/// it abandons the read (the staging buffer is freed once the GPU is done with it).
pub struct PendingRead {
    staging: wgpu::Buffer,
    size: u64,
    padded: u64,
    submission: wgpu::SubmissionIndex,
    mapped: MapReceiver,
}

/// Where a buffer mapping's outcome arrives.
pub(crate) type MapReceiver = futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Asks for `slice` to be mapped for reading; [`GpuDevice::await_mapped`] waits for it.
pub(crate) fn request_map(slice: wgpu::BufferSlice<'_>) -> MapReceiver {
    let (sender, mapped) = futures_channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    mapped
}

/// Error scopes on native resolve immediately; on the web the future is pending until the
/// browser answers, so we only peek (never block) and treat "not yet known" as no error.
pub(crate) fn poll_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
