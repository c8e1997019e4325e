//! Random-access bytes for model files: a file natively, memory, or (in the browser) a
//! synchronous read callback (`FileReaderSync` in a worker, `fs.readSync` in Node). Readers
//! (GGUF, safetensors) pull only the byte ranges they need through this trait.

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("read of bytes {start}..{end} is past the end of the file ({len} bytes)")]
    OutOfRange { start: u64, end: u64, len: u64 },
    #[error("{0}")]
    Io(String),
}

/// Random-access bytes: a file natively, a Blob/fetch in the browser.
pub trait ByteSource {
    fn len(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The end of the read `offset..offset + n` when it lies within `len` bytes, else the error
/// naming it (every source checks reads this way, overflow included).
pub fn checked_end(offset: u64, n: usize, len: u64) -> Result<u64, SourceError> {
    offset.checked_add(n as u64).filter(|&end| end <= len).ok_or(SourceError::OutOfRange { start: offset, end: offset.saturating_add(n as u64), len })
}

impl ByteSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let end = checked_end(offset, buf.len(), ByteSource::len(self))?;
        buf.copy_from_slice(&self[offset as usize..end as usize]);
        Ok(())
    }
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.as_slice().read_at(offset, buf)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    pub fn open(path: &std::path::Path) -> Result<Self, SourceError> {
        let file = std::fs::File::open(path).map_err(|e| SourceError::Io(e.to_string()))?;
        let len = file.metadata().map_err(|e| SourceError::Io(e.to_string()))?.len();
        Ok(Self { file, len })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        use std::os::unix::fs::FileExt;
        checked_end(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset).map_err(|e| SourceError::Io(e.to_string()))
    }
}
