//! Tokenizers and chat templates against the Python references recorded in tests/fixtures
//! (make_tiny_models.py): `tokenizers` ids and decodings for unicode, emoji, whitespace and
//! special tokens, and transformers' `apply_chat_template` output for real templates.

use std::path::PathBuf;

use emberlm_models::chat::ChatTemplate;
use emberlm_models::files::{open_gguf, read_json};
use emberlm_models::text::{next_turn_opening, TextSetup};
use emberlm_models::tokenizer::{StreamDecoder, TextTokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn check_cases(tok: &TextTokenizer, cases: &Value) {
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), case["decoded"].as_str().unwrap(), "decoding of {text:?}");
        // Streaming pieces add up to the whole decoding.
        let mut stream = StreamDecoder::new(false);
        let streamed: String = want.iter().map(|&id| stream.push(tok, id).unwrap()).collect();
        assert_eq!(streamed, case["decoded"].as_str().unwrap(), "streamed decoding of {text:?}");
        // Each token's own bytes (logprobs report them) add up to the decoding's, partial
        // UTF-8 characters included.
        assert_eq!(token_bytes(tok, &want), case["decoded"].as_str().unwrap().as_bytes(), "token bytes of {text:?}");
    }
}

fn token_bytes(tok: &TextTokenizer, ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|&id| tok.token_bytes(id).unwrap()).collect()
}

/// A tokenizer.json that asks for truncation and padding (a hostile or careless upload) still
/// encodes every prompt whole, as transformers' chat path does.
#[test]
fn tokenizer_json_truncation_and_padding_are_ignored() {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(fixtures().join("tiny/tokenizer.json")).unwrap()).unwrap();
    doc["truncation"] = serde_json::json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0});
    doc["padding"] =
        serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "x"});
    let tok = TextTokenizer::from_json_bytes(doc.to_string().as_bytes()).unwrap();
    check_cases(&tok, &read_json(&fixtures().join("tiny/tokenizer_cases.json")).unwrap());
}

/// A tokenizer.json whose normalizer makes the tokenizers crate panic (a `Precompiled`
/// charsmap with an empty trie: it indexes past the end on any text) is an error natively.
/// (In wasm the panic is a trap; the npm package fails that engine cleanly: tests/runtimes.)
#[test]
fn a_panic_inside_the_tokenizers_crate_is_an_error() {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(fixtures().join("tiny/tokenizer.json")).unwrap()).unwrap();
    doc["normalizer"] = serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AAAAAA=="});
    let tok = TextTokenizer::from_json_bytes(doc.to_string().as_bytes()).unwrap();
    let e = tok.encode("hello").unwrap_err().to_string();
    assert!(e.contains("failed while encoding"), "{e}");
}

#[test]
fn tokenizer_json_round_trips_like_python_tokenizers() {
    let tok = TextTokenizer::from_json_bytes(&std::fs::read(fixtures().join("tiny/tokenizer.json")).unwrap()).unwrap();
    check_cases(&tok, &read_json(&fixtures().join("tiny/tokenizer_cases.json")).unwrap());
}

#[test]
fn gguf_tokenizer_matches_transformers_gguf_tokenizer() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    let store = open_gguf(&path).unwrap();
    let tok = TextTokenizer::from_gguf(store.metadata()).unwrap();
    check_cases(&tok, &read_json(&fixtures().join("smollm2/tokenizer_cases.json")).unwrap());

    // Its chat template renders like transformers'.
    let want = read_json(&fixtures().join("smollm2/chat_template.json")).unwrap();
    let text = TextSetup::from_gguf(store.metadata()).unwrap();
    let got = text.chat_template.expect("SmolLM2 has a chat template").render(&want["messages"], true, None).unwrap();
    assert_eq!(got, want["rendered"].as_str().unwrap());
}

#[test]
fn tiny_gguf_tokenizer_equals_its_tokenizer_json() {
    let json_tok = TextTokenizer::from_json_bytes(&std::fs::read(fixtures().join("tiny/tokenizer.json")).unwrap()).unwrap();
    let store = open_gguf(&fixtures().join("tiny/qwen2/model.gguf")).unwrap();
    let gguf_tok = TextTokenizer::from_gguf(store.metadata()).unwrap();
    check_cases(&gguf_tok, &read_json(&fixtures().join("tiny/tokenizer_cases.json")).unwrap());
    assert_eq!(gguf_tok.vocab_size(), json_tok.vocab_size());
}

