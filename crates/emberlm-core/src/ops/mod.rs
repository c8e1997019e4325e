//! One dispatcher per kernel (`ops/<name>.rs` drives `shaders/<name>.wgsl`). A dispatcher checks
//! shapes and limits, picks the kernel variant from the dtype and the device's features, and
//! records dispatches into a [`Plan`](crate::plan::Plan); chunked weights give one dispatch per chunk.

pub mod argmax;
pub mod attention;
pub mod embedding;
pub mod gated_activation;
pub mod head_linear;
pub mod head_rms_norm;
pub mod latent_rope_append;
pub mod logit_softcap;
pub mod matmul;
pub mod matvec;
pub mod moe;
pub mod rms_norm;
pub mod rope_kv_append;
pub mod short_conv;
pub mod softmax;
pub mod ssm_scan;
pub mod top_k;

pub use argmax::{argmax, mask_allows, mask_of, mask_words};
pub use attention::{attention, attention_with_sinks, visible_keys, AttentionParams};
pub use embedding::embedding;
pub use gated_activation::{gated_activation, weighted_gated_activation, Activation};
pub use head_linear::{head_linear, HeadLinearParams};
pub use head_rms_norm::head_rms_norm;
pub use latent_rope_append::{latent_rope_append, LatentRopeParams};
pub use logit_softcap::logit_softcap;
pub use matmul::{matmul, matmul_into};
pub use matvec::{gated_matvec, gated_matvec_fits, matvec, matvec_into, matvec_with, InputNorm, MatvecEnds};
pub use moe::{
    expert_gated_matvec, expert_matmul, expert_matvec, grouped_experts, moe_combine, moe_group, moe_route, ExpertWeights, GroupScore, GroupedScratch,
    MoeRouteParams, RouterScoring, Routing,
};
pub use rms_norm::{group_rms_norm, rms_norm};
pub use rope_kv_append::{rope_kv_append, RopeLayout};
pub use short_conv::{short_conv, ConvStyle, ShortConvParams, MAX_CONV_KERNEL};
pub use softmax::softmax;
pub use ssm_scan::{ssm_scan, SsmScanParams, SsmScratch};
pub use top_k::top_k;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::pipeline_cache::KernelKey;
use crate::shader::Variant;
use crate::tensor::Tensor;

/// Threads per workgroup for the row-wise and element-wise kernels.
pub(crate) const WG: u32 = 64;
/// Threads per workgroup for row reductions over long rows (norms, softmax, argmax).
pub(crate) const WG_ROW: u32 = 256;

pub(crate) fn key(kernel: &'static str, variant: Variant) -> KernelKey {
    KernelKey { kernel, variant }
}

/// Flags that select the weight decoder in `shaders/lib/weights.wgsl`.
pub(crate) fn weight_variant(dtype: DType) -> Variant {
    let v = Variant::default().flag(match dtype {
        DType::F32 => "W_F32",
        DType::F16 => "W_F16",
        DType::Q8 => "W_Q8",
        DType::Q4 => "W_Q4",
        DType::Q4K => "W_Q4K",
        DType::Q5K => "W_Q5K",
        DType::Q6K => "W_Q6K",
        DType::Mxfp4 => "W_MXFP4",
    });
    v.flag_if(dtype.is_quantized(), "QUANTIZED")
}

/// Fails unless `t` is an f32 tensor of exactly `len` elements.
pub(crate) fn expect_f32(op: &'static str, what: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.dtype != DType::F32 {
        return Err(Error::Shape { op, detail: format!("{what} `{}` must be f32, is {}", t.name, t.dtype.name()) });
    }
    if t.numel() < len {
        return Err(Error::Shape { op, detail: format!("{what} `{}` has {} elements, needs {len}", t.name, t.numel()) });
    }
    Ok(())
}

/// Fails unless every slot named is below `slots` (a rolling state's slots in one buffer).
pub(crate) fn check_slots(op: &'static str, slots: usize, named: [Option<usize>; 3]) -> Result<()> {
    match named.into_iter().flatten().find(|&s| s >= slots) {
        Some(slot) => Err(Error::Shape { op, detail: format!("state slot {slot} of {slots}") }),
        None => Ok(()),
    }
}

pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape { op, detail: format!("{what} = {v} does not fit in u32") })
}
