//! Errors from loading and running models; each names the file, tensor or setting at fault.

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Engine(#[from] emberlm_core::Error),
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors { file: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("output constraint: {0}")]
    Constraint(String),
    #[error("tools: {0}")]
    Tools(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("unsupported architecture `{name}`; supported: {supported}")]
    UnsupportedArchitecture { name: String, supported: String },
    #[error("the model file has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{tensor}` has shape {found:?}, but the model config says {expected:?}")]
    ShapeMismatch { tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("cannot load tensor `{tensor}`: {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("context full: {needed} positions needed, the KV cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
}

pub type Result<T> = std::result::Result<T, ModelError>;
