//! Tool calling: prompts rendered as transformers' `apply_chat_template(tools=…)` renders them
//! (tests/fixtures/tiny/tool_templates.json, made by make_tool_templates.py), replies parsed
//! back into calls in each family's syntax — whole and streamed in any split, malformed ones
//! kept as text — and `tool_choice: "required"` enforced on a tiny random model, whose free
//! output is noise.

use std::path::PathBuf;

use emberlm_core::DType;
use emberlm_models::chat::ChatTemplate;
use emberlm_models::constraint::{Constrainer, Grammar};
use emberlm_models::files::open_hf_dir;
use emberlm_models::text::TextSetup;
use emberlm_models::tokenizer::TextTokenizer;
use emberlm_models::tools::{self, parse_reply, ToolEvent, ToolPrompt, ToolSyntax, Tools};
use emberlm_models::{CpuDevice, GenerateOptions, LoadOptions, Model, SamplingOptions};
use serde_json::{json, Value};

mod common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn reference() -> Vec<Value> {
    serde_json::from_str::<Value>(&std::fs::read_to_string(fixtures().join("tool_templates.json")).unwrap()).unwrap().as_array().unwrap().clone()
}

fn template(t: &Value) -> ChatTemplate {
    ChatTemplate {
        source: t["template"].as_str().unwrap().into(),
        bos_token: t["bos_token"].as_str().map(String::from),
        eos_token: t["eos_token"].as_str().map(String::from),
    }
}

fn prompt_for(t: &Value, choice: Value) -> ToolPrompt {
    ToolPrompt::new(&template(t), Tools::new(&t["tools"], &choice).unwrap()).unwrap()
}

/// GPT-OSS's harmony template (tests/fixtures/tiny/templates/gpt-oss.jinja).
fn harmony_template() -> ChatTemplate {
    ChatTemplate { source: std::fs::read_to_string(fixtures().join("templates/gpt-oss.jinja")).unwrap(), bos_token: None, eos_token: Some("<|return|>".into()) }
}

