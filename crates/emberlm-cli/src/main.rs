//! `emberlm`: run a model from the command line on native WebGPU (wgpu: Vulkan, Metal, DX12) or
//! on the CPU backend (`--device`; `auto` takes the CPU when the only adapter is a software one).
//!
//! ```text
//! emberlm generate -m PATH (-p TEXT | -f FILE | --prompt-ids 1,2,3) [--chat] [--json] ...
//! emberlm chat     -m PATH                 interactive, one line per turn (Ctrl-C stops a reply)
//! emberlm bench    --model PATH [-p 512] [-n 128]   llama-bench style pp/tg rows
//! emberlm embed    -m PATH -p TEXT [-p TEXT ...] [--json]   an embedding model's vectors
//! ```
//! PATH is a `.gguf` file (any shard of a split model), a Hugging Face model directory, or a Hub
//! repo `owner/name[@revision]` (`--file NAME.gguf` or `--quant Q4_K_M` picks a GGUF; downloads
//! are cached where the npm package caches them, see `hub.rs`).

mod hub;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use emberlm_core::{DType, DeviceOptions, GpuDevice};
use emberlm_models::constraint::{Constrainer, Grammar};
use emberlm_models::files::LocalModel;
use emberlm_models::tokenizer::StreamDecoder;
use emberlm_models::tools::{self, ToolCall, ToolEvent, ToolPrompt};
use emberlm_models::{
    generate, generate_constrained, Backend, CpuActivations, CpuDevice, GenerateOptions, LoadOptions, MaskSide, Model, SamplingOptions, Session,
};
use serde_json::json;

#[derive(Parser)]
#[command(name = "emberlm", version, about = "Run language models on WebGPU or the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt.
    // Negative numbers are values: `--temperature -1` gets the range check's message, not "unexpected argument".
    #[command(allow_negative_numbers = true)]
    Generate(GenerateArgs),
    /// Chat interactively: each stdin line is a user turn; Ctrl-C stops a reply, Ctrl-D (end of input) or a second Ctrl-C quits.
    #[command(allow_negative_numbers = true)]
    Chat(ChatArgs),
    /// Prompt-processing and token-generation speed (llama-bench style).
    Bench(BenchArgs),
    /// Embed texts with an embedding model (Qwen3-Embedding and the like): one vector per text.
    Embed(EmbedArgs),
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A text to embed (repeat for several).
    #[arg(short = 'p', long = "text", required = true)]
    texts: Vec<String>,
    /// Print OpenAI's embeddings response (`data[i].embedding`, `usage`) instead of one JSON
    /// array per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// A .gguf file, a Hugging Face model directory, or a Hub repo `owner/name[@revision]`.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Hub repos: the .gguf file to use (the first shard of a split model).
    #[arg(long, conflicts_with = "quant")]
    file: Option<String>,
    /// Hub repos: the GGUF quantisation to use, such as Q4_K_M or Q8_0 (default: the best 4-bit).
    #[arg(long)]
    quant: Option<String>,
    /// Hub repos: branch, tag or commit (default: main, or the `@revision` of --model).
    #[arg(long)]
    revision: Option<String>,
    /// Hub URL [env: EMBERLM_HUB; default https://huggingface.co].
    #[arg(long)]
    hub: Option<String>,
    /// Hub repos: use the cache only, never the network.
    #[arg(long)]
    offline: bool,
    /// Weight dtype: f32, f16, q8, q4, q4k, q5k, q6k, mxfp4, or `auto` (GGUF: as stored; safetensors: q4; MXFP4 weights stay MXFP4 under any quantised dtype).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// KV cache capacity in tokens (default: prompt + new tokens, at most the model's context;
    /// larger only when asked, with a warning).
    #[arg(long)]
    context: Option<usize>,
    /// Where the model runs: `auto` uses a hardware GPU through WebGPU when there is one and
    /// the CPU otherwise (no adapter, or only a software one such as llvmpipe or SwiftShader).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// CPU backend: worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU backend: decode Q4/Q8 weights against f32 activations, as the GPU does (slower; the
    /// default rounds activations to 8 bits for integer dot products, as llama.cpp does).
    #[arg(long)]
    exact_activations: bool,
    /// WebGPU: decode folds each RMSNorm into the projections that read it (two dispatches fewer
    /// per layer); `auto` does on hardware GPUs, not on software adapters, where the norm's
    /// arithmetic repeated per workgroup costs more than the dispatches.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    fold_norms: Toggle,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceChoice {
    Auto,
    Webgpu,
    Cpu,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Toggle {
    Auto,
    On,
    Off,
}

