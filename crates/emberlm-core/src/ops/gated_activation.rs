//! `gated_activation`: act(gate) · up over fused [gate | up] rows.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::Result;
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x · sigmoid(x): Llama, Qwen, Mistral, Phi-3.
    Silu,
    /// GELU, tanh approximation: Gemma's `gelu_pytorch_tanh`.
    GeluTanh,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct GatedActivationParams {
    pub rows: u32,
    pub inter: u32,
    pub _pad: [u32; 2],
}

/// `gate_up`: [rows, 2·inter]; `out`: [rows, inter].
pub fn gated_activation(plan: &mut Plan, gate_up: &Tensor, out: &Tensor, rows: usize, inter: usize, act: Activation) -> Result<OpId> {
    const OP: &str = "gated_activation";
    expect_f32(OP, "input", gate_up, rows * 2 * inter)?;
    expect_f32(OP, "output", out, rows * inter)?;
    let params = GatedActivationParams { rows: u32_of(OP, "rows", rows)?, inter: u32_of(OP, "inter", inter)?, _pad: [0; 2] };
    let variant = Variant::default().flag_if(act == Activation::GeluTanh, "GELU_TANH").with("WG", WG);
    let storage = vec![Some(Binding::tensor(gate_up)?), Some(Binding::tensor(out)?)];
    let grid = plan.grid(u32_of(OP, "elements", rows * inter)?.div_ceil(WG));
    plan.dispatch("gated_activation", key("gated_activation", variant), &params, storage, grid)
}