/// The reply parser for a family by name: the fixture templates, and `gpt-oss` with the same
/// tools.
fn prompt_named(name: &str) -> ToolPrompt {
    let refs = reference();
    match refs.iter().find(|t| t["name"] == name) {
        Some(t) => prompt_for(t, Value::Null),
        None => {
            assert_eq!(name, "gpt-oss");
            ToolPrompt::new(&harmony_template(), Tools::new(&refs[0]["tools"], &Value::Null).unwrap()).unwrap()
        }
    }
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn tool_prompts_render_like_transformers() {
    let mut renders = 0;
    for t in reference() {
        let prompt = prompt_for(&t, Value::Null);
        assert!(prompt.native, "{}", t["name"]);
        for case in t["cases"].as_array().unwrap() {
            let mut messages = case["messages"].clone();
            let got = prompt.render(&template(&t), &messages, case["add_generation_prompt"].as_bool().unwrap(), Some(&t["extra_context"])).unwrap();
            assert_eq!(got, case["rendered"].as_str().unwrap(), "{} with {}", t["name"], case["messages"]);
            // OpenAI's shape, arguments as a string of JSON, renders the same.
            for m in messages.as_array_mut().unwrap() {
                for call in m.get_mut("tool_calls").and_then(Value::as_array_mut).into_iter().flatten() {
                    let args = call["function"]["arguments"].to_string();
                    call["function"]["arguments"] = Value::String(args);
                }
            }
            let again = prompt.render(&template(&t), &messages, case["add_generation_prompt"].as_bool().unwrap(), Some(&t["extra_context"])).unwrap();
            assert_eq!(again, got, "{}: string arguments", t["name"]);
            renders += 1;
        }
    }
    assert_eq!(renders, 12);
}

#[test]
fn each_family_syntax_is_told_from_its_template() {
    let syntax: Vec<(String, Option<ToolSyntax>)> =
        reference().iter().map(|t| (t["name"].as_str().unwrap().to_string(), ToolSyntax::of_template(t["template"].as_str().unwrap()))).collect();
    assert_eq!(
        syntax,
        [("qwen-2.5".into(), Some(ToolSyntax::Hermes)), ("llama-3.2".into(), Some(ToolSyntax::LlamaJson)), ("mistral-nemo".into(), Some(ToolSyntax::Mistral))]
    );
    assert_eq!(ToolSyntax::of_template(CHATML), None);
    for name in ["gemma-2", "phi-3.5"] {
        let source = std::fs::read_to_string(fixtures().join(format!("templates/{name}.jinja"))).unwrap();
        assert_eq!(ToolSyntax::of_template(&source), None, "{name}");
    }
}

#[test]
fn templates_without_tools_get_them_in_a_system_prompt() {
    let tools = reference()[0]["tools"].clone();
    let chatml = ChatTemplate { source: CHATML.into(), bos_token: None, eos_token: None };
    let p = ToolPrompt::new(&chatml, Tools::new(&tools, &json!("auto")).unwrap()).unwrap();
    assert!(!p.native && p.syntax == ToolSyntax::Hermes);
    let messages = json!([
        {"role": "user", "content": "Weather in Paris and 2+3?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "b", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "21 C"},
        {"role": "tool", "tool_call_id": "b", "content": "5"},
    ]);
    let got = p.render(&chatml, &messages, true, None).unwrap();
    assert!(got.starts_with("<|im_start|>system\n# Tools\n"), "{got}");
    assert!(got.contains("\"name\": \"get_weather\"") || got.contains("\"name\":\"get_weather\""), "{got}");
    assert!(got.contains("<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":2,\"b\":3}}\n</tool_call><|im_end|>"), "{got}");
    assert!(
        got.contains("<|im_start|>user\n<tool_response>\n21 C\n</tool_response>\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
        "{got}"
    );
    // Gemma-2 refuses a system role: the tools go at the start of the first user turn.
    let gemma =
        ChatTemplate { source: std::fs::read_to_string(fixtures().join("templates/gemma-2.jinja")).unwrap(), bos_token: Some("<bos>".into()), eos_token: None };
    let p = ToolPrompt::new(&gemma, Tools::new(&tools, &Value::Null).unwrap()).unwrap();
    let got = p.render(&gemma, &json!([{"role": "user", "content": "Hi"}]), true, None).unwrap();
    assert!(got.starts_with("<bos><start_of_turn>user\n# Tools\n") && got.contains("</tool_call>\n\nHi<end_of_turn>"), "{got}");
    // tool_choice none: no tools in the prompt at all; calls and results already in the
    // conversation still render, as plain turns (SmolLM2's template would fail on a null content).
    assert!(ToolPrompt::new(&chatml, Tools::new(&tools, &json!("none")).unwrap()).is_none());
    let mut config =
        emberlm_models::ModelConfig::from_hf(&serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen2/config.json")).unwrap()).unwrap(), None)
            .unwrap();
    let setup =
        TextSetup::from_hf(Some(&std::fs::read(fixtures().join("tokenizer.json")).unwrap()), Some(&json!({"chat_template": CHATML})), None, &mut config)
            .unwrap();
    let ids = setup.chat_prompt_ids_with(&messages, None, None).unwrap();
    let text = setup.tokenizer().unwrap().decode(&ids, false).unwrap();
    assert!(text.starts_with("<|im_start|>user\nWeather in Paris and 2+3?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\""), "{text}");
}

#[test]
fn bad_tools_and_choices_are_clear_errors() {
    let f = |name: &str| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}});
    let cases = [
        (json!({}), json!("auto"), "must be an array"),
        (json!([]), json!("auto"), "1 to 128"),
        (Value::Array(vec![f("a"); 129]), json!("auto"), "1 to 128"),
        (json!([{"type": "retrieval"}]), json!("auto"), "tools[0]"),
        (json!([f("")]), json!("auto"), "function name"),
        (json!([f("has space")]), json!("auto"), "function name"),
        (json!([f(&"x".repeat(65))]), json!("auto"), "function name"),
        (json!([f("a"), f("a")]), json!("auto"), "second function"),
        (json!([{"type": "function", "function": {"name": "a", "parameters": "x"}}]), json!("auto"), "JSON schema object"),
        (json!([f("a")]), json!("sometimes"), "tool_choice"),
        (json!([f("a")]), json!({"type": "function", "function": {"name": "b"}}), "not among the tools"),
    ];
    for (tools, choice, want) in cases {
        let e = Tools::new(&tools, &choice).unwrap_err().to_string();
        assert!(e.starts_with("tools: ") && e.contains(want), "{tools} {choice}: {e}");
    }
}

/// Replies as each family writes them (and as they go wrong): the text and the calls' names and
/// arguments they parse to.
fn reply_cases() -> Vec<(&'static str, &'static str, &'static str, Vec<(&'static str, Value)>)> {
    let paris = || json!({"city": "Paris"});
    vec![
        ("qwen-2.5", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", "", vec![("get_weather", paris())]),
        (
            "qwen-2.5",
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>",
            "Let me check.",
            vec![("get_weather", paris()), ("add", json!({"a": 2, "b": 3}))],
        ),
        // Arguments as a string of JSON; a list of calls in one block; no closing tag at the end.
        ("qwen-2.5", "<tool_call>\n{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1, \\\"b\\\": 1}\"}\n</tool_call>", "", vec![("add", json!({"a": 1, "b": 1}))]),
        ("qwen-2.5", "<tool_call>[{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}]</tool_call>", "", vec![("add", json!({"a": 1, "b": 2}))]),
        ("qwen-2.5", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}", "", vec![("get_weather", paris())]),
        // Malformed: broken JSON, an unknown function, arguments that are not an object.
        ("qwen-2.5", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call> ok", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call> ok", vec![]),
        ("qwen-2.5", "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>", "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>", vec![]),
        ("qwen-2.5", "<tool_call>{\"name\": \"add\", \"arguments\": 7}</tool_call>", "<tool_call>{\"name\": \"add\", \"arguments\": 7}</tool_call>", vec![]),
        ("qwen-2.5", "<tool_call>\n{\"name\": \"get_weather\", \"argu", "<tool_call>\n{\"name\": \"get_weather\", \"argu", vec![]),
        ("qwen-2.5", "Paris is sunny <tool_ca", "Paris is sunny <tool_ca", vec![]),
        ("qwen-2.5", "", "", vec![]),
        ("llama-3.2", "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", vec![("get_weather", paris())]),
        ("llama-3.2", "<|python_tag|>{\"name\": \"add\", \"parameters\": {\"a\": 2, \"b\": 3}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", vec![("add", json!({"a": 2, "b": 3})), ("get_weather", paris())]),
        ("llama-3.2", "It is sunny in Paris {\"temp\": 21}.", "It is sunny in Paris {\"temp\": 21}.", vec![]),
        ("llama-3.2", "{\"temp\": 21}", "{\"temp\": 21}", vec![]),
        ("llama-3.2", "  <|python_", "  <|python_", vec![]),
        ("mistral-nemo", "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abcdefghi\"}]", "", vec![("get_weather", paris())]),
        ("mistral-nemo", "[TOOL_CALLS]add[ARGS]{\"a\": 4, \"b\": 5}[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}", "", vec![("add", json!({"a": 4, "b": 5})), ("get_weather", paris())]),
        ("mistral-nemo", "Sure. [TOOL_CALLS][{\"name\": \"nope\", \"arguments\": {}}]", "Sure. [TOOL_CALLS][{\"name\": \"nope\", \"arguments\": {}}]", vec![]),
        ("mistral-nemo", "No tools needed: 4.", "No tools needed: 4.", vec![]),
        // GPT-OSS (harmony): reasoning is not content; a call is a commentary message to
        // `functions.name`, the recipient before or after the channel; the final channel is.
        (
            "gpt-oss",
            "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>",
            "",
            vec![("get_weather", paris())],
        ),
        ("gpt-oss", " to=functions.add<|channel|>commentary json<|message|>{\"a\": 2, \"b\": 3}<|call|>", "", vec![("add", json!({"a": 2, "b": 3}))]),
        ("gpt-oss", "<|channel|>analysis<|message|>Simple sum.<|end|><|start|>assistant<|channel|>final<|message|>It is 4.<|return|>", "It is 4.", vec![]),
        ("gpt-oss", "<|channel|>final<|message|>Sunny in Paris.", "Sunny in Paris.", vec![]),
        // Malformed: arguments that are not JSON, an unknown function (its body is text), a
        // reply that is not harmony at all, one cut inside a header.
        ("gpt-oss", "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": }<|call|>", "{\"city\": }", vec![]),
        ("gpt-oss", "<|channel|>commentary to=functions.rm_rf <|constrain|>json<|message|>{}<|call|>", "{}", vec![]),
        ("gpt-oss", "Hello there.", "Hello there.", vec![]),
        ("gpt-oss", "<|channel|>anal", "<|channel|>anal", vec![]),
        ("gpt-oss", "", "", vec![]),
    ]
}

#[test]
fn replies_parse_into_calls_and_malformed_ones_stay_text() {
    for (name, reply, text, calls) in reply_cases() {
        let (got_text, got_calls) = parse_reply(&prompt_named(name), reply);
        assert_eq!(got_text, text, "{name}: {reply:?}");
        let got: Vec<(String, Value)> = got_calls.iter().map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap())).collect();
        let want: Vec<(String, Value)> = calls.into_iter().map(|(n, a)| (n.to_string(), a)).collect();
        assert_eq!(got, want, "{name}: {reply:?}");
        for c in &got_calls {
            assert!(c.id.len() == 9 && c.id.bytes().all(|b| b.is_ascii_alphanumeric()), "{}", c.id);
        }
        let mut ids: Vec<&str> = got_calls.iter().map(|c| c.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), got_calls.len(), "call ids repeat");
    }
}

