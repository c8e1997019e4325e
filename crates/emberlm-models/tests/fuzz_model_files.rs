//! A mutation fuzzer for everything a model repo hands us, on a fixed seed so CI runs the same
//! cases every time: GGUF files (bytes flipped, counts and sizes set to extremes, truncations),
//! safetensors headers, and the JSON files (config.json, tokenizer.json, tokenizer_config.json
//! with numbers, strings, templates and arrays replaced by hostile values). Each case goes as far
//! into loading as it can without a GPU — header, config, tokenizer, chat template, a prompt
//! encoded — and must end in success or a clean error: no panic, and within a time bound. It
//! prints cases / clean errors / panics / slowest case.
//!
//! `EMBERLM_FUZZ_CASES=N` runs N cases per format (default 300); `EMBERLM_FUZZ_SEED` another seed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use emberlm_models::gguf::GgufFile;
use emberlm_models::safetensors::read_header;
use emberlm_models::text::TextSetup;
use emberlm_models::weights::GgufStore;
use emberlm_models::ModelConfig;
use serde_json::{json, Value};

/// No case may take longer than this (the slowest seen on the 2-core CI machine is well under 1 s).
const CASE_BOUND: Duration = Duration::from_secs(10);

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny").join(path)).unwrap()
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: the same cases on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const EXTREMES: [u64; 9] = [0, 1, 2, 255, 1 << 31, (1 << 31) - 1, 1 << 32, 1 << 40, u64::MAX];

/// Byte-level mutations, aimed at the first `hot` bytes (the header) most of the time.
fn mutate_bytes(rng: &mut Rng, bytes: &[u8], hot: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = |rng: &mut Rng, len: usize| if rng.below(4) > 0 { rng.below(hot.min(len)) } else { rng.below(len) };
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 => {
                let i = at(rng, b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                // A little-endian u64 or u32 field set to an extreme value.
                let i = at(rng, b.len()).min(b.len().saturating_sub(8));
                let v = rng.pick(&EXTREMES);
                let n = if rng.below(2) == 0 { 8 } else { 4 };
                b[i..i + n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
            2 => b.truncate(at(rng, b.len())),
            3 => {
                let i = at(rng, b.len());
                let n = rng.below(64).min(b.len() - i);
                let chunk = b[i..i + n].to_vec();
                b.splice(i..i, chunk);
            }
            _ => {
                let i = at(rng, b.len());
                b[i] = rng.pick(&[0u8, 0xff, 0x80, b'{', b'"', b'\\']);
            }
        }
        if b.len() < 8 {
            break;
        }
    }
    b
}

fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!(rng.pick(&EXTREMES)),
        1 => json!(-1),
        2 => json!(1e308),
        3 => json!("x".repeat(rng.below(100_000))),
        4 => json!("{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}"),
        5 => json!("{{ messages | tojson(indent=4611686018427387904) }}{{ raise_exception('x') }}"),
        6 => json!([]),
        7 => json!({}),
        8 => Value::Null,
        _ => json!("../../../../etc/passwd\u{0}\u{202e}"),
    }
}

/// Replaces a few random nodes of a JSON document (numbers, strings, arrays, objects) with
/// hostile values.
fn mutate_json(rng: &mut Rng, doc: &Value) -> Value {
    fn visit(rng: &mut Rng, v: &mut Value, p: u64) {
        if rng.below(1000) < p as usize {
            *v = hostile_value(rng);
            return;
        }
        match v {
            Value::Array(items) => {
                // Long arrays: visit a few elements only.
                let n = items.len();
                for _ in 0..n.min(8) {
                    let i = rng.below(n);
                    visit(rng, &mut items[i], p);
                }
            }
            Value::Object(map) => {
                for (_, item) in map.iter_mut() {
                    visit(rng, item, p);
                }
            }
            _ => {}
        }
    }
    let mut out = doc.clone();
    visit(rng, &mut out, 40);
    out
}

#[derive(Default)]
struct Tally {
    cases: usize,
    ok: usize,
    errors: usize,
    panics: Vec<String>,
    slow: Vec<String>,
    slowest: Duration,
}

impl Tally {
    fn run(&mut self, name: &str, case: impl FnOnce() -> Result<(), String>) {
        self.cases += 1;
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(case));
        let took = started.elapsed();
        self.slowest = self.slowest.max(took);
        if took > CASE_BOUND {
            self.slow.push(format!("{name}: {took:?}"));
        }
        match outcome {
            Ok(Ok(())) => self.ok += 1,
            Ok(Err(_)) => self.errors += 1,
            Err(p) => self.panics.push(format!(
                "{name}: {}",
                p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
            )),
        }
    }

    fn report(&self, what: &str) {
        eprintln!(
            "fuzz {what}: {} cases, {} loaded, {} clean errors, {} panics, {} over {CASE_BOUND:?}, slowest {:?}",
            self.cases,
            self.ok,
            self.errors,
            self.panics.len(),
            self.slow.len(),
            self.slowest
        );
        assert!(self.panics.is_empty(), "{what}: panics: {:#?}", self.panics);
        assert!(self.slow.is_empty(), "{what}: cases past the time bound: {:#?}", self.slow);
    }
}

fn messages() -> Value {
    json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "More?"}])
}

/// As far as loading goes without a GPU: header, shards, config, tokenizer, template, a prompt.
fn load_gguf(bytes: &[u8]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let file = GgufFile::read(bytes).map_err(|x| e(&x))?;
    let store = GgufStore::new(vec![(file, bytes.to_vec())]).map_err(|x| e(&x))?;
    ModelConfig::from_gguf(store.metadata()).map_err(|x| e(&x))?;
    let text = TextSetup::from_gguf(store.metadata()).map_err(|x| e(&x))?;
    text.prompt_ids("Hello, world! 123 ünïcode", None).map_err(|x| e(&x))?;
    text.chat_prompt_ids(&messages()).map_err(|x| e(&x))?;
    Ok(())
}

