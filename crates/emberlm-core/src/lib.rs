//! emberlm-core: a WebGPU runtime for language models, with hand-written WGSL kernels.
//!
//! Layers, bottom up (see `docs/ARCHITECTURE.md`):
//! - [`device`]: adapter/device set-up with the adapter's real limits and optional features;
//! - [`dtype`] and [`tensor`]: packed weight formats and chunked GPU tensors;
//! - [`shader`] and [`pipeline_cache`]: WGSL sources, variants and compiled pipelines;
//! - [`ops`]: one dispatcher per kernel, recording into a [`plan::Plan`];
//! - [`plan`]: the one-pass [`plan::Executable`] with its uniform arena;
//! - [`reference`] (feature `reference`): the CPU reference every kernel is tested against.

pub mod buffer_pool;
pub mod device;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod pipeline_cache;
pub mod plan;
pub mod profile;
pub mod rope_table;
pub mod shader;
pub mod tensor;

#[cfg(feature = "reference")]
pub mod checks;
#[cfg(feature = "reference")]
pub mod reference;

pub use device::{Capabilities, DeviceOptions, GpuDevice, PendingRead};
pub use dtype::{DType, PackedMatrix};
pub use error::{Error, Result};
pub use plan::{Executable, Plan, StepCache};
pub use tensor::Tensor;