/// The real chat templates with transformers' renders: tiny/chat_templates.json and SmolLM3's
/// (with and without `enable_thinking`), LFM2.5-Instruct's and GPT-OSS's (harmony: reasoning
/// effort, thinking, tools, a tool call and its result).
fn template_fixtures() -> Vec<Value> {
    let mut all = read_json(&fixtures().join("tiny/chat_templates.json")).unwrap().as_array().unwrap().clone();
    for family in ["smollm3", "lfm2", "gptoss"] {
        all.extend(read_json(&fixtures().join(format!("tiny/{family}/chat_template_cases.json"))).unwrap().as_array().unwrap().iter().cloned());
    }
    all
}

#[test]
fn chat_templates_render_like_transformers() {
    for t in &template_fixtures() {
        let template = ChatTemplate {
            source: t["template"].as_str().unwrap().to_string(),
            bos_token: t["bos_token"].as_str().map(String::from),
            eos_token: t["eos_token"].as_str().map(String::from),
        };
        for case in t["cases"].as_array().unwrap() {
            let got = template.render(&case["messages"], case["add_generation_prompt"].as_bool().unwrap(), Some(&t["extra_context"])).unwrap();
            // GPT-OSS's template prints today's date; the recorded renders hold 2000-01-01.
            let got = match got.find("Current date: ") {
                Some(at) => format!("{}2000-01-01{}", &got[..at + 14], &got[at + 24..]),
                None => got,
            };
            assert_eq!(got, case["rendered"].as_str().unwrap(), "{} with {}", t["name"], case["messages"]);
        }
    }
}

/// The next user turn's opening (run ahead while the user types) is what the next request's
/// prompt really starts with — every fixture template over the tiny BPE tokenizer, and
/// SmolLM2's own template and tokenizer — and reaches past the reply into the next turn's
/// markers. A message that starts with whitespace may merge with a template's last newline
/// (templates that do not trim): the opening then overruns the real prompt by one token, which
/// the next request's prefix reuse simply runs again.
#[test]
fn next_turn_openings_start_every_follow_up() {
    let conversation = serde_json::json!([
        {"role": "user", "content": "Hi there, who are you?"},
        {"role": "assistant", "content": "I am a small model. How can I help?"}
    ]);
    let follow_ups = ["What about Paris?", "2 more, please", "(a) or (b)?", "Ünïcödé ✓", "hello", "", " leading space", "\nnew line first", "\t tab"];
    let check = |name: &str, prompt_ids: &dyn Fn(&Value) -> emberlm_models::Result<Vec<u32>>| {
        let opening = next_turn_opening(&conversation, prompt_ids).unwrap().unwrap_or_else(|| panic!("{name}: no opening"));
        let open = &opening.probe_ids[..opening.shared];
        // Past the first turn's prompt: the reply and what closes it are in.
        let first_turn = prompt_ids(&serde_json::json!([conversation[0]])).unwrap();
        assert!(opening.shared > first_turn.len(), "{name}: an opening of {} tokens, the first prompt has {}", opening.shared, first_turn.len());
        for f in follow_ups {
            let mut m = conversation.as_array().unwrap().clone();
            m.push(serde_json::json!({"role": "user", "content": f}));
            let real = prompt_ids(&Value::Array(m)).unwrap();
            let shared = open.iter().zip(&real).take_while(|(a, b)| a == b).count();
            let slack = usize::from(f.starts_with(char::is_whitespace));
            assert!(shared + slack >= open.len(), "{name}: {f:?} shares {shared} of the opening's {} tokens", open.len());
        }
        opening
    };
    let tok = TextTokenizer::from_json_bytes(&std::fs::read(fixtures().join("tiny/tokenizer.json")).unwrap()).unwrap();
    for t in &template_fixtures() {
        let template = ChatTemplate {
            source: t["template"].as_str().unwrap().to_string(),
            bos_token: t["bos_token"].as_str().map(String::from),
            eos_token: t["eos_token"].as_str().map(String::from),
        };
        let name = t["name"].as_str().unwrap_or("a fixture");
        check(name, &|m: &Value| tok.encode(&template.render(m, true, Some(&t["extra_context"]))?));
    }
    // SmolLM2: ChatML with its special tokens; the opening ends where the user's words begin.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    let text = TextSetup::from_gguf(open_gguf(&path).unwrap().metadata()).unwrap();
    let opening = check("SmolLM2", &|m: &Value| text.chat_prompt_ids(m));
    let decoded = text.tokenizer().unwrap().decode(&opening.probe_ids[..opening.shared], false).unwrap();
    assert!(decoded.ends_with("How can I help?<|im_end|>\n<|im_start|>user\n"), "{decoded:?}");
    assert_eq!(text.next_turn_opening(&conversation, None, None).unwrap(), Some(opening));
}

