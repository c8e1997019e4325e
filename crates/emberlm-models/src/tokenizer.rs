//! Text ↔ token ids with the Hugging Face `tokenizers` crate: from a model's `tokenizer.json`,
//! or rebuilt from GGUF metadata (`tokenizer.ggml.*`) the way transformers' GGUF loader builds
//! it, as a `tokenizer.json` document handed to the same crate.

use serde_json::{json, Value as Json};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// How vocabulary strings spell bytes, read from the decoder once.
    spelling: Spelling,
}

/// How a vocabulary string maps to the bytes it stands for ([`TextTokenizer::token_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte-level alphabet: one character per byte ([`byte_to_char`]).
    ByteLevel,
    /// SentencePiece: "▁" is a space; with byte fallback, `<0xHH>` pieces are single bytes.
    Metaspace { byte_fallback: bool },
    /// Anything else: the string's own UTF-8.
    Plain,
}

impl Spelling {
    /// Read from the `decoder` of a tokenizer.json document (a `Sequence`'s parts too): a
    /// `Metaspace` decoder, or a `Replace` of "▁", means SentencePiece spelling.
    fn of(decoder: &Json) -> Self {
        let mut parts = Vec::new();
        let mut metaspace = false;
        let mut stack = vec![decoder];
        while let Some(d) = stack.pop() {
            let kind = d.get("type").and_then(Json::as_str).unwrap_or("");
            metaspace |= kind == "Metaspace" || (kind == "Replace" && d["pattern"]["String"].as_str() == Some("\u{2581}"));
            parts.push(kind);
            stack.extend(d.get("decoders").and_then(Json::as_array).into_iter().flatten());
        }
        if parts.contains(&"ByteLevel") {
            Spelling::ByteLevel
        } else if metaspace {
            Spelling::Metaspace { byte_fallback: parts.contains(&"ByteFallback") }
        } else {
            Spelling::Plain
        }
    }
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

/// [`byte_to_char`] inverted, made once: indexed by a byte-level character (all below U+0144),
/// the byte it spells. `token_bytes` looks up every character of every token through it.
fn char_to_byte() -> &'static [Option<u8>] {
    static TABLE: std::sync::OnceLock<Vec<Option<u8>>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let chars = byte_to_char();
        let mut table = vec![None; chars.iter().map(|&c| c as usize + 1).max().unwrap_or(0)];
        for (b, &c) in chars.iter().enumerate() {
            table[c as usize] = Some(b as u8);
        }
        table
    })
}

/// llama.cpp `tokenizer.ggml.pre` names whose split regexes differ from GPT-2's: one, or several
/// applied in turn (each splits the pieces the one before left), as the models' own
/// tokenizer.json files chain `Split` pre-tokenizers.
fn split_regexes(pre: &str) -> Option<&'static [&'static str]> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // DeepSeek LLM / V2 (llama.cpp's `deepseek-llm`): letters of the Latin, Greek, Cyrillic, ...
    // blocks, ASCII and full-width punctuation, CJK runs and digits apart.
    const DEEPSEEK_LLM: &[&str] = &["[\r\n]", "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+", "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"];
    // DeepSeek-V3 / R1 (`deepseek-v3`).
    const DEEPSEEK3: &[&str] = &[
        "\\p{N}{1,3}",
        "[一-龥぀-ゟ゠-ヿ]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    ];
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(&[LLAMA3]),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(&[QWEN2]),
        "deepseek-llm" => Some(DEEPSEEK_LLM),
        "deepseek-v3" => Some(DEEPSEEK3),
        _ => None,
    }
}

fn added_token(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special})
}

fn gguf_strings(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    f.get_array(key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(ModelError::Tokenizer(format!("`{key}` holds a {}, not strings", other.type_name()))),
        })
        .collect()
}

/// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
fn gguf_token_types(f: &GgufFile) -> Vec<u64> {
    f.get_array("tokenizer.ggml.token_type").map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect()).unwrap_or_default()
}

/// Runs a call into the tokenizers crate, turning a panic inside it (a hostile tokenizer.json's
/// normalizer, pre-tokenizer or decoder) into an error. Natively only: wasm32 aborts on panic,
/// so there the inputs are checked before they reach the crate where we can.
fn guarded<T>(what: &str, call: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|p| {
        let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        Err(ModelError::Tokenizer(format!("the tokenizer failed while {what}: {why}")))
    })
}