fn load_hf(config: &Value, tokenizer: &[u8], tokenizer_config: &Value) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut config = ModelConfig::from_hf(config, None).map_err(|x| e(&x))?;
    let text = TextSetup::from_hf(Some(tokenizer), Some(tokenizer_config), None, &mut config).map_err(|x| e(&x))?;
    text.prompt_ids("Hello, world! 123 ünïcode", None).map_err(|x| e(&x))?;
    text.chat_prompt_ids(&messages()).map_err(|x| e(&x))?;
    Ok(())
}

#[test]
fn mutated_model_files_end_in_clean_errors_within_bounds() {
    let n = env_u64("EMBERLM_FUZZ_CASES", 300) as usize;
    let mut rng = Rng(env_u64("EMBERLM_FUZZ_SEED", 0x5eed_e4be_u64).max(1));

    // The unmutated files load: the fuzzer starts from working inputs.
    let gguf = fixture("qwen2/model.gguf");
    load_gguf(&gguf).unwrap();
    let config: Value = serde_json::from_slice(&fixture("qwen2/config.json")).unwrap();
    let tokenizer_bytes = fixture("qwen2/tokenizer.json");
    let tokenizer: Value = serde_json::from_slice(&tokenizer_bytes).unwrap();
    let tokenizer_config: Value = serde_json::from_slice(&fixture("qwen2/tokenizer_config.json")).unwrap();
    load_hf(&config, &tokenizer_bytes, &tokenizer_config).unwrap();
    let safetensors = fixture("qwen2/model.safetensors");
    let header_len = 8 + u64::from_le_bytes(safetensors[..8].try_into().unwrap()) as usize;
    read_header("model.safetensors", safetensors.as_slice()).unwrap();

    let gguf_header = GgufFile::read(gguf.as_slice()).unwrap().data_offset as usize;
    let mut t = Tally::default();
    for i in 0..n {
        let bytes = mutate_bytes(&mut rng, &gguf, gguf_header);
        t.run(&format!("gguf #{i}"), || load_gguf(&bytes));
    }
    t.report("GGUF");

    let mut t = Tally::default();
    for i in 0..n {
        let bytes = mutate_bytes(&mut rng, &safetensors[..header_len + 4096.min(safetensors.len() - header_len)], header_len);
        t.run(&format!("safetensors #{i}"), || read_header("model.safetensors", bytes.as_slice()).map(|_| ()).map_err(|e| e.to_string()));
        // The JSON header with hostile values, re-serialised with a correct length.
        let json: Value = serde_json::from_slice(&safetensors[8..header_len]).unwrap();
        let text = mutate_json(&mut rng, &json).to_string();
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend(text.as_bytes());
        file.extend(&safetensors[header_len..]);
        t.run(&format!("safetensors json #{i}"), || read_header("model.safetensors", file.as_slice()).map(|_| ()).map_err(|e| e.to_string()));
    }
    t.report("safetensors");

    let mut t = Tally::default();
    for i in 0..n {
        let which = rng.below(3);
        let config = if which == 0 { mutate_json(&mut rng, &config) } else { config.clone() };
        let tok = if which == 1 { mutate_json(&mut rng, &tokenizer).to_string().into_bytes() } else { tokenizer_bytes.clone() };
        let tok_cfg = if which == 2 { mutate_json(&mut rng, &tokenizer_config) } else { tokenizer_config.clone() };
        t.run(&format!("json #{i} (file {which})"), || load_hf(&config, &tok, &tok_cfg));
        let raw = mutate_bytes(&mut rng, &tokenizer_bytes, tokenizer_bytes.len());
        t.run(&format!("tokenizer bytes #{i}"), || load_hf(&config, &raw, &tokenizer_config));
    }
    t.report("config.json / tokenizer.json / tokenizer_config.json");

    // The newer families' own keys. LFM2: per-layer kv head counts (0 marks a conv
    // layer), the conv length, layer_types and the MLP width rule. Mamba2: the SSM sizes,
    // groups, the conv kernel, time-step limits (`Infinity` in config.json), A as -exp(A_log).
    // Granite's hybrid: Mamba2 and attention layers by per-layer kv counts, its multipliers.
    // The mixtures (Qwen3-MoE, Mixtral): expert counts and widths, stacked 3-D expert tensors.
    // DeepSeek: MLA ranks and head dims, kv_b split or attn_k_b/attn_v_b, routing groups.
    for family in ["lfm2", "mamba2", "granitehybrid", "qwen3moe", "mixtral", "deepseek2", "deepseek3"] {
        let file = fixture(&format!("{family}/model.gguf"));
        load_gguf(&file).unwrap();
        let header = GgufFile::read(file.as_slice()).unwrap().data_offset as usize;
        let config = emberlm_models::config::parse_json(std::str::from_utf8(&fixture(&format!("{family}/config.json"))).unwrap()).unwrap();
        let tok = fixture(&format!("{family}/tokenizer.json"));
        let tok_cfg: Value = serde_json::from_slice(&fixture(&format!("{family}/tokenizer_config.json"))).unwrap();
        load_hf(&config, &tok, &tok_cfg).unwrap();
        let mut t = Tally::default();
        for i in 0..n / 2 {
            let bytes = mutate_bytes(&mut rng, &file, header);
            t.run(&format!("{family} gguf #{i}"), || load_gguf(&bytes));
            let mutated = mutate_json(&mut rng, &config);
            t.run(&format!("{family} config #{i}"), || load_hf(&mutated, &tok, &tok_cfg));
        }
        t.report(&format!("{family} GGUF / config.json"));
    }
}
