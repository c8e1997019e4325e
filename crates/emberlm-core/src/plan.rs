//! Execution: ops are recorded into a `Plan`, which compiles to an `Executable` — every
//! dispatch of a forward step in one command encoder and one compute pass, with all uniforms
//! in one arena buffer written by a single `write_buffer`. An executable is built once and run
//! many times; between runs only the uniforms that change (a decode position) are rewritten.
//! A [`StepCache`] does that for code that records a fresh plan every step: a plan that records
//! the same dispatches over the same buffers as the cached one reuses its pipelines and bind
//! groups, so a decode step creates no wgpu objects.

use std::sync::Arc;

use crate::buffer_pool::BufferPool;
use crate::device::{GpuDevice, PendingRead};
use crate::error::{Error, Result};
use crate::pipeline_cache::KernelKey;
use crate::tensor::{Tensor, TensorChunk};

/// One storage binding: a buffer range.
#[derive(Debug, Clone)]
pub struct Binding {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Binding {
    pub fn whole(buffer: &wgpu::Buffer) -> Self {
        Self { buffer: buffer.clone(), offset: 0, size: buffer.size() }
    }

    /// An unchunked tensor's values.
    pub fn tensor(t: &Tensor) -> Result<Self> {
        Ok(Self::qs(t.single_chunk()?))
    }

    pub fn qs(chunk: &TensorChunk) -> Self {
        Self { buffer: chunk.buffer.clone(), offset: chunk.qs.start, size: chunk.qs.end - chunk.qs.start }
    }

    pub fn scales(chunk: &TensorChunk) -> Self {
        Self { buffer: chunk.buffer.clone(), offset: chunk.scales.start, size: chunk.scales.end - chunk.scales.start }
    }
}

/// Index of a dispatch inside an executable, for updating its uniforms later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(pub usize);

struct RecordedOp {
    label: String,
    key: KernelKey,
    uniform_offset: u64,
    uniform_size: u64,
    bindings: Vec<Option<Binding>>,
    workgroups: [u32; 3],
}

/// What a bind group depends on: the buffer range bound, with a plan's own scratch buffers
/// named by their place in the plan (each plan draws different ones from the pool).
#[derive(PartialEq, Eq)]
enum BoundBuffer {
    Scratch(usize),
    Buffer(wgpu::Buffer),
}

/// Everything of a recorded op but its uniform values and workgroup counts.
#[derive(PartialEq, Eq)]
struct OpShape {
    key: KernelKey,
    uniform_offset: u64,
    uniform_size: u64,
    bindings: Vec<Option<(BoundBuffer, u64, u64)>>,
}

/// The last executable built through [`Plan::finish_cached`] and the shape of its plan.
#[derive(Default)]
pub struct StepCache {
    last: Option<(Vec<OpShape>, Executable)>,
    built: u64,
    reused: u64,
}

impl StepCache {
    /// `(executables built, executables reused)` through this cache.
    pub fn counts(&self) -> (u64, u64) {
        (self.built, self.reused)
    }
}

/// Records dispatches. Uniform structs are at most `UNIFORM_SLOT` bytes each.
pub struct Plan<'d> {
    pub dev: &'d GpuDevice,
    ops: Vec<RecordedOp>,
    arena: Vec<u8>,
    scratch: Vec<wgpu::Buffer>,
}

const UNIFORM_SLOT: u64 = 256;

impl<'d> Plan<'d> {
    pub fn new(dev: &'d GpuDevice) -> Self {
        Self { dev, ops: Vec::new(), arena: Vec::new(), scratch: Vec::new() }
    }

