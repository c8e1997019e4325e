//! `EmberModel`: load a GGUF or safetensors model and generate, from JavaScript. Model files
//! are read through synchronous `read(offset, length) → Uint8Array` callbacks (a
//! `FileReaderSync` in a worker, `fs.readSync` in Node, or a slice of bytes already in memory),
//! so only the pieces being uploaded sit in the wasm heap. The model runs on the backend
//! JavaScript picks (`device: 'webgpu' | 'cpu'` in the load options; the npm package decides
//! `auto` from the adapter it finds).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use emberlm_core::{DType, GpuDevice};
use emberlm_models::constraint::{Constrainer, Constraint, Grammar};
use emberlm_models::embed::{embed, Dense, EmbeddingSpec};
use emberlm_models::gguf::GgufFile;
use emberlm_models::safetensors::SafetensorsStore;
use emberlm_models::source::{checked_end, ByteSource, SourceError};
use emberlm_models::text::{NextTurnOpening, TextSetup};
use emberlm_models::tokenizer::StreamDecoder;
use emberlm_models::tools::{self, ToolCall, ToolEvent, ToolPrompt};
use emberlm_models::weights::GgufStore;
use emberlm_models::{
    generate_constrained, Backend, CpuDevice, GenerateOptions, Generation, LoadOptions, LogprobEntry, Model, ModelConfig, SamplingOptions, Session,
    TokenLogprobs,
};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::{device, to_js};

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// An optional argument: `undefined` or `null` is `None`.
fn from_js_opt<T: serde::de::DeserializeOwned>(v: JsValue) -> Result<Option<T>, JsValue> {
    if v.is_undefined() || v.is_null() {
        Ok(None)
    } else {
        Ok(Some(serde_wasm_bindgen::from_value(v)?))
    }
}

/// A model file as JavaScript hands it over: `{ name, length, read(offset, length) }`. Each
/// read may be a round trip to another process (a Blob read in a worker), so they are counted.
struct JsSource {
    length: u64,
    read: js_sys::Function,
    reads: Cell<u32>,
    bytes_read: Cell<f64>,
}

impl JsSource {
    fn from_js(v: &JsValue) -> Result<(String, Self), JsValue> {
        let get = |k: &str| js_sys::Reflect::get(v, &JsValue::from_str(k));
        let name = get("name")?.as_string().unwrap_or_else(|| "model".into());
        let length = get("length")?.as_f64().ok_or_else(|| js_err(format!("{name}: `length` must be a number")))?;
        let read = get("read")?.dyn_into::<js_sys::Function>().map_err(|_| js_err(format!("{name}: `read` must be a function")))?;
        Ok((name, Self { length: length as u64, read, reads: Cell::new(0), bytes_read: Cell::new(0.0) }))
    }
}

impl ByteSource for JsSource {
    fn len(&self) -> u64 {
        self.length
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        checked_end(offset, buf.len(), self.length)?;
        self.reads.set(self.reads.get() + 1);
        self.bytes_read.set(self.bytes_read.get() + buf.len() as f64);
        let got = self
            .read
            .call2(&JsValue::NULL, &JsValue::from_f64(offset as f64), &JsValue::from_f64(buf.len() as f64))
            .map_err(|e| SourceError::Io(format!("read callback failed: {e:?}")))?;
        let bytes = got.dyn_into::<js_sys::Uint8Array>().map_err(|_| SourceError::Io("read callback must return a Uint8Array".into()))?;
        if bytes.length() as usize != buf.len() {
            return Err(SourceError::Io(format!("read callback returned {} bytes, {} asked", bytes.length(), buf.len())));
        }
        bytes.copy_to(buf);
        Ok(())
    }
}

fn sources(files: &js_sys::Array) -> Result<Vec<(String, JsSource)>, JsValue> {
    files.iter().map(|f| JsSource::from_js(&f)).collect()
}

/// Read calls and bytes over all of a model's files so far.
fn read_totals<'a>(files: impl IntoIterator<Item = &'a JsSource>) -> (u32, f64) {
    files.into_iter().fold((0, 0.0), |(n, b), s| (n + s.reads.get(), b + s.bytes_read.get()))
}

/// Where a load's time went, phase by phase, and how many reads of the model files it took
/// (`headerReads` for parsing the headers and metadata alone).
#[derive(Serialize, Clone, Copy, Default)]
#[serde(rename_all = "camelCase")]
struct LoadStats {
    header_ms: f64,
    header_reads: u32,
    tokenizer_ms: f64,
    device_ms: f64,
    upload_ms: f64,
    reads: u32,
    read_bytes: f64,
}

