//! emberlm-models: model files, architectures, tokenizers and generation on top of emberlm-core.

pub mod gguf;
pub mod ggml;
