//! Tool calling, as OpenAI's chat API has it: the caller offers `tools` (JSON-schema functions),
//! the chat template writes them into the prompt as transformers'
//! `apply_chat_template(tools=…)` does, and the model's reply is parsed back into calls.
//!
//! Each model family writes calls its own way ([`ToolSyntax`], told from its template):
//! Qwen2.5/3 and Hermes `<tool_call>{json}</tool_call>`, Llama 3.x a bare
//! `{"name", "parameters"}` object, Mistral `[TOOL_CALLS]` and a JSON array, GPT-OSS harmony
//! messages (`<|channel|>commentary to=functions.name … <|message|>{…}<|call|>`; its replies
//! always go through the stream, tools or not, so that only the final channel is content and
//! the analysis channel is reasoning, [`ToolEvent::Reasoning`]). A template that
//! does not take tools gets them in a system prompt in the Hermes syntax ([`ToolPrompt`]).
//! [`ToolCallStream`] follows the reply token by token, releasing ordinary text as it comes and
//! each call once it is complete; what does not parse as a call stays text. `tool_choice`
//! `required` or a named function is enforced with the output constraint engine
//! ([`ToolPrompt::forced_call`]).
//!
//! Tools and messages come from the caller, replies from the model: both are checked, and a
//! malformed call is returned as text, never a panic.

use serde_json::{json, Map, Value as Json};

use crate::chat::ChatTemplate;
use crate::constraint::Grammar;
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// The most tools one request may offer.
pub const MAX_TOOLS: usize = 128;
/// The longest function name (OpenAI's limit).
pub const MAX_TOOL_NAME: usize = 64;

/// How a model family writes tool calls in its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one block per call (Qwen2.5,
    /// Qwen3, Hermes; also the prompt given to templates without tool support).
    Hermes,
    /// The whole reply is `{"name": …, "parameters": {…}}`, maybe after `<|python_tag|>`
    /// (Llama 3.1–3.3).
    LlamaJson,
    /// `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` (Mistral 7B v0.3, Nemo, Small), or the
    /// newer `[TOOL_CALLS]name[ARGS]{…}`.
    Mistral,
    /// GPT-OSS's harmony messages: `<|channel|>analysis<|message|>…<|end|>` (reasoning),
    /// `<|start|>assistant<|channel|>final<|message|>…<|return|>` (the answer), and a call as a
    /// commentary message to `functions.name` whose body is the arguments, ended by `<|call|>`
    /// (the recipient may come before the channel: ` to=functions.name<|channel|>commentary`).
    Harmony,
}

const TOOL_CALL_OPEN: &str = "<tool_call>";
const TOOL_CALL_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const H_START: &str = "<|start|>";
const H_END: &str = "<|end|>";
const H_MESSAGE: &str = "<|message|>";
const H_CHANNEL: &str = "<|channel|>";
const H_CONSTRAIN: &str = "<|constrain|>";
const H_RETURN: &str = "<|return|>";
const H_CALL: &str = "<|call|>";
/// A harmony header longer than this without `<|message|>` is not one: the reply is plain text.
const MAX_HARMONY_HEADER: usize = 256;

impl ToolSyntax {
    /// The syntax a chat template asks of its model, or `None` when it does not take `tools`.
    pub fn of_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            None
        } else if source.contains(H_CHANNEL) {
            Some(Self::Harmony)
        } else if source.contains(MISTRAL_CALLS) {
            Some(Self::Mistral)
        } else if source.contains(TOOL_CALL_OPEN) {
            Some(Self::Hermes)
        } else if source.contains("\"parameters\"") || source.contains("python_tag") || source.contains("ipython") {
            Some(Self::LlamaJson)
        } else {
            None
        }
    }

    /// The marker texts that may come as special tokens (left out of decoded text otherwise).
    fn markers(self) -> &'static [&'static str] {
        match self {
            Self::Hermes => &[TOOL_CALL_OPEN, TOOL_CALL_CLOSE],
            Self::LlamaJson => &[PYTHON_TAG],
            Self::Mistral => &[MISTRAL_CALLS, MISTRAL_ARGS],
            Self::Harmony => &[H_START, H_END, H_MESSAGE, H_CHANNEL, H_CONSTRAIN, H_RETURN, H_CALL],
        }
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are offered).
    Auto,
    /// No calls: the tools are not shown to the model.
    None,
    /// At least one call, of any offered tool.
    Required,
    /// One call of this function.
    Function(String),
}

