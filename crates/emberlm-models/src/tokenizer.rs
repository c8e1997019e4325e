//! Text ↔ token ids with the Hugging Face `tokenizers` crate: from a model's `tokenizer.json`,
//! or rebuilt from GGUF metadata (`tokenizer.ggml.*`) the way transformers' GGUF loader builds
//! it, as a `tokenizer.json` document handed to the same crate.

use serde_json::{json, Value as Json};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// GPT-2's byte → printable character table: byte-level vocabularies spell every byte this way.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("bmp")
        };
    }
    table
}

/// llama.cpp `tokenizer.ggml.pre` names whose split regex differs from GPT-2's.
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

impl TextTokenizer {
    /// From the contents of a `tokenizer.json`.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self { inner: tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)? })
    }

    /// From GGUF metadata. Byte-level BPE (`gpt2`, used by Llama 3, Qwen, SmolLM2, ...) only;
    /// SentencePiece (`llama`) vocabularies are refused with an error naming them.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!("GGUF tokenizer model `{model}` is not supported yet (supported: gpt2 byte-level BPE)")));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            f.get_array(key)?
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ModelError::Tokenizer(format!("`{key}` holds a {}, not strings", other.type_name()))),
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = f.get_array("tokenizer.ggml.token_type").map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect()).unwrap_or_default();
        let table = byte_to_char();
        let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            // A token outside the byte alphabet is stored as raw text: respell its bytes.
            let spelled = if token.chars().all(|c| alphabet.contains(&c)) { token.clone() } else { token.bytes().map(|b| table[b as usize]).collect() };
            vocab.insert(spelled.clone(), json!(id));
            // 3 = control (special, matched whole), 4 = user-defined (matched whole, not special).
            match types.get(id) {
                Some(3) if spelled == *token => added
                    .push(json!({"id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})),
                Some(4) => added
                    .push(json!({"id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false})),
                _ => {}
            }
        }
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let pre = match f.get_str("tokenizer.ggml.pre").ok().and_then(split_regex) {
            Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level(false)]}),
            None => byte_level(true),
        };
        let doc: Json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre, "post_processor": null, "decoder": byte_level(true),
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        Self::from_json_bytes(doc.to_string().as_bytes())
    }

    /// Token ids of `text`; special-token strings in the text become their ids. No BOS is added
    /// here: chat templates write it, and raw prompts add it through the caller's choice.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a stream of ids into text pieces as soon as they are whole characters (a multi-byte
/// character may span several byte-level tokens). Uses `tokenizers`' own stream step, which
/// decodes only a short window of recent ids per token instead of the whole output.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
    skip_special: bool,
}

impl StreamDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self { ids: Vec::new(), prefix: String::new(), prefix_index: 0, skip_special }
    }

    /// Adds a token and returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        let piece = tokenizers::step_decode_stream(&tok.inner, vec![id], self.skip_special, &mut self.ids, &mut self.prefix, &mut self.prefix_index)
            .map_err(tok_err)?;
        Ok(piece.unwrap_or_default())
    }
}