/// Streamed in pieces of every size (and one character at a time), a reply gives the same text
/// and calls as whole; text before a call is released before the call completes, and no part
/// of a call's syntax is ever released as text.
#[test]
fn streamed_replies_reassemble_to_the_whole_parse() {
    for (name, reply, text, calls) in reply_cases() {
        let prompt = prompt_named(name);
        for size in [1, 2, 3, 5, 7, 16, 1000] {
            let mut stream = prompt.stream(None, 7);
            let chars: Vec<char> = reply.chars().collect();
            let (mut got_text, mut got_calls) = (String::new(), Vec::new());
            for piece in chars.chunks(size) {
                for e in stream.push(&piece.iter().collect::<String>()) {
                    match e {
                        ToolEvent::Text(t) => {
                            if !calls.is_empty() {
                                assert!(!t.contains("<tool_call>") && !t.contains("[TOOL_CALLS]") && !t.contains('{'), "{name} {size}: {t:?} released");
                            }
                            got_text.push_str(&t)
                        }
                        ToolEvent::Call(c) => got_calls.push((c.name, serde_json::from_str::<Value>(&c.arguments).unwrap())),
                        ToolEvent::Reasoning(r) => assert!(!r.contains("<|"), "{name} {size}: reasoning {r:?} holds a marker"),
                    }
                }
            }
            for e in stream.finish() {
                match e {
                    ToolEvent::Text(t) => got_text.push_str(&t),
                    ToolEvent::Call(c) => got_calls.push((c.name, serde_json::from_str::<Value>(&c.arguments).unwrap())),
                    ToolEvent::Reasoning(_) => {}
                }
            }
            assert_eq!(got_text, text, "{name} in pieces of {size}: {reply:?}");
            let want: Vec<(String, Value)> = calls.iter().map(|(n, a)| (n.to_string(), a.clone())).collect();
            assert_eq!(got_calls, want, "{name} in pieces of {size}: {reply:?}");
        }
    }
}

