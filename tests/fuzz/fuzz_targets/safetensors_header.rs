//! A safetensors file's header: length prefix, JSON, dtypes, shapes and data offsets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = emberlm_models::safetensors::read_header("model.safetensors", bytes);
});
