//! Opening models from the local file system (native builds): a `.gguf` file (its sibling
//! shards found from a split name) or a Hugging Face model directory (`config.json` +
//! `model.safetensors` or `model.safetensors.index.json` + shards).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{FileSource, GgufFile};
use crate::model::{LoadOptions, Model};
use crate::safetensors::{self, SafetensorsStore};
use crate::tokenizer::TextTokenizer;
use crate::weights::{gguf_shard_names, GgufStore};

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::File { path: path.display().to_string(), reason: reason.to_string() }
}

pub fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(path, format!("invalid JSON: {e}")))
}

fn open_source(path: &Path) -> Result<FileSource> {
    FileSource::open(path).map_err(|e| file_err(path, e))
}

/// Opens a GGUF model; a split model's shards are found next to the given one.
pub fn open_gguf(path: &Path) -> Result<GgufStore<FileSource>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let paths: Vec<PathBuf> = match gguf_shard_names(name) {
        Some(names) => names.iter().map(|n| path.with_file_name(n)).collect(),
        None => vec![path.to_path_buf()],
    };
    let mut shards = Vec::with_capacity(paths.len());
    for p in &paths {
        let src = open_source(p)?;
        let file = GgufFile::read(&src).map_err(|e| file_err(p, e))?;
        shards.push((file, src));
    }
    GgufStore::new(shards)
}

/// A Hugging Face model directory.
pub struct HfModelDir {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub store: SafetensorsStore<FileSource>,
}

pub fn open_hf_dir(dir: &Path) -> Result<HfModelDir> {
    let config_json = read_json(&dir.join("config.json"))?;
    let gen_path = dir.join("generation_config.json");
    let generation = if gen_path.exists() { Some(read_json(&gen_path)?) } else { None };
    let config = ModelConfig::from_hf(&config_json, generation.as_ref())?;
    let index = dir.join("model.safetensors.index.json");
    let names = if index.exists() {
        safetensors::index_files(&read_json(&index)?)?
    } else if dir.join("model.safetensors").exists() {
        vec!["model.safetensors".to_string()]
    } else {
        return Err(file_err(dir, "no model.safetensors or model.safetensors.index.json"));
    };
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        let p = dir.join(&n);
        files.push((n, open_source(&p)?));
    }
    let store = SafetensorsStore::new(files, config.arch)?;
    Ok(HfModelDir { dir: dir.to_path_buf(), config, store })
}

/// A model opened from a path, with what is needed to talk to it.
pub struct LocalModel {
    pub weights: LocalWeights,
    pub config: ModelConfig,
    pub tokenizer: Option<TextTokenizer>,
    pub chat_template: Option<ChatTemplate>,
    /// Whether raw prompts start with BOS (`add_bos_token`).
    pub add_bos: bool,
}

pub enum LocalWeights {
    Gguf(GgufStore<FileSource>),
    Safetensors(SafetensorsStore<FileSource>),
}

impl LocalModel {
    /// `path`: a `.gguf` file (any shard of a split model) or a Hugging Face model directory.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let hf = open_hf_dir(path)?;
            let tok_path = path.join("tokenizer.json");
            let tokenizer =
                if tok_path.exists() { Some(TextTokenizer::from_json_bytes(&std::fs::read(&tok_path).map_err(|e| file_err(&tok_path, e))?)?) } else { None };
            let cfg_path = path.join("tokenizer_config.json");
            let tok_cfg = if cfg_path.exists() { read_json(&cfg_path)? } else { Json::Null };
            // A token setting is a string or an AddedToken object with `content`.
            let token = |k: &str| tok_cfg.get(k).and_then(|v| v.as_str().or_else(|| v.get("content").and_then(Json::as_str))).map(String::from);
            let jinja = path.join("chat_template.jinja");
            let source = match tok_cfg.get("chat_template").and_then(Json::as_str) {
                Some(s) => Some(s.to_string()),
                None if jinja.exists() => Some(std::fs::read_to_string(&jinja).map_err(|e| file_err(&jinja, e))?),
                None => None,
            };
            let chat_template = source.map(|source| ChatTemplate { source, bos_token: token("bos_token"), eos_token: token("eos_token") });
            let add_bos = tok_cfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false);
            let mut config = hf.config;
            // The template's end-of-turn token stops generation too.
            if let (Some(tok), Some(eos)) = (&tokenizer, token("eos_token")) {
                if let Some(id) = tok.token_to_id(&eos) {
                    if !config.eos_token_ids.contains(&id) {
                        config.eos_token_ids.push(id);
                    }
                }
            }
            Ok(Self { weights: LocalWeights::Safetensors(hf.store), config, tokenizer, chat_template, add_bos })
        } else {
            let store = open_gguf(path)?;
            let meta = store.metadata();
            let config = ModelConfig::from_gguf(meta)?;
            let tokenizer = if meta.get("tokenizer.ggml.tokens").is_ok() { Some(TextTokenizer::from_gguf(meta)?) } else { None };
            let token = |key: &str| meta.get_u64(key).ok().and_then(|id| tokenizer.as_ref().and_then(|t| t.id_to_token(id as u32)));
            let chat_template = meta.get_str("tokenizer.chat_template").ok().map(|s| ChatTemplate {
                source: s.to_string(),
                bos_token: token("tokenizer.ggml.bos_token_id"),
                eos_token: token("tokenizer.ggml.eos_token_id"),
            });
            let add_bos = meta.get_u64("tokenizer.ggml.add_bos_token").map(|v| v != 0).unwrap_or(false);
            Ok(Self { weights: LocalWeights::Gguf(store), config, tokenizer, chat_template, add_bos })
        }
    }

    /// Uploads the weights.
    pub fn load(&self, dev: &emberlm_core::GpuDevice, options: &LoadOptions) -> Result<Model> {
        match &self.weights {
            LocalWeights::Gguf(store) => Model::load_gguf(dev, store, options),
            LocalWeights::Safetensors(store) => Model::load(dev, self.config.clone(), store, options),
        }
    }

    /// Whether the file's weights are already quantised (GGUF), so loading keeps them as they are.
    pub fn is_gguf(&self) -> bool {
        matches!(self.weights, LocalWeights::Gguf(_))
    }
}