/// `tool_choice: "required"` and a named function on the tiny random Qwen2 model (the
/// Qwen2.5 template, a byte-level vocabulary without `<tool_call>` tokens): every sampled
/// reply is a call of an offered function whose arguments satisfy its schema.
#[test]
fn forced_tool_calls_hold_on_a_random_model() {
    let dir = fixtures().join("qwen2");
    let hf = open_hf_dir(&dir).unwrap();
    let mut config = hf.config.clone();
    let tok_cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let setup = TextSetup::from_hf(Some(&std::fs::read(dir.join("tokenizer.json")).unwrap()), Some(&tok_cfg), None, &mut config).unwrap();
    let tok: &TextTokenizer = setup.tokenizer().unwrap();
    let dev = CpuDevice::new(None);
    let model = Model::load(&dev, config, &hf.store, &LoadOptions { dtype: Some(DType::F32), context: 2048 }).unwrap();
    let constrainer = Constrainer::new(tok, model.config.eos_token_ids[0]).unwrap();
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": -99, "maximum": 99}, "b": {"type": "integer", "minimum": -99, "maximum": 99}}, "required": ["a", "b"], "additionalProperties": false}}},
    ]);
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let mut seen = std::collections::BTreeSet::new();
    for (choice, seeds) in [(json!("required"), 0..6u64), (json!({"type": "function", "function": {"name": "add"}}), 0..3)] {
        let prompt = setup.tool_prompt(&tools, &choice).unwrap().unwrap();
        assert_eq!(prompt.syntax, ToolSyntax::Hermes);
        let ids = setup.chat_prompt_ids_with(&messages, Some(&prompt), None).unwrap();
        let Some(Grammar::Lark(lark)) = prompt.forced_call(tok) else { panic!("no grammar for {choice}") };
        for seed in seeds {
            let sampling = SamplingOptions { temperature: 1.0, seed, ..Default::default() };
            let opts = GenerateOptions { max_new_tokens: 200, stop_tokens: model.config.eos_token_ids.clone(), sampling, ..Default::default() };
            let mut constraint = constrainer.start(&Grammar::Lark(lark.clone())).unwrap();
            let (events, out) = common::tools::generate_events(&dev, &model, &ids, &opts, Some(&mut constraint), &prompt, tok, seed);
            let text = tok.decode(&out.generated_ids, true).unwrap();
            assert!(out.stopped, "{choice} seed {seed}: unfinished: {text:?}");
            let [ToolEvent::Call(call)] = events.as_slice() else { panic!("{choice} seed {seed}: {events:?} from {text:?}") };
            let args: Value = serde_json::from_str(&call.arguments).unwrap();
            match call.name.as_str() {
                "get_weather" => assert!(
                    args["city"].as_str().is_some_and(|c| c.chars().count() <= 12) && ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap())
                ),
                "add" => assert!((-99..=99).contains(&args["a"].as_i64().unwrap()) && (-99..=99).contains(&args["b"].as_i64().unwrap())),
                other => panic!("{other}"),
            }
            if let Value::Object(_) = choice {
                assert_eq!(call.name, "add");
            }
            seen.insert(call.name.clone());
        }
    }
    assert!(seen.contains("add"), "{seen:?}");
    // No grammar for auto.
    let auto = setup.tool_prompt(&tools, &json!("auto")).unwrap().unwrap();
    assert!(auto.forced_call(tok).is_none());
}

