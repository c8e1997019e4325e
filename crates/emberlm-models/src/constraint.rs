//! Constrained decoding: generation that can only produce text a grammar accepts (a JSON
//! schema, any JSON object, a Lark grammar or a regex), with llguidance computing each step's
//! allowed tokens. [`Constrainer`] is made once per tokenizer (the vocabulary as bytes, in
//! llguidance's token trie); [`Constrainer::start`] gives one generation its [`Constraint`],
//! which masks the logits before each token is sampled and follows the tokens taken.
//!
//! A grammar comes from the caller, so it is checked before use and bounded: llguidance's
//! parser limits (lexer states, grammar size, items and time per step) turn a hostile grammar
//! into an error rather than a hang.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: { type: 'json_object' }`).
    JsonObject,
    /// JSON valid against this schema (OpenAI's `json_schema`).
    JsonSchema(serde_json::Value),
    /// A Lark grammar, llguidance's dialect (its `start` rule is the output).
    Lark(String),
    /// The whole output matches this regex.
    Regex(String),
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" }))),
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
        }
    }
}

/// At most one space between JSON tokens (`{"a": 1, "b": 2}` or compact), unless the schema
/// says otherwise in llguidance's `x-guidance` options: free whitespace lets a model pad its
/// output with blank lines until `max_tokens` runs out, a failure mode of small models.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_pattern": "[ ]?" }));
    }
    schema
}

/// The vocabulary as llguidance reads it: each token's bytes, special tokens marked.
struct Vocabulary {
    trie: TokTrie,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Only for llguidance's forced-token shortcuts, which generation here does not take: the
    /// trie's longest-match split stands in for the tokenizer.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }
}

/// An error from llguidance, cut to its first 500 characters: its messages quote the grammar's
/// offending line, which the caller wrote and may be megabytes long.
fn constraint_error(e: impl std::fmt::Display) -> ModelError {
    let text = e.to_string();
    match text.char_indices().nth(500) {
        Some((cut, _)) => ModelError::Constraint(format!("{}…", &text[..cut])),
        None => ModelError::Constraint(text),
    }
}

/// The most lexer states a grammar may build (llguidance's default is 250,000).
pub const MAX_LEXER_STATES: usize = 50_000;

/// Constraints for one tokenizer's vocabulary; make once per model, start one per generation.
pub struct Constrainer {
    factory: ParserFactory,
    eos: u32,
}

impl Constrainer {
    /// `eos`: the token that ends the output once the grammar is complete (any of the
    /// generation's stop tokens is allowed wherever this one is).
    pub fn new(tokenizer: &TextTokenizer, eos: u32) -> Result<Self> {
        let vocab = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| match tokenizer.token_bytes(id) {
                // Special tokens are never part of the grammar's text: marked, as toktrie expects.
                Some(bytes) if tokenizer.is_special(id) => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], &bytes].concat(),
                Some(bytes) => bytes,
                None => Vec::new(),
            })
            .collect();
        let info = TokRxInfo::new(vocab as u32, eos);
        let env: TokEnv = Arc::new(Vocabulary { trie: TokTrie::from(&info, &words) });
        let mut factory = ParserFactory::new_simple(&env).map_err(constraint_error)?;
        factory.set_stderr_log_level(0);
        // llguidance's bounds on a grammar's size and on the work of each step stay as they are
        // (docs/SECURITY.md); its lexer states are capped lower (1–2 kB each: ~100 MB at most,
        // not ~500 MB, in a browser tab), and errors leave out the grammar and the tokens so far.
        let limits = factory.limits_mut();
        limits.max_lexer_states = MAX_LEXER_STATES;
        limits.verbose_errors = false;
        Ok(Self { factory, eos })
    }

    /// A fresh constraint for one generation; an invalid grammar is an error here, before any
    /// token is generated.
    pub fn start(&self, grammar: &Grammar) -> Result<Constraint> {
        let parser = self.factory.create_parser(grammar.top_level()).map_err(constraint_error)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(constraint_error(e));
        }
        Ok(Constraint { matcher, eos: self.eos, prepared: None, seconds: 0.0, masks: 0 })
    }
}