impl Toggle {
    fn choice(self) -> Option<bool> {
        match self {
            Toggle::Auto => None,
            Toggle::On => Some(true),
            Toggle::Off => Some(false),
        }
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// Sampling temperature, ≥ 0; 0 is greedy (the most likely token every step).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the k most likely tokens only (0: no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of tokens whose probability adds up to p, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than min-p × the most likely one's probability, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise tokens already in the prompt or reply (> 1 discourages repeats; 1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling: the same seed, prompt and options give the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// At most this many new tokens (generation also ends at EOS, a --stop text or the context's end).
    #[arg(short = 'n', long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (fixed-length runs for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    /// Refuses out-of-range sampling options by name, before anything loads.
    fn check(&self) -> Result<()> {
        let bad = |name: &str, value: f32, range: &str| Err(format!("--{name} {value} is out of range: it must be {range}"));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "0 (greedy) or more");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p", self.min_p, "in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition-penalty", self.repetition_penalty, "more than 0 (1 is off)");
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("--stop needs a non-empty text (an empty one would stop after the first token)".into());
        }
        Ok(())
    }

    /// Options as the model generates with them; refuses what would misbehave silently.
    fn options<B: Backend>(&self, model: &Model<B>, prompt_len: usize) -> Result<GenerateOptions> {
        self.check()?;
        if prompt_len >= model.context {
            return Err(format!("the prompt is {prompt_len} tokens but the context holds {}; pass a larger --context", model.context));
        }
        Ok(GenerateOptions {
            // Generation ends at the KV cache's end with finish reason `length`, not an error.
            max_new_tokens: self.max_new_tokens.min(model.context - prompt_len),
            stop_tokens: if self.ignore_eos { vec![] } else { model.config.eos_token_ids.clone() },
            sampling: sampling(self),
            ..Default::default()
        })
    }
}

#[derive(Args)]
#[group(id = "prompt_source", required = true, multiple = false, args = ["prompt", "prompt_file", "prompt_ids"])]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Prompt text.
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Read the prompt from FILE (`-`: standard input).
    #[arg(short = 'f', long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Prompt as token ids, e.g. 1,2,3 (no tokenizer involved).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the last prompt position's logits to FILE as a float32 .npy array.
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    #[command(flatten)]
    constraint: ConstraintArgs,
    /// With --json: each generated token's log-probability and the N likeliest tokens' at its
    /// position (0-20; OpenAI's `logprobs` / `top_logprobs`).
    #[arg(long, value_name = "N", requires = "json", value_parser = clap::value_parser!(u8).range(0..=emberlm_models::MAX_TOP_LOGPROBS as i64))]
    logprobs: Option<u8>,
    /// With --chat: functions the model may call, OpenAI's `tools` array (a file, or the JSON
    /// itself). Calls are printed as `[tool call NAME ARGUMENTS]` lines, or as `tool_calls` with --json.
    #[arg(long, value_name = "TOOLS", requires = "chat")]
    tools: Option<String>,
    /// With --tools: `auto` (default), `none`, `required`, or a function's name (a call of it).
    #[arg(long, value_name = "CHOICE", requires = "tools")]
    tool_choice: Option<String>,
    /// With --chat: more chat-template variables, a JSON object (a file, or the JSON itself),
    /// e.g. '{"enable_thinking": false}' for Qwen3 and SmolLM3.
    #[arg(long, value_name = "JSON", requires = "chat")]
    chat_template_kwargs: Option<String>,
}

/// `--chat-template-kwargs`: parsed (the library checks it is an object of free names).
fn template_kwargs(v: &Option<String>) -> Result<Option<serde_json::Value>> {
    v.as_deref()
        .map(|v| serde_json::from_str(&file_or_value(v, "--chat-template-kwargs")?).map_err(|e| format!("--chat-template-kwargs: not JSON (nor a file): {e}")))
        .transpose()
}

/// A flag's value, or the contents of the file it names.
fn file_or_value(v: &str, what: &str) -> Result<String> {
    let path = Path::new(v);
    if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| format!("{what} {v}: {e}"))
    } else {
        Ok(v.to_string())
    }
}

/// Output constraints (constrained decoding, `emberlm_models::constraint`): at most one.
#[derive(Args)]
#[group(id = "output_constraint", multiple = false)]
struct ConstraintArgs {
    /// The output is JSON valid against this JSON schema (a file, or the schema itself).
    #[arg(long, value_name = "SCHEMA")]
    json_schema: Option<String>,
    /// The output is a JSON object.
    #[arg(long)]
    json_object: bool,
    /// The output follows this Lark grammar (a file, or the grammar itself; llguidance's dialect).
    #[arg(long, value_name = "GRAMMAR")]
    grammar: Option<String>,
    /// The whole output matches this regex.
    #[arg(long, value_name = "REGEX")]
    regex: Option<String>,
}

