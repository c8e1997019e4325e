//! Corrupt or mismatched safetensors models give errors that name the problem, never a panic.

use std::path::PathBuf;

use emberlm_core::{DeviceOptions, GpuDevice};
use emberlm_models::files::{open_hf_dir, read_json};
use emberlm_models::safetensors::read_header;
use emberlm_models::{LoadOptions, Model, ModelConfig};

fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; data_len]);
    bytes
}

fn err(bytes: &[u8]) -> String {
    read_header("m.safetensors", bytes).unwrap_err().to_string()
}

#[test]
fn header_problems_are_named() {
    let ok = r#"{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#;
    assert_eq!(read_header("m.safetensors", &file(ok, 12)[..]).unwrap().len(), 1);
    assert!(err(&[1, 2, 3]).contains("too short"));
    assert!(err(&u64::MAX.to_le_bytes()).contains("header claims"));
    assert!(err(&file("{not json", 0)).contains("not valid JSON"));
    assert!(err(&file(r#"{"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, 8)).contains("dtype I64 is not supported"));
    assert!(err(&file(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}}"#, 24)).contains("shape [2, 3] needs 24"));
    assert!(err(&file(ok, 11)).contains("truncated"), "data past the end of the file");
    let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert!(err(&file(overlap, 12)).contains("overlap"));
    let huge = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#;
    assert!(err(&file(huge, 8)).contains("overflows"));
    // Offsets that wrap around u64 would point the tensor back at the JSON header.
    let wrap = format!(r#"{{"w":{{"dtype":"F32","shape":[2],"data_offsets":[{},{}]}}}}"#, u64::MAX - 8, u64::MAX);
    assert!(err(&file(&wrap, 8)).contains("overflow"), "{}", err(&file(&wrap, 8)));
    // Every truncation of a valid file is an error, not a panic.
    let full = file(ok, 12);
    for cut in 0..full.len() {
        assert!(read_header("m.safetensors", &full[..cut]).is_err(), "cut at {cut}");
    }
}

fn copy_fixture(arch: &str, tag: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny").join(arch);
    let dst = std::env::temp_dir().join(format!("emberlm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn missing_files_unknown_architectures_and_shape_mismatches() {
    // A shard listed in the index is missing.
    let dir = copy_fixture("llama", "missing-shard");
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    let e = open_hf_dir(&dir).err().unwrap().to_string();
    assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();

    // An architecture we do not run.
    let mut cfg = read_json(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/qwen2/config.json")).unwrap();
    cfg["model_type"] = "mamba".into();
    let e = ModelConfig::from_hf(&cfg, None).unwrap_err().to_string();
    assert!(e.contains("mamba") && e.contains("gemma3"), "{e}");

    // config.json disagrees with the tensors: the error names the tensor and both shapes.
    let dir = copy_fixture("qwen2", "shape");
    let mut cfg = read_json(&dir.join("config.json")).unwrap();
    cfg["intermediate_size"] = 96.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let hf = open_hf_dir(&dir).unwrap();
    let dev = pollster::block_on(GpuDevice::new(DeviceOptions::default())).unwrap();
    let e = Model::load(&dev, hf.config, &hf.store, &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("blk.0.ffn_gate.weight") && e.contains("[96, 64]") && e.contains("[128, 64]"), "{e}");
    std::fs::remove_dir_all(&dir).ok();

    // A truncated weight file.
    let dir = copy_fixture("gemma2", "truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_hf_dir(&dir).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
