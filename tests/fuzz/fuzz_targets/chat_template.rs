//! A chat template (any text) rendered on a short conversation: it must end, within its fuel
//! and output bounds, in text or a template error.
#![no_main]

use emberlm_models::chat::ChatTemplate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|source: &str| {
    let template = ChatTemplate { source: source.to_string(), bos_token: Some("<s>".into()), eos_token: Some("</s>".into()) };
    let messages = serde_json::json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]);
    let _ = template.render(&messages, true, None);
});
