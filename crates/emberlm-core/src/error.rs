//! One error type for the engine. Every failure a user can cause (bad shapes, limits exceeded,
//! lost device) is a variant with a message that names the problem; the engine never panics on them.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no WebGPU adapter found: {0}")]
    NoAdapter(String),
    #[error("the WebGPU device could not be created: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost ({0}); create a new engine to continue")]
    DeviceLost(String),
    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },
    #[error("GPU out of memory while {0}")]
    OutOfMemory(String),
    #[error("{what} needs {needed} bytes but this device allows at most {limit} bytes ({limit_name})")]
    LimitExceeded { what: String, needed: u64, limit: u64, limit_name: &'static str },
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("reading back from the GPU failed: {0}")]
    ReadBack(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for shape errors, which are by far the most common.
pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, detail: detail.into() })
}
