//! A GGUF file as far as loading goes without a GPU: header and metadata, tensor table, model
//! config, tokenizer, chat template, and a prompt through both.
#![no_main]

use emberlm_models::gguf::GgufFile;
use emberlm_models::text::TextSetup;
use emberlm_models::weights::GgufStore;
use emberlm_models::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(file) = GgufFile::read(bytes) else { return };
    let Ok(store) = GgufStore::new(vec![(file, bytes.to_vec())]) else { return };
    let _ = ModelConfig::from_gguf(store.metadata());
    if let Ok(text) = TextSetup::from_gguf(store.metadata()) {
        let _ = text.prompt_ids("Hello, world! 123 ünïcode", None);
        let _ = text.chat_prompt_ids(&serde_json::json!([{"role": "user", "content": "Hello"}]));
    }
});