/// The template bounds (fuel for steps and bytes built, output size) leave room for real use:
/// every fixture template renders a 2,000-message, 2 MB conversation.
#[test]
fn long_conversations_render_within_the_template_bounds() {
    let turn = "lorem ipsum dolor sit amet ".repeat(38);
    let messages: Vec<Value> =
        (0..2000).map(|i| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("{i}: {turn}")})).collect();
    let messages = Value::Array(messages);
    for t in &template_fixtures() {
        let template =
            ChatTemplate { source: t["template"].as_str().unwrap().to_string(), bos_token: t["bos_token"].as_str().map(String::from), eos_token: None };
        let got = template.render(&messages, true, Some(&t["extra_context"])).unwrap_or_else(|e| panic!("{}: {e}", t["name"]));
        assert!(got.len() > 2_000_000 && got.contains("1999: lorem"), "{}: {} bytes", t["name"], got.len());
    }
}

#[test]
fn template_errors_are_reported() {
    let gemma = read_json(&fixtures().join("tiny/chat_templates.json")).unwrap().as_array().unwrap().iter().find(|t| t["name"] == "gemma-2").unwrap().clone();
    let template = ChatTemplate { source: gemma["template"].as_str().unwrap().into(), bos_token: Some("<bos>".into()), eos_token: None };
    let messages = serde_json::json!([{"role": "system", "content": "x"}]);
    let err = template.render(&messages, true, None).unwrap_err().to_string();
    assert!(err.contains("System role not supported"), "{err}");
    let broken = ChatTemplate { source: "{% for m in messages %}".into(), bos_token: None, eos_token: None };
    assert!(broken.render(&messages, true, None).unwrap_err().to_string().contains("chat template"));
}

#[test]
fn sentencepiece_gguf_tokenizers_match_transformers() {
    // tests/fixtures/spm: one SentencePiece vocabulary in llama, phi3 and gemma2 GGUF files,
    // with the ids and decodings transformers' GGUF tokenizer gives (make_spm_fixtures.py).
    let dir = fixtures().join("spm");
    let reference = read_json(&dir.join("reference.json")).unwrap();
    let cases: Vec<&str> = reference["cases"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for (name, want) in reference["variants"].as_object().unwrap() {
        let store = open_gguf(&dir.join(want["file"].as_str().unwrap())).unwrap();
        let text = TextSetup::from_gguf(store.metadata()).unwrap();
        assert_eq!(text.add_bos, want["add_bos"].as_bool().unwrap(), "{name}: BOS rule");
        let tok = text.tokenizer.as_ref().unwrap();
        for (i, case) in cases.iter().enumerate() {
            let ids: Vec<u32> = want["ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(case).unwrap(), ids, "{name}: ids of {case:?}");
            assert_eq!(tok.decode(&ids, false).unwrap(), want["decoded"][i].as_str().unwrap(), "{name}: decoding of {case:?}");
            assert_eq!(tok.decode(&ids, true).unwrap(), want["decoded_skip_special"][i].as_str().unwrap(), "{name}: decoding of {case:?} without specials");
            // Token bytes: "▁" is a space and <0xHH> a byte; the decoder strips the first
            // token's leading space (not Gemma's), the bytes keep it.
            let joined = token_bytes(tok, &ids);
            let decoded = want["decoded"][i].as_str().unwrap().as_bytes();
            assert!(joined == decoded || joined.strip_prefix(b" ") == Some(decoded), "{name}: token bytes of {case:?}: {:?}", String::from_utf8_lossy(&joined));
        }
    }
}

/// A GGUF byte-level tokenizer whose pre-tokenizer is a chain of splits (`deepseek-llm`, as
/// DeepSeek LLM / V2 GGUFs name theirs) gives transformers' ids: tests/fixtures/vocab holds
/// llama.cpp's vocabulary-only GGUF of deepseek-llm-7b-base and its test texts with the ids
/// transformers' `AutoTokenizer` gave them (llama.cpp's convert_hf_to_gguf_update.py, MIT).
#[test]
fn gguf_split_chain_pre_tokenizer_matches_transformers() {
    let dir = fixtures().join("vocab");
    let tok = TextTokenizer::from_gguf(open_gguf(&dir.join("deepseek-llm.gguf")).unwrap().metadata()).unwrap();
    let inputs = std::fs::read_to_string(dir.join("deepseek-llm.gguf.inp")).unwrap();
    let outputs = std::fs::read_to_string(dir.join("deepseek-llm.gguf.out")).unwrap();
    let texts: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<&str> = outputs.split('\n').collect();
    assert!(texts.len() >= 30 && ids.len() >= texts.len(), "{} texts, {} id lines", texts.len(), ids.len());
    for (text, line) in texts.iter().zip(&ids) {
        let want: Vec<u32> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), *text, "decoding of {text:?}");
    }
}