/// Milliseconds on a monotonic-enough clock (`Date.now()`: there is no `performance` in every
/// runtime's global scope, and phases last milliseconds to minutes).
fn now_ms() -> f64 {
    js_sys::Date::now()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsLoadOptions {
    dtype: Option<String>,
    context: Option<usize>,
    /// `webgpu` (default) or `cpu`.
    device: Option<String>,
    /// safetensors: the text of sentence-transformers' `modules.json` and of its pooling
    /// module's `config.json`, which make the model an embedding model; its Dense modules come
    /// as `denseModules: [{ path, config, weights: Uint8Array }]` (read by [`dense_modules`]).
    modules_json: Option<String>,
    pooling_json: Option<String>,
}

/// `options.denseModules`: each Dense module's folder name, `config.json` text and
/// `model.safetensors` bytes, by folder.
fn dense_modules(options: &JsValue) -> Result<Vec<(String, String, Vec<u8>)>, JsValue> {
    let list = match js_sys::Reflect::get(options, &"denseModules".into()) {
        Ok(v) if v.is_object() => js_sys::Array::from(&v),
        _ => return Ok(Vec::new()),
    };
    let field = |m: &JsValue, k: &str| js_sys::Reflect::get(m, &k.into()).ok().filter(|v| !v.is_undefined() && !v.is_null());
    list.iter()
        .map(|m| {
            let path = field(&m, "path").and_then(|v| v.as_string());
            let config = field(&m, "config").and_then(|v| v.as_string());
            let weights = field(&m, "weights").filter(|v| v.is_instance_of::<js_sys::Uint8Array>()).map(|v| js_sys::Uint8Array::from(v).to_vec());
            match (path, config, weights) {
                (Some(p), Some(c), Some(w)) => Ok((p, c, w)),
                _ => Err(js_err("denseModules: each entry needs a path, its config text and its weights as a Uint8Array")),
            }
        })
        .collect()
}

/// The parsed load options: weight dtype, context, and whether to run on the CPU backend.
struct ParsedLoadOptions {
    dtype: Option<DType>,
    context: usize,
    cpu: bool,
    /// From sentence-transformers' files (a GGUF says it in its metadata).
    embedding: Option<EmbeddingSpec>,
}

impl JsLoadOptions {
    fn parse(v: JsValue) -> Result<ParsedLoadOptions, JsValue> {
        let dense = if v.is_object() { dense_modules(&v)? } else { Vec::new() };
        let o: Self = if v.is_undefined() || v.is_null() { Self::default() } else { serde_wasm_bindgen::from_value(v)? };
        let dtype = o.dtype.filter(|d| d != "auto").map(|d| d.parse::<DType>()).transpose().map_err(js_err)?;
        let cpu = match o.device.as_deref() {
            None | Some("webgpu") => false,
            Some("cpu") => true,
            Some(other) => return Err(js_err(format!("device `{other}`: expected `webgpu` or `cpu`"))),
        };
        let parse_one = |text: &str, what: &str| serde_json::from_str::<serde_json::Value>(text).map_err(|e| js_err(format!("{what}: {e}")));
        let parse = |text: Option<String>, what: &str| text.map(|t| parse_one(&t, what)).transpose();
        let embedding = match parse(o.modules_json, "modules.json")? {
            Some(modules) => {
                let mut projections = Vec::new();
                for folder in EmbeddingSpec::dense_folders(&modules).map_err(js_err)? {
                    let (_, config, weights) = dense
                        .iter()
                        .find(|d| d.0 == folder)
                        .ok_or_else(|| js_err(format!("sentence-transformers modules.json: the Dense module {folder}'s files were not given")))?;
                    let config = parse_one(config, &format!("{folder}/config.json"))?;
                    projections.push(Dense::from_sentence_transformers(&config, weights).map_err(|e| js_err(format!("{folder}: {e}")))?);
                }
                EmbeddingSpec::from_sentence_transformers(&modules, parse(o.pooling_json, "1_Pooling/config.json")?.as_ref(), projections).map_err(js_err)?
            }
            None => None,
        };
        Ok(ParsedLoadOptions { dtype, context: o.context.unwrap_or(2048), cpu, embedding })
    }
}

/// A model on one backend, with the conversation its KV cache holds: kept between calls so that
/// a chat's next turn (or a regenerated reply) prefills only what its prompt adds. The session
/// is made on the first generation.
struct OnBackend<B: Backend> {
    dev: B,
    model: Model<B>,
    session: RefCell<Option<Session<B>>>,
}

enum Runner {
    WebGpu(OnBackend<GpuDevice>),
    Cpu(OnBackend<CpuDevice>),
}

/// `$body` with `$b` bound to the runner's `OnBackend`, whichever backend it is.
macro_rules! on_backend {
    ($runner:expr, $b:ident => $body:expr) => {
        match $runner {
            Runner::WebGpu($b) => $body,
            Runner::Cpu($b) => $body,
        }
    };
}

/// Loads weights onto whichever backend it is given (GGUF or safetensors).
trait WeightLoad {
    fn load<B: Backend>(&self, dev: &B, options: &LoadOptions) -> emberlm_models::Result<Model<B>>;
}

struct FromGguf<'a, S: ByteSource>(&'a GgufStore<S>);

