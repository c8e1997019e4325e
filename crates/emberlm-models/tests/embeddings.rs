//! Embeddings against sentence-transformers: the tiny Qwen3-Embedding-style fixture
//! (tests/fixtures/tiny/qwen3-embedding, made by make_tiny_embedding.py: last-token pooling,
//! normalised, `<|endoftext|>` appended by the tokenizer) from safetensors and from GGUF, on the
//! WebGPU backend (lavapipe here) and the CPU backend. Cosine ≥ 0.9999 at f32, as issue 15 asks.

use std::path::PathBuf;

use emberlm_core::{DType, DeviceOptions, GpuDevice};
use emberlm_models::embed::{embed, EmbeddingSpec, Pooling};
use emberlm_models::files::LocalModel;
use emberlm_models::{Backend, CpuDevice, LoadOptions, Session};
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/qwen3-embedding")
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn check<B: Backend>(dev: &B, local: &LocalModel, what: &str) {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap()).unwrap();
    let spec = local.text.embedding.unwrap_or_else(|| panic!("{what}: not read as an embedding model"));
    assert_eq!(spec, EmbeddingSpec { pooling: Pooling::Last, normalize: true }, "{what}");
    let model = local.load(dev, &LoadOptions { dtype: Some(DType::F32), context: 128 }).unwrap();
    let mut session = Session::new(dev, &model).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = local.text.embedding_ids(text, model.config.bos_token_id, model.config.eos_token_ids.first().copied()).unwrap();
        let want_ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want_ids, "{what}: {text:?}");
        let got = pollster::block_on(embed(dev, &model, &mut session, &ids, &spec)).unwrap();
        let want: Vec<f64> = case["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        let cos = cosine(&got, &want);
        let norm: f64 = got.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        eprintln!("{what} {}: cosine {cos:.7}", dev.kind().name());
        assert!(cos >= 0.9999, "{what} on {}: cosine {cos} for {text:?}", dev.kind().name());
        assert!((norm - 1.0).abs() < 1e-5, "{what}: norm {norm}");
    }
}

#[test]
fn embeddings_match_sentence_transformers_from_safetensors_and_gguf_on_both_backends() {
    let gpu = pollster::block_on(GpuDevice::new(DeviceOptions::default())).unwrap();
    let cpu = CpuDevice::new(None);
    for (path, what) in [(fixture(), "safetensors"), (fixture().join("model.gguf"), "gguf")] {
        let local = LocalModel::open(&path).unwrap();
        check(&gpu, &local, what);
        check(&cpu, &local, what);
    }
}

#[test]
fn pooling_configs_are_read_or_refused() {
    let modules =
        serde_json::json!([{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]);
    let mean = serde_json::json!({"pooling_mode_mean_tokens": true});
    assert_eq!(EmbeddingSpec::from_sentence_transformers(&modules, Some(&mean)).unwrap(), Some(EmbeddingSpec { pooling: Pooling::Mean, normalize: false }));
    let both = serde_json::json!({"pooling_mode_mean_tokens": true, "pooling_mode_lasttoken": true});
    assert!(EmbeddingSpec::from_sentence_transformers(&modules, Some(&both)).is_err());
    let max = serde_json::json!({"pooling_mode_max_tokens": true});
    assert!(EmbeddingSpec::from_sentence_transformers(&modules, Some(&max)).is_err());
    let dense = serde_json::json!([{"type": "sentence_transformers.models.Pooling"}, {"type": "sentence_transformers.models.Dense"}]);
    assert!(EmbeddingSpec::from_sentence_transformers(&dense, Some(&mean)).unwrap_err().to_string().contains("Dense"));
    assert_eq!(EmbeddingSpec::from_sentence_transformers(&serde_json::json!([{"type": "x.Transformer"}]), None).unwrap(), None);
    // Mean pooling and normalisation by hand.
    let spec = EmbeddingSpec { pooling: Pooling::Mean, normalize: true };
    assert_eq!(spec.pool(&[1.0, 0.0, 3.0, 0.0], 2, 2), vec![1.0, 0.0]);
    assert_eq!(EmbeddingSpec { pooling: Pooling::First, normalize: false }.pool(&[1.0, 2.0, 3.0, 4.0], 2, 2), vec![1.0, 2.0]);
}