impl ConstraintArgs {
    /// The grammar asked for, if any; a file's contents where the value names a file.
    fn grammar(&self) -> Result<Option<Grammar>> {
        let text = file_or_value;
        Ok(if let Some(s) = &self.json_schema {
            let schema = serde_json::from_str(&text(s, "--json-schema")?).map_err(|e| format!("--json-schema: not JSON (nor a file): {e}"))?;
            Some(Grammar::JsonSchema(schema))
        } else if self.json_object {
            Some(Grammar::JsonObject)
        } else if let Some(g) = &self.grammar {
            Some(Grammar::Lark(text(g, "--grammar")?))
        } else {
            self.regex.clone().map(Grammar::Regex)
        })
    }
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long)]
    system: Option<String>,
    /// More chat-template variables, a JSON object (a file, or the JSON itself), e.g.
    /// '{"enable_thinking": false}' for Qwen3 and SmolLM3.
    #[arg(long, value_name = "JSON")]
    chat_template_kwargs: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens for the pp test.
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens for the tg test.
    #[arg(short = 'n', long, default_value_t = 128)]
    n_gen: usize,
    /// Tokens already in the cache when each test starts (filled untimed), as llama-bench's
    /// depth: a long conversation's decode and a later turn's prefill.
    #[arg(short = 'd', long, default_value_t = 0)]
    n_depth: usize,
    /// Repetitions (the mean and spread are printed).
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Also print where the time goes: time per op kind per pp and tg token (CPU backend).
    #[arg(long)]
    profile: bool,
    /// Also time greedy decoding constrained to a JSON object (after a short chat prompt), with
    /// the mask applied on the CPU (logits read back) and on the device (the token picked
    /// there): tok/s and the constraint's milliseconds per token (llguidance's mask and state
    /// update).
    #[arg(long)]
    json_object: bool,
}

type Result<T> = std::result::Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A loaded model on the backend `--device` picked, with why it was picked.
struct Loaded<'a, B: Backend> {
    dev: &'a B,
    local: &'a LocalModel,
    model: Model<B>,
    load_s: f64,
    device_reason: &'a str,
}

/// A command's work once its model is loaded, on whichever backend (see [`run_loaded`]).
trait Job {
    fn run<B: Backend>(self, loaded: &Loaded<B>) -> Result<()>;
}

/// The backend for `--device`, and a sentence saying why.
fn pick_device(args: &ModelArgs) -> Result<(Option<GpuDevice>, String)> {
    let gpu = || pollster::block_on(GpuDevice::new(DeviceOptions { fold_norms: args.fold_norms.choice(), ..Default::default() }));
    Ok(match args.device {
        DeviceChoice::Cpu => (None, "--device cpu".into()),
        DeviceChoice::Webgpu => (Some(gpu().map_err(err)?), "--device webgpu".into()),
        DeviceChoice::Auto => match gpu() {
            Ok(dev) if dev.caps.is_software() => (None, format!("auto: the only WebGPU adapter ({}) is a software rasteriser", dev.caps.adapter_name)),
            Ok(dev) => (Some(dev), "auto: a hardware GPU adapter".into()),
            Err(e) => (None, format!("auto: no usable WebGPU adapter ({e})")),
        },
    })
}

/// Opens a local model, or fetches a Hub repo into the cache first.
fn open(args: &ModelArgs) -> Result<LocalModel> {
    let spec = args.model.to_string_lossy();
    let is_hub = !args.model.exists() && hub::looks_like_repo(&spec);
    if !is_hub {
        if args.file.is_some() || args.quant.is_some() {
            return Err(format!("--file and --quant pick a file from a Hub repo; {} is a local path", args.model.display()));
        }
        return LocalModel::open(&args.model).map_err(err);
    }
    let hub_url = args.hub.clone().or_else(|| std::env::var("EMBERLM_HUB").ok().filter(|h| !h.is_empty()));
    let mut req = hub::HubRequest::new(&spec, hub_url, args.revision.clone(), hub::default_cache());
    req.file = args.file.clone();
    req.quant = args.quant.clone();
    req.offline = args.offline;
    let path = req.fetch(&mut |msg| eprintln!("{msg}"))?;
    LocalModel::open(&path).map_err(err)
}