    /// Records one dispatch of `key` with `uniforms` at binding 0 and `storage[i]` at binding
    /// i + 1; `None` leaves that binding number out (an optional binding the variant lacks).
    pub fn dispatch<U: bytemuck::Pod>(
        &mut self,
        label: impl Into<String>,
        key: KernelKey,
        uniforms: &U,
        storage: Vec<Option<Binding>>,
        workgroups: [u32; 3],
    ) -> Result<OpId> {
        let bytes = bytemuck::bytes_of(uniforms);
        let slot = UNIFORM_SLOT.max(self.dev.caps.min_uniform_offset_alignment as u64);
        if bytes.len() as u64 > slot {
            return Err(Error::InvalidArgument(format!("uniforms of {} are larger than a slot", key.kernel)));
        }
        let max = self.dev.caps.max_workgroups_per_dim;
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::LimitExceeded {
                what: format!("dispatch of {} with {workgroups:?} workgroups", key.kernel),
                needed: *workgroups.iter().max().unwrap() as u64,
                limit: max as u64,
                limit_name: "maxComputeWorkgroupsPerDimension",
            });
        }
        let offset = self.arena.len() as u64;
        self.arena.extend_from_slice(bytes);
        self.arena.resize((offset + slot) as usize, 0);
        self.ops.push(RecordedOp {
            label: label.into(),
            key,
            uniform_offset: offset,
            uniform_size: (bytes.len() as u64).next_multiple_of(16),
            bindings: storage,
            workgroups,
        });
        Ok(OpId(self.ops.len() - 1))
    }

    /// A zeroed-on-first-use f32 scratch tensor from the device's buffer pool, returned to the
    /// pool when the executable is dropped.
    pub fn scratch_f32(&mut self, name: &str, len: usize) -> Result<Binding> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let buffer = self.dev.pooled_buffer(name, (len.max(1) * 4) as u64, usage)?;
        self.scratch.push(buffer.clone());
        Ok(Binding { buffer, offset: 0, size: (len.max(1) * 4) as u64 })
    }

    /// Linear workgroup count → a 2-D grid within the per-dimension limit. Kernels rebuild the
    /// linear index as `wid.y * num_workgroups.x + wid.x` and skip indices past the count.
    pub fn grid(&self, count: u32) -> [u32; 3] {
        let max = self.dev.caps.max_workgroups_per_dim.max(1);
        if count <= max {
            [count.max(1), 1, 1]
        } else {
            [max, count.div_ceil(max), 1]
        }
    }

    fn shape(&self) -> Vec<OpShape> {
        let bound = |b: &Binding| match self.scratch.iter().position(|s| *s == b.buffer) {
            Some(i) => BoundBuffer::Scratch(i),
            None => BoundBuffer::Buffer(b.buffer.clone()),
        };
        let shape = |op: &RecordedOp| OpShape {
            key: op.key.clone(),
            uniform_offset: op.uniform_offset,
            uniform_size: op.uniform_size,
            bindings: op.bindings.iter().map(|b| b.as_ref().map(|b| (bound(b), b.offset, b.size))).collect(),
        };
        self.ops.iter().map(shape).collect()
    }

    /// As [`Plan::finish`], reusing `cache`'s executable when this plan has the same shape (only
    /// uniform values and workgroup counts differ: the next decode step): its pipelines, bind
    /// groups and scratch buffers stay, the new uniforms are written at the next run. Otherwise
    /// builds a new executable and caches it.
    pub fn finish_cached(self, cache: &mut StepCache) -> Result<&mut Executable> {
        let shape = self.shape();
        let reusable = matches!(&cache.last, Some((cached, exe)) if *cached == shape && exe.arena.len() == self.arena.len());
        if !reusable {
            cache.last = None; // its uniform buffer goes back to the pool for the new one
            let exe = self.finish()?;
            cache.built += 1;
            return Ok(&mut cache.last.insert((shape, exe)).1);
        }
        cache.reused += 1;
        let exe = &mut cache.last.as_mut().expect("checked above").1;
        let profiling = self.dev.profiler().map(|p| (p, web_time::Instant::now()));
        exe.arena.copy_from_slice(&self.arena);
        exe.arena_dirty = true;
        for (op, recorded) in exe.ops.iter_mut().zip(&self.ops) {
            op.workgroups = recorded.workgroups;
        }
        for buffer in self.scratch {
            self.dev.pool.give_back(buffer);
        }
        if let Some((profiler, started)) = profiling {
            profiler.add(crate::profile::CPU_BUILD, 1, started.elapsed().as_secs_f64());
        }
        Ok(exe)
    }

    /// Compiles pipelines (cached per device) and bind groups.
    pub fn finish(self) -> Result<Executable> {
        let dev = self.dev;
        dev.check_alive()?;
        // While profiling, building the bind groups counts as the step's CPU encode time.
        let profiling = dev.profiler().map(|p| (p, web_time::Instant::now()));
        let arena_size = (self.arena.len() as u64).max(UNIFORM_SLOT);
        // Pooled like the scratch buffers, so a plan rebuilt every step allocates nothing.
        let uniforms = dev.pooled_buffer("uniform arena", arena_size, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
        let mut scratch = self.scratch;
        scratch.push(uniforms.clone());
        // A first step meets every variant at once: compiled side by side where threads exist.
        let pipelines = dev.pipelines.get_or_create_all(&dev.device, &self.ops.iter().map(|op| &op.key).collect::<Vec<_>>())?;
        let scope = dev.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut ops = Vec::with_capacity(self.ops.len());
        for (op, pipeline) in self.ops.into_iter().zip(pipelines) {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniforms,
                    offset: op.uniform_offset,
                    size: wgpu::BufferSize::new(op.uniform_size),
                }),
            }];
            for (i, b) in op.bindings.iter().enumerate() {
                let Some(b) = b else { continue };
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &b.buffer, offset: b.offset, size: wgpu::BufferSize::new(b.size) }),
                });
            }
            let bind_group = dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&op.label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            ops.push(CompiledOp { label: op.label, kernel: op.key.kernel, pipeline, bind_group, workgroups: op.workgroups, uniform_offset: op.uniform_offset });
        }
        if let Some(Some(err)) = crate::device::poll_now(scope.pop()) {
            return Err(Error::Validation { context: "building an execution plan".into(), message: err.to_string() });
        }
        if let Some((profiler, started)) = profiling {
            profiler.add(crate::profile::CPU_BUILD, 1, started.elapsed().as_secs_f64());
        }
        Ok(Executable { ops, arena: self.arena, arena_dirty: true, uniforms, scratch, pool: dev.pool.clone() })
    }
}

