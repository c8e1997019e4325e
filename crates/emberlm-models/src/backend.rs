//! The backend a model runs on. A model's forward pass ([`crate::model`]) is written once
//! against [`Backend`]; two implement it:
//! - [`GpuDevice`] (emberlm-core): each op records a dispatch into a [`Plan`], and `run`
//!   submits the step as one compute pass and reads back the next token (and logits if asked);
//! - [`CpuDevice`] (emberlm-cpu): each op runs when it is called, on the CPU's threads, over
//!   the same layouts and packed weight formats.
//!
//! Tensors, RoPE tables and the per-step recording context are the backend's own types; the
//! model, [`crate::Session`], generation, the npm engine and the CLI are generic over it.

use emberlm_core::ops::{self, Activation, AttentionParams, HeadLinearParams, LatentRopeParams, MoeRouteParams, RopeLayout, ShortConvParams, SsmScanParams};
use emberlm_core::rope_table::RopeTable;
use emberlm_core::{DType, GpuDevice, PackedMatrix, PendingRead, Plan, Result, StepCache, Tensor};
use emberlm_cpu::{CpuDevice, CpuTensor};

/// An RMSNorm a decode projection applies to its input itself ([`Backend::folds_norms`]):
/// `x / rms(x) ⊙ (weight + offset)`.
#[derive(Debug, Clone, Copy)]
pub struct FoldedNorm<'a, T> {
    pub weight: &'a T,
    pub eps: f32,
    pub offset: f32,
}

impl<'a> FoldedNorm<'a, Tensor> {
    fn op(self) -> ops::InputNorm<'a> {
        ops::InputNorm { weight: self.weight, eps: self.eps, offset: self.offset }
    }
}

/// Which backend ran a step, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    WebGpu,
    Cpu,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::WebGpu => "webgpu",
            BackendKind::Cpu => "cpu",
        }
    }
}

/// Buffer size for [`Backend::copy_bandwidth`]: well past any cache.
#[cfg(not(target_arch = "wasm32"))]
const COPY_BANDWIDTH_BYTES: u64 = 64 << 20;

#[allow(async_fn_in_trait, clippy::too_many_arguments)]
pub trait Backend {
    type Tensor;
    /// A RoPE (cos, sin) table, `[positions][rot_dims / 2]` pairs.
    type Rope;
    /// Where one step's ops go until [`Backend::run`].
    type Pass<'a>
    where
        Self: 'a;
    /// What a session keeps from one decode step to the next so the next one costs less to
    /// set up (WebGPU: the executable with its bind groups).
    type StepCache: Default;
    /// A submitted step's token (and logits, if asked for) on their way back to the CPU
    /// ([`Backend::submit`]).
    type PendingStep;

    fn kind(&self) -> BackendKind;
    /// One line naming the backend and what runs it (adapter, threads, SIMD level).
    fn describe(&self) -> String;
    /// The largest tensor an op may take whole (a KV cache layer): the storage-binding limit.
    fn max_tensor_bytes(&self) -> u64;
    /// The most bytes a model's weights and KV cache may take in all on this backend, when it is
    /// known before loading (the CPU backend in wasm32: 4 GiB of address space); `None` otherwise.
    fn memory_budget(&self) -> Option<u64> {
        None
    }

    /// Bytes per second this backend copies memory (read + write counted; 64 MiB buffers), the
    /// yardstick decode's weight bytes per second are held against; `None` where it cannot be
    /// timed (wasm32).
    fn copy_bandwidth(&self) -> Option<f64> {
        None
    }

