//! Compiled compute pipelines, keyed by (kernel, variant). Each distinct variant is compiled
//! once per device; shader compile errors surface as `Error::Validation` naming the kernel.

use std::collections::HashMap;
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
        let mut pipelines = self.pipelines.lock().map_err(|_| Error::InvalidArgument("pipeline cache poisoned".into()))?;
        if let Some(p) = pipelines.get(key) {
            return Ok(p.clone());
        }
        let source = kernel_source(key.kernel).ok_or_else(|| Error::InvalidArgument(format!("no kernel named `{}`", key.kernel)))?;
        let wgsl =
            preprocess(source, &key.variant).map_err(|e| Error::Validation { context: format!("preprocessing shaders/{}.wgsl", key.kernel), message: e })?;
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
        pipelines.insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }
}