impl<S: ByteSource> WeightLoad for FromGguf<'_, S> {
    fn load<B: Backend>(&self, dev: &B, options: &LoadOptions) -> emberlm_models::Result<Model<B>> {
        Model::load_gguf(dev, self.0, options)
    }
}

struct FromSafetensors<'a, S: ByteSource>(ModelConfig, &'a SafetensorsStore<S>);

impl<S: ByteSource> WeightLoad for FromSafetensors<'_, S> {
    fn load<B: Backend>(&self, dev: &B, options: &LoadOptions) -> emberlm_models::Result<Model<B>> {
        Model::load(dev, self.0.clone(), self.1, options)
    }
}

impl Runner {
    /// Gets the backend (`device_ms`) and loads the weights onto it (`upload_ms`).
    async fn load(o: &ParsedLoadOptions, weights: impl WeightLoad, stats: &mut LoadStats) -> Result<Self, JsValue> {
        let options = LoadOptions { dtype: o.dtype, context: o.context };
        let started = now_ms();
        let runner = if o.cpu {
            let dev = CpuDevice::new(None);
            stats.device_ms = now_ms() - started;
            let model = weights.load(&dev, &options).map_err(js_err)?;
            Runner::Cpu(OnBackend { dev, model, session: RefCell::new(None) })
        } else {
            let dev = device(true).await?;
            stats.device_ms = now_ms() - started;
            let model = weights.load(&dev, &options).map_err(js_err)?;
            Runner::WebGpu(OnBackend { dev, model, session: RefCell::new(None) })
        };
        stats.upload_ms = now_ms() - started - stats.device_ms;
        Ok(runner)
    }

    fn config(&self) -> &ModelConfig {
        on_backend!(self, b => &b.model.config)
    }

    fn context(&self) -> usize {
        on_backend!(self, b => b.model.context)
    }

    fn weight_bytes(&self) -> u64 {
        on_backend!(self, b => b.model.weight_bytes)
    }

    fn describe(&self) -> String {
        on_backend!(self, b => b.dev.describe())
    }

    fn set_profiling(&self, on: bool) -> bool {
        on_backend!(self, b => b.dev.set_profiling(on))
    }

    /// Time per op kind since profiling (re)started.
    fn profile_ops(&self) -> Vec<JsProfileOp> {
        let ops = on_backend!(self, b => b.dev.profile_report());
        ops.into_iter().map(|(op, calls, secs)| JsProfileOp { op: op.to_string(), calls, ms: secs * 1e3 }).collect()
    }

    async fn generate(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        constraint: Option<&mut Constraint>,
        on_token: impl FnMut(u32, Option<&TokenLogprobs>) -> bool,
    ) -> Result<Generation, JsValue> {
        on_backend!(self, b => b.generate(prompt_ids, opts, constraint, on_token).await)
    }

    async fn embed(&self, inputs: &[Vec<u32>], spec: &EmbeddingSpec) -> Result<Vec<Vec<f32>>, JsValue> {
        on_backend!(self, b => b.embed(inputs, spec).await)
    }

    async fn prefill_to(&self, ids: &[u32], end: usize) -> Result<usize, JsValue> {
        on_backend!(self, b => b.prefill_to(ids, end).await)
    }

    async fn prefill_ahead(&self, opening: &NextTurnOpening, max_tokens: usize) -> Result<usize, JsValue> {
        on_backend!(self, b => b.prefill_ahead(opening, max_tokens).await)
    }
}

