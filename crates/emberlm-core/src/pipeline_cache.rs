//! Compiled compute pipelines, keyed by (kernel, variant). Each distinct variant is compiled
//! once per device; shader compile errors surface as `Error::Validation` naming the kernel.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::shader::{kernel_source, preprocess, Variant};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub kernel: &'static str,
    pub variant: Variant,
}

#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<KernelKey, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_or_create(&self, device: &wgpu::Device, key: &KernelKey) -> Result<wgpu::ComputePipeline> {
        Ok(self.get_or_create_all(device, &[key])?.remove(0))
    }

    /// The pipelines of `keys`, in order, those not compiled yet compiled first and several at
    /// once: natively a driver compiles on the calling thread, so a model's first step (a few
    /// dozen variants) waits for the slowest thread's share instead of for all of them in turn.
    /// In wasm there are no threads (and wgpu has no `createComputePipelineAsync`): one by one.
    /// A variant that fails is the error (the first, in `keys`' order); the others are cached
    /// all the same.
    pub fn get_or_create_all(&self, device: &wgpu::Device, keys: &[&KernelKey]) -> Result<Vec<wgpu::ComputePipeline>> {
        let found: Vec<Option<wgpu::ComputePipeline>> = {
            let pipelines = self.lock()?;
            keys.iter().map(|k| pipelines.get(*k).cloned()).collect()
        };
        let mut seen = HashSet::new();
        let missing: Vec<&KernelKey> = keys.iter().zip(&found).filter(|(k, f)| f.is_none() && seen.insert(**k)).map(|(k, _)| *k).collect();
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        let compiled = compile_all(device, &missing);
        let mut pipelines = self.lock()?;
        let mut first_error = None;
        for (key, pipeline) in missing.into_iter().zip(compiled) {
            match pipeline {
                Ok(p) => {
                    pipelines.entry(key.clone()).or_insert(p);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(keys.iter().zip(found).map(|(k, f)| f.unwrap_or_else(|| pipelines[*k].clone())).collect())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<KernelKey, wgpu::ComputePipeline>>> {
        self.pipelines.lock().map_err(|_| Error::InvalidArgument("pipeline cache poisoned".into()))
    }
}

/// `keys`' pipelines, in order, compiled on up to one thread per core.
#[cfg(not(target_arch = "wasm32"))]
fn compile_all(device: &wgpu::Device, keys: &[&KernelKey]) -> Vec<Result<wgpu::ComputePipeline>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(keys.len());
    if threads < 2 {
        return keys.iter().map(|k| compile(device, k)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<wgpu::ComputePipeline>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(key) = keys.get(i) else { return out };
                        out.push((i, compile(device, key)));
                    }
                })
            })
            .collect();
        // A compile that panics panics here, as it would have on this thread.
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, p)| p).collect()
}

/// In wasm, one by one: no threads, and a WebGPU device is not shared across them.
#[cfg(target_arch = "wasm32")]
fn compile_all(device: &wgpu::Device, keys: &[&KernelKey]) -> Vec<Result<wgpu::ComputePipeline>> {
    keys.iter().map(|k| compile(device, k)).collect()
}

/// One pipeline from its kernel's WGSL with the variant's defines applied.
fn compile(device: &wgpu::Device, key: &KernelKey) -> Result<wgpu::ComputePipeline> {
    let source = kernel_source(key.kernel).ok_or_else(|| Error::InvalidArgument(format!("no kernel named `{}`", key.kernel)))?;
    let wgsl = preprocess(source, &key.variant).map_err(|e| Error::Validation { context: format!("preprocessing shaders/{}.wgsl", key.kernel), message: e })?;
    // Error scopes are per thread in wgpu: each compile thread has its own.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(key.kernel), source: wgpu::ShaderSource::Wgsl(wgsl.into()) });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(key.kernel),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    // Natively the scope resolves at once; in a browser, errors arrive later through the
    // uncaptured-error path and the device's validation of the dispatch.
    if let Some(Some(err)) = crate::device::poll_now(scope.pop()) {
        return Err(Error::Validation { context: format!("compiling shaders/{}.wgsl ({:?})", key.kernel, key.variant), message: err.to_string() });
    }
    Ok(pipeline)
}
