//! Opening models from the local file system (native builds): a `.gguf` file (its sibling
//! shards found from a split name) or a Hugging Face model directory (`config.json` +
//! `model.safetensors` or `model.safetensors.index.json` + shards).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::config::ModelConfig;
use crate::embed::{module_folder, Dense, EmbeddingSpec};
use crate::error::{ModelError, Result};
use crate::gguf::{FileSource, GgufFile};
use crate::model::{LoadOptions, Model};
use crate::safetensors::{self, SafetensorsStore};
use crate::text::TextSetup;
use crate::weights::{gguf_shard_names, GgufStore};

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::File { path: path.display().to_string(), reason: reason.to_string() }
}

pub fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    crate::config::parse_json(&text).map_err(|e| file_err(path, format!("invalid JSON: {e}")))
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
    if !dir.join("config.json").is_file() {
        // Say what a model directory is, and point at a GGUF file when the directory holds one.
        let mut ggufs: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.ends_with(".gguf")).collect())
            .unwrap_or_default();
        ggufs.sort();
        let hint = match ggufs.first() {
            Some(name) => format!("; it holds {name}: pass that file as the model"),
            None => String::new(),
        };
        return Err(file_err(
            dir,
            format!("not a model directory: a Hugging Face model directory holds config.json and model.safetensors (or model.safetensors.index.json and its shards){hint}"),
        ));
    }
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
    pub text: TextSetup,
}

pub enum LocalWeights {
    Gguf(GgufStore<FileSource>),
    Safetensors(SafetensorsStore<FileSource>),
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    if path.exists() {
        std::fs::read(path).map(Some).map_err(|e| file_err(path, e))
    } else {
        Ok(None)
    }
}

/// A sentence-transformers model's pooling and Dense modules (`None` without a pooling module):
/// what makes it an embedding model. Module folders are taken only as plain names inside `dir`.
fn sentence_transformers(dir: &Path, modules: &Json) -> Result<Option<EmbeddingSpec>> {
    let folder = |m: &Json| -> Result<PathBuf> { Ok(dir.join(module_folder(m).map_err(|e| file_err(&dir.join("modules.json"), e))?)) };
    let of_type = |suffix: &'static str| modules.as_array().into_iter().flatten().filter(move |m| m["type"].as_str().is_some_and(|t| t.ends_with(suffix)));
    let pooling = match of_type(".Pooling").next() {
        Some(m) => {
            let p = folder(m)?.join("config.json");
            if p.is_file() {
                Some(read_json(&p)?)
            } else {
                None
            }
        }
        None => None,
    };
    let mut dense = Vec::new();
    for name in EmbeddingSpec::dense_folders(modules).map_err(|e| file_err(&dir.join("modules.json"), e))? {
        let dir = dir.join(name);
        let weights = dir.join("model.safetensors");
        // A projection holds at most MAX_DENSE_VALUES f32 values: a larger file is not read.
        let size = std::fs::metadata(&weights).map_err(|e| file_err(&weights, e))?.len();
        if size > (crate::embed::MAX_DENSE_VALUES as u64) * 4 + (1 << 20) {
            return Err(file_err(&weights, format!("{size} bytes is more than a dense projection may hold")));
        }
        let bytes = std::fs::read(&weights).map_err(|e| file_err(&weights, e))?;
        dense.push(Dense::from_sentence_transformers(&read_json(&dir.join("config.json"))?, &bytes).map_err(|e| file_err(&dir, e))?);
    }
    EmbeddingSpec::from_sentence_transformers(modules, pooling.as_ref(), dense)
}

impl LocalModel {
    /// `path`: a `.gguf` file (any shard of a split model) or a Hugging Face model directory.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let hf = open_hf_dir(path)?;
            let mut config = hf.config;
            let tokenizer_json = read_if_exists(&path.join("tokenizer.json"))?;
            let cfg_path = path.join("tokenizer_config.json");
            let tokenizer_config = if cfg_path.exists() { Some(read_json(&cfg_path)?) } else { None };
            let jinja = read_if_exists(&path.join("chat_template.jinja"))?.map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut text = TextSetup::from_hf(tokenizer_json.as_deref(), tokenizer_config.as_ref(), jinja, &mut config)?;
            // A sentence-transformers model: its pooling makes it an embedding model.
            let modules = path.join("modules.json");
            if modules.is_file() {
                text.embedding = sentence_transformers(path, &read_json(&modules)?)?;
            }
            Ok(Self { weights: LocalWeights::Safetensors(hf.store), config, text })
        } else {
            let store = open_gguf(path)?;
            let config = ModelConfig::from_gguf(store.metadata())?;
            let mut text = TextSetup::from_gguf(store.metadata())?;
            if let Some(spec) = &mut text.embedding {
                spec.dense = Dense::from_gguf(&store)?;
            }
            Ok(Self { weights: LocalWeights::Gguf(store), config, text })
        }
    }

    /// Uploads the weights.
    pub fn load<B: crate::Backend>(&self, dev: &B, options: &LoadOptions) -> Result<Model<B>> {
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