/// The longest token that merges are generated for (SentencePiece's own default limit is 16
/// characters).
const MAX_MERGED_TOKEN_BYTES: usize = 1024;

/// BPE merges implied by a vocabulary (transformers' `generate_merges`): for each distinct token
/// in file order, every split into two vocabulary tokens, ordered by the parts' ids; then all of
/// them by (rank of the token, lengths of the parts), highest first, ties kept in that order.
fn merges_from_vocab(tokens: &[String], ranks: &[f64]) -> Vec<(String, String)> {
    use std::collections::HashMap;
    // Python dict semantics: a repeated token keeps its first position but its last id and rank.
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut rank: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t.as_str());
        }
        rank.insert(t, ranks.get(i).copied().unwrap_or(0.0));
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    // Splitting a token costs O(length²) (every split hashes both halves): a hostile token of
    // 400k characters took 19 s. Real pieces are a few dozen bytes; longer ones get no merges.
    for token in order.into_iter().filter(|t| t.len() <= MAX_MERGED_TOKEN_BYTES) {
        let score = rank[token];
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|&(l, r, _)| (id[l], id[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

impl TextTokenizer {
    /// From the contents of a `tokenizer.json`.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        // tokenizers re-parses parts of the document and unwraps the result (a control character
        // in a decoder's string panicked in the fuzzer): strict JSON first, so that is an error
        // in wasm too, where a panic cannot be caught. The same pass keeps the decoder (the rest
        // is skipped), which says how the vocabulary spells bytes.
        #[derive(serde::Deserialize)]
        struct Document {
            #[serde(default)]
            decoder: Json,
        }
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| ModelError::Tokenizer(format!("tokenizer.json is not valid JSON: {e}")))?;
        let mut inner = guarded("reading tokenizer.json", || tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err))?;
        // transformers' chat path ignores these: a `truncation.max_length` of 4 must not cut a
        // prompt to 4 tokens, nor padding add tokens to it.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(tok_err)?;
        Ok(Self { inner, spelling: Spelling::of(&doc.decoder) })
    }

    /// From GGUF metadata: byte-level BPE (`gpt2`: Llama 3, Qwen, SmolLM2, ...) or SentencePiece
    /// BPE (`llama`: Llama 2, Mistral, Phi-3, Gemma), built as transformers' GGUF loader builds them.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        match f.get_str("tokenizer.ggml.model")? {
            "gpt2" => Self::byte_level_from_gguf(f),
            "llama" => Self::sentencepiece_from_gguf(f),
            other => Err(ModelError::Tokenizer(format!("GGUF tokenizer model `{other}` is not supported yet (supported: gpt2, llama)"))),
        }
    }

    fn byte_level_from_gguf(f: &GgufFile) -> Result<Self> {
        let tokens = gguf_strings(f, "tokenizer.ggml.tokens")?;
        let merges = gguf_strings(f, "tokenizer.ggml.merges")?;
        let types = gguf_token_types(f);
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
                Some(3) if spelled == *token => added.push(added_token(id, token, true)),
                Some(4) => added.push(added_token(id, token, false)),
                _ => {}
            }
        }
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let pre = match f.get_str("tokenizer.ggml.pre").ok().and_then(split_regexes) {
            Some(regexes) => {
                let mut steps: Vec<Json> =
                    regexes.iter().map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false})).collect();
                steps.push(byte_level(false));
                json!({"type": "Sequence", "pretokenizers": steps})
            }
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

    /// SentencePiece BPE with byte fallback. Merges come from the file, or are rebuilt from the
    /// vocabulary as transformers does (every split of a token into two vocabulary tokens, ranked
    /// by the token's score; for Gemma by file order). Llama-style files prepend "▁" with
    /// `Metaspace`, Phi-3 with a normalizer, Gemma not at all (and spells runs of spaces as "▁").
    fn sentencepiece_from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.get_str("general.architecture").unwrap_or("llama");
        let gemma = arch.starts_with("gemma");
        let mut tokens = gguf_strings(f, "tokenizer.ggml.tokens")?;
        if gemma {
            for t in tokens.iter_mut() {
                if t.contains(' ') && t.chars().all(char::is_whitespace) {
                    *t = "\u{2581}".repeat(t.chars().count());
                }
            }
        }
        let types = gguf_token_types(f);
        let id_of = |key: &str| f.get_u64(key).ok().map(|v| v as usize).filter(|&i| i < tokens.len());
        let unk = id_of("tokenizer.ggml.unknown_token_id");
        let specials: Vec<usize> = ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id"]
            .iter()
            .filter_map(|k| id_of(k))
            .chain(unk)
            .collect();
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            vocab.insert(token.clone(), json!(id));
            match types.get(id) {
                Some(3) => added.push(added_token(id, token, true)),
                Some(4) => added.push(added_token(id, token, false)),
                _ if specials.contains(&id) => added.push(added_token(id, token, true)),
                _ => {}
            }
        }
        let merges: Vec<Json> = match f.get("tokenizer.ggml.merges") {
            Ok(_) => gguf_strings(f, "tokenizer.ggml.merges")?.into_iter().map(Json::from).collect(),
            Err(_) => {
                let ranks: Vec<f64> = if gemma {
                    (0..tokens.len()).map(|i| -(i as f64)).collect()
                } else {
                    f.get_array("tokenizer.ggml.scores")?.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect()
                };
                merges_from_vocab(&tokens, &ranks).into_iter().map(|(l, r)| json!([l, r])).collect()
            }
        };
        let space = "\u{2581}";
        let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": space});
        let (normalizer, pre_tokenizer) = if gemma {
            (replace_space, json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}))
        } else if arch == "phi3" {
            (json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": space}, replace_space]}), Json::Null)
        } else {
            (Json::Null, json!({"type": "Metaspace", "replacement": space, "prepend_scheme": "first", "split": false}))
        };
        let mut decoders =
            vec![json!({"type": "Replace", "pattern": {"String": space}, "content": " "}), json!({"type": "ByteFallback"}), json!({"type": "Fuse"})];
        if !gemma {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let doc: Json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": if gemma { unk.map(|i| Json::from(tokens[i].clone())).unwrap_or(Json::Null) } else { Json::Null },
                      "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Self::from_json_bytes(doc.to_string().as_bytes())
    }

    /// Token ids of `text`; special-token strings in the text become their ids. No BOS is added
    /// here: chat templates write it, and raw prompts add it through the caller's choice.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        guarded("encoding", || Ok(self.inner.encode(text, false).map_err(tok_err)?.get_ids().to_vec()))
    }

    /// As [`TextTokenizer::encode`], with the special tokens tokenizer.json's post-processor
    /// adds to an input (none for a tokenizer rebuilt from GGUF metadata).
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>> {
        guarded("encoding", || Ok(self.inner.encode(text, true).map_err(tok_err)?.get_ids().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guarded("decoding", || self.inner.decode(ids, skip_special).map_err(tok_err))
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

    /// Whether `id` is a special token (end of turn, BOS, ...: control, not text).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// The bytes token `id` stands for in the output (an added or special token: its text), as
    /// the decoder would write them before joining tokens: a byte-level token may be part of a
    /// UTF-8 character, a SentencePiece word piece keeps its leading space. `None` past the
    /// vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if let Some(added) = self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id) {
            return Some(added.content.clone().into_bytes());
        }
        let piece = self.inner.id_to_token(id)?;
        Some(match self.spelling {
            Spelling::ByteLevel => {
                let bytes = char_to_byte();
                let mut out = Vec::with_capacity(piece.len());
                for c in piece.chars() {
                    match bytes.get(c as usize).copied().flatten() {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
            Spelling::Metaspace { byte_fallback } => match byte_fallback.then(|| fallback_byte(&piece)).flatten() {
                Some(b) => vec![b],
                None => piece.replace('\u{2581}', " ").into_bytes(),
            },
            Spelling::Plain => piece.into_bytes(),
        })
    }
}

/// The byte of a SentencePiece byte-fallback piece `<0xHH>`.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_token_does_not_make_merge_generation_quadratic() {
        let huge = "a".repeat(400_000);
        let tokens: Vec<String> = ["a", "b", "ab", "aa"].iter().map(|s| s.to_string()).chain([huge]).collect();
        let started = web_time::Instant::now();
        let merges = merges_from_vocab(&tokens, &[0.0, -1.0, -2.0, -3.0, -4.0]);
        assert!(started.elapsed().as_secs_f64() < 1.0, "{:?}", started.elapsed());
        assert_eq!(merges, [("a".to_string(), "b".to_string()), ("a".to_string(), "a".to_string())]);
    }
}