/// GPT-OSS: its template is told as harmony; the analysis channel comes out as reasoning, in
/// order and whole, whatever the pieces; without tools its replies still go through the
/// channels (only the final one is content), and other templates' do not.
#[test]
fn harmony_replies_split_reasoning_from_content() {
    assert_eq!(ToolSyntax::of_template(&harmony_template().source), Some(ToolSyntax::Harmony));
    let reply = "<|channel|>analysis<|message|>Think: 2+2.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>";
    for size in [1, 3, 1000] {
        let mut stream = tools::reply_stream(Some(&harmony_template()), None, 1).expect("a harmony stream without tools");
        let chars: Vec<char> = reply.chars().collect();
        let mut events: Vec<ToolEvent> = chars.chunks(size).flat_map(|p| stream.push(&p.iter().collect::<String>())).collect();
        events.extend(stream.finish());
        let reasoning: String = events.iter().filter_map(|e| if let ToolEvent::Reasoning(r) = e { Some(r.as_str()) } else { None }).collect();
        assert_eq!(reasoning, "Think: 2+2.", "pieces of {size}");
        assert_eq!(ToolEvent::split(events), ("4".to_string(), vec![]), "pieces of {size}");
    }
    let chatml = ChatTemplate { source: CHATML.into(), bos_token: None, eos_token: None };
    assert!(tools::reply_stream(Some(&chatml), None, 1).is_none());
}

