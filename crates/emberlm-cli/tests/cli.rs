//! The `emberlm` command-line contract other tools script against, checked end to end on a
//! tiny fixture model against transformers' outputs (tests/fixtures/tiny, reference.json).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny").join(arch)
}

fn emberlm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_emberlm")).args(args).output().expect("run emberlm")
}

fn reference(arch: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("reference.json")).unwrap()).unwrap()
}

#[test]
fn generate_json_with_text_prompt_matches_transformers() {
    let case = &reference("llama")["cases"][0];
    let dir = fixture("llama");
    let out = emberlm(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        case["text"].as_str().unwrap(),
        "--dtype",
        "f32",
        "--max-new-tokens",
        "24",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(got["prompt_ids"], case["input_ids"]);
    assert_eq!(got["generated_ids"], case["generated_ids"]);
    for key in ["text", "ttft_ms", "prefill_tok_s", "decode_tok_s"] {
        assert!(!got[key].is_null(), "missing {key}");
    }
}

#[test]
fn prompt_ids_and_dump_logits_npy() {
    let case = &reference("qwen2")["cases"][1];
    let gguf = fixture("qwen2").join("model.gguf");
    let ids: Vec<String> = case["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let npy = std::env::temp_dir().join(format!("emberlm-logits-{}.npy", std::process::id()));
    let out = emberlm(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--prompt-ids",
        &ids.join(","),
        "--max-new-tokens",
        "5",
        "--json",
        "--dump-logits",
        npy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["generated_ids"].as_array().unwrap()[..], case["generated_ids"].as_array().unwrap()[..5]);
    let bytes = std::fs::read(&npy).unwrap();
    std::fs::remove_file(&npy).ok();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (512,)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0, "npy data is 64-byte aligned");
    let logits: Vec<f32> = bytes[10 + header_len..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let want: Vec<f64> = case["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let worst = logits.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-3, "dumped logits differ from transformers by {worst}");
}

/// Also `--json-object`: constrained decode rows (the mask on the CPU and on the device) and the
/// constraint's milliseconds per token.
#[test]
fn bench_prints_pp_and_tg_rows() {
    let dir = fixture("phi3");
    let out = emberlm(&["bench", "--model", dir.to_str().unwrap(), "-p", "32", "-n", "8", "-r", "1", "--json-object"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("| pp32 |") && text.contains("| tg8 |"), "{text}");
    // --json-object: a row per side of the mask (their tokens agreed, or the bench fails), each
    // with the constraint's own cost per token.
    for side in ["mask on the CPU", "mask on the device"] {
        assert!(text.contains(&format!("| tg (JSON object, {side}) |")), "{text}");
    }
    let costs: Vec<&str> = text.lines().filter_map(|l| l.trim_start().strip_prefix("the constraint took ")).collect();
    assert_eq!(costs.len(), 2, "{text}");
    for cost in costs {
        assert!(cost.split_whitespace().next().unwrap().parse::<f64>().unwrap() > 0.0, "{cost}");
    }
    // The yardstick line: decode's weight bytes per second against the copy bandwidth.
    let line = text.lines().find(|l| l.starts_with("decode reads ")).unwrap_or_else(|| panic!("no weight-bytes line in {text}"));
    let number_before = |unit: &str| -> f64 { line.split(unit).next().unwrap().split_whitespace().last().unwrap().trim_start_matches('(').parse().unwrap() };
    assert!(number_before(" GB/s,") > 0.0 && number_before("x the copy bandwidth") > 0.0, "{line}");
}

/// `--profile` times every op kind on both backends: on WebGPU from timestamp queries (lavapipe
/// has them), one dispatch per op, so a decoded token shows one embedding and one argmax.
#[test]
fn bench_profile_times_ops_on_webgpu_and_the_cpu() {
    let dir = fixture("llama");
    for device in ["webgpu", "cpu"] {
        let out = emberlm(&["bench", "--model", dir.to_str().unwrap(), "--device", device, "-p", "8", "-n", "4", "-r", "1", "--profile"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let tg = text.split("profile tg4:").nth(1).unwrap_or_else(|| panic!("{device}: no decode profile in {text}"));
        let line = |op: &str| tg.lines().find(|l| l.trim_start().starts_with(op)).unwrap_or_else(|| panic!("{device}: no {op} line in {tg}"));
        for op in ["embedding", "rms_norm", "attention", "argmax"] {
            assert!(line(op).contains("ms/token"), "{tg}");
        }
        let matvec_ms: f64 = line("matvec").split_whitespace().rev().nth(4).unwrap().parse().unwrap();
        assert!(matvec_ms > 0.0, "{device}: the matvec took no time: {tg}");
        if device == "webgpu" {
            assert!(line("argmax").contains(" 1.0 calls/token"), "{tg}");
            assert!(line("(cpu) encode").contains("ms/token") && line("(cpu) build").contains("ms/token"), "{tg}");
        }
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let out = emberlm(&["generate", "--model", "/nonexistent/model.gguf", "--prompt", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("No such file"), "{err}");
    // A relative path that is also a valid `owner/name` is still a missing file, not a Hub repo.
    let out = emberlm(&["generate", "--model", "models/nope.gguf", "--prompt", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("models/nope.gguf") && err.contains("No such file") && !err.contains("@main"), "{err}");
    // Token ids past the vocabulary.
    let dir = fixture("gemma3");
    let out = emberlm(&["generate", "--model", dir.to_str().unwrap(), "--prompt-ids", "1,99999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("99999"));
}

/// Generation's edge cases end cleanly: the KV cache's end is finish reason `length` with the
/// tokens kept (not "context full" and nothing), an overflowing `--max-new-tokens` is just
/// "as many as fit", `--stop ""` is refused, `--ignore-eos` runs to the budget.
#[test]
fn generation_edge_cases_end_cleanly() {
    let case = &reference("llama")["cases"][0];
    let dir = fixture("llama");
    let prompt = case["text"].as_str().unwrap();
    let want: Vec<u64> = case["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let n_prompt = case["input_ids"].as_array().unwrap().len();
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", dir.to_str().unwrap(), "--prompt", prompt, "--dtype", "f32", "--json"];
        args.extend_from_slice(extra);
        emberlm(&args)
    };
    let context = (n_prompt + 5).to_string();
    let out = run(&["--context", &context, "--max-new-tokens", &u64::MAX.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["finish_reason"], "length");
    let ids: Vec<u64> = got["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids, want[..5], "the tokens that fit, as transformers generates them");

    // Without --context the model's own context (256 positions here) ends generation.
    let out = run(&["--ignore-eos", "--max-new-tokens", "400"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["finish_reason"], "length");
    assert_eq!(got["generated_ids"].as_array().unwrap().len(), 256 - n_prompt, "positions stop at the model's context");
    let out = run(&["--context", "300", "--max-new-tokens", "1"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("past the 256 positions"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = run(&["--stop", ""]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--stop needs a non-empty text"));

    let out = run(&["--context", "4"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("larger --context"));

    let out = run(&["--ignore-eos", "--max-new-tokens", "30", "--temperature", "1e-40"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["generated_ids"].as_array().unwrap().len(), 30);
    assert_eq!(got["generated_ids"].as_array().unwrap()[..24].iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>(), want, "1e-40 is greedy");
}

/// Option mistakes are named: a negative number reaches the range check (not "unexpected
/// argument"), and a directory that is not a model says what one holds.
#[test]
fn option_errors_name_the_option() {
    let dir = fixture("llama");
    for (args, want) in [
        (vec!["--temperature", "-1"], "--temperature -1 is out of range"),
        (vec!["--temperature=-1"], "--temperature -1 is out of range"),
        (vec!["--top-p", "0"], "--top-p 0 is out of range"),
        (vec!["--min-p", "2"], "--min-p 2 is out of range"),
        (vec!["--repetition-penalty", "-0.5"], "--repetition-penalty -0.5 is out of range"),
    ] {
        let mut all = vec!["generate", "-m", dir.to_str().unwrap(), "-p", "x"];
        all.extend(args);
        let out = emberlm(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{all:?}: {err}");
    }
    let empty = std::env::temp_dir().join(format!("emberlm-not-a-model-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("weights.gguf"), b"").unwrap();
    let out = emberlm(&["generate", "-m", empty.to_str().unwrap(), "-p", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a model directory") && err.contains("config.json") && err.contains("weights.gguf"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
    let out = emberlm(&["generate", "-m", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--prompt") && err.contains("--prompt-file"), "a prompt is required: {err}");
    let help = String::from_utf8_lossy(&emberlm(&["generate", "--help"]).stdout).into_owned();
    let lines: Vec<&str> = help.lines().collect();
    for option in ["--top-k", "--top-p", "--min-p", "--repetition-penalty", "--seed", "--max-new-tokens"] {
        // The description follows on the option's line or, in clap's long layout, the next one.
        let i = lines.iter().position(|l| l.contains(option)).unwrap_or_else(|| panic!("{option} is in --help"));
        let text = format!("{} {}", lines[i], lines.get(i + 1).filter(|l| !l.trim_start().starts_with('-')).unwrap_or(&""));
        assert!(text.split_whitespace().count() >= 6, "{option} has a description in --help: {text:?}");
    }
    assert!(help.contains("q4k, q5k, q6k"), "--dtype lists the K formats");
}

/// llama.cpp-style short flags, and the prompt from a file or standard input, give what
/// `--prompt` gives.
#[test]
fn short_flags_and_prompt_files() {
    let case = &reference("llama")["cases"][0];
    let dir = fixture("llama");
    let prompt = case["text"].as_str().unwrap();
    let ids = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["generated_ids"].clone()
    };
    let want = ids(&emberlm(&["generate", "--model", dir.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", "8", "--dtype", "f32", "--json"]));
    assert_eq!(want.as_array().unwrap().len(), 8);
    assert_eq!(ids(&emberlm(&["generate", "-m", dir.to_str().unwrap(), "-p", prompt, "-n", "8", "--dtype", "f32", "--json"])), want);
    let file = std::env::temp_dir().join(format!("emberlm-prompt-{}.txt", std::process::id()));
    std::fs::write(&file, format!("{prompt}\n")).unwrap();
    assert_eq!(ids(&emberlm(&["generate", "-m", dir.to_str().unwrap(), "-f", file.to_str().unwrap(), "-n", "8", "--dtype", "f32", "--json"])), want);
    std::fs::remove_file(&file).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_emberlm"))
        .args(["generate", "-m", dir.to_str().unwrap(), "-f", "-", "-n", "8", "--dtype", "f32", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{prompt}\n").as_bytes()).unwrap();
    assert_eq!(ids(&child.wait_with_output().unwrap()), want);
    let out = emberlm(&["generate", "-m", dir.to_str().unwrap(), "-f", "/nonexistent/prompt.txt"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--prompt-file /nonexistent/prompt.txt"));
}

/// `chat`: an empty line is not the end (only end of input is), and Ctrl-C during a reply stops
/// that reply and the chat goes on.
#[test]
fn chat_goes_on_past_empty_lines_and_a_ctrl_c() {
    use std::io::{BufRead, Read, Write};
    let dir = fixture("llama");
    // A long reply (the context past the model's 256, allowed with a warning) to interrupt.
    let mut child = Command::new(env!("CARGO_BIN_EXE_emberlm"))
        .args(["chat", "-m", dir.to_str().unwrap(), "--dtype", "f32", "--context", "8192", "--ignore-eos", "-n", "100000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\n\nhello\n").unwrap();
    stdin.flush().unwrap();
    // Wait for the reply to stream, then interrupt it.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("a reply streams after the empty lines");
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    // Then a second turn, and end of input.
    stdin.write_all(b"again\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("[stopped]"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("prompt tokens")).count(), 2, "two turns answered: {err}");
    let _ = stdout.fill_buf();
}

/// `--logprobs N` (with --json): OpenAI's `logprobs.content` shape, one entry per token, the
/// first token's log-probability that of transformers' last-prompt logits, the entries' bytes
/// adding up to the text; N past 20 or without --json is refused by name.
#[test]
fn generate_json_with_logprobs() {
    let case = &reference("llama")["cases"][0];
    let dir = fixture("llama");
    let model = dir.to_str().unwrap();
    let ids = case["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
    let out = emberlm(&["generate", "--model", model, "--prompt-ids", &ids, "--dtype", "f32", "-n", "5", "--ignore-eos", "--json", "--logprobs", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let content = got["logprobs"]["content"].as_array().expect("logprobs.content");
    assert_eq!(content.len(), 5);
    let logits: Vec<f64> = case["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_total = max + logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    let first = &content[0];
    let id = first["id"].as_u64().unwrap() as usize;
    assert_eq!(first["id"], got["generated_ids"][0]);
    assert!((first["logprob"].as_f64().unwrap() - (logits[id] - log_total)).abs() < 1e-3, "{first}");
    let mut bytes = Vec::new();
    for entry in content {
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 3, "{entry}");
        assert_eq!(entry["top_logprobs"][0]["logprob"], entry["logprob"], "greedy picks the likeliest: {entry}");
        let b: Vec<u8> = entry["bytes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        assert_eq!(entry["token"].as_str().unwrap(), String::from_utf8_lossy(&b));
        bytes.extend(b);
    }
    // The text holds back a trailing partial character; the bytes have it.
    let joined = String::from_utf8_lossy(&bytes);
    let text = got["text"].as_str().unwrap();
    assert!(joined.starts_with(text) && joined[text.len()..].chars().all(|c| c == '\u{fffd}'), "{joined:?} vs {text:?}");
    for (args, named) in [(&["--json", "--logprobs", "21"][..], "--logprobs"), (&["--logprobs", "2"][..], "--json")] {
        let out = emberlm(&[&["generate", "--model", model, "--prompt-ids", "1,2"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(named), "{err}");
    }
}

/// Constrained output: a schema (inline or a file), a regex; a bad grammar and two constraints
/// at once are refused by name.
/// `--tools` on the tiny llama (Llama-3.2's template: calls are bare JSON objects): a required
/// call is printed as `tool_calls` with --json and as a `[tool call …]` line without; bad tools
/// are clear errors.
#[test]
fn generate_with_tools() {
    let dir = fixture("llama");
    let model = dir.to_str().unwrap();
    let tools = r#"[{"type":"function","function":{"name":"add","parameters":{"type":"object","properties":{"a":{"type":"integer","minimum":0,"maximum":9},"b":{"type":"integer","minimum":0,"maximum":9}},"required":["a","b"],"additionalProperties":false}}}]"#;
    let base = [
        "generate",
        "--model",
        model,
        "--chat",
        "--prompt",
        "2+3?",
        "--dtype",
        "f32",
        "--context",
        "1024",
        "--temperature",
        "1",
        "--tools",
        tools,
        "--tool-choice",
    ];
    let out = emberlm(&[&base[..], &["required", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["finish_reason"], "tool_calls", "{got}");
    assert_eq!(got["text"], "", "{got}");
    let call = &got["tool_calls"][0];
    assert_eq!(call["function"]["name"], "add", "{got}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["a"].as_i64().is_some_and(|a| (0..=9).contains(&a)) && args["b"].as_i64().is_some_and(|b| (0..=9).contains(&b)), "{args}");
    assert!(call["id"].as_str().unwrap().len() == 9);
    let out = emberlm(&[&base[..], &["add"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("[tool call add {\"a\":")), "{stdout}");
    for (tools, choice, named) in [("[]", "auto", "1 to 128"), (tools, "nope", "not among the tools"), ("{bad", "auto", "--tools")] {
        let out = emberlm(&["generate", "--model", model, "--chat", "--prompt", "x", "--tools", tools, "--tool-choice", choice]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(named), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `embed` on the tiny Qwen3-Embedding-style fixture: sentence-transformers' vectors (cosine ≥
/// 0.9999 at f32), from the directory and its GGUF; a generative model is a clear error.
#[test]
fn embed_matches_sentence_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/qwen3-embedding");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    for model in [dir.clone(), dir.join("model.gguf")] {
        let mut args = vec!["embed".to_string(), "-m".into(), model.display().to_string(), "--dtype".into(), "f32".into(), "--json".into()];
        for c in cases {
            args.extend(["-p".to_string(), c["text"].as_str().unwrap().to_string()]);
        }
        let out = emberlm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let data = got["data"].as_array().unwrap();
        assert_eq!(data.len(), cases.len());
        for (d, c) in data.iter().zip(cases) {
            let (a, b) = (d["embedding"].as_array().unwrap(), c["embedding"].as_array().unwrap());
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap()).sum();
            assert!(dot >= 0.9999, "{}: cosine {dot} for {}", model.display(), c["text"]);
        }
        assert_eq!(got["usage"]["prompt_tokens"].as_u64().unwrap() as usize, cases.iter().map(|c| c["ids"].as_array().unwrap().len()).sum::<usize>());
    }
    let out = emberlm(&["embed", "-m", fixture("llama").to_str().unwrap(), "-p", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an embedding model"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn generate_with_an_output_constraint() {
    let dir = fixture("llama");
    let model = dir.to_str().unwrap();
    let schema = r#"{"type":"object","properties":{"id":{"type":"integer","minimum":1,"maximum":99},"ok":{"type":"boolean"}},"required":["id","ok"],"additionalProperties":false}"#;
    let file = std::env::temp_dir().join(format!("emberlm-cli-schema-{}.json", std::process::id()));
    std::fs::write(&file, schema).unwrap();
    for (seed, source) in [("1", schema.to_string()), ("2", file.display().to_string())] {
        let out = emberlm(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "JSON:",
            "--dtype",
            "f32",
            "--temperature",
            "1",
            "--seed",
            seed,
            "--json",
            "--json-schema",
            &source,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["finish_reason"], "stop", "{got}");
        let value: Value = serde_json::from_str(got["text"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {got}"));
        let id = value["id"].as_i64().unwrap();
        assert!((1..=99).contains(&id) && value["ok"].is_boolean() && value.as_object().unwrap().len() == 2, "{value}");
    }
    std::fs::remove_file(&file).ok();
    let out = emberlm(&["generate", "--model", model, "--prompt", "x", "--dtype", "f32", "--temperature", "1", "--json", "--regex", "[ab]{3}-[0-9]{2}"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = serde_json::from_slice::<Value>(&out.stdout).unwrap()["text"].as_str().unwrap().to_string();
    assert!(text.len() == 6 && text[..3].bytes().all(|b| b == b'a' || b == b'b') && &text[3..4] == "-", "{text:?}");
    for (args, named) in [
        (&["--json-schema", r#"{"type":"frobnicate"}"#][..], "output constraint"),
        (&["--json-schema", "{not json"][..], "--json-schema"),
        (&["--regex", "a", "--json-object"][..], "cannot be used with"),
    ] {
        let out = emberlm(&[&["generate", "--model", model, "--prompt", "x"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(named), "{args:?}: {err}");
    }
}

/// `--chat-template-kwargs` reaches the template: SmolLM3's with `enable_thinking` false gives
/// transformers' ids for the same conversation (fixtures/tiny/smollm3/chat_template_cases.json),
/// without it the thinking render's; a non-object or a variable the renderer sets is an error.
#[test]
fn generate_with_chat_template_kwargs() {
    let dir = fixture("smollm3");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("chat_template_cases.json")).unwrap()).unwrap();
    let want = |entry: usize| {
        let case = cases[entry]["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["messages"].as_array().unwrap().len() == 2 && c["messages"][0]["role"] == "system" && c["add_generation_prompt"] == true)
            .unwrap();
        assert_eq!(case["messages"][1]["content"], "Name a colour.");
        case["ids"].clone()
    };
    let model = dir.to_str().unwrap();
    let run = |extra: &[&str]| {
        let base = ["generate", "--model", model, "--chat", "--system", "  You are terse.  ", "--prompt", "Name a colour.", "-n", "1", "--json"];
        emberlm(&[&base[..], extra].concat())
    };
    for (extra, entry) in [(&[][..], 0), (&["--chat-template-kwargs", r#"{"enable_thinking": false}"#][..], 1)] {
        let out = run(extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["prompt_ids"], want(entry), "{extra:?}");
    }
    assert_ne!(want(0), want(1));
    for (kwargs, named) in [("[1]", "must be an object"), (r#"{"messages": []}"#, "may not set `messages`"), ("{bad", "--chat-template-kwargs")] {
        let out = run(&["--chat-template-kwargs", kwargs]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(named), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