/// Loads an opened model on the backend `--device` picks, with a KV cache for `needed_context`
/// tokens (unless --context says), and runs `job` on it.
fn run_loaded(args: &ModelArgs, local: LocalModel, needed_context: usize, job: impl Job) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "auto" if local.is_gguf() => None,
        "auto" => Some(DType::Q4),
        other => Some(other.parse::<DType>()?),
    };
    // The model's own context bounds the KV cache unless --context asks past it (with a warning).
    let model_context = local.config.context_length.max(1);
    let context = match args.context {
        Some(c) if c > model_context => {
            eprintln!("warning: --context {c} is past the {model_context} positions this model was trained for; expect worse text past them");
            c
        }
        Some(c) => c,
        None => needed_context.min(model_context),
    };
    let options = LoadOptions { dtype, context };
    fn go<B: Backend>(dev: &B, local: &LocalModel, options: &LoadOptions, device_reason: &str, job: impl Job) -> Result<()> {
        let start = std::time::Instant::now();
        let model = local.load(dev, options).map_err(err)?;
        job.run(&Loaded { dev, local, model, load_s: start.elapsed().as_secs_f64(), device_reason })
    }
    match pick_device(args)? {
        (Some(gpu), why) => go(&gpu, &local, &options, &why, job),
        (None, why) => {
            let activations = if args.exact_activations { CpuActivations::Exact } else { CpuActivations::Int8 };
            go(&CpuDevice::new(args.threads).with_activations(activations), &local, &options, &why, job)
        }
    }
}

fn sampling(a: &SamplingArgs) -> SamplingOptions {
    SamplingOptions { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, min_p: a.min_p, repetition_penalty: a.repetition_penalty, seed: a.seed }
}

/// Writes a 1-D float32 .npy file (format version 1.0).
fn write_npy(path: &Path, values: &[f32]) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", values.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in values {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The prompt text of --prompt or --prompt-file (`-`: stdin), if either was given.
fn prompt_text(a: &GenerateArgs) -> Result<Option<String>> {
    let Some(path) = &a.prompt_file else { return Ok(a.prompt.clone()) };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("--prompt-file -: reading standard input: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("--prompt-file {}: {e}", path.display()))?
    };
    // A file's (or a pipe's) final newline is not part of the prompt.
    Ok(Some(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string()))
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    a.sampling.check()?;
    let text = prompt_text(&a)?;
    let local = open(&a.model)?;
    let tools = match &a.tools {
        Some(t) => {
            let tools: serde_json::Value = serde_json::from_str(&file_or_value(t, "--tools")?).map_err(|e| format!("--tools: not JSON (nor a file): {e}"))?;
            let choice = match a.tool_choice.as_deref() {
                None => serde_json::Value::Null,
                Some(c @ ("auto" | "none" | "required")) => json!(c),
                Some(name) => json!({"type": "function", "function": {"name": name}}),
            };
            local.text.tool_prompt(&tools, &choice).map_err(err)?
        }
        None => None,
    };
    let prompt_ids: Vec<u32> = match (&a.prompt_ids, &text) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) if a.chat => {
            let mut messages = Vec::new();
            if let Some(s) = &a.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": text}));
            let kwargs = template_kwargs(&a.chat_template_kwargs)?;
            local.text.chat_prompt_ids_with(&json!(messages), tools.as_ref(), kwargs.as_ref()).map_err(|e| format!("{e}; drop --chat or pass --prompt-ids"))?
        }
        (None, Some(text)) => local.text.prompt_ids(text, local.config.bos_token_id).map_err(|e| format!("{e}; pass --prompt-ids"))?,
        (None, None) => return Err("give --prompt, --prompt-file or --prompt-ids".into()),
    };
    if prompt_ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    let needed = prompt_ids.len().saturating_add(a.sampling.max_new_tokens);
    run_loaded(&a.model, local, needed, GenerateJob { a: &a, prompt_ids, tools })
}

struct GenerateJob<'a> {
    a: &'a GenerateArgs,
    prompt_ids: Vec<u32>,
    tools: Option<ToolPrompt>,
}

