//! What a model brings for turning conversations into token ids: its tokenizer, its chat
//! template and whether raw prompts start with BOS, read from GGUF metadata or from a Hugging
//! Face directory's `tokenizer.json` / `tokenizer_config.json`. Native file loading and the wasm
//! API both build it here.

use serde_json::Value as Json;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::embed::EmbeddingSpec;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::TextTokenizer;
use crate::tools::{messages_for, ToolPrompt, Tools};

pub struct TextSetup {
    pub tokenizer: Option<TextTokenizer>,
    pub chat_template: Option<ChatTemplate>,
    /// Whether raw prompts start with BOS (`add_bos_token`).
    pub add_bos: bool,
    /// GGUF `add_eos_token`: embedding inputs end with EOS.
    pub add_eos: bool,
    /// The tokenizer is a tokenizer.json, whose post-processor says what an input is made of
    /// (GGUF metadata says it with `add_bos` / `add_eos`).
    pub post_processed: bool,
    /// The model is an embedding model: how its hidden states become a vector.
    pub embedding: Option<EmbeddingSpec>,
}

/// A token named in `tokenizer_config.json`: a string, or an AddedToken object's `content`.
fn config_token(cfg: &Json, key: &str) -> Option<String> {
    cfg.get(key).and_then(|v| v.as_str().or_else(|| v.get("content").and_then(Json::as_str))).map(String::from)
}

impl TextSetup {
    /// From GGUF `tokenizer.*` metadata; a file without a vocabulary has no tokenizer.
    pub fn from_gguf(meta: &GgufFile) -> Result<Self> {
        let tokenizer = if meta.get("tokenizer.ggml.tokens").is_ok() { Some(TextTokenizer::from_gguf(meta)?) } else { None };
        let token = |key: &str| meta.get_u64(key).ok().and_then(|id| tokenizer.as_ref().and_then(|t| t.id_to_token(id as u32)));
        let chat_template = meta.get_str("tokenizer.chat_template").ok().map(|s| ChatTemplate {
            source: s.to_string(),
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
        });
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
        let spm = meta.get_str("tokenizer.ggml.model").is_ok_and(|m| m == "llama");
        let add_bos = meta.get_u64("tokenizer.ggml.add_bos_token").map(|v| v != 0).unwrap_or(spm);
        let add_eos = meta.get_u64("tokenizer.ggml.add_eos_token").is_ok_and(|v| v != 0);
        Ok(Self { tokenizer, chat_template, add_bos, add_eos, post_processed: false, embedding: EmbeddingSpec::from_gguf(meta) })
    }