impl<B: Backend> OnBackend<B> {
    /// The session, made on first use; an error while another call holds it.
    fn session(&self) -> Result<std::cell::RefMut<'_, Option<Session<B>>>, JsValue> {
        let mut slot = self.session.try_borrow_mut().map_err(|_| js_err("a generation is already running on this model"))?;
        if slot.is_none() {
            *slot = Some(Session::new(&self.dev, &self.model).map_err(js_err)?);
        }
        Ok(slot)
    }

    async fn embed(&self, inputs: &[Vec<u32>], spec: &EmbeddingSpec) -> Result<Vec<Vec<f32>>, JsValue> {
        let mut slot = self.session()?;
        let session = slot.as_mut().expect("made above");
        let mut out = Vec::with_capacity(inputs.len());
        for ids in inputs {
            out.push(embed(&self.dev, &self.model, session, ids, spec).await.map_err(js_err)?);
        }
        Ok(out)
    }

    async fn prefill_to(&self, ids: &[u32], end: usize) -> Result<usize, JsValue> {
        let mut slot = self.session()?;
        let session = slot.as_mut().expect("made above");
        session.prefill_to(&self.dev, &self.model, ids, end).await.map_err(js_err)
    }

    async fn prefill_ahead(&self, opening: &NextTurnOpening, max_tokens: usize) -> Result<usize, JsValue> {
        let mut slot = self.session()?;
        let session = slot.as_mut().expect("made above");
        session.prefill_ahead(&self.dev, &self.model, opening, max_tokens).await.map_err(js_err)
    }

    async fn generate(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        constraint: Option<&mut Constraint>,
        on_token: impl FnMut(u32, Option<&TokenLogprobs>) -> bool,
    ) -> Result<Generation, JsValue> {
        let mut slot = self.session()?;
        let session = slot.as_mut().expect("made above");
        generate_constrained(&self.dev, &self.model, session, prompt_ids, opts, constraint, on_token).await.map_err(js_err)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct JsGenerateOptions {
    max_new_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    seed: u64,
    stop: Vec<String>,
    ignore_eos: bool,
    /// Time every op kind (GPU timestamps, or CPU time per op), prefill and decode apart.
    profile: bool,
    /// Each token's log-probability and this many alternatives' (0–20); absent: none.
    logprobs: Option<usize>,
    /// What the output must be (constrained decoding); absent: free text.
    grammar: Option<JsGrammar>,
    /// Tools offered to the model (the same as given to `chatPromptIds`): its reply is parsed
    /// into calls, and a required call is enforced.
    tools: Option<JsTools>,
    /// The prompt is a chat (`chatPromptIds`): a harmony reply (GPT-OSS) is parsed into its
    /// channels, the final one being the text.
    chat: bool,
}

/// `tools` and `tool_choice` as OpenAI's API takes them.
#[derive(Deserialize)]
struct JsTools {
    tools: serde_json::Value,
    #[serde(default)]
    tool_choice: serde_json::Value,
}

/// An output constraint as the npm package passes it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum JsGrammar {
    JsonObject,
    JsonSchema { schema: serde_json::Value },
    Lark { grammar: String },
    Regex { regex: String },
}

impl From<JsGrammar> for Grammar {
    fn from(g: JsGrammar) -> Self {
        match g {
            JsGrammar::JsonObject => Grammar::JsonObject,
            JsGrammar::JsonSchema { schema } => Grammar::JsonSchema(schema),
            JsGrammar::Lark { grammar } => Grammar::Lark(grammar),
            JsGrammar::Regex { regex } => Grammar::Regex(regex),
        }
    }
}