pub struct CompiledOp {
    pub label: String,
    kernel: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    uniform_offset: u64,
}

pub struct Executable {
    ops: Vec<CompiledOp>,
    arena: Vec<u8>,
    arena_dirty: bool,
    uniforms: wgpu::Buffer,
    scratch: Vec<wgpu::Buffer>,
    pool: Arc<BufferPool>,
}

impl Executable {
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(|op| op.label.as_str())
    }

    /// Replaces one op's uniforms; written to the GPU at the next `run`.
    pub fn set_uniforms<U: bytemuck::Pod>(&mut self, op: OpId, uniforms: &U) {
        let start = self.ops[op.0].uniform_offset as usize;
        let bytes = bytemuck::bytes_of(uniforms);
        self.arena[start..start + bytes.len()].copy_from_slice(bytes);
        self.arena_dirty = true;
    }

    pub fn set_workgroups(&mut self, op: OpId, workgroups: [u32; 3]) {
        self.ops[op.0].workgroups = workgroups;
    }

    /// Records every dispatch into one compute pass of `encoder` (one pass per dispatch, each
    /// timestamped, while the device is profiling).
    pub fn encode(&mut self, dev: &GpuDevice, encoder: &mut wgpu::CommandEncoder) {
        if self.arena_dirty {
            dev.queue.write_buffer(&self.uniforms, 0, &self.arena);
            self.arena_dirty = false;
        }
        let live = self.ops.iter().filter(|op| !op.workgroups.contains(&0));
        if let Some(profiler) = dev.profiler() {
            let mut kernels = Vec::new();
            for (i, op) in live.enumerate() {
                let mut pass =
                    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&op.label), timestamp_writes: profiler.timestamp_writes(i) });
                op.dispatch(&mut pass);
                kernels.push(op.kernel);
            }
            profiler.finish_step(encoder, kernels);
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("emberlm step"), timestamp_writes: None });
        for op in live {
            op.dispatch(&mut pass);
        }
    }

    /// Encodes and submits the whole step (and, while profiling, waits for it to time it).
    pub fn run(&mut self, dev: &GpuDevice) -> Result<()> {
        self.submit(dev, |dev, encoder| {
            dev.queue.submit([encoder.finish()]);
            Ok(())
        })
    }

    /// Like [`Executable::run`], and the same submission copies `size` bytes of `src` (the
    /// step's token) out for a read-back that is not waited for here.
    pub fn run_with_read(&mut self, dev: &GpuDevice, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<PendingRead> {
        self.run_with_reads(dev, &[(src, offset, size)])
    }

    /// [`Executable::run_with_read`] of several ranges, read back end to end in one round trip
    /// ([`GpuDevice::submit_with_reads`]).
    pub fn run_with_reads(&mut self, dev: &GpuDevice, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<PendingRead> {
        self.submit(dev, |dev, encoder| dev.submit_with_reads(encoder, ranges))
    }

    /// Encodes the step and hands the encoder to `submit`; while profiling, counts both as the
    /// CPU's encode time (the kernels' times are collected once the step is done:
    /// `GpuProfiler::collect`).
    fn submit<T>(&mut self, dev: &GpuDevice, submit: impl FnOnce(&GpuDevice, wgpu::CommandEncoder) -> Result<T>) -> Result<T> {
        dev.check_alive()?;
        let profiling = dev.profiler().map(|p| (p, web_time::Instant::now()));
        let mut encoder = dev.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("emberlm step") });
        self.encode(dev, &mut encoder);
        let out = submit(dev, encoder)?;
        if let Some((profiler, started)) = profiling {
            profiler.add(crate::profile::CPU_ENCODE, 1, started.elapsed().as_secs_f64());
        }
        Ok(out)
    }
}

impl CompiledOp {
    fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        for buffer in self.scratch.drain(..) {
            self.pool.give_back(buffer);
        }
    }
}
