//! emberlm-models: model files, architectures and generation on top of emberlm-core.

pub mod backend;
pub mod chat;
pub mod config;
pub mod constraint;
pub mod embed;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
pub mod generate;
pub mod ggml;
pub mod gguf;
pub mod model;
pub mod safetensors;
pub mod sampling;
pub mod source;
pub mod text;
pub mod tokenizer;
pub mod tools;
pub mod weights;

pub use backend::{Backend, BackendKind, FoldedNorm};
pub use config::{Architecture, ModelConfig};
pub use emberlm_cpu::int8::Activations as CpuActivations;
pub use emberlm_cpu::CpuDevice;
pub use error::{ModelError, Result};
pub use generate::{generate, generate_constrained, reported_logprob, GenerateOptions, Generation, LogprobEntry, MaskSide, TokenLogprobs, MAX_TOP_LOGPROBS};
pub use model::{LoadOptions, Model, Session};
pub use sampling::SamplingOptions;
