//! GGUF dequantisation of every supported type against the `gguf` Python package's reference
//! dequantiser (fixtures from tests/fixtures/gguf/make_dequant_fixtures.py), and repacking into
//! our GPU formats keeping exactly those values.

use std::path::PathBuf;

use emberlm_core::device::{DeviceOptions, GpuDevice};
use emberlm_core::plan::Plan;
use emberlm_core::{ops, DType, Tensor};
use emberlm_models::ggml::{self, GgmlType};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/dequant").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let blocks = fixture(&format!("{}.blocks", ty.name()));
    let values = fixture(&format!("{}.f32", ty.name())).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (blocks, values)
}

const TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::MXFP4,
];

#[test]
fn dequantisation_matches_the_gguf_reference_bit_for_bit() {
    for ty in TYPES {
        let (blocks, want) = reference(ty);
        let mut got = vec![0f32; want.len()];
        ggml::dequantize(ty, &blocks, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g == w), "{}: value {i}: {g} vs gguf {w}", ty.name());
        }
    }
}

#[test]
fn exact_repacking_keeps_the_file_values() {
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::F16, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::MXFP4] {
        let (blocks, want) = reference(ty);
        let dtype = ggml::exact_dtype(ty);
        assert_ne!(dtype, DType::F32, "{} should repack into a smaller format", ty.name());
        let k = ty.block().0.max(32) as usize;
        assert_eq!(want.len() % k, 0, "{}: fixture is not whole rows", ty.name());
        let packed = ggml::pack_rows(ty, &blocks, want.len() / k, k, dtype).unwrap();
        assert_eq!(packed.dequantize(), want, "{} → {}", ty.name(), dtype.name());
    }
}

/// The repacked file blocks on the GPU: the embedding kernel gathers every row through the same
/// weight decoder as matvec/matmul, so its output is the decoded weights, which must be the gguf
/// package's values (K-quants are decoded in the kernels, never widened to f32).
#[test]
fn gpu_decodes_repacked_blocks_to_the_gguf_values() {
    let dev = pollster::block_on(GpuDevice::new(DeviceOptions::default())).unwrap();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::F16, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::MXFP4] {
        let (blocks, want) = reference(ty);
        let k = ty.block().0.max(32) as usize;
        let rows = want.len() / k;
        let packed = ggml::pack_rows(ty, &blocks, rows, k, ggml::exact_dtype(ty)).unwrap();
        let table = Tensor::from_packed(&dev, "table", &[rows, k], &packed).unwrap();
        let ids = Tensor::from_u32(&dev, "ids", &(0..rows as u32).collect::<Vec<_>>()).unwrap();
        let out = Tensor::new_zeroed(&dev, "out", &[rows, k], DType::F32).unwrap();
        let mut plan = Plan::new(&dev);
        ops::embedding(&mut plan, &ids, &table, &out, rows, 1.0).unwrap();
        plan.finish().unwrap().run(&dev).unwrap();
        let got = pollster::block_on(out.read_f32(&dev)).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // One rounding at most where the GPU fuses q·scale − min into an FMA.
            assert!((g - w).abs() <= w.abs() * 2e-7 + 1e-12, "{} on the GPU: value {i}: {g} vs gguf {w}", ty.name());
        }
    }
}

#[test]
fn truncated_block_data_is_an_error() {
    let (blocks, want) = reference(GgmlType::Q4K);
    let mut out = vec![0f32; want.len()];
    let err = ggml::dequantize(GgmlType::Q4K, &blocks[..blocks.len() - 1], &mut out).unwrap_err();
    assert!(err.contains("do not hold"), "{err}");
    let err = ggml::pack_rows(GgmlType::Q2K, &[0u8; 84], 1, 256, DType::F32).unwrap_err();
    assert!(err.contains("Q2_K is not supported yet"), "{err}");
}