impl Default for JsGenerateOptions {
    fn default() -> Self {
        let s = SamplingOptions::default();
        Self {
            max_new_tokens: 256,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            stop: vec![],
            ignore_eos: false,
            profile: false,
            logprobs: None,
            grammar: None,
            tools: None,
            chat: false,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsGeneration {
    prompt_ids: Vec<u32>,
    /// Prompt tokens already in the KV cache from an earlier call (not prefilled again).
    reused_tokens: usize,
    generated_ids: Vec<u32>,
    text: String,
    stopped_by_eos: bool,
    ttft_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// With `profile`: where the prefill's and the decode's time went (`None` where the backend
    /// cannot time its ops: an adapter without timestamp queries).
    profile: Option<JsProfiles>,
    /// With `logprobs`: one entry per generated token.
    logprobs: Option<Vec<LogprobEntry>>,
    /// With `tools`: the calls the reply made (`text` is the rest of the reply).
    tool_calls: Vec<ToolCall>,
    /// The reply's reasoning (GPT-OSS's analysis channel), not part of `text`; empty for others.
    reasoning: String,
}

#[derive(Serialize)]
struct JsProfiles {
    prefill: JsProfile,
    decode: JsProfile,
}

#[derive(Serialize)]
struct JsProfile {
    tokens: usize,
    ops: Vec<JsProfileOp>,
}

/// One op kind: its calls (dispatches on WebGPU; `(cpu) …` entries are CPU-side work) and
/// milliseconds in all.
#[derive(Serialize)]
struct JsProfileOp {
    op: String,
    calls: u64,
    ms: f64,
}

#[wasm_bindgen]
pub struct EmberModel {
    runner: Runner,
    text: TextSetup,
    load_stats: LoadStats,
    /// The vocabulary for constrained decoding, made on the first request that asks for it.
    constrainer: RefCell<Option<Rc<Constrainer>>>,
}

#[wasm_bindgen]
impl EmberModel {
    /// Loads a GGUF model: `files` is one `{name, length, read}` per shard, in order.
    #[wasm_bindgen(js_name = fromGguf)]
    pub async fn from_gguf(files: js_sys::Array, options: JsValue) -> Result<EmberModel, JsValue> {
        let options = JsLoadOptions::parse(options)?;
        let mut stats = LoadStats::default();
        let started = now_ms();
        let mut shards = Vec::new();
        for (name, src) in sources(&files)? {
            let file = GgufFile::read(&src).map_err(|e| js_err(format!("{name}: {e}")))?;
            shards.push((file, src));
        }
        stats.header_reads = read_totals(shards.iter().map(|(_, s)| s)).0;
        let store = GgufStore::new(shards).map_err(js_err)?;
        let parsed = now_ms();
        stats.header_ms = parsed - started;
        let mut text = TextSetup::from_gguf(store.metadata()).map_err(js_err)?;
        if let Some(spec) = &mut text.embedding {
            spec.dense = Dense::from_gguf(&store).map_err(js_err)?;
        }
        stats.tokenizer_ms = now_ms() - parsed;
        let runner = Runner::load(&options, FromGguf(&store), &mut stats).await?;
        (stats.reads, stats.read_bytes) = read_totals(store.sources());
        Ok(Self { runner, text, load_stats: stats, constrainer: RefCell::new(None) })
    }

    /// Loads a Hugging Face model: the text of `config.json` (and of `generation_config.json`,
    /// `tokenizer.json`, `tokenizer_config.json` when present) and one source per safetensors file.
    #[wasm_bindgen(js_name = fromSafetensors)]
    pub async fn from_safetensors(
        config_json: String,
        generation_config_json: Option<String>,
        tokenizer_json: Option<String>,
        tokenizer_config_json: Option<String>,
        files: js_sys::Array,
        options: JsValue,
    ) -> Result<EmberModel, JsValue> {
        let mut options = JsLoadOptions::parse(options)?;
        // Unquantised checkpoints load as q4 unless a dtype is asked for.
        options.dtype = options.dtype.or(Some(DType::Q4));
        let mut stats = LoadStats::default();
        let started = now_ms();
        let parse = |s: &str, what: &str| emberlm_models::config::parse_json(s).map_err(|e| js_err(format!("{what}: {e}")));
        let config = parse(&config_json, "config.json")?;
        let generation = generation_config_json.as_deref().map(|s| parse(s, "generation_config.json")).transpose()?;
        let mut config = ModelConfig::from_hf(&config, generation.as_ref()).map_err(js_err)?;
        let tok_cfg = tokenizer_config_json.as_deref().map(|s| parse(s, "tokenizer_config.json")).transpose()?;
        let mut text = TextSetup::from_hf(tokenizer_json.as_deref().map(str::as_bytes), tok_cfg.as_ref(), None, &mut config).map_err(js_err)?;
        text.embedding = options.embedding.take();
        let tokenized = now_ms();
        stats.tokenizer_ms = tokenized - started;
        let store = SafetensorsStore::new(sources(&files)?, config.arch).map_err(js_err)?;
        stats.header_reads = read_totals(store.sources()).0;
        stats.header_ms = now_ms() - tokenized;
        let runner = Runner::load(&options, FromSafetensors(config, &store), &mut stats).await?;
        (stats.reads, stats.read_bytes) = read_totals(store.sources());
        Ok(Self { runner, text, load_stats: stats, constrainer: RefCell::new(None) })
    }

    /// `{headerMs, headerReads, tokenizerMs, deviceMs, uploadMs, reads, readBytes}` of the load.
    /// The model's constrainer, made once (the vocabulary as bytes in llguidance's token trie).
    fn constrainer(&self) -> Result<Rc<Constrainer>, JsValue> {
        if let Some(c) = self.constrainer.borrow().as_ref() {
            return Ok(c.clone());
        }
        let tok = self.text.tokenizer().map_err(js_err)?;
        let eos = *self.runner.config().eos_token_ids.first().ok_or_else(|| js_err("an output constraint needs the model's end token"))?;
        let made = Rc::new(Constrainer::new(tok, eos).map_err(js_err)?);
        *self.constrainer.borrow_mut() = Some(made.clone());
        Ok(made)
    }

    #[wasm_bindgen(js_name = loadStats)]
    pub fn load_stats(&self) -> Result<JsValue, JsValue> {
        to_js(&self.load_stats)
    }

    pub fn architecture(&self) -> String {
        self.runner.config().arch.name().to_string()
    }

    /// The backend the model runs on: `webgpu` or `cpu`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        on_backend!(&self.runner, b => b.dev.kind().name().into())
    }

    /// The backend and what runs it: `webgpu (adapter, backend)` or `cpu (1 thread, simd128)`.
    #[wasm_bindgen(getter, js_name = deviceName)]
    pub fn device_name(&self) -> String {
        self.runner.describe()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.text.tokenizer().and_then(|t| t.encode(text)).map_err(js_err)
    }

    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        self.text.tokenizer().and_then(|t| t.decode(&ids, true)).map_err(js_err)
    }

    /// Renders `messages` (`[{role, content}]`) with the model's chat template.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(&self, messages: JsValue, add_generation_prompt: bool) -> Result<String, JsValue> {
        let messages: serde_json::Value = serde_wasm_bindgen::from_value(messages)?;
        self.text.chat_template().and_then(|t| t.render(&messages, add_generation_prompt, None)).map_err(js_err)
    }