/// One generation's grammar state.
pub struct Constraint {
    matcher: Matcher,
    eos: u32,
    /// The next token's mask, computed ahead ([`Constraint::prepare`]).
    prepared: Option<SimpleVob>,
    /// Time spent computing masks and following tokens, and masks computed.
    seconds: f64,
    masks: usize,
}

impl Constraint {
    /// Sets every logit the grammar does not allow next to −∞ ([`Constraint::allowed_words`]
    /// says which).
    pub fn mask(&mut self, logits: &mut [f32], stop_tokens: &[u32]) -> Result<()> {
        let words = self.allowed_words(logits.len(), stop_tokens)?;
        let started = web_time::Instant::now();
        for (id, l) in logits.iter_mut().enumerate() {
            if !emberlm_core::ops::mask_allows(&words, id) {
                *l = f32::NEG_INFINITY;
            }
        }
        self.seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// The tokens the grammar allows next, as bits (bit `i % 32` of word `i / 32` allows token
    /// `i`; [`emberlm_core::ops::mask_words`] words over `vocab` tokens), for the CPU's mask or
    /// an argmax on the device; where the grammar allows ending, every token in `stop_tokens`
    /// is allowed, elsewhere none.
    pub fn allowed_words(&mut self, vocab: usize, stop_tokens: &[u32]) -> Result<Vec<u32>> {
        let allowed = match self.prepared.take() {
            Some(allowed) => allowed,
            None => self.compute()?,
        };
        let started = web_time::Instant::now();
        let mut words = vec![0u32; emberlm_core::ops::mask_words(vocab)];
        let known = allowed.len().min(vocab);
        let whole = known / 32;
        words[..whole].copy_from_slice(&allowed.as_slice()[..whole]);
        let mut set = |id: usize, on: bool| {
            let bit = 1u32 << (id % 32);
            if on {
                words[id / 32] |= bit;
            } else {
                words[id / 32] &= !bit;
            }
        };
        for id in whole * 32..known {
            set(id, allowed.is_allowed(id as u32));
        }
        let may_end = allowed.is_allowed(self.eos);
        for &id in stop_tokens.iter().filter(|&&id| (id as usize) < vocab) {
            set(id as usize, may_end);
        }
        self.seconds += started.elapsed().as_secs_f64();
        Ok(words)
    }

    /// Computes the next token's mask now, for [`Constraint::mask`]: called while the GPU runs
    /// the step whose logits it will mask, so the two overlap.
    pub fn prepare(&mut self) -> Result<()> {
        if self.prepared.is_none() && !self.is_complete() {
            self.prepared = Some(self.compute()?);
        }
        Ok(())
    }

    fn compute(&mut self) -> Result<SimpleVob> {
        let started = web_time::Instant::now();
        self.masks += 1;
        let allowed = self.matcher.compute_mask().map_err(constraint_error);
        self.seconds += started.elapsed().as_secs_f64();
        allowed
    }

    /// Milliseconds of constraint work (masks and state updates) per generated token so far.
    pub fn ms_per_token(&self) -> f64 {
        self.seconds * 1e3 / self.masks.max(1) as f64
    }

    /// Follows a token the generation took, unless it is one of `stop_tokens` (which end the
    /// output rather than belong to it).
    pub fn follow(&mut self, token: u32, stop_tokens: &[u32]) -> Result<()> {
        if stop_tokens.contains(&token) {
            return Ok(());
        }
        self.accept(token)
    }

    /// Follows a token the generation took (not a stop token).
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.prepared = None;
        let started = web_time::Instant::now();
        let out = self.matcher.consume_token(token).map_err(constraint_error);
        self.seconds += started.elapsed().as_secs_f64();
        out
    }

    /// The grammar allows nothing more: the output is complete.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}