impl Job for GenerateJob<'_> {
    fn run<B: Backend>(self, loaded: &Loaded<B>) -> Result<()> {
        let a = self.a;
        let prompt_ids = &self.prompt_ids[..];
        let &Loaded { dev, local, ref model, load_s, device_reason } = loaded;
        let mut session = Session::new(dev, model).map_err(err)?;
        let options = GenerateOptions {
            want_prompt_logits: a.dump_logits.is_some(),
            logprobs: a.logprobs.map(usize::from),
            ..a.sampling.options(model, prompt_ids.len())?
        };
        let mut stream = StreamDecoder::new(true);
        let mut text = String::new();
        let mut stdout = std::io::stdout();
        let tok = local.text.tokenizer.as_ref();
        let mut stream_err = None;
        let mut stopped_by_text = false;
        let grammar = tools::output_grammar(self.tools.as_ref(), tok, a.constraint.grammar()?).map_err(err)?;
        // Tools' calls, or a harmony reply's channels (GPT-OSS) in a chat.
        let harmony = if a.chat { tools::reply_stream(local.text.chat_template.as_ref(), tok, a.sampling.seed) } else { None };
        let mut tool_stream = self.tools.as_ref().map(|t| t.stream(tok, a.sampling.seed)).or(harmony);
        let mut tool_calls = Vec::new();
        let print_calls = |calls: &[ToolCall]| {
            for c in calls {
                println!("[tool call {} {}]", c.name, c.arguments);
            }
        };
        let mut constraint = match grammar {
            Some(grammar) => {
                let tok = tok.ok_or("this model has no tokenizer to constrain the output with")?;
                let eos = *options.stop_tokens.first().ok_or("an output constraint needs the model's end token (drop --ignore-eos)")?;
                Some(Constrainer::new(tok, eos).map_err(err)?.start(&grammar).map_err(err)?)
            }
            None => None,
        };
        let out = pollster::block_on(generate_constrained(dev, model, &mut session, prompt_ids, &options, constraint.as_mut(), |id, _| {
            let Some(tok) = tok else { return true };
            match stream.push(tok, id) {
                Ok(piece) => {
                    // The reply's text for the output, with any tool call it completes kept aside.
                    let (piece, mut calls) = match tool_stream.as_mut() {
                        Some(s) => ToolEvent::split(s.push_token(id, &piece)),
                        None => (piece, Vec::new()),
                    };
                    text.push_str(&piece);
                    if !a.json {
                        let _ = write!(stdout, "{piece}");
                        let _ = stdout.flush();
                        print_calls(&calls);
                    }
                    tool_calls.append(&mut calls);
                }
                Err(e) => stream_err = Some(e),
            }
            stopped_by_text = a.sampling.stop.iter().any(|s| text.contains(s.as_str()));
            !stopped_by_text
        }))
        .map_err(err)?;
        if let Some(e) = stream_err {
            return Err(e.to_string());
        }
        if let Some(s) = tool_stream.as_mut() {
            let (rest, mut calls) = ToolEvent::split(s.finish());
            text.push_str(&rest);
            if !a.json {
                print!("{rest}");
                print_calls(&calls);
            }
            tool_calls.append(&mut calls);
        }
        for s in &a.sampling.stop {
            if let Some(i) = text.find(s.as_str()) {
                text.truncate(i);
            }
        }
        if let (Some(path), Some(logits)) = (&a.dump_logits, &out.prompt_logits) {
            write_npy(path, logits)?;
        }
        if a.json {
            let mut obj = json!({
                "model": a.model.model.display().to_string(),
                "architecture": model.config.arch.name(),
                "prompt_ids": out.prompt_ids,
                "generated_ids": out.generated_ids,
                "text": text,
                "stopped_by_eos": out.stopped,
                "finish_reason": match (out.stopped || stopped_by_text, tool_calls.is_empty()) {
                    (true, false) => "tool_calls",
                    (true, true) => "stop",
                    _ => "length",
                },
                "load_s": load_s,
                "ttft_ms": out.ttft_ms,
                "prefill_tok_s": out.prefill_tok_s,
                "decode_tok_s": out.decode_tok_s,
                "device": dev.describe(),
                "device_reason": device_reason,
            });
            if self.tools.is_some() {
                obj["tool_calls"] = tool_calls.iter().map(ToolCall::to_openai).collect();
            }
            if a.logprobs.is_some() {
                obj["logprobs"] = json!({ "content": out.logprobs.iter().map(|l| l.entry(tok)).collect::<Vec<_>>() });
            }
            println!("{obj}");
        } else {
            println!();
            eprintln!(
                "[{} prompt tokens, {} generated; ttft {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s; {} ({device_reason})]",
                out.prompt_ids.len(),
                out.generated_ids.len(),
                out.ttft_ms,
                out.prefill_tok_s,
                out.decode_tok_s,
                dev.describe()
            );
        }
        Ok(())
    }
}

fn run_embed(a: EmbedArgs) -> Result<()> {
    let local = open(&a.model)?;
    if local.text.embedding.is_none() {
        return Err(format!(
            "{} is not an embedding model (no sentence-transformers pooling module, no GGUF pooling_type); embed takes models such as Qwen3-Embedding",
            a.model.model.display()
        ));
    }
    let mut inputs = Vec::with_capacity(a.texts.len());
    for t in &a.texts {
        inputs.push(local.text.embedding_ids(t, local.config.bos_token_id, local.config.eos_token_ids.first().copied()).map_err(err)?);
    }
    let longest = inputs.iter().map(Vec::len).max().unwrap_or(1);
    if inputs.iter().any(Vec::is_empty) {
        return Err("a text to embed is empty".into());
    }
    run_loaded(&a.model, local, longest, EmbedJob { a: &a, inputs })
}

struct EmbedJob<'a> {
    a: &'a EmbedArgs,
    inputs: Vec<Vec<u32>>,
}