    /// A zeroed weight matrix in `dtype` (packed; split as the backend needs).
    fn weight(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Self::Tensor>;
    /// Writes whole rows of a weight from `row0`.
    fn write_rows(&self, tensor: &Self::Tensor, row0: usize, packed: &PackedMatrix) -> Result<()>;
    /// Bytes a tensor holds.
    fn tensor_bytes(tensor: &Self::Tensor) -> u64;
    fn dtype(tensor: &Self::Tensor) -> DType;
    fn from_f32(&self, name: &str, shape: &[usize], values: &[f32]) -> Result<Self::Tensor>;
    /// A zeroed f32 (or u32) activation tensor, usable whole by every op.
    fn activation(&self, name: &str, shape: &[usize]) -> Result<Self::Tensor>;
    fn write_u32(&self, tensor: &Self::Tensor, values: &[u32]) -> Result<()>;
    fn rope_table(&self, inv_freq: &[f32], positions: usize, attention_factor: f32) -> Result<Self::Rope>;

    fn pass(&self) -> Self::Pass<'_>;
    // rms_norm's `residual`: the stream and the scale its input joins with (`residual += s·x`).
    fn embedding(pass: &mut Self::Pass<'_>, ids: &Self::Tensor, table: &Self::Tensor, out: &Self::Tensor, tokens: usize, scale: f32) -> Result<()>;
    fn rms_norm(
        pass: &mut Self::Pass<'_>,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        residual: Option<(&Self::Tensor, f32)>,
        out: &Self::Tensor,
        rows: usize,
        eps: f32,
        offset: f32,
    ) -> Result<()>;
    fn matvec_into(
        pass: &mut Self::Pass<'_>,
        w: &Self::Tensor,
        x: &Self::Tensor,
        x_row: usize,
        bias: Option<&Self::Tensor>,
        y: &Self::Tensor,
        y_offset: usize,
    ) -> Result<()>;
    fn matmul_into(
        pass: &mut Self::Pass<'_>,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        y: &Self::Tensor,
        m: usize,
        y_cols: usize,
        y_offset: usize,
    ) -> Result<()>;
    fn head_rms_norm(
        pass: &mut Self::Pass<'_>,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        rows: usize,
        heads: usize,
        first: usize,
        row_stride: usize,
        eps: f32,
        offset: f32,
    ) -> Result<()>;
    /// Rotates the q heads (the first `heads_q` of each `qkv` row) in place and the k heads (the
    /// next `kv_heads`) on their way into `k_cache`, and copies the v heads (the next
    /// `kv_heads`) into `v_cache`, at positions `pos0..`. The rows' k heads may be left
    /// unrotated: nothing reads them afterwards.
    fn rope_kv_append(
        pass: &mut Self::Pass<'_>,
        qkv: &Self::Tensor,
        table: &Self::Rope,
        layout: RopeLayout,
        tokens: usize,
        heads_q: usize,
        kv_heads: usize,
        d: usize,
        row_stride: usize,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        pos0: usize,
    ) -> Result<()>;
    /// MLA's rotary embedding and cache write: each head's rope query part from `q`, rotated,
    /// into `query` after its latent part, and each token's [latent | rotated rope key] from
    /// `kv` into the latent `cache` (`emberlm_core::ops::latent_rope_append`).
    #[allow(clippy::too_many_arguments)]
    fn latent_rope_append(
        pass: &mut Self::Pass<'_>,
        q: &Self::Tensor,
        kv: &Self::Tensor,
        table: &Self::Rope,
        layout: RopeLayout,
        query: &Self::Tensor,
        cache: &Self::Tensor,
        p: &LatentRopeParams,
    ) -> Result<()>;
    /// y[t, h] = W_h · x[t, h] for every head (MLA's per-head up-projections,
    /// `emberlm_core::ops::head_linear`).
    fn head_linear(pass: &mut Self::Pass<'_>, w: &Self::Tensor, x: &Self::Tensor, y: &Self::Tensor, p: &HeadLinearParams) -> Result<()>;
    /// Attention over a layer's KV cache; `sinks`: GPT-OSS's per-head sink logits.
    fn attention(
        pass: &mut Self::Pass<'_>,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        sinks: Option<&Self::Tensor>,
        out: &Self::Tensor,
        p: &AttentionParams,
    ) -> Result<()>;
    fn gated_activation(pass: &mut Self::Pass<'_>, gate_up: &Self::Tensor, out: &Self::Tensor, rows: usize, inter: usize, act: Activation) -> Result<()>;
    /// A causal depthwise convolution (LFM2's gated one, Mamba2's with SiLU) over blocks of the
    /// input rows, reading and writing the rolling state slots `p` names.
    fn short_conv(
        pass: &mut Self::Pass<'_>,
        input: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        state: &Self::Tensor,
        out: &Self::Tensor,
        p: &ShortConvParams,
    ) -> Result<()>;
    /// Mamba2's selective scan and gate over the convolution's [x | B | C] rows and the
    /// in-projection's z and dt, reading and writing the state slots `p` names. A prefill's
    /// `scratch` (chunk states, dt) is what the GPU keeps between its two passes; the CPU
    /// runs the recurrence and needs none.
    fn ssm_scan(
        pass: &mut Self::Pass<'_>,
        xbc: &Self::Tensor,
        proj: &Self::Tensor,
        head_params: &Self::Tensor,
        state: &Self::Tensor,
        out: &Self::Tensor,
        scratch: Option<(&Self::Tensor, &Self::Tensor)>,
        p: &SsmScanParams,
    ) -> Result<()>;
    /// RMS norm of each row's `groups` equal parts, part g with weight part g.
    fn group_rms_norm(
        pass: &mut Self::Pass<'_>,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        out: &Self::Tensor,
        rows: usize,
        groups: usize,
        eps: f32,
    ) -> Result<()>;
    /// Whether [`Backend::gated_matvec`] takes this fused [gate | up] weight.
    fn fuses_gated_matvec(_gate_up: &Self::Tensor) -> bool {
        false
    }
    /// One token's `act(gate·x) · (up·x)` over fused [gate | up] rows (`x` row `x_row`), where
    /// [`Backend::fuses_gated_matvec`] says so: the projection and the activation as one op;
    /// with `norm` (where [`Backend::folds_norms`]), of `x` normalised.
    #[allow(clippy::too_many_arguments)]
    fn gated_matvec(
        _pass: &mut Self::Pass<'_>,
        _gate_up: &Self::Tensor,
        _x: &Self::Tensor,
        _x_row: usize,
        _bias: Option<&Self::Tensor>,
        _out: &Self::Tensor,
        _act: Activation,
        _norm: Option<FoldedNorm<'_, Self::Tensor>>,
    ) -> Result<()> {
        Err(emberlm_core::Error::InvalidArgument("this backend has no fused gate/up matvec (fuses_gated_matvec is false)".into()))
    }
    /// Whether decode steps fold each RMSNorm into the projections after it and the residual
    /// additions into the projections before it ([`Backend::matvec_folded`]): two dispatches
    /// fewer per layer.
    fn folds_norms(_pass: &Self::Pass<'_>) -> bool {
        false
    }
    /// One token's `y = W·norm(x) + bias` (with `norm`) or `y += scale · (W·x + bias)` (with
    /// `accumulate`), where [`Backend::folds_norms`] says so.
    #[allow(clippy::too_many_arguments)]
    fn matvec_folded(
        _pass: &mut Self::Pass<'_>,
        _w: &Self::Tensor,
        _x: &Self::Tensor,
        _bias: Option<&Self::Tensor>,
        _y: &Self::Tensor,
        _y_offset: usize,
        _norm: Option<FoldedNorm<'_, Self::Tensor>>,
        _accumulate: Option<f32>,
    ) -> Result<()> {
        Err(emberlm_core::Error::InvalidArgument("this backend does not fold norms into projections (folds_norms is false)".into()))
    }
    /// A mixture's router: each token's top-k experts and weights into `route`
    /// (`emberlm_core::ops::moe_route`), which the expert ops read where they run;
    /// `selection_bias`: DeepSeek-V3's per-expert bias for choosing.
    fn moe_route(
        pass: &mut Self::Pass<'_>,
        logits: &Self::Tensor,
        selection_bias: Option<&Self::Tensor>,
        route: &Self::Tensor,
        p: &MoeRouteParams,
    ) -> Result<()>;
    /// Per pick, weight · act(gate_e·x) · (up_e·x) over the picked expert's fused rows of a
    /// `[experts, 2·inter, k]` weight (`emberlm_core::ops::expert_gated_matvec`).
    fn expert_gated_matvec(
        pass: &mut Self::Pass<'_>,
        gate_up: &Self::Tensor,
        x: &Self::Tensor,
        route: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        out: &Self::Tensor,
        tokens: usize,
        top_k: usize,
        act: Activation,
    ) -> Result<()>;
    /// Per token, the sum over its picks of down_e · (its pick's activations)
    /// (`emberlm_core::ops::expert_matvec`), with `accumulate` added to what `y` holds.
    #[allow(clippy::too_many_arguments)]
    fn expert_matvec(
        pass: &mut Self::Pass<'_>,
        down: &Self::Tensor,
        x: &Self::Tensor,
        route: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        y: &Self::Tensor,
        tokens: usize,
        top_k: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// Whether a prefill's mixture runs with its picks grouped by expert through
    /// [`Backend::grouped_experts`] (the GPU); otherwise `expert_gated_matvec` and
    /// `expert_matvec` take prefills too (the CPU groups inside them).
    fn groups_experts() -> bool {
        false
    }
    /// A mixture's MLP over a prefill with the picks grouped by expert
    /// (`emberlm_core::ops::grouped_experts`); `biases`: the experts' [gate | up] and down
    /// biases; `scratch`: groups, each pick's [gate | up] rows, weighted activations and down
    /// projection; `accumulate`: add to what `out` holds.
    fn grouped_experts(
        _pass: &mut Self::Pass<'_>,
        _gate_up: &Self::Tensor,
        _down: &Self::Tensor,
        _biases: [Option<&Self::Tensor>; 2],
        _x: &Self::Tensor,
        _route: &Self::Tensor,
        _scratch: [&Self::Tensor; 4],
        _out: &Self::Tensor,
        _tokens: usize,
        _top_k: usize,
        _act: Activation,
        _accumulate: bool,
    ) -> Result<()> {
        Err(emberlm_core::Error::InvalidArgument("this backend does not group experts (groups_experts is false)".into()))
    }
    fn logit_softcap(pass: &mut Self::Pass<'_>, x: &Self::Tensor, len: usize, cap: f32) -> Result<()>;
    /// Each row's largest value's index; with `mask` (a bit per column, [`ops::mask_words`] u32
    /// words) only allowed columns compete, and a row with none gives `u32::MAX`.
    fn argmax(pass: &mut Self::Pass<'_>, x: &Self::Tensor, mask: Option<&Self::Tensor>, out: &Self::Tensor, rows: usize, cols: usize) -> Result<()>;

    /// Starts collecting time per op kind (clearing earlier totals), or stops; false when this
    /// backend cannot (on WebGPU, an adapter without timestamp queries).
    fn set_profiling(&self, _on: bool) -> bool {
        false
    }

    /// `(op, calls, seconds)` since profiling started, slowest first.
    fn profile_report(&self) -> Vec<(&'static str, u64, f64)> {
        Vec::new()
    }

    /// Finishes the step: returns `next[0]` and, if given, the values of `logits`.
    async fn run<'a>(
        &'a self,
        pass: Self::Pass<'a>,
        cache: &mut Self::StepCache,
        next: &Self::Tensor,
        logits: Option<&Self::Tensor>,
    ) -> Result<(u32, Option<Vec<f32>>)> {
        let pending = self.submit(pass, cache, next, logits)?;
        self.finish(pending).await
    }

    /// Whether a step submitted behind another runs while the first one's token is read back,
    /// so greedy decoding gains by queueing the next step first (WebGPU); the CPU backend runs
    /// each step when it is submitted, so queueing ahead would only waste a step at the end.
    fn overlaps_steps(&self) -> bool;
    /// Finishes the step like [`Backend::run`] without waiting for it: the CPU may work on
    /// something else (the next token's constraint mask) while the GPU computes. The token and
    /// the logits come back together, in one read-back.
    fn submit<'a>(&'a self, pass: Self::Pass<'a>, cache: &mut Self::StepCache, next: &Self::Tensor, logits: Option<&Self::Tensor>)
        -> Result<Self::PendingStep>;
    /// Waits for a submitted step's token and logits.
    async fn finish(&self, pending: Self::PendingStep) -> Result<(u32, Option<Vec<f32>>)>;
    /// Submits a pass whose results stay on the device for a later pass (a constrained step's
    /// logits, which the masked argmax reads), without waiting for it; while profiling, waits
    /// and collects its times, as [`Backend::finish`] does.
    async fn enqueue<'a>(&'a self, pass: Self::Pass<'a>, cache: &mut Self::StepCache) -> Result<()>;
}

impl Backend for GpuDevice {
    type Tensor = Tensor;
    type Rope = RopeTable;
    type Pass<'a> = Plan<'a>;
    type StepCache = StepCache;
    type PendingStep = (PendingRead, bool);

    fn kind(&self) -> BackendKind {
        BackendKind::WebGpu
    }

    fn describe(&self) -> String {
        format!("webgpu ({}, {})", self.caps.adapter_name, self.caps.backend)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn copy_bandwidth(&self) -> Option<f64> {
        GpuDevice::copy_bandwidth(self, COPY_BANDWIDTH_BYTES, 10).ok()
    }

    fn set_profiling(&self, on: bool) -> bool {
        GpuDevice::set_profiling(self, on)
    }

    fn profile_report(&self) -> Vec<(&'static str, u64, f64)> {
        GpuDevice::profile_report(self)
    }

    fn max_tensor_bytes(&self) -> u64 {
        self.caps.max_storage_binding
    }

    fn weight(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::new_weight(self, name, shape, dtype)
    }

    fn write_rows(&self, tensor: &Tensor, row0: usize, packed: &PackedMatrix) -> Result<()> {
        tensor.write_rows(self, row0, packed.qs_bytes(), packed.scale_bytes())
    }

    fn tensor_bytes(tensor: &Tensor) -> u64 {
        tensor.chunks.iter().map(|c| c.buffer.size()).sum()
    }

    fn dtype(tensor: &Tensor) -> DType {
        tensor.dtype
    }

    fn from_f32(&self, name: &str, shape: &[usize], values: &[f32]) -> Result<Tensor> {
        Tensor::from_f32(self, name, shape, values)
    }

    fn activation(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Tensor::new_zeroed(self, name, shape, DType::F32)
    }

    fn write_u32(&self, tensor: &Tensor, values: &[u32]) -> Result<()> {
        tensor.write_rows(self, 0, bytemuck::cast_slice(values), &[])
    }

    fn rope_table(&self, inv_freq: &[f32], positions: usize, attention_factor: f32) -> Result<RopeTable> {
        RopeTable::new(self, inv_freq, positions, attention_factor)
    }

    fn pass(&self) -> Plan<'_> {
        Plan::new(self)
    }

    fn embedding(plan: &mut Plan, ids: &Tensor, table: &Tensor, out: &Tensor, tokens: usize, scale: f32) -> Result<()> {
        ops::embedding(plan, ids, table, out, tokens, scale).map(drop)
    }

    fn rms_norm(plan: &mut Plan, x: &Tensor, w: &Tensor, residual: Option<(&Tensor, f32)>, out: &Tensor, rows: usize, eps: f32, offset: f32) -> Result<()> {
        ops::rms_norm(plan, x, w, residual, out, rows, eps, offset).map(drop)
    }

    fn matvec_into(plan: &mut Plan, w: &Tensor, x: &Tensor, x_row: usize, bias: Option<&Tensor>, y: &Tensor, y_offset: usize) -> Result<()> {
        ops::matvec_into(plan, w, x, x_row, bias, y, y_offset).map(drop)
    }

    fn matmul_into(plan: &mut Plan, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, m: usize, y_cols: usize, y_offset: usize) -> Result<()> {
        ops::matmul_into(plan, x, w, bias, y, m, y_cols, y_offset).map(drop)
    }

    fn head_rms_norm(plan: &mut Plan, x: &Tensor, w: &Tensor, rows: usize, heads: usize, first: usize, stride: usize, eps: f32, offset: f32) -> Result<()> {
        ops::head_rms_norm(plan, x, w, rows, heads, first, stride, eps, offset).map(drop)
    }

    fn rope_kv_append(
        plan: &mut Plan,
        qkv: &Tensor,
        table: &RopeTable,
        layout: RopeLayout,
        tokens: usize,
        heads_q: usize,
        kv_heads: usize,
        d: usize,
        stride: usize,
        k_cache: &Tensor,
        v_cache: &Tensor,
        pos0: usize,
    ) -> Result<()> {
        ops::rope_kv_append(plan, qkv, table, layout, tokens, heads_q, kv_heads, d, stride, k_cache, v_cache, pos0).map(drop)
    }

    fn latent_rope_append(
        plan: &mut Plan,
        q: &Tensor,
        kv: &Tensor,
        table: &RopeTable,
        layout: RopeLayout,
        query: &Tensor,
        cache: &Tensor,
        p: &LatentRopeParams,
    ) -> Result<()> {
        ops::latent_rope_append(plan, q, kv, table, layout, query, cache, p).map(drop)
    }

    fn head_linear(plan: &mut Plan, w: &Tensor, x: &Tensor, y: &Tensor, p: &HeadLinearParams) -> Result<()> {
        ops::head_linear(plan, w, x, y, p).map(drop)
    }

    fn attention(plan: &mut Plan, q: &Tensor, k: &Tensor, v: &Tensor, sinks: Option<&Tensor>, out: &Tensor, p: &AttentionParams) -> Result<()> {
        ops::attention_with_sinks(plan, q, k, v, sinks, out, p).map(drop)
    }

    fn gated_activation(plan: &mut Plan, gate_up: &Tensor, out: &Tensor, rows: usize, inter: usize, act: Activation) -> Result<()> {
        ops::gated_activation(plan, gate_up, out, rows, inter, act).map(drop)
    }

    fn short_conv(plan: &mut Plan, input: &Tensor, weight: &Tensor, bias: Option<&Tensor>, state: &Tensor, out: &Tensor, p: &ShortConvParams) -> Result<()> {
        ops::short_conv(plan, input, weight, bias, state, out, p).map(drop)
    }

    fn ssm_scan(
        plan: &mut Plan,
        xbc: &Tensor,
        proj: &Tensor,
        head_params: &Tensor,
        state: &Tensor,
        out: &Tensor,
        scratch: Option<(&Tensor, &Tensor)>,
        p: &SsmScanParams,
    ) -> Result<()> {
        let scratch = scratch.map(|(chunk_states, dt_cum)| ops::SsmScratch { chunk_states, dt_cum });
        ops::ssm_scan(plan, xbc, proj, head_params, state, out, scratch, p).map(drop)
    }

    fn group_rms_norm(plan: &mut Plan, x: &Tensor, weight: &Tensor, out: &Tensor, rows: usize, groups: usize, eps: f32) -> Result<()> {
        ops::group_rms_norm(plan, x, weight, out, rows, groups, eps).map(drop)
    }

    fn fuses_gated_matvec(gate_up: &Tensor) -> bool {
        ops::gated_matvec_fits(gate_up)
    }

    fn gated_matvec(
        plan: &mut Plan,
        gate_up: &Tensor,
        x: &Tensor,
        x_row: usize,
        bias: Option<&Tensor>,
        out: &Tensor,
        act: Activation,
        norm: Option<FoldedNorm<'_, Tensor>>,
    ) -> Result<()> {
        ops::gated_matvec(plan, gate_up, x, x_row, bias, out, act, norm.map(FoldedNorm::op)).map(drop)
    }

    fn folds_norms(plan: &Plan) -> bool {
        plan.dev.caps.fold_norms
    }

    fn matvec_folded(
        plan: &mut Plan,
        w: &Tensor,
        x: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        y_offset: usize,
        norm: Option<FoldedNorm<'_, Tensor>>,
        accumulate: Option<f32>,
    ) -> Result<()> {
        ops::matvec_with(plan, w, x, 0, bias, y, y_offset, ops::MatvecEnds { norm: norm.map(FoldedNorm::op), accumulate }).map(drop)
    }

    fn moe_route(plan: &mut Plan, logits: &Tensor, selection_bias: Option<&Tensor>, route: &Tensor, p: &MoeRouteParams) -> Result<()> {
        ops::moe_route(plan, logits, selection_bias, route, p).map(drop)
    }

    fn expert_gated_matvec(
        plan: &mut Plan,
        gate_up: &Tensor,
        x: &Tensor,
        route: &Tensor,
        bias: Option<&Tensor>,
        out: &Tensor,
        tokens: usize,
        top_k: usize,
        act: Activation,
    ) -> Result<()> {
        ops::expert_gated_matvec(plan, gate_up, x, route, bias, out, tokens, top_k, act).map(drop)
    }

    fn expert_matvec(
        plan: &mut Plan,
        down: &Tensor,
        x: &Tensor,
        route: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        tokens: usize,
        top_k: usize,
        accumulate: bool,
    ) -> Result<()> {
        ops::expert_matvec(plan, down, x, route, bias, y, tokens, top_k, accumulate).map(drop)
    }

    fn groups_experts() -> bool {
        true
    }

    fn grouped_experts(
        plan: &mut Plan,
        gate_up: &Tensor,
        down: &Tensor,
        [gate_up_bias, down_bias]: [Option<&Tensor>; 2],
        x: &Tensor,
        route: &Tensor,
        [groups, gate_up_out, act_out, down_out]: [&Tensor; 4],
        out: &Tensor,
        tokens: usize,
        top_k: usize,
        act: Activation,
        accumulate: bool,
    ) -> Result<()> {
        let weights = ops::ExpertWeights { gate_up, down, gate_up_bias, down_bias };
        let scratch = ops::GroupedScratch { groups, gate_up: gate_up_out, act: act_out, down: down_out };
        ops::grouped_experts(plan, weights, x, route, &scratch, out, tokens, top_k, act, accumulate)
    }

    fn logit_softcap(plan: &mut Plan, x: &Tensor, len: usize, cap: f32) -> Result<()> {
        ops::logit_softcap(plan, x, len, cap).map(drop)
    }

    fn argmax(plan: &mut Plan, x: &Tensor, mask: Option<&Tensor>, out: &Tensor, rows: usize, cols: usize) -> Result<()> {
        ops::argmax(plan, x, mask, out, rows, cols).map(drop)
    }

    fn overlaps_steps(&self) -> bool {
        // While profiling, one query set times one step at a time.
        self.profiler().is_none()
    }

    fn submit<'a>(&'a self, plan: Plan<'a>, cache: &mut StepCache, next: &Tensor, logits: Option<&Tensor>) -> Result<(PendingRead, bool)> {
        let mut ranges = vec![(next.buffer()?, 0, 4)];
        if let Some(t) = logits {
            ranges.push((t.buffer()?, 0, t.numel() as u64 * 4));
        }
        Ok((plan.finish_cached(cache)?.run_with_reads(self, &ranges)?, logits.is_some()))
    }

    async fn enqueue<'a>(&'a self, plan: Plan<'a>, cache: &mut StepCache) -> Result<()> {
        plan.finish_cached(cache)?.run(self)?;
        if let Some(profiler) = self.profiler() {
            profiler.collect(self).await?;
        }
        Ok(())
    }

    async fn finish(&self, (pending, with_logits): (PendingRead, bool)) -> Result<(u32, Option<Vec<f32>>)> {
        let bytes = self.finish_read(pending).await?;
        if let Some(profiler) = self.profiler() {
            profiler.collect(self).await?;
        }
        let token = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes read"));
        Ok((token, with_logits.then(|| bytemuck::pod_collect_to_vec(&bytes[4..]))))
    }
}

/// The CPU's RoPE table: the values the GPU uploads.
pub struct CpuRope {
    rot_dims: usize,
    table: Vec<f32>,
}

/// CPU ops run as they are called; the pass only marks a step's extent and carries the
/// device's choice of activations for the matvecs and matmuls.
pub struct CpuPass {
    activations: emberlm_cpu::int8::Activations,
}

impl Backend for CpuDevice {
    type Tensor = CpuTensor;
    type Rope = CpuRope;
    type Pass<'a> = CpuPass;
    type StepCache = ();
    /// The token itself: a CPU step has run by the time it is submitted.
    type PendingStep = (u32, Option<Vec<f32>>);

    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn describe(&self) -> String {
        CpuDevice::describe(self)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn copy_bandwidth(&self) -> Option<f64> {
        Some(CpuDevice::copy_bandwidth(self, COPY_BANDWIDTH_BYTES, 10))
    }

    fn max_tensor_bytes(&self) -> u64 {
        // wasm32 addresses 4 GiB in all; natively one tensor is bounded by memory alone.
        if cfg!(target_pointer_width = "32") {
            1 << 31
        } else {
            1 << 40
        }
    }

    fn memory_budget(&self) -> Option<u64> {
        cfg!(target_arch = "wasm32").then_some(4 << 30)
    }

    fn weight(&self, name: &str, shape: &[usize], dtype: DType) -> Result<CpuTensor> {
        CpuTensor::zeroed(name, shape, dtype)
    }

    fn write_rows(&self, tensor: &CpuTensor, row0: usize, packed: &PackedMatrix) -> Result<()> {
        tensor.write_rows(row0, packed)
    }

    fn tensor_bytes(tensor: &CpuTensor) -> u64 {
        tensor.bytes()
    }

    fn dtype(tensor: &CpuTensor) -> DType {
        tensor.dtype
    }

    fn from_f32(&self, name: &str, shape: &[usize], values: &[f32]) -> Result<CpuTensor> {
        CpuTensor::from_f32(name, shape, values)
    }

    fn activation(&self, name: &str, shape: &[usize]) -> Result<CpuTensor> {
        CpuTensor::zeroed(name, shape, DType::F32)
    }

    fn write_u32(&self, tensor: &CpuTensor, values: &[u32]) -> Result<()> {
        tensor.words_mut()[..values.len()].copy_from_slice(values);
        Ok(())
    }

    fn rope_table(&self, inv_freq: &[f32], positions: usize, attention_factor: f32) -> Result<CpuRope> {
        Ok(CpuRope { rot_dims: inv_freq.len() * 2, table: emberlm_core::rope_table::cos_sin(inv_freq, positions, attention_factor) })
    }

    fn set_profiling(&self, on: bool) -> bool {
        emberlm_cpu::profile::enable(on);
        true
    }

    fn profile_report(&self) -> Vec<(&'static str, u64, f64)> {
        emberlm_cpu::profile::report()
    }

    fn pass(&self) -> CpuPass {
        CpuPass { activations: self.activations }
    }

    fn embedding(_: &mut CpuPass, ids: &CpuTensor, table: &CpuTensor, out: &CpuTensor, tokens: usize, scale: f32) -> Result<()> {
        emberlm_cpu::ops::embedding(ids, table, out, tokens, scale)
    }

    fn rms_norm(
        _: &mut CpuPass,
        x: &CpuTensor,
        w: &CpuTensor,
        residual: Option<(&CpuTensor, f32)>,
        out: &CpuTensor,
        rows: usize,
        eps: f32,
        offset: f32,
    ) -> Result<()> {
        emberlm_cpu::ops::rms_norm(x, w, residual, out, rows, eps, offset)
    }

    fn matvec_into(pass: &mut CpuPass, w: &CpuTensor, x: &CpuTensor, x_row: usize, bias: Option<&CpuTensor>, y: &CpuTensor, y_offset: usize) -> Result<()> {
        emberlm_cpu::ops::matvec_into(w, x, x_row, bias, y, y_offset, pass.activations)
    }

    fn matmul_into(
        pass: &mut CpuPass,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        y: &CpuTensor,
        m: usize,
        y_cols: usize,
        y_offset: usize,
    ) -> Result<()> {
        emberlm_cpu::ops::matmul_into(x, w, bias, y, m, y_cols, y_offset, pass.activations)
    }

    fn head_rms_norm(
        _: &mut CpuPass,
        x: &CpuTensor,
        w: &CpuTensor,
        rows: usize,
        heads: usize,
        first: usize,
        stride: usize,
        eps: f32,
        offset: f32,
    ) -> Result<()> {
        emberlm_cpu::ops::head_rms_norm(x, w, rows, heads, first, stride, eps, offset)
    }

    fn rope_kv_append(
        _: &mut CpuPass,
        qkv: &CpuTensor,
        t: &CpuRope,
        layout: RopeLayout,
        tokens: usize,
        heads_q: usize,
        kv_heads: usize,
        d: usize,
        stride: usize,
        k_cache: &CpuTensor,
        v_cache: &CpuTensor,
        pos0: usize,
    ) -> Result<()> {
        // q and k heads sit side by side in the rows: one rotation covers both.
        emberlm_cpu::ops::rope(qkv, &t.table, t.rot_dims, layout, tokens, heads_q + kv_heads, d, 0, stride, pos0)?;
        emberlm_cpu::ops::kv_cache_append(qkv, k_cache, tokens, kv_heads, d, heads_q, stride, pos0)?;
        emberlm_cpu::ops::kv_cache_append(qkv, v_cache, tokens, kv_heads, d, heads_q + kv_heads, stride, pos0)
    }

    fn latent_rope_append(
        _: &mut CpuPass,
        q: &CpuTensor,
        kv: &CpuTensor,
        t: &CpuRope,
        layout: RopeLayout,
        query: &CpuTensor,
        cache: &CpuTensor,
        p: &LatentRopeParams,
    ) -> Result<()> {
        emberlm_cpu::ops::latent_rope_append(q, kv, &t.table, t.rot_dims, layout, query, cache, p)
    }

    fn head_linear(pass: &mut CpuPass, w: &CpuTensor, x: &CpuTensor, y: &CpuTensor, p: &HeadLinearParams) -> Result<()> {
        emberlm_cpu::ops::head_linear(w, x, y, p, pass.activations)
    }

    fn attention(_: &mut CpuPass, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, sinks: Option<&CpuTensor>, out: &CpuTensor, p: &AttentionParams) -> Result<()> {
        emberlm_cpu::ops::attention(q, k, v, sinks, out, p)
    }

    fn gated_activation(_: &mut CpuPass, gate_up: &CpuTensor, out: &CpuTensor, rows: usize, inter: usize, act: Activation) -> Result<()> {
        emberlm_cpu::ops::gated_activation(gate_up, out, rows, inter, act)
    }

    fn short_conv(
        _: &mut CpuPass,
        input: &CpuTensor,
        weight: &CpuTensor,
        bias: Option<&CpuTensor>,
        state: &CpuTensor,
        out: &CpuTensor,
        p: &ShortConvParams,
    ) -> Result<()> {
        emberlm_cpu::ops::short_conv(input, weight, bias, state, out, p)
    }

    fn ssm_scan(
        _: &mut CpuPass,
        xbc: &CpuTensor,
        proj: &CpuTensor,
        head_params: &CpuTensor,
        state: &CpuTensor,
        out: &CpuTensor,
        _scratch: Option<(&CpuTensor, &CpuTensor)>,
        p: &SsmScanParams,
    ) -> Result<()> {
        emberlm_cpu::ops::ssm_scan(xbc, proj, head_params, state, out, p)
    }

    fn group_rms_norm(_: &mut CpuPass, x: &CpuTensor, weight: &CpuTensor, out: &CpuTensor, rows: usize, groups: usize, eps: f32) -> Result<()> {
        emberlm_cpu::ops::group_rms_norm(x, weight, out, rows, groups, eps)
    }

    fn moe_route(_: &mut CpuPass, logits: &CpuTensor, selection_bias: Option<&CpuTensor>, route: &CpuTensor, p: &MoeRouteParams) -> Result<()> {
        emberlm_cpu::moe::moe_route(logits, selection_bias, route, p)
    }

    fn expert_gated_matvec(
        pass: &mut CpuPass,
        gate_up: &CpuTensor,
        x: &CpuTensor,
        route: &CpuTensor,
        bias: Option<&CpuTensor>,
        out: &CpuTensor,
        tokens: usize,
        top_k: usize,
        act: Activation,
    ) -> Result<()> {
        emberlm_cpu::moe::expert_gated_matvec(gate_up, x, route, bias, out, tokens, top_k, act, pass.activations)
    }

    fn expert_matvec(
        pass: &mut CpuPass,
        down: &CpuTensor,
        x: &CpuTensor,
        route: &CpuTensor,
        bias: Option<&CpuTensor>,
        y: &CpuTensor,
        tokens: usize,
        top_k: usize,
        accumulate: bool,
    ) -> Result<()> {
        emberlm_cpu::moe::expert_matvec(down, x, route, bias, y, tokens, top_k, accumulate, pass.activations)
    }

    fn logit_softcap(_: &mut CpuPass, x: &CpuTensor, len: usize, cap: f32) -> Result<()> {
        emberlm_cpu::ops::logit_softcap(x, len, cap)
    }

    fn argmax(_: &mut CpuPass, x: &CpuTensor, mask: Option<&CpuTensor>, out: &CpuTensor, rows: usize, cols: usize) -> Result<()> {
        emberlm_cpu::ops::argmax(x, mask, out, rows, cols)
    }

    fn overlaps_steps(&self) -> bool {
        false
    }

    /// The step has run as it was recorded: its results are copied out now.
    fn submit<'a>(&'a self, _: CpuPass, _: &mut (), next: &CpuTensor, logits: Option<&CpuTensor>) -> Result<(u32, Option<Vec<f32>>)> {
        Ok((next.words()[0], logits.map(|t| t.f32s().to_vec())))
    }

    async fn finish(&self, step: (u32, Option<Vec<f32>>)) -> Result<(u32, Option<Vec<f32>>)> {
        emberlm_cpu::yield_to_host().await;
        Ok(step)
    }

    /// The pass ran as it was recorded.
    async fn enqueue<'a>(&'a self, _: CpuPass, _: &mut ()) -> Result<()> {
        Ok(())
    }
}