/// A parsed call: `arguments` is JSON text, as OpenAI's API gives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The call in OpenAI's shape (`message.tool_calls` entries).
    pub fn to_openai(&self) -> Json {
        json!({"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// The tools of one request, checked.
#[derive(Debug, Clone)]
pub struct Tools {
    /// As the caller wrote them (`{"type": "function", "function": {…}}`), for the template.
    list: Vec<Json>,
    names: Vec<String>,
    /// Each function's parameter schema (an empty object schema when none is given).
    parameters: Vec<Json>,
    pub choice: ToolChoice,
}

fn bad(why: impl Into<String>) -> ModelError {
    ModelError::Tools(why.into())
}

impl Tools {
    /// `tools` (an array of OpenAI tool objects) and `tool_choice` (`"auto"`, `"none"`,
    /// `"required"`, `{"type": "function", "function": {"name": …}}`, or null for auto).
    pub fn new(tools: &Json, choice: &Json) -> Result<Self> {
        let items = tools.as_array().ok_or_else(|| bad("`tools` must be an array"))?;
        if items.is_empty() || items.len() > MAX_TOOLS {
            return Err(bad(format!("`tools` must hold 1 to {MAX_TOOLS} tools, not {}", items.len())));
        }
        let (mut names, mut parameters) = (Vec::new(), Vec::new());
        for (i, t) in items.iter().enumerate() {
            let f = match (t.get("type").and_then(Json::as_str), t.get("function")) {
                (Some("function"), Some(f)) if f.is_object() => f,
                _ => return Err(bad(format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{…}}}}"))),
            };
            let name = f.get("name").and_then(Json::as_str).unwrap_or_default();
            let name_ok =
                !name.is_empty() && name.len() <= MAX_TOOL_NAME && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !name_ok {
                return Err(bad(format!("tools[{i}]: the function name must be 1 to {MAX_TOOL_NAME} of a-z, A-Z, 0-9, _, - and .")));
            }
            if names.iter().any(|n| n == name) {
                return Err(bad(format!("tools[{i}]: a second function named `{name}`")));
            }
            let params = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if !params.is_object() {
                return Err(bad(format!("tools[{i}]: `parameters` must be a JSON schema object")));
            }
            names.push(name.to_string());
            parameters.push(params);
        }
        let choice = match choice {
            Json::Null => ToolChoice::Auto,
            Json::String(s) if s == "auto" => ToolChoice::Auto,
            Json::String(s) if s == "none" => ToolChoice::None,
            Json::String(s) if s == "required" => ToolChoice::Required,
            Json::Object(o) => {
                let name = o.get("function").and_then(|f| f.get("name")).and_then(Json::as_str).unwrap_or_default();
                if !names.iter().any(|n| n == name) {
                    return Err(bad(format!("tool_choice names `{name}`, which is not among the tools")));
                }
                ToolChoice::Function(name.to_string())
            }
            other => return Err(bad(format!("tool_choice must be \"auto\", \"none\", \"required\" or a named function, not {other}"))),
        };
        Ok(Self { list: items.clone(), names, parameters, choice })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The messages of a conversation as templates take them: a call's `arguments` as a JSON
/// object (OpenAI sends a string; templates write `arguments | tojson`).
pub(crate) fn with_object_arguments(messages: &Json) -> Json {
    let mut messages = messages.clone();
    for m in messages.as_array_mut().into_iter().flatten() {
        // OpenAI's `content: null` beside calls is "" to templates: several test the content
        // as a string (GPT-OSS's `"…" in message.content` fails on None, in transformers too).
        if m.get("tool_calls").is_some() && m.get("content").is_some_and(Json::is_null) {
            m["content"] = Json::String(String::new());
        }
        for call in m.get_mut("tool_calls").and_then(Json::as_array_mut).into_iter().flatten() {
            let Some(f) = call.get_mut("function") else { continue };
            if let Some(args) = f.get("arguments").and_then(Json::as_str) {
                if let Ok(parsed @ Json::Object(_)) = serde_json::from_str::<Json>(args) {
                    f["arguments"] = parsed;
                }
            }
        }
    }
    messages
}

/// How one request's tools reach the prompt and how the reply is read.
#[derive(Debug, Clone)]
pub struct ToolPrompt {
    pub syntax: ToolSyntax,
    /// The template takes `tools` itself; otherwise they go in a system prompt of ours.
    pub native: bool,
    pub tools: Tools,
}

/// The system prompt for templates without tool support: Hermes' wording, as Qwen2.5's
/// template writes it.
fn hermes_system_prompt(tools: &Tools) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in &tools.list {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    s
}

fn content_of(m: &Json) -> &str {
    m.get("content").and_then(Json::as_str).unwrap_or_default()
}

impl ToolPrompt {
    /// For `template`'s model; `None` with `tool_choice: "none"` (no tools in the prompt).
    pub fn new(template: &ChatTemplate, tools: Tools) -> Option<Self> {
        if tools.choice == ToolChoice::None {
            return None;
        }
        let native = ToolSyntax::of_template(&template.source);
        Some(Self { syntax: native.unwrap_or(ToolSyntax::Hermes), native: native.is_some(), tools })
    }

    /// Renders `messages` with the tools (`extra`: other template variables).
    pub fn render(&self, template: &ChatTemplate, messages: &Json, add_generation_prompt: bool, extra: Option<&Json>) -> Result<String> {
        let mut ctx = extra.and_then(Json::as_object).cloned().unwrap_or_default();
        if self.native {
            ctx.insert("tools".into(), Json::Array(self.tools.list.clone()));
            return template.render(&with_object_arguments(messages), add_generation_prompt, Some(&Json::Object(ctx)));
        }
        let ctx = Json::Object(ctx);
        let plain = plain_chat(messages);
        let prompt = hermes_system_prompt(&self.tools);
        // The tools as (part of) a system message; a template without a system role gets them
        // at the start of the first user message.
        let mut with_system = plain.clone();
        match with_system.first_mut() {
            Some(first) if first["role"] == "system" => first["content"] = Json::String(format!("{}\n\n{prompt}", content_of(first))),
            _ => with_system.insert(0, json!({"role": "system", "content": prompt})),
        }
        template.render(&Json::Array(with_system), add_generation_prompt, Some(&ctx)).or_else(|system_refused| {
            let mut in_user = plain;
            let Some(first) = in_user.iter_mut().find(|m| m["role"] == "user") else { return Err(system_refused) };
            first["content"] = Json::String(format!("{prompt}\n\n{}", content_of(first)));
            template.render(&Json::Array(in_user), add_generation_prompt, Some(&ctx))
        })
    }

    /// The grammar that forces a call (`tool_choice` `required` or a function), in this
    /// syntax, with the arguments valid against the function's schema; `None` for `auto`.
    pub fn forced_call(&self, tokenizer: &TextTokenizer) -> Option<Grammar> {
        let chosen: Vec<usize> = match &self.tools.choice {
            ToolChoice::Required => (0..self.tools.names.len()).collect(),
            ToolChoice::Function(name) => vec![self.tools.names.iter().position(|n| n == name)?],
            ToolChoice::Auto | ToolChoice::None => return None,
        };
        let args_key = if self.syntax == ToolSyntax::LlamaJson { "parameters" } else { "arguments" };
        let calls: Vec<Json> = chosen
            .iter()
            .map(|&i| {
                json!({
                    "type": "object",
                    "properties": { "name": { "const": self.tools.names[i] }, args_key: self.tools.parameters[i] },
                    "required": ["name", args_key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let one_call = if calls.len() == 1 { calls[0].clone() } else { json!({ "anyOf": calls }) };
        let schema = |s: Json| {
            let mut s = s;
            s["x-guidance"] = json!({ "whitespace_pattern": "[ ]?" });
            s.to_string()
        };
        // A marker that is a special token must be written as that token (`<[id]>`), as the
        // model writes it; otherwise as text.
        let marker = |text: &str| match tokenizer.token_to_id(text).filter(|&id| tokenizer.is_special(id)) {
            Some(id) => format!("<[{id}]>"),
            None => serde_json::to_string(text).expect("a string"),
        };
        let lark = match self.syntax {
            ToolSyntax::Hermes => {
                format!("start: {} \"\\n\" call \"\\n\" {}\ncall: %json {}\n", marker(TOOL_CALL_OPEN), marker(TOOL_CALL_CLOSE), schema(one_call))
            }
            ToolSyntax::LlamaJson => format!("start: call\ncall: %json {}\n", schema(one_call)),
            ToolSyntax::Mistral => {
                let array = json!({ "type": "array", "items": one_call, "minItems": 1, "maxItems": if chosen.len() == 1 && matches!(self.tools.choice, ToolChoice::Function(_)) { 1 } else { 8 } });
                format!("start: {} calls\ncalls: %json {}\n", marker(MISTRAL_CALLS), schema(array))
            }
            // Reasoning first if the model wants (up to 4,000 characters, no `<`: the markers may
            // be plain text), then one commentary message to the function, its body the
            // arguments.
            ToolSyntax::Harmony => {
                let calls: Vec<String> = chosen
                    .iter()
                    .map(|&i| {
                        let header = serde_json::to_string(&format!("commentary to=functions.{} ", self.tools.names[i])).expect("a string");
                        format!(
                            "{} {header} {} \"json\" {} %json {} {}",
                            marker(H_CHANNEL),
                            marker(H_CONSTRAIN),
                            marker(H_MESSAGE),
                            schema(self.tools.parameters[i].clone()),
                            marker(H_CALL)
                        )
                    })
                    .collect();
                format!(
                    "start: analysis? call\nanalysis: {} \"analysis\" {} /[^<]{{0,4000}}/ {} {} \"assistant\"\ncall: {}\n",
                    marker(H_CHANNEL),
                    marker(H_MESSAGE),
                    marker(H_END),
                    marker(H_START),
                    calls.join(" | ")
                )
            }
        };
        Some(Grammar::Lark(lark))
    }

    /// A parser for the reply to this prompt.
    pub fn stream(&self, tokenizer: Option<&TextTokenizer>, seed: u64) -> ToolCallStream {
        ToolCallStream::new(self.syntax, self.tools.names.clone(), tokenizer, seed)
    }
}

/// The stream a reply goes through when no tools are offered: harmony replies only (GPT-OSS's
/// channels), `None` for other templates.
pub fn reply_stream(template: Option<&ChatTemplate>, tokenizer: Option<&TextTokenizer>, seed: u64) -> Option<ToolCallStream> {
    template
        .filter(|t| ToolSyntax::of_template(&t.source) == Some(ToolSyntax::Harmony))
        .map(|_| ToolCallStream::new(ToolSyntax::Harmony, Vec::new(), tokenizer, seed))
}

/// `messages` as `template` takes them when no tools are offered: calls' arguments as objects
/// for a template with tool support, calls and results as plain turns for one without.
pub(crate) fn messages_for(template: &ChatTemplate, messages: &Json) -> Json {
    match ToolSyntax::of_template(&template.source) {
        Some(_) => with_object_arguments(messages),
        None => Json::Array(plain_chat(messages)),
    }
}

/// A conversation with calls and results, for a template that knows neither: calls as the
/// assistant's text in the Hermes syntax, results as user turns in `<tool_response>` tags
/// (one turn for consecutive results, so roles still alternate). Other messages pass as
/// they are.
fn plain_chat(messages: &Json) -> Vec<Json> {
    let mut out: Vec<Json> = Vec::new();
    for m in with_object_arguments(messages).as_array().into_iter().flatten() {
        let role = m.get("role").and_then(Json::as_str).unwrap_or_default();
        if role == "tool" {
            let response = format!("<tool_response>\n{}\n</tool_response>", content_of(m));
            match out.last_mut() {
                Some(last) if last["role"] == "user" && content_of(last).starts_with("<tool_response>") => {
                    last["content"] = Json::String(format!("{}\n{response}", content_of(last)));
                }
                _ => out.push(json!({"role": "user", "content": response})),
            }
            continue;
        }
        let calls = m.get("tool_calls").and_then(Json::as_array).filter(|c| !c.is_empty());
        match calls {
            Some(calls) if role == "assistant" => {
                let mut text = content_of(m).to_string();
                for call in calls {
                    let f = &call["function"];
                    let body = json!({"name": f["name"], "arguments": f["arguments"]});
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"));
                }
                out.push(json!({"role": "assistant", "content": text}));
            }
            _ => out.push(m.clone()),
        }
    }
    out
}

/// What the reply stream hands on.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolEvent {
    Text(String),
    Call(ToolCall),
    /// Reasoning the model wrote for itself (harmony's analysis channel): not content.
    Reasoning(String),
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Nothing but whitespace yet.
    Start,
    /// Ordinary text, watching for a call's opening marker.
    Text,
    /// Inside a Hermes `<tool_call>` block.
    InCall,
    /// The rest of the reply is calls (Llama JSON, Mistral after `[TOOL_CALLS]`): read at the end.
    Rest,
    /// Harmony: before a message's `<|message|>`, its header in `buf`.
    HarmonyHeader,
    /// Harmony: in a message's body, up to `<|end|>`, `<|call|>` or `<|return|>`.
    HarmonyBody(Channel),
}

/// Where a harmony message's body goes.
#[derive(Debug, Clone, PartialEq)]
enum Channel {
    /// Content (`final`, and commentary to no one).
    Content,
    /// `analysis`: reasoning.
    Reasoning,
    /// Commentary to `functions.{0}`: a call's arguments.
    Call(String),
}

impl ToolEvent {
    /// Events as the text they release and the calls they complete, each in order.
    pub fn split(events: Vec<ToolEvent>) -> (String, Vec<ToolCall>) {
        let (text, calls, _) = Self::parts(events);
        (text, calls)
    }

    /// As [`ToolEvent::split`], with the reasoning they carry as well.
    pub fn parts(events: Vec<ToolEvent>) -> (String, Vec<ToolCall>, String) {
        let (mut text, mut calls, mut reasoning) = (String::new(), Vec::new(), String::new());
        for e in events {
            match e {
                ToolEvent::Text(t) => text.push_str(&t),
                ToolEvent::Call(c) => calls.push(c),
                ToolEvent::Reasoning(r) => reasoning.push_str(&r),
            }
        }
        (text, calls, reasoning)
    }
}

/// Follows a reply as it is generated: text is released as it comes (all but a tail that
/// could still become a call marker, and whitespace until something follows it), each call
/// once complete. Text that looked like a call but does not parse is released as text.
pub struct ToolCallStream {
    syntax: ToolSyntax,
    names: Vec<String>,
    /// Special tokens that spell a marker (decoding leaves special tokens out).
    marker_ids: Vec<(u32, &'static str)>,
    state: State,
    /// Text not yet released.
    buf: String,
    /// The whitespace before an open call block, given back if the block is not a call.
    gap: String,
    calls: usize,
    seed: u64,
}

/// Length of the longest tail of `text` that is a proper prefix of `marker`.
fn partial_marker(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1)).rev().find(|&k| text.is_char_boundary(text.len() - k) && text.ends_with(&marker[..k])).unwrap_or(0)
}

impl ToolCallStream {
    fn new(syntax: ToolSyntax, names: Vec<String>, tokenizer: Option<&TextTokenizer>, seed: u64) -> Self {
        let marker_ids = tokenizer
            .map(|t| syntax.markers().iter().filter_map(|m| t.token_to_id(m).filter(|&id| t.is_special(id)).map(|id| (id, *m))).collect())
            .unwrap_or_default();
        let state = if syntax == ToolSyntax::Harmony { State::HarmonyHeader } else { State::Start };
        ToolCallStream { syntax, names, marker_ids, state, buf: String::new(), gap: String::new(), calls: 0, seed }
    }

    /// A generated token and its decoded text (empty for a special token, whose marker text is
    /// put back here).
    pub fn push_token(&mut self, id: u32, piece: &str) -> Vec<ToolEvent> {
        match self.marker_ids.iter().find(|(m, _)| *m == id) {
            Some((_, marker)) => self.push(marker),
            None => self.push(piece),
        }
    }

    /// More reply text.
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        self.buf.push_str(piece);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let body = self.buf.trim_start();
                    if body.is_empty() {
                        return out;
                    }
                    let opens_call = match self.syntax {
                        ToolSyntax::LlamaJson => body.starts_with('{') || body.starts_with(PYTHON_TAG),
                        _ => false,
                    };
                    // A Llama reply that could be `<|python_tag|>` waits for more text.
                    if self.syntax == ToolSyntax::LlamaJson && !opens_call && PYTHON_TAG.starts_with(body) {
                        return out;
                    }
                    self.state = if opens_call { State::Rest } else { State::Text };
                }
                State::Text => {
                    let open = match self.syntax {
                        ToolSyntax::Hermes => TOOL_CALL_OPEN,
                        ToolSyntax::Mistral => MISTRAL_CALLS,
                        // Harmony in plain text (a reply that opened no message): all text.
                        ToolSyntax::LlamaJson | ToolSyntax::Harmony => {
                            out.extend(self.release(self.buf.len()));
                            return out;
                        }
                    };
                    if let Some(i) = self.buf.find(open) {
                        // Text before the call goes out; whitespace alone before it does not.
                        let before: String = self.buf.drain(..i + open.len()).collect();
                        let text = before[..i].trim_end();
                        if !text.is_empty() {
                            out.push(ToolEvent::Text(text.to_string()));
                        }
                        // Kept in case the block turns out not to be a call.
                        self.gap = before[text.len()..i].to_string();
                        self.state = if self.syntax == ToolSyntax::Hermes { State::InCall } else { State::Rest };
                        continue;
                    }
                    let keep = partial_marker(&self.buf, open);
                    out.extend(self.release(self.buf.len() - keep));
                    return out;
                }
                State::InCall => {
                    let Some(end) = self.buf.find(TOOL_CALL_CLOSE) else { return out };
                    let body: String = self.buf.drain(..end + TOOL_CALL_CLOSE.len()).collect();
                    let body = &body[..end];
                    match self.parse_calls(body) {
                        Some(calls) => out.extend(calls.into_iter().map(ToolEvent::Call)),
                        None => out.push(ToolEvent::Text(format!("{}{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}", std::mem::take(&mut self.gap)))),
                    }
                    self.state = State::Text;
                }
                State::Rest => return out,
                State::HarmonyHeader => {
                    let head = self.buf.trim_start();
                    if head.is_empty() {
                        return out;
                    }
                    // A reply that does not open a harmony message is plain text.
                    let opens = [H_START, H_CHANNEL, " to=", "to="].iter().any(|m| head.starts_with(m) || m.starts_with(head));
                    let Some(i) = self.buf.find(H_MESSAGE).filter(|_| opens) else {
                        if !opens || self.buf.len() > MAX_HARMONY_HEADER {
                            self.state = State::Text;
                            out.extend(self.release(self.buf.len()));
                        }
                        return out;
                    };
                    let header: String = self.buf.drain(..i + H_MESSAGE.len()).collect();
                    self.state = State::HarmonyBody(self.harmony_channel(&header[..i]));
                }
                State::HarmonyBody(ref channel) => {
                    let end = [H_END, H_CALL, H_RETURN].iter().filter_map(|m| self.buf.find(m).map(|i| (i, m.len()))).min();
                    let channel = channel.clone();
                    let Some((i, len)) = end else {
                        // Content and reasoning stream out as they come, but for a tail that
                        // could still become a marker; a call's arguments wait for the end.
                        if channel != Channel::Content && channel != Channel::Reasoning {
                            return out;
                        }
                        let keep = [H_END, H_CALL, H_RETURN].iter().map(|m| partial_marker(&self.buf, m)).max().unwrap_or(0);
                        let piece: String = self.buf.drain(..self.buf.len() - keep).collect();
                        out.extend(self.harmony_piece(&channel, piece));
                        return out;
                    };
                    let body: String = self.buf.drain(..i).collect();
                    self.buf.drain(..len);
                    out.extend(self.harmony_piece(&channel, body));
                    if let Channel::Call(_) = channel {
                        out.extend(self.harmony_call(&channel));
                    }
                    self.state = State::HarmonyHeader;
                }
            }
        }
    }

    /// A harmony header's channel: a call when addressed to one of the offered functions.
    fn harmony_channel(&self, header: &str) -> Channel {
        let word_after =
            |marker: &str| header.split_once(marker).map(|(_, rest)| rest.split(|c: char| c.is_whitespace() || c == '<').next().unwrap_or_default());
        if let Some(name) = word_after("to=").and_then(|to| to.strip_prefix("functions.")) {
            if self.names.iter().any(|n| n == name) {
                return Channel::Call(name.to_string());
            }
        }
        match word_after(H_CHANNEL) {
            Some("analysis") => Channel::Reasoning,
            _ => Channel::Content,
        }
    }

    /// Body text of a harmony message: content and reasoning go out; a call's arguments are
    /// kept in `gap` until its end.
    fn harmony_piece(&mut self, channel: &Channel, piece: String) -> Option<ToolEvent> {
        if piece.is_empty() {
            return None;
        }
        match channel {
            Channel::Content => Some(ToolEvent::Text(piece)),
            Channel::Reasoning => Some(ToolEvent::Reasoning(piece)),
            Channel::Call(_) => {
                self.gap.push_str(&piece);
                None
            }
        }
    }

    /// A finished harmony call: its arguments must be a JSON object, else its body is text.
    fn harmony_call(&mut self, channel: &Channel) -> Option<ToolEvent> {
        let Channel::Call(name) = channel else { return None };
        let body = std::mem::take(&mut self.gap);
        match serde_json::from_str::<Json>(body.trim()) {
            Ok(args @ Json::Object(_)) => Some(ToolEvent::Call(ToolCall { id: self.next_id(), name: name.clone(), arguments: args.to_string() })),
            _ => Some(ToolEvent::Text(body)),
        }
    }

    /// The reply has ended: what is still held, as text or calls.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let rest = std::mem::take(&mut self.buf);
        let state = std::mem::replace(&mut self.state, State::Text);
        match state {
            // A reply cut inside a harmony message: what it held, as that message's kind.
            State::HarmonyBody(channel) => {
                let mut out: Vec<ToolEvent> = self.harmony_piece(&channel, rest).into_iter().collect();
                out.extend(self.harmony_call(&channel));
                return out;
            }
            State::HarmonyHeader if rest.trim().is_empty() => return Vec::new(),
            _ => {}
        }
        let (body, opener) = match (state, self.syntax) {
            (State::InCall, _) => (rest.as_str(), TOOL_CALL_OPEN),
            (State::Rest, ToolSyntax::Mistral) => (rest.as_str(), MISTRAL_CALLS),
            (State::Rest, _) => (rest.as_str(), ""),
            // Whitespace alone after calls is not content.
            _ if self.calls > 0 && rest.trim().is_empty() => return Vec::new(),
            _ => return if rest.is_empty() { Vec::new() } else { vec![ToolEvent::Text(rest)] },
        };
        match self.parse_calls(body) {
            Some(calls) => calls.into_iter().map(ToolEvent::Call).collect(),
            None => vec![ToolEvent::Text(format!("{}{opener}{body}", std::mem::take(&mut self.gap)))],
        }
    }

    /// Releases `buf[..upto]` as text but for its trailing whitespace, held until text follows
    /// it (whitespace before a call or at the end of a reply with calls is not content).
    fn release(&mut self, upto: usize) -> Option<ToolEvent> {
        let upto = self.buf[..upto].trim_end().len();
        if upto == 0 {
            return None;
        }
        Some(ToolEvent::Text(self.buf.drain(..upto).collect()))
    }

    /// The calls in a block's text, or `None` when any of it is malformed or names an unknown
    /// function.
    fn parse_calls(&mut self, body: &str) -> Option<Vec<ToolCall>> {
        let body = body.trim();
        let objects: Vec<Json> = match self.syntax {
            ToolSyntax::Mistral if !body.starts_with('[') => mistral_named_calls(body)?,
            ToolSyntax::LlamaJson => {
                let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
                // Llama 3.1 may put several calls in one reply, separated by `;`.
                match serde_json::from_str::<Json>(body) {
                    Ok(v) => vec![v],
                    Err(_) => body.split(';').map(|s| serde_json::from_str(s.trim()).ok()).collect::<Option<Vec<Json>>>()?,
                }
            }
            _ => match serde_json::from_str::<Json>(body).ok()? {
                Json::Array(items) => items,
                one => vec![one],
            },
        };
        if objects.is_empty() {
            return None;
        }
        let mut calls = Vec::with_capacity(objects.len());
        for o in &objects {
            let name = o.get("name").and_then(Json::as_str)?;
            if !self.names.iter().any(|n| n == name) {
                return None;
            }
            let args = o.get("arguments").or_else(|| o.get("parameters")).cloned().unwrap_or_else(|| json!({}));
            // Arguments written as a string of JSON (some models do) are read as that JSON.
            let args = match args {
                Json::String(s) => serde_json::from_str::<Json>(&s).ok().filter(Json::is_object)?,
                Json::Object(_) => args,
                _ => return None,
            };
            calls.push(ToolCall { id: self.next_id(), name: name.to_string(), arguments: args.to_string() });
        }
        Some(calls)
    }

    /// Nine letters and digits (Mistral's templates refuse any other id), different per call
    /// and per request.
    fn next_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        self.calls += 1;
        let nanos = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        // splitmix64 of the request's seed, the clock and the call's number.
        let mut x = self.seed ^ nanos.rotate_left(17) ^ (self.calls as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..9)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                ALPHABET[((z ^ (z >> 31)) % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }
}

/// Mistral's newer syntax after `[TOOL_CALLS]`: `name[ARGS]{…}` (or `name{…}`), once per call,
/// each call after its own `[TOOL_CALLS]`.
fn mistral_named_calls(body: &str) -> Option<Vec<Json>> {
    let mut out = Vec::new();
    for part in body.split(MISTRAL_CALLS).map(str::trim).filter(|p| !p.is_empty()) {
        let (name, args) = match part.split_once(MISTRAL_ARGS) {
            Some((name, args)) => (name.trim(), args.trim()),
            None => part.split_at(part.find('{')?),
        };
        let args: Json = serde_json::from_str(args.trim()).ok()?;
        out.push(json!({ "name": name.trim(), "arguments": args }));
    }
    Some(out)
}

/// A request's output constraint: the one it asks for, or the call its `tool_choice` requires
/// (`forced_call`); both at once is an error.
pub fn output_grammar(tools: Option<&ToolPrompt>, tokenizer: Option<&TextTokenizer>, requested: Option<Grammar>) -> Result<Option<Grammar>> {
    let forced = tools.zip(tokenizer).and_then(|(t, tok)| t.forced_call(tok));
    match (requested, forced) {
        (Some(_), Some(_)) => Err(bad("an output constraint (response format) cannot be combined with a required tool call")),
        (requested, forced) => Ok(requested.or(forced)),
    }
}

/// A whole reply's text and calls.
pub fn parse_reply(prompt: &ToolPrompt, reply: &str) -> (String, Vec<ToolCall>) {
    let mut stream = prompt.stream(None, 0);
    let mut events = stream.push(reply);
    events.extend(stream.finish());
    ToolEvent::split(events)
}

/// The assistant message a reply makes, as OpenAI's API returns it and templates take it back.
pub fn assistant_message(text: &str, calls: &[ToolCall]) -> Json {
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert("content".into(), if text.is_empty() && !calls.is_empty() { Json::Null } else { json!(text) });
    if !calls.is_empty() {
        m.insert("tool_calls".into(), calls.iter().map(ToolCall::to_openai).collect());
    }
    Json::Object(m)
}