impl Job for EmbedJob<'_> {
    fn run<B: Backend>(self, loaded: &Loaded<B>) -> Result<()> {
        let &Loaded { dev, local, ref model, .. } = loaded;
        let spec = local.text.embedding.clone().ok_or("not an embedding model")?;
        let mut session = Session::new(dev, model).map_err(err)?;
        let mut vectors = Vec::with_capacity(self.inputs.len());
        for ids in &self.inputs {
            vectors.push(pollster::block_on(emberlm_models::embed::embed(dev, model, &mut session, ids, &spec)).map_err(err)?);
        }
        if self.a.json {
            let tokens: usize = self.inputs.iter().map(Vec::len).sum();
            let data: Vec<_> = vectors.iter().enumerate().map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v})).collect();
            println!(
                "{}",
                json!({"object": "list", "data": data, "model": self.a.model.model.display().to_string(), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
            );
        } else {
            for v in &vectors {
                println!("{}", json!(v));
            }
        }
        Ok(())
    }
}

fn run_chat(a: ChatArgs) -> Result<()> {
    run_loaded(&a.model, open(&a.model)?, a.model.context.unwrap_or(4096), &a)
}

impl Job for &ChatArgs {
    fn run<B: Backend>(self, loaded: &Loaded<B>) -> Result<()> {
        let a = self;
        let &Loaded { dev, local, ref model, device_reason, .. } = loaded;
        let tok = local.text.tokenizer().map_err(err)?;
        local.text.chat_template().map_err(err)?;
        eprintln!("{} on {} ({device_reason}) — type a message; Ctrl-C stops a reply, Ctrl-D quits", a.model.model.display(), dev.describe());
        interrupt::install();
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        let kwargs = template_kwargs(&a.chat_template_kwargs)?;
        let render = |messages: &[serde_json::Value]| local.text.chat_prompt_ids_with(&json!(messages), None, kwargs.as_ref()).map_err(err);
        let mut session = Session::new(dev, model).map_err(err)?;
        let stdin = std::io::stdin();
        let mut stdout = std::io::stdout();
        loop {
            eprint!("> ");
            if matches!(messages.last(), Some(m) if m["role"] == "assistant") {
                // While the user types: the reply's last token and the template's markers that
                // open the next user turn go into the cache now, not into the next turn's TTFT.
                // Only a speed-up: a failure here shows again, clearly, on the next request.
                if let Ok(Some(opening)) = local.text.next_turn_opening(&json!(messages), None, kwargs.as_ref()) {
                    let _ = pollster::block_on(session.prefill_ahead(dev, model, &opening, usize::MAX));
                }
            }
            let mut line = String::new();
            if stdin.lock().read_line(&mut line).map_err(err)? == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            messages.push(json!({"role": "user", "content": line.trim_end()}));
            // Past the context, the oldest turns go (the system message stays), leaving room for a
            // reply of a quarter of the context.
            let room = (model.context / 4).clamp(1, a.sampling.max_new_tokens.max(1));
            let first_turn = usize::from(a.system.is_some());
            let mut ids = render(&messages)?;
            while ids.len() + room > model.context && messages.len() > first_turn + 1 {
                messages.drain(first_turn..(first_turn + 2).min(messages.len() - 1));
                ids = render(&messages)?;
                eprintln!("[the conversation outgrew the {}-token context: the oldest turn was dropped]", model.context);
            }
            if ids.len() >= model.context {
                messages.pop();
                eprintln!("[that message is {} tokens, more than the {}-token context holds; pass a larger --context]", ids.len(), model.context);
                continue;
            }
            // The session keeps the conversation's keys and values: only what this turn adds (the
            // new message and the template around it) is prefilled.
            let options = a.sampling.options(model, ids.len())?;
            let mut stream = StreamDecoder::new(true);
            let mut reply = String::new();
            // GPT-OSS: the final channel is the reply; its reasoning is shown dimmed, not kept.
            let mut channels = tools::reply_stream(local.text.chat_template.as_ref(), Some(tok), a.sampling.seed);
            let mut show = |events: Vec<ToolEvent>, reply: &mut String| {
                for e in events {
                    let _ = match e {
                        ToolEvent::Text(t) => {
                            reply.push_str(&t);
                            write!(stdout, "{t}")
                        }
                        ToolEvent::Reasoning(t) => write!(stdout, "\x1b[2m{t}\x1b[0m"),
                        ToolEvent::Call(_) => Ok(()),
                    };
                }
                let _ = stdout.flush();
            };
            interrupt::replying(true);
            let out = pollster::block_on(generate(dev, model, &mut session, &ids, &options, |id, _| {
                if let Ok(piece) = stream.push(tok, id) {
                    let events = match channels.as_mut() {
                        Some(c) => c.push_token(id, &piece),
                        None => vec![ToolEvent::Text(piece)],
                    };
                    show(events, &mut reply);
                }
                !interrupt::stop_requested()
            }));
            if let Some(c) = channels.as_mut() {
                show(c.finish(), &mut reply);
            }
            let stopped = interrupt::stop_requested();
            interrupt::replying(false);
            let out = out.map_err(err)?;
            println!();
            if stopped {
                eprintln!("[stopped]");
            }
            eprintln!(
                "[{} prompt tokens, {} reused from the last turn; ttft {:.0} ms, decode {:.1} tok/s]",
                out.prompt_ids.len(),
                out.reused_tokens,
                out.ttft_ms,
                out.decode_tok_s
            );
            messages.push(json!({"role": "assistant", "content": reply.trim()}));
        }
    }
}

