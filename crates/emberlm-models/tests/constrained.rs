//! Constrained decoding on the tiny random-weight fixtures, whose unconstrained output is
//! noise: whatever they generate under a grammar must parse and satisfy it. Schemas bound their
//! strings and arrays so outputs end well inside `max_new_tokens`; a truncated output would be
//! `stopped == false` and is counted as a failure here.

use std::path::PathBuf;

use emberlm_core::{DType, DeviceOptions, GpuDevice};
use emberlm_models::constraint::{Constrainer, Grammar};
use emberlm_models::files::open_hf_dir;
use emberlm_models::tokenizer::TextTokenizer;
use emberlm_models::{generate_constrained, Backend, CpuDevice, GenerateOptions, LoadOptions, MaskSide, Model, SamplingOptions, Session};
use serde_json::{json, Value};

mod common;
use common::schemas::{random_object, validate, Rng};

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny").join(arch)
}

fn tokenizer(dir: &std::path::Path) -> TextTokenizer {
    TextTokenizer::from_json_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap()
}

fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
               "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "tier": {"enum": ["free", "pro", 3]}}, "required": ["ok", "tier"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
               "point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -100, "maximum": 100}, "y": {"type": "integer", "minimum": -5, "maximum": 5}}, "required": ["x", "y"], "additionalProperties": false}},
               "required": ["tags", "point"], "additionalProperties": false}),
    ]
}

fn run_on<B: Backend>(dev: &B, arch: &str) {
    let dir = fixture(arch);
    let hf = open_hf_dir(&dir).unwrap();
    let tok = &tokenizer(&dir);
    let model = Model::load(dev, hf.config, &hf.store, &LoadOptions { dtype: Some(DType::F32), context: 256 }).unwrap();
    let eos = model.config.eos_token_ids[0];
    let constrainer = Constrainer::new(tok, eos).unwrap();
    let prompt = tok.encode("Give me the data as JSON:").unwrap();
    let mut outputs = 0;
    for (s, schema) in schemas().into_iter().enumerate() {
        for seed in 0..6u64 {
            // Greedy once, then sampled hot enough to wander.
            let sampling = if seed == 0 { SamplingOptions::default() } else { SamplingOptions { temperature: 1.2, seed, ..Default::default() } };
            let opts = GenerateOptions { max_new_tokens: 160, stop_tokens: model.config.eos_token_ids.clone(), sampling, ..Default::default() };
            let mut constraint = constrainer.start(&Grammar::JsonSchema(schema.clone())).unwrap();
            let mut session = Session::new(dev, &model).unwrap();
            let out = pollster::block_on(generate_constrained(dev, &model, &mut session, &prompt, &opts, Some(&mut constraint), |_, _| true)).unwrap();
            if seed == 0 {
                // Greedy: the mask applied to logits read back, or uploaded for the backend's
                // argmax (what Auto picks on WebGPU), gives the same tokens.
                for mask_side in [MaskSide::Host, MaskSide::Device] {
                    let mut constraint = constrainer.start(&Grammar::JsonSchema(schema.clone())).unwrap();
                    let opts = GenerateOptions { mask_side, ..opts.clone() };
                    let again =
                        pollster::block_on(generate_constrained(dev, &model, &mut session, &prompt, &opts, Some(&mut constraint), |_, _| true)).unwrap();
                    assert_eq!(again.generated_ids, out.generated_ids, "{arch} schema {s}: greedy with the mask on the {mask_side:?} side");
                }
            }
            let ids: Vec<u32> = out.generated_ids.iter().copied().filter(|id| !opts.stop_tokens.contains(id)).collect();
            let text = tok.decode(&ids, false).unwrap();
            assert!(out.stopped, "{arch} schema {s} seed {seed}: not finished in {} tokens: {text:?}", out.generated_ids.len());
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{arch} schema {s} seed {seed}: {e}: {text:?}"));
            validate(&value, &schema, "$").unwrap_or_else(|e| panic!("{arch} schema {s} seed {seed}: {e}: {text:?}"));
            outputs += 1;
        }
    }
    // Any JSON object, a regex and a Lark grammar.
    for (grammar, check) in [
        // JSON allows numbers past f64's range (a noise model writes 1e57789); serde_json does
        // not, so such an object is accepted by its error.
        (
            Grammar::JsonObject,
            (|t: &str| match serde_json::from_str::<Value>(t) {
                Ok(v) => v.is_object(),
                Err(e) => t.starts_with('{') && e.to_string().contains("number out of range"),
            }) as fn(&str) -> bool,
        ),
        (Grammar::Regex(r"(yes|no), [0-9]{1,3}".into()), |t: &str| {
            let (a, b) = t.split_once(", ").unwrap_or(("", ""));
            matches!(a, "yes" | "no") && (1..=3).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_digit())
        }),
        (Grammar::Lark("start: \"[\" item (\",\" item)* \"]\"\nitem: \"a\" | \"b\"".into()), |t: &str| {
            t.starts_with('[') && t.ends_with(']') && t[1..t.len() - 1].split(',').all(|i| i == "a" || i == "b")
        }),
    ] {
        for seed in 0..3u64 {
            let sampling = SamplingOptions { temperature: 1.0, seed, ..Default::default() };
            let opts = GenerateOptions { max_new_tokens: 200, stop_tokens: model.config.eos_token_ids.clone(), sampling, ..Default::default() };
            let mut constraint = constrainer.start(&grammar).unwrap();
            let mut session = Session::new(dev, &model).unwrap();
            let out = pollster::block_on(generate_constrained(dev, &model, &mut session, &prompt, &opts, Some(&mut constraint), |_, _| true)).unwrap();
            let ids: Vec<u32> = out.generated_ids.iter().copied().filter(|id| !opts.stop_tokens.contains(id)).collect();
            let text = tok.decode(&ids, false).unwrap();
            if out.stopped {
                assert!(check(&text), "{arch} {grammar:?} seed {seed}: {text:?}");
                outputs += 1;
            } else {
                // Only unbounded grammars (any object, a list of any length) may run out of tokens.
                assert!(!matches!(grammar, Grammar::Regex(_)), "{arch} {grammar:?}: not finished: {text:?}");
            }
        }
    }
    eprintln!("{} {arch}: {outputs} constrained outputs parsed and validated", dev.kind().name());
    assert!(outputs >= 20);
}

