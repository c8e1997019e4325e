//! `gated_activation`: act(gate) · up over fused [gate | up] rows.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::Result;
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// x · sigmoid(x): Llama, Qwen, Mistral, Phi-3.
    Silu,
    /// GELU, tanh approximation: Gemma's `gelu_pytorch_tanh`.
    GeluTanh,
    /// GPT-OSS's clamped SwiGLU: with g = min(gate, limit), u = clamp(up, ±limit),
    /// act(gate, up) = (u + 1) · g · sigmoid(alpha · g).
    SwigluOai { alpha: f32, limit: f32 },
}

impl Activation {
    /// The kernel flags and constants of `lib/activation.wgsl` for this activation.
    pub(crate) fn variant(self, v: Variant) -> Variant {
        match self {
            Activation::Silu => v,
            Activation::GeluTanh => v.flag("GELU_TANH"),
            Activation::SwigluOai { alpha, limit } => v.flag("SWIGLU_OAI").with("SWIGLU_ALPHA", alpha.to_bits()).with("SWIGLU_LIMIT", limit.to_bits()),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct GatedActivationParams {
    pub rows: u32,
    pub inter: u32,
    pub top_k: u32,
    pub _pad: u32,
}

/// `gate_up`: [rows, 2·inter]; `out`: [rows, inter].
pub fn gated_activation(plan: &mut Plan, gate_up: &Tensor, out: &Tensor, rows: usize, inter: usize, act: Activation) -> Result<OpId> {
    dispatch(plan, gate_up, out, rows, inter, act, None)
}

/// As [`gated_activation`] over a mixture's picks (rows: slot = token · top_k + j), each row
/// scaled by its pick's weight from `route` (`ops::moe_route`).
pub fn weighted_gated_activation(
    plan: &mut Plan,
    gate_up: &Tensor,
    route: &Tensor,
    out: &Tensor,
    rows: usize,
    inter: usize,
    top_k: usize,
    act: Activation,
) -> Result<OpId> {
    if top_k == 0 || rows % top_k != 0 {
        return crate::error::shape_err("gated_activation", format!("{rows} rows are not whole tokens of {top_k} picks"));
    }
    expect_f32("gated_activation", "route", route, rows * 2)?;
    dispatch(plan, gate_up, out, rows, inter, act, Some((route, top_k)))
}

fn dispatch(plan: &mut Plan, gate_up: &Tensor, out: &Tensor, rows: usize, inter: usize, act: Activation, route: Option<(&Tensor, usize)>) -> Result<OpId> {
    const OP: &str = "gated_activation";
    expect_f32(OP, "input", gate_up, rows * 2 * inter)?;
    expect_f32(OP, "output", out, rows * inter)?;
    let top_k = route.map_or(0, |r| r.1) as u32;
    let params = GatedActivationParams { rows: u32_of(OP, "rows", rows)?, inter: u32_of(OP, "inter", inter)?, top_k, _pad: 0 };
    let variant = act.variant(Variant::default()).flag_if(route.is_some(), "WEIGHTED").with("WG", WG);
    let mut storage = vec![Some(Binding::tensor(gate_up)?), Some(Binding::tensor(out)?)];
    if let Some((route, _)) = route {
        storage.push(Some(Binding::tensor(route)?));
    }
    let grid = plan.grid(u32_of(OP, "elements", rows * inter)?.div_ceil(WG));
    plan.dispatch("gated_activation", key("gated_activation", variant), &params, storage, grid)
}