    /// From the contents of `tokenizer.json` and `tokenizer_config.json` (either may be absent);
    /// `jinja` is a separate `chat_template.jinja`, used when the config has no template. The
    /// template's end-of-turn token is added to `config`'s stop tokens.
    pub fn from_hf(tokenizer_json: Option<&[u8]>, tokenizer_config: Option<&Json>, jinja: Option<String>, config: &mut ModelConfig) -> Result<Self> {
        let tokenizer = tokenizer_json.map(TextTokenizer::from_json_bytes).transpose()?;
        let cfg = tokenizer_config.unwrap_or(&Json::Null);
        let source = cfg.get("chat_template").and_then(Json::as_str).map(String::from).or(jinja);
        let chat_template = source.map(|source| ChatTemplate { source, bos_token: config_token(cfg, "bos_token"), eos_token: config_token(cfg, "eos_token") });
        if let Some(id) = config_token(cfg, "eos_token").and_then(|eos| tokenizer.as_ref()?.token_to_id(&eos)) {
            config.add_stop_token(id);
        }
        let add_bos = cfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false);
        Ok(Self { tokenizer, chat_template, add_bos, add_eos: false, post_processed: true, embedding: None })
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| ModelError::Tokenizer("this model has no tokenizer".into()))
    }

    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_ref().ok_or_else(|| ModelError::ChatTemplate("this model has no chat template".into()))
    }

    /// Token ids of a raw prompt, with BOS (`bos_token_id`) first when the model asks for it.
    pub fn prompt_ids(&self, text: &str, bos_token_id: Option<u32>) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer()?.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, bos_token_id) {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Token ids of an input to embed: what the model's inputs are made of, as its
    /// tokenizer.json's post-processor (or GGUF's `add_bos_token` / `add_eos_token`) says.
    pub fn embedding_ids(&self, text: &str, bos_token_id: Option<u32>, eos_token_id: Option<u32>) -> Result<Vec<u32>> {
        if self.post_processed {
            return self.tokenizer()?.encode_with_specials(text);
        }
        let mut ids = self.prompt_ids(text, bos_token_id)?;
        if let (true, Some(eos)) = (self.add_eos, eos_token_id) {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Token ids of `messages` (`[{role, content}]`) rendered with the chat template and a
    /// generation prompt; the template writes any BOS itself.
    pub fn chat_prompt_ids(&self, messages: &Json) -> Result<Vec<u32>> {
        self.chat_prompt_ids_with(messages, None, None)
    }

    /// As [`TextSetup::chat_prompt_ids`], with tools offered to the model ([`ToolPrompt`]);
    /// calls and results in `messages` may be in OpenAI's shape either way. `template_kwargs`
    /// (a JSON object, as vLLM's and llama-server's `chat_template_kwargs`) adds variables to
    /// the template, such as `{"enable_thinking": false}` for Qwen3 and SmolLM3.
    pub fn chat_prompt_ids_with(&self, messages: &Json, tools: Option<&ToolPrompt>, template_kwargs: Option<&Json>) -> Result<Vec<u32>> {
        let template = self.chat_template()?;
        let extra = template_kwargs.map(check_template_kwargs).transpose()?;
        let prompt = match tools {
            Some(tools) => tools.render(template, messages, true, extra)?,
            None => template.render(&messages_for(template, messages), true, extra)?,
        };
        self.tokenizer()?.encode(&prompt)
    }

    /// The opening every next user turn after `messages` (a conversation ending with the
    /// model's reply) starts with: the conversation, the reply closed and the next user
    /// message opened, as template and tokenizer make them. It is prefilled while the user
    /// types ([`next_turn_opening`]); `None` where no template or nothing is shared.
    pub fn next_turn_opening(&self, messages: &Json, tools: Option<&ToolPrompt>, template_kwargs: Option<&Json>) -> Result<Option<NextTurnOpening>> {
        next_turn_opening(messages, |m| self.chat_prompt_ids_with(m, tools, template_kwargs))
    }

    /// `tools` and `tool_choice` for this model's template: `None` with `tool_choice: "none"`.
    pub fn tool_prompt(&self, tools: &Json, tool_choice: &Json) -> Result<Option<ToolPrompt>> {
        Ok(ToolPrompt::new(self.chat_template()?, Tools::new(tools, tool_choice)?))
    }
}

/// Variables the renderer sets itself: a request may not replace them.
const RESERVED_TEMPLATE_VARIABLES: &[&str] = &["messages", "add_generation_prompt", "bos_token", "eos_token", "tools"];

/// `chat_template_kwargs` as the template gets them: an object that names no variable the
/// renderer sets (`tools` comes with the request's tools, the others from the model).
fn check_template_kwargs(kwargs: &Json) -> Result<&Json> {
    let Json::Object(map) = kwargs else {
        return Err(ModelError::ChatTemplate(format!("chat_template_kwargs must be an object, not {kwargs}")));
    };
    if let Some(k) = map.keys().find(|k| RESERVED_TEMPLATE_VARIABLES.contains(&k.as_str())) {
        return Err(ModelError::ChatTemplate(format!("chat_template_kwargs may not set `{k}`: the request or the model gives it")));
    }
    Ok(kwargs)
}

/// A probe prompt (the conversation and a user message) whose first `shared` ids every next
/// user turn's prompt starts with, whatever the user writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextTurnOpening {
    pub probe_ids: Vec<u32>,
    pub shared: usize,
}

/// User messages unlike each other in their first character (letter, digit, punctuation):
/// where a tokenizer merges a template's last characters with the message's first, their
/// prompts part before it.
const NEXT_TURN_PROBES: [&str; 3] = ["Hello", "2", "("];

/// [`TextSetup::next_turn_opening`] over any prompt maker (`prompt_ids`: the token ids of a
/// conversation with a generation prompt). The opening is the longest prefix the probes'
/// prompts share. It is a guess only in that a real message could merge with the template
/// even earlier: the next request's longest-common-prefix reuse ([`crate::Session`]) decides
/// what the cache really serves, so a wrong guess costs the tokens run ahead, never a wrong
/// answer.
pub fn next_turn_opening(messages: &Json, prompt_ids: impl Fn(&Json) -> Result<Vec<u32>>) -> Result<Option<NextTurnOpening>> {
    let Json::Array(conversation) = messages else {
        return Err(ModelError::ChatTemplate("messages must be an array".into()));
    };
    let probe = |content: &str| {
        let mut m = conversation.clone();
        m.push(serde_json::json!({ "role": "user", "content": content }));
        prompt_ids(&Json::Array(m))
    };
    let probe_ids = probe(NEXT_TURN_PROBES[0])?;
    let mut shared = probe_ids.len();
    for content in &NEXT_TURN_PROBES[1..] {
        let other = probe(content)?;
        shared = shared.min(probe_ids.iter().zip(&other).take_while(|(a, b)| a == b).count());
    }
    // A template that drops the user's words leaves nothing after the opening to run.
    Ok((shared > 0 && shared < probe_ids.len()).then_some(NextTurnOpening { probe_ids, shared }))
}