    /// Token ids of a raw prompt, with BOS first when the model's tokenizer asks for it.
    #[wasm_bindgen(js_name = promptIds)]
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.text.prompt_ids(text, self.runner.config().bos_token_id).map_err(js_err)
    }

    /// Token ids of `messages` rendered with the chat template and a generation prompt (the
    /// template writes any BOS itself); `tools`: `{tools, tool_choice}` offered to the model;
    /// `templateKwargs`: more template variables (`{enable_thinking: false}`), or undefined.
    #[wasm_bindgen(js_name = chatPromptIds)]
    pub fn chat_prompt_ids(&self, messages: JsValue, tools: JsValue, template_kwargs: JsValue) -> Result<Vec<u32>, JsValue> {
        let (messages, tools, kwargs) = self.chat_input(messages, tools, template_kwargs)?;
        self.text.chat_prompt_ids_with(&messages, tools.as_ref(), kwargs.as_ref()).map_err(js_err)
    }

    /// A chat request's messages, tools and template variables as the template takes them.
    fn chat_input(
        &self,
        messages: JsValue,
        tools: JsValue,
        template_kwargs: JsValue,
    ) -> Result<(serde_json::Value, Option<ToolPrompt>, Option<serde_json::Value>), JsValue> {
        let messages: serde_json::Value = serde_wasm_bindgen::from_value(messages)?;
        let tools = self.tool_prompt(from_js_opt(tools)?.as_ref())?;
        Ok((messages, tools, from_js_opt(template_kwargs)?))
    }

    fn tool_prompt(&self, tools: Option<&JsTools>) -> Result<Option<ToolPrompt>, JsValue> {
        tools.map(|t| self.text.tool_prompt(&t.tools, &t.tool_choice)).transpose().map(Option::flatten).map_err(js_err)
    }

    /// Whether this is an embedding model (pooling from sentence-transformers' modules or GGUF
    /// metadata), which `embed` takes.
    #[wasm_bindgen(getter, js_name = isEmbedding)]
    pub fn is_embedding(&self) -> bool {
        self.text.embedding.is_some()
    }

    /// One vector per text (`{vectors: number[][], promptTokens}`), each text run on its own.
    pub async fn embed(&self, texts: Vec<String>) -> Result<JsValue, JsValue> {
        let spec = self
            .text
            .embedding
            .clone()
            .ok_or_else(|| js_err("this is not an embedding model (no sentence-transformers pooling module, no GGUF pooling_type)"))?;
        let config = self.runner.config();
        let mut inputs = Vec::with_capacity(texts.len());
        for t in &texts {
            let ids = self.text.embedding_ids(t, config.bos_token_id, config.eos_token_ids.first().copied()).map_err(js_err)?;
            if ids.is_empty() {
                return Err(js_err("a text to embed is empty"));
            }
            if ids.len() > self.runner.context() {
                return Err(js_err(format!("a text is {} tokens but the context holds {}; load with a larger `context`", ids.len(), self.runner.context())));
            }
            inputs.push(ids);
        }
        let vectors = self.runner.embed(&inputs, &spec).await?;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Embedded {
            vectors: Vec<Vec<f32>>,
            prompt_tokens: usize,
        }
        to_js(&Embedded { vectors, prompt_tokens: inputs.iter().map(Vec::len).sum() })
    }

    /// The most tokens (prompt + generated) one generation can hold.
    #[wasm_bindgen(getter, js_name = contextLength)]
    pub fn context_length(&self) -> usize {
        self.runner.context()
    }

    /// Bytes of weights on the backend (GPU buffers or wasm memory).
    #[wasm_bindgen(getter, js_name = weightBytes)]
    pub fn weight_bytes(&self) -> f64 {
        self.runner.weight_bytes() as f64
    }

    /// Runs `promptIds[..end]` into the conversation's cache (keeping what it already holds):
    /// a long prompt in pieces, so that progress can be shown between them; `generate` on the
    /// whole prompt then runs only the rest. Resolves to how many tokens were already held.
    #[wasm_bindgen(js_name = prefillTo)]
    pub async fn prefill_to(&self, prompt_ids: Vec<u32>, end: usize) -> Result<usize, JsValue> {
        if prompt_ids.len() > self.runner.context() {
            return Err(js_err(format!("the prompt is {} tokens but the context holds {}", prompt_ids.len(), self.runner.context())));
        }
        self.runner.prefill_to(&prompt_ids, end).await
    }

    /// After a chat reply, while the conversation waits for its user: runs up to `maxTokens`
    /// more of the next user turn's opening (`messages`, ending with the reply as the client
    /// sends it back, rendered with a user message: the reply's last token and the template's
    /// turn markers) into the cache. `tools` and `templateKwargs` as for `chatPromptIds`.
    /// Resolves to the tokens left to run (0: done, or nothing to run ahead).
    #[wasm_bindgen(js_name = prefillNextTurn)]
    pub async fn prefill_next_turn(&self, messages: JsValue, tools: JsValue, template_kwargs: JsValue, max_tokens: usize) -> Result<usize, JsValue> {
        let (messages, tools, kwargs) = self.chat_input(messages, tools, template_kwargs)?;
        let Some(opening) = self.text.next_turn_opening(&messages, tools.as_ref(), kwargs.as_ref()).map_err(js_err)? else { return Ok(0) };
        self.runner.prefill_ahead(&opening, max_tokens).await
    }

    /// Generates after `promptIds`; `onToken(id, textPiece, logprob)` is called per token
    /// (`logprob`: with the `logprobs` option, the token's entry) and may return `false` to stop.
    pub async fn generate(&self, prompt_ids: Vec<u32>, options: JsValue, on_token: Option<js_sys::Function>) -> Result<JsValue, JsValue> {
        let o: JsGenerateOptions =
            if options.is_undefined() || options.is_null() { JsGenerateOptions::default() } else { serde_wasm_bindgen::from_value(options)? };
        let opts = GenerateOptions {
            max_new_tokens: o.max_new_tokens,
            stop_tokens: if o.ignore_eos { vec![] } else { self.runner.config().eos_token_ids.clone() },
            sampling: SamplingOptions {
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                min_p: o.min_p,
                repetition_penalty: o.repetition_penalty,
                seed: o.seed,
            },
            want_prompt_logits: false,
            logprobs: o.logprobs,
            mask_side: Default::default(),
        };
        let tools = self.tool_prompt(o.tools.as_ref())?;
        let grammar = tools::output_grammar(tools.as_ref(), self.text.tokenizer.as_ref(), o.grammar.map(Grammar::from)).map_err(js_err)?;
        let mut constraint = match grammar {
            Some(grammar) => Some(self.constrainer()?.start(&grammar).map_err(js_err)?),
            None => None,
        };
        // Tools' calls, or a harmony reply's channels (GPT-OSS: only the final one is content).
        let harmony = if o.chat { tools::reply_stream(self.text.chat_template.as_ref(), self.text.tokenizer.as_ref(), o.seed) } else { None };
        let mut tool_stream = tools.as_ref().map(|t| t.stream(self.text.tokenizer.as_ref(), o.seed)).or(harmony);
        let mut tool_calls = Vec::new();
        let mut reasoning = String::new();
        // onToken(id, piece, logprob entry, calls?, reasoning?): the last two only when there are some.
        let call_js = |f: &js_sys::Function, id: JsValue, piece: &str, entry: Option<&JsValue>, calls: &[ToolCall], thought: &str| {
            let args = js_sys::Array::of3(&id, &JsValue::from_str(piece), entry.unwrap_or(&JsValue::UNDEFINED));
            if !calls.is_empty() || !thought.is_empty() {
                args.push(&if calls.is_empty() { JsValue::UNDEFINED } else { to_js(&calls).unwrap_or(JsValue::UNDEFINED) });
            }
            if !thought.is_empty() {
                args.push(&JsValue::from_str(thought));
            }
            f.apply(&JsValue::NULL, &args)
        };
        let mut stream = StreamDecoder::new(true);
        let mut text = String::new();
        // Each token's logprob entry, spelled once: streamed to `onToken` and returned.
        let mut entries = Vec::new();
        let profiling = o.profile && self.runner.set_profiling(true);
        let mut prefill_ops = None;
        let result = self
            .runner
            .generate(&prompt_ids, &opts, constraint.as_mut(), |id, logprobs| {
                // The first token ends the prefill: its times are kept, the decode's start anew.
                if profiling && prefill_ops.is_none() {
                    prefill_ops = Some(self.runner.profile_ops());
                    self.runner.set_profiling(true);
                }
                let piece = self.text.tokenizer.as_ref().and_then(|t| stream.push(t, id).ok()).unwrap_or_default();
                // The reply's text goes out as it comes, a call once whole (its syntax never
                // shows as text).
                let (piece, mut calls, thought) = match tool_stream.as_mut() {
                    Some(s) => ToolEvent::parts(s.push_token(id, &piece)),
                    None => (piece, Vec::new(), String::new()),
                };
                text.push_str(&piece);
                reasoning.push_str(&thought);
                let entry = logprobs.map(|l| {
                    let entry = l.entry(self.text.tokenizer.as_ref());
                    let js = to_js(&entry).unwrap_or(JsValue::UNDEFINED);
                    entries.push(entry);
                    js
                });
                let keep = match &on_token {
                    Some(f) => call_js(f, JsValue::from(id), &piece, entry.as_ref(), &calls, &thought).map(|r| r.as_bool() != Some(false)).unwrap_or(false),
                    None => true,
                };
                tool_calls.append(&mut calls);
                keep && !o.stop.iter().any(|s| text.contains(s.as_str()))
            })
            .await;
        let decode_ops = prefill_ops.as_ref().map(|_| self.runner.profile_ops());
        if profiling {
            self.runner.set_profiling(false);
        }
        let out = result?;
        // What the tool-call parser still held: text or calls, handed on as one last piece.
        if let Some(s) = tool_stream.as_mut() {
            let (piece, mut calls, thought) = ToolEvent::parts(s.finish());
            if !piece.is_empty() || !calls.is_empty() || !thought.is_empty() {
                text.push_str(&piece);
                reasoning.push_str(&thought);
                if let Some(f) = &on_token {
                    call_js(f, JsValue::UNDEFINED, &piece, None, &calls, &thought)?;
                }
                tool_calls.append(&mut calls);
            }
        }
        let profile = prefill_ops.zip(decode_ops).map(|(prefill, decode)| JsProfiles {
            prefill: JsProfile { tokens: out.prompt_ids.len() - out.reused_tokens, ops: prefill },
            decode: JsProfile { tokens: out.generated_ids.len().saturating_sub(1), ops: decode },
        });
        for s in &o.stop {
            if let Some(i) = text.find(s.as_str()) {
                text.truncate(i);
            }
        }
        to_js(&JsGeneration {
            prompt_ids: out.prompt_ids,
            reused_tokens: out.reused_tokens,
            generated_ids: out.generated_ids,
            text,
            stopped_by_eos: out.stopped,
            ttft_ms: out.ttft_ms,
            prefill_tok_s: out.prefill_tok_s,
            decode_tok_s: out.decode_tok_s,
            profile,
            logprobs: o.logprobs.map(|_| entries),
            tool_calls,
            reasoning,
        })
    }
}