/// `tool_choice: "required"` and a named function with the harmony template on the tiny
/// random GPT-OSS (its byte-level vocabulary spells the markers as text): every sampled reply
/// is one call of an offered function (after optional reasoning) whose arguments satisfy its
/// schema, and it renders back through the template.
#[test]
fn forced_harmony_tool_calls_hold_on_a_random_model() {
    let dir = fixtures().join("gptoss");
    let hf = open_hf_dir(&dir).unwrap();
    let mut config = hf.config.clone();
    let tok_cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let mut setup = TextSetup::from_hf(Some(&std::fs::read(dir.join("tokenizer.json")).unwrap()), Some(&tok_cfg), None, &mut config).unwrap();
    setup.chat_template = Some(harmony_template());
    let tok: &TextTokenizer = setup.tokenizer().unwrap();
    let dev = CpuDevice::new(None);
    let model = Model::load(&dev, config, &hf.store, &LoadOptions { dtype: None, context: 4096 }).unwrap();
    let constrainer = Constrainer::new(tok, model.config.eos_token_ids[0]).unwrap();
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather.", "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 12}}, "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "description": "Adds.", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": -99, "maximum": 99}, "b": {"type": "integer", "minimum": -99, "maximum": 99}}, "required": ["a", "b"], "additionalProperties": false}}},
    ]);
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    for (choice, seeds) in [(json!("required"), 0..1u64), (json!({"type": "function", "function": {"name": "add"}}), 0..1)] {
        let prompt = setup.tool_prompt(&tools, &choice).unwrap().unwrap();
        assert_eq!(prompt.syntax, ToolSyntax::Harmony);
        let ids = setup.chat_prompt_ids_with(&messages, Some(&prompt), None).unwrap();
        let Some(grammar) = prompt.forced_call(tok) else { panic!("no grammar for {choice}") };
        for seed in seeds {
            let sampling = SamplingOptions { temperature: 1.0, seed, ..Default::default() };
            let opts = GenerateOptions { max_new_tokens: 3000, stop_tokens: model.config.eos_token_ids.clone(), sampling, ..Default::default() };
            let mut constraint = constrainer.start(&grammar).unwrap();
            let (events, out) = common::tools::generate_events(&dev, &model, &ids, &opts, Some(&mut constraint), &prompt, tok, seed);
            let text = tok.decode(&out.generated_ids, true).unwrap();
            assert!(out.stopped, "{choice} seed {seed}: unfinished: {text:?}");
            let (content, calls) = ToolEvent::split(events);
            assert!(content.is_empty(), "{choice} seed {seed}: content {content:?} from {text:?}");
            let [call] = calls.as_slice() else { panic!("{choice} seed {seed}: {calls:?} from {text:?}") };
            let args: Value = serde_json::from_str(&call.arguments).unwrap();
            match call.name.as_str() {
                "get_weather" => assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 12)),
                "add" => assert!((-99..=99).contains(&args["a"].as_i64().unwrap()) && (-99..=99).contains(&args["b"].as_i64().unwrap())),
                other => panic!("{other}"),
            }
            if let Value::Object(_) = choice {
                assert_eq!(call.name, "add");
            }
            // The call goes back into the template (with its result) as harmony.
            let mut turn = messages.as_array().unwrap().clone();
            turn.push(tools::assistant_message("", &calls));
            turn.push(json!({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": "{\"ok\": true}"}));
            let rendered = prompt.render(setup.chat_template().unwrap(), &Value::Array(turn), true, None).unwrap();
            assert!(rendered.contains(&format!("to=functions.{}<|channel|>commentary json<|message|>", call.name)), "{rendered}");
        }
    }
}