/// Ctrl-C in `chat`: during a reply it stops the reply (the conversation goes on, the partial
/// reply kept); at the prompt, or again before the reply has stopped, it quits.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REPLYING: AtomicBool = AtomicBool::new(false);
    static STOP: AtomicBool = AtomicBool::new(false);

    pub fn install() {
        let quit = || {
            eprintln!();
            std::process::exit(130)
        };
        // Without a handler (one set already, or no signals here) Ctrl-C keeps its default: quit.
        let _ = ctrlc::set_handler(move || {
            if !REPLYING.load(Ordering::SeqCst) || STOP.swap(true, Ordering::SeqCst) {
                quit();
            }
        });
    }

    pub fn replying(on: bool) {
        STOP.store(false, Ordering::SeqCst);
        REPLYING.store(on, Ordering::SeqCst);
    }

    pub fn stop_requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(2).saturating_sub(1) as f64;
    (m, var.sqrt())
}

fn run_bench(a: BenchArgs) -> Result<()> {
    run_loaded(&a.model, open(&a.model)?, a.model.context.unwrap_or(a.n_depth + a.n_prompt.max(a.n_gen + 1)), &a)
}

impl Job for &BenchArgs {
    fn run<B: Backend>(self, loaded: &Loaded<B>) -> Result<()> {
        let a = self;
        let &Loaded { dev, local, ref model, load_s, device_reason } = loaded;
        let c = &model.config;
        // Deterministic pseudo-random tokens, like llama-bench.
        let random = |n: usize, from: usize| -> Vec<u32> { (from..from + n).map(|i| ((i as u64 * 2_654_435_761) % c.vocab as u64) as u32).collect() };
        let tokens = random(a.n_prompt.max(1), 0);
        let depth = random(a.n_depth, a.n_prompt.max(1));
        // Each test starts from `depth` cached tokens, filled untimed.
        let at_depth = |session: &mut Session<_>| -> Result<()> {
            session.reset();
            for piece in depth.chunks(Session::max_step_tokens(dev, model).min(512)) {
                pollster::block_on(session.fill(dev, model, piece)).map_err(err)?;
            }
            Ok(())
        };
        let suffix = if a.n_depth > 0 { format!(" @ d{}", a.n_depth) } else { String::new() };
        let mut session = Session::new(dev, model).map_err(err)?;
        // Warm-up: compiles every pipeline variant once.
        pollster::block_on(session.step(dev, model, &tokens[..a.n_prompt.clamp(1, 8)], false)).map_err(err)?;
        // From the start again: a context of `-p` positions has no room for one more.
        session.reset();
        pollster::block_on(session.step(dev, model, &[tokens[0]], false)).map_err(err)?;
        let mut pp = Vec::new();
        let mut tg = Vec::new();
        let mut profiles = Vec::new();
        for rep in 0..a.repetitions.max(1) {
            eprintln!("repetition {} of {}", rep + 1, a.repetitions.max(1));
            let profiling = a.profile && rep == 0 && dev.set_profiling(true);
            if a.n_prompt > 0 {
                at_depth(&mut session)?;
                if profiling {
                    dev.set_profiling(true); // the depth's fill is not the test's
                }
                let t = std::time::Instant::now();
                pollster::block_on(session.step(dev, model, &tokens, false)).map_err(err)?;
                pp.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());
                if profiling {
                    profiles.push((format!("pp{}{suffix}", a.n_prompt), a.n_prompt, dev.profile_report()));
                    dev.set_profiling(true);
                }
            }
            if a.n_gen > 0 {
                at_depth(&mut session)?;
                if profiling {
                    dev.set_profiling(true);
                }
                // As `generate` decodes greedily: steps queued ahead of the token read-back.
                let t = std::time::Instant::now();
                pollster::block_on(session.decode_greedy(dev, model, tokens[0], a.n_gen, |_| true)).map_err(err)?;
                tg.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
                if profiling {
                    profiles.push((format!("tg{}{suffix}", a.n_gen), a.n_gen, dev.profile_report()));
                }
            }
            if profiling {
                dev.set_profiling(false);
            }
        }
        if a.profile && profiles.is_empty() {
            eprintln!("--profile: {} cannot time its ops yet", dev.describe());
        }
        for (label, tokens, ops) in &profiles {
            let total: f64 = ops.iter().map(|o| o.2).sum();
            let calls: u64 = ops.iter().filter(|o| !o.0.starts_with('(')).map(|o| o.1).sum();
            println!(
                "profile {label}: {:.3} ms of ops per token, {:.1} ops (dispatches on WebGPU) per token",
                total * 1e3 / *tokens as f64,
                calls as f64 / *tokens as f64
            );
            for (op, calls, secs) in ops {
                println!(
                    "  {op:<18} {:>8.3} ms/token {:>5.1}%  {:>6.1} calls/token",
                    secs * 1e3 / *tokens as f64,
                    100.0 * secs / total,
                    *calls as f64 / *tokens as f64
                );
            }
        }
        let name = a.model.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let size = format!("{:.2} MiB", model.weight_bytes as f64 / (1 << 20) as f64);
        println!("device: {} ({device_reason}), load {load_s:.2} s", dev.describe());
        println!("| model | arch | size | test | t/s |");
        println!("| --- | --- | ---: | --- | ---: |");
        for (label, v) in [(format!("pp{}{suffix}", a.n_prompt), &pp), (format!("tg{}{suffix}", a.n_gen), &tg)] {
            if !v.is_empty() {
                let (m, sd) = mean_sd(v);
                println!("| {name} | {} | {size} | {label} | {m:.2} ± {sd:.2} |", c.arch.name());
            }
        }
        if a.json_object {
            let tok = local.text.tokenizer().map_err(err)?;
            let eos = *c.eos_token_ids.first().ok_or("--json-object needs the model's end token")?;
            let constrainer = Constrainer::new(tok, eos).map_err(err)?;
            let prompt = local.text.prompt_ids("A JSON object describing a city:", c.bos_token_id).map_err(err)?;
            let room = model.context.saturating_sub(prompt.len()).max(1);
            let options = GenerateOptions { max_new_tokens: a.n_gen.clamp(1, room), stop_tokens: c.eos_token_ids.clone(), ..Default::default() };
            // Both sides of the mask, interleaved: logits read back and masked on the CPU, or
            // the mask uploaded and the token picked on the device.
            let sides = [(MaskSide::Host, "mask on the CPU"), (MaskSide::Device, "mask on the device")];
            let mut runs = vec![(Vec::new(), Vec::new(), Vec::new()); sides.len()];
            for _ in 0..a.repetitions.max(1) {
                for (&(side, _), (rates, costs, ids)) in sides.iter().zip(runs.iter_mut()) {
                    let mut constraint = constrainer.start(&Grammar::JsonObject).map_err(err)?;
                    session.reset();
                    let options = GenerateOptions { mask_side: side, ..options.clone() };
                    let out = pollster::block_on(generate_constrained(dev, model, &mut session, &prompt, &options, Some(&mut constraint), |_, _| true))
                        .map_err(err)?;
                    rates.push(out.decode_tok_s);
                    costs.push(constraint.ms_per_token());
                    *ids = out.generated_ids;
                }
            }
            for (&(_, label), (rates, costs, _)) in sides.iter().zip(&runs) {
                let ((r, r_sd), (ms, ms_sd)) = (mean_sd(rates), mean_sd(costs));
                println!("| {name} | {} | {size} | tg (JSON object, {label}) | {r:.2} ± {r_sd:.2} |", c.arch.name());
                println!("  the constraint took {ms:.3} ± {ms_sd:.3} ms per token (mask + state update, on the CPU, while the backend runs the step)");
            }
            if runs[0].2 != runs[1].2 {
                return Err(format!("the two mask sides gave different tokens: {:?} and {:?}", runs[0].2, runs[1].2));
            }
        }
        if !tg.is_empty() {
            // The physical yardstick: decode streams the weights once per token, so its
            // weight bytes per second against what a plain copy moves on the same backend.
            let bytes = model.decode_weight_bytes();
            let gbs = bytes as f64 * mean_sd(&tg).0 / 1e9;
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let experts = match c.moe {
                Some(m) => format!(
                    ", {} of {} experts per token, {:.2} of {:.2} MiB of experts",
                    m.top_k,
                    m.experts,
                    mib(model.expert_bytes / m.experts as u64 * m.top_k as u64),
                    mib(model.expert_bytes)
                ),
                None => String::new(),
            };
            print!("decode reads {:.2} MiB of weights per token (of {:.2} MiB loaded{experts}): {gbs:.2} GB/s", mib(bytes), mib(model.weight_bytes));
            match dev.copy_bandwidth() {
                Some(copy) => println!(", {:.2}x the copy bandwidth ({:.2} GB/s read + write)", gbs * 1e9 / copy, copy / 1e9),
                None => println!(),
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => run_generate(a),
        Command::Chat(a) => run_chat(a),
        Command::Bench(a) => run_bench(a),
        Command::Embed(a) => run_embed(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberlm: error: {e}");
            ExitCode::FAILURE
        }
    }
}