#[test]
fn constrained_outputs_parse_and_validate() {
    let cpu = CpuDevice::new(None);
    for arch in ["llama", "qwen2"] {
        run_on(&cpu, arch);
    }
}

/// The same on WebGPU, where greedy steps mask on the device by default (`MaskSide::Auto`) and
/// the CPU-side mask is compared with it.
#[test]
fn constrained_outputs_parse_and_validate_on_webgpu() {
    let dev = pollster::block_on(GpuDevice::new(DeviceOptions::default())).unwrap();
    run_on(&dev, "llama");
}

#[test]
fn invalid_grammars_are_errors_before_generation() {
    let dir = fixture("llama");
    let constrainer = Constrainer::new(&tokenizer(&dir), 0).unwrap();
    for bad in [
        Grammar::JsonSchema(json!({"type": "frobnicate"})),
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Regex("(unclosed".into()),
        Grammar::JsonSchema(json!({"$ref": "#/definitions/missing"})),
        // Hostile: nested 100,000 deep. Bounded by llguidance's limits, not a stack overflow
        // or a hang.
        Grammar::Lark(format!("start: {}\"x\"{}", "(".repeat(100_000), ")".repeat(100_000))),
    ] {
        let started = std::time::Instant::now();
        let e = constrainer.start(&bad).err().unwrap_or_else(|| panic!("{:.80?} was accepted", bad));
        assert!(e.to_string().starts_with("output constraint:") && e.to_string().len() < 2000, "{e}");
        assert!(started.elapsed().as_secs() < 10, "{:.80?} took {:?}", bad, started.elapsed());
    }
}

/// Schemas drawn at random (seeded): nested objects, arrays, enums, integers, bounded numbers,
/// booleans, strings with lengths or formats, required and optional fields. Every sampled
/// output of the tiny fixtures under them parses and validates; an output may stop only
/// because the grammar is complete (`stopped`), never part-way with tokens to spare.
#[test]
fn random_schemas_hold_on_random_models() {
    let cpu = CpuDevice::new(None);
    let mut rng = Rng(0x5eed_1234_abcd);
    let schemas: Vec<Value> = (0..60).map(|_| random_object(&mut rng, 0)).collect();
    let mut outputs = 0;
    for arch in ["llama", "qwen2"] {
        let dir = fixture(arch);
        let hf = open_hf_dir(&dir).unwrap();
        let tok = &tokenizer(&dir);
        let model = Model::load(&cpu, hf.config, &hf.store, &LoadOptions { dtype: Some(DType::F32), context: 512 }).unwrap();
        let constrainer = Constrainer::new(tok, model.config.eos_token_ids[0]).unwrap();
        let prompt = tok.encode("Data:").unwrap();
        for (i, schema) in schemas.iter().enumerate() {
            let sampling = SamplingOptions { temperature: 1.0, seed: i as u64, ..Default::default() };
            let opts = GenerateOptions { max_new_tokens: 400, stop_tokens: model.config.eos_token_ids.clone(), sampling, ..Default::default() };
            let mut constraint = constrainer.start(&Grammar::JsonSchema(schema.clone())).unwrap_or_else(|e| panic!("schema {i} {schema}: {e}"));
            let mut session = Session::new(&cpu, &model).unwrap();
            let out = pollster::block_on(generate_constrained(&cpu, &model, &mut session, &prompt, &opts, Some(&mut constraint), |_, _| true)).unwrap();
            let ids: Vec<u32> = out.generated_ids.iter().copied().filter(|id| !opts.stop_tokens.contains(id)).collect();
            let text = tok.decode(&ids, false).unwrap();
            assert!(out.stopped, "{arch} schema {i}: unfinished after {} tokens: {text:?}\n{schema}", out.generated_ids.len());
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{arch} schema {i}: {e}: {text:?}\n{schema}"));
            validate(&value, schema, "$").unwrap_or_else(|e| panic!("{arch} schema {i}: {e}: {text:?}\n{schema}"));
            outputs += 1;
        }
    }
    assert_eq!(outputs, 120);
}
