//! Malformed GGUF files give clear errors, never a panic or a huge allocation.

use emberlm_models::gguf::{GgufError, GgufFile, Value, MAX_METADATA_ELEMENTS};
use emberlm_models::source::{ByteSource, SourceError};

/// A minimal GGUF v3 writer for hand-made (and hand-broken) files.
struct Writer {
    header: Vec<u8>,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

impl Writer {
    fn new() -> Self {
        Self { header: b"GGUF".to_vec(), kv: vec![], n_kv: 0, infos: vec![], n_tensors: 0, data: vec![] }
    }
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    fn kv_u32(mut self, key: &str, v: u32) -> Self {
        Self::string(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }
    fn kv_str_array(mut self, key: &str, items: &[&str]) -> Self {
        Self::string(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((items.len() as u64).to_le_bytes());
        for s in items {
            Self::string(&mut self.kv, s);
        }
        self.n_kv += 1;
        self
    }
    /// An F32 tensor of `dims` with data appended (offsets 32-aligned).
    fn tensor_f32(mut self, name: &str, dims: &[u64], ty: u32) -> Self {
        let offset = self.data.len() as u64;
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        let n: u64 = dims.iter().product();
        for i in 0..n {
            self.data.extend((i as f32).to_le_bytes());
        }
        self.data.resize(self.data.len().next_multiple_of(32), 0);
        self.n_tensors += 1;
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend(&self.data);
        out
    }
}

fn good() -> Writer {
    Writer::new().kv_u32("llama.block_count", 2).kv_str_array("tokenizer.ggml.tokens", &["a", "b"]).tensor_f32("w", &[4, 3], 0)
}

fn err(bytes: &[u8]) -> GgufError {
    GgufFile::read(bytes).expect_err("a malformed file must be rejected")
}

#[test]
fn a_well_formed_file_reads_back() {
    let bytes = good().build();
    let f = GgufFile::read(bytes.as_slice()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap(), &[Value::String("a".into()), Value::String("b".into())]);
    let t = f.tensor("w").unwrap();
    assert_eq!(t.rows_k(), (3, 4));
    let row = f.read_rows(bytes.as_slice(), t, 1..2).unwrap();
    assert_eq!(row, [4f32, 5., 6., 7.].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    assert!(matches!(f.get_str("llama.block_count"), Err(GgufError::WrongType { .. })));
    assert!(matches!(f.get_u64("missing.key"), Err(GgufError::MissingKey { .. })));
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = good().build();
    bytes[0] = b'X';
    assert!(matches!(err(&bytes), GgufError::BadMagic(_)));
    let mut bytes = good().build();
    bytes[4] = 1;
    assert!(matches!(err(&bytes), GgufError::UnsupportedVersion(1)), "{}", err(&bytes));
    assert!(matches!(err(b"GG"), GgufError::Truncated { .. }));
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut bytes = good().build();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    assert!(err(&bytes).to_string().contains("beyond any real model"));
    let mut bytes = good().build();
    bytes[16..24].copy_from_slice(&(1u64 << 19).to_le_bytes()); // plausible count, but the file ends
    assert!(matches!(err(&bytes), GgufError::Truncated { .. } | GgufError::Invalid(_)));

    // A string array claiming 2^60 elements. Its length sits after the 24-byte header, the
    // first entry (8 + 17 + 4 + 4 bytes) and its own key and types (8 + 21 + 4 + 4 bytes).
    let mut bytes = good().build();
    let pos = 24 + 33 + 37;
    assert_eq!(bytes[pos..pos + 8], 2u64.to_le_bytes());
    bytes[pos..pos + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(&bytes).to_string().contains("array of 1152921504606846976 elements"), "{}", err(&bytes));
}

#[test]
fn absurd_dims_offsets_and_types() {
    // Dims whose product overflows.
    let bytes = Writer::new().tensor_f32("w", &[1, 1], 0).build();
    let mut bad = bytes.clone();
    let p = 24 + 8 + 1 + 4; // header, name, n_dims: the first dim
    assert_eq!(bad[p..p + 8], 1u64.to_le_bytes());
    bad[p..p + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&bad).to_string().contains("size overflows"), "{}", err(&bad));

    // Data past the end of the file.
    let mut truncated = good().build();
    truncated.truncate(truncated.len() - 20); // 16 bytes of padding, then into the data
    let e = err(&truncated);
    assert!(matches!(&e, GgufError::Truncated { what, .. } if what.contains("tensor `w` data")), "{e}");

    // Unknown tensor type.
    let bytes = Writer::new().tensor_f32("odd", &[4], 77).build();
    assert!(matches!(err(&bytes), GgufError::UnknownType { ty: 77, .. }));

    // Too many dimensions.
    let bytes = Writer::new().tensor_f32("deep", &[1; 9], 0).build();
    assert!(err(&bytes).to_string().contains("9 dimensions"));

    // A quantised tensor whose row is not whole blocks.
    let bytes = Writer::new().tensor_f32("q", &[33, 1], 2).build();
    assert!(err(&bytes).to_string().contains("rows of 33 are not whole Q4_0 blocks of 32"), "{}", err(&bytes));
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error_not_a_panic() {
    let bytes = good().build();
    for len in 0..bytes.len() - 1 {
        if GgufFile::read(&bytes[..len]).is_ok() {
            // Only the padding after the last tensor's data may be cut.
            assert!(len >= bytes.len() - 32, "a file cut at {len} of {} parsed", bytes.len());
        }
    }
}

/// A source that counts the reads made of it, as a browser worker's Blob reads would cost.
struct CountingSource {
    bytes: Vec<u8>,
    reads: std::cell::Cell<usize>,
}

impl ByteSource for CountingSource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.reads.set(self.reads.get() + 1);
        self.bytes.as_slice().read_at(offset, buf)
    }
}

#[test]
fn a_large_vocabulary_is_parsed_from_a_few_large_reads() {
    // 200k tokens (~2.6 MB of metadata, more than SmolLM2's vocabulary and merges together),
    // one long string past the first read window, then a tensor.
    let tokens: Vec<String> = (0..200_000).map(|i| format!("tok{i}")).collect();
    let long = "x".repeat(3 << 20);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).chain([long.as_str()]).collect();
    let bytes = Writer::new().kv_str_array("tokenizer.ggml.tokens", &refs).kv_u32("llama.block_count", 2).tensor_f32("w", &[4, 3], 0).build();
    let src = CountingSource { bytes, reads: std::cell::Cell::new(0) };
    let f = GgufFile::read(&src).unwrap();
    let got = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(got.len(), 200_001);
    assert_eq!(got[123_456], Value::String("tok123456".into()));
    assert_eq!(got[200_000], Value::String(long.clone()));
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(f.tensor("w").unwrap().rows_k(), (3, 4));
    // Windows of 1, 2, 4 MiB... cover the ~5.6 MB header; the long string is read directly.
    assert!(src.reads.get() <= 6, "{} reads for a {} byte header", src.reads.get(), f.data_offset);
}

#[test]
fn metadata_arrays_beyond_the_element_cap_are_refused() {
    // Each u8 element is one byte, so the file-size check alone would let 2^22 + 1 through.
    let n = MAX_METADATA_ELEMENTS as usize + 1;
    let mut w = Writer::new();
    Writer::string(&mut w.kv, "huge");
    w.kv.extend(9u32.to_le_bytes());
    w.kv.extend(0u32.to_le_bytes());
    w.kv.extend((n as u64).to_le_bytes());
    w.kv.resize(w.kv.len() + n, 7);
    w.n_kv = 1;
    let e = err(&w.build());
    assert!(e.to_string().contains("more than 4194304 elements"), "{e}");
}
