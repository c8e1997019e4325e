//! A transformers repo's JSON files: the input is split at the first two NUL bytes into
//! config.json, tokenizer.json and tokenizer_config.json, loaded as far as a prompt.
#![no_main]

use emberlm_models::text::TextSetup;
use emberlm_models::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut parts = bytes.splitn(3, |&b| b == 0);
    let (Some(config), Some(tokenizer), Some(tokenizer_config)) = (parts.next(), parts.next(), parts.next()) else { return };
    let Ok(config) = serde_json::from_slice(config) else { return };
    let Ok(tokenizer_config) = serde_json::from_slice(tokenizer_config) else { return };
    let Ok(mut config) = ModelConfig::from_hf(&config, None) else { return };
    if let Ok(text) = TextSetup::from_hf(Some(tokenizer), Some(&tokenizer_config), None, &mut config) {
        let _ = text.prompt_ids("Hello, world! 123 ünïcode", None);
        let _ = text.chat_prompt_ids(&serde_json::json!([{"role": "user", "content": "Hello"}]));
    }
});
