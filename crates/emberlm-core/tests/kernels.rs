//! Every kernel against the CPU reference on random data, at odd sizes, through both
//! reduction paths (subgroups and shared memory) and with weights split into chunks.
//! The driver comes from the environment: `.ci/run` runs this file under lavapipe (f16 +
//! subgroups) and under SwiftShader (no f16) via VK_ICD_FILENAMES.

use std::sync::OnceLock;

use emberlm_core::checks::{self, AttentionCase, CheckResult, MoeCase, RopeCase};
use emberlm_core::ops::{self, Activation, RopeLayout};
use emberlm_core::{DType, DeviceOptions, Error, GpuDevice, PackedMatrix, Plan, Tensor};

fn device_with(options: DeviceOptions) -> GpuDevice {
    pollster::block_on(GpuDevice::new(options)).expect("a WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// The default device: subgroups when the adapter has them.
fn dev() -> &'static GpuDevice {
    static DEV: OnceLock<GpuDevice> = OnceLock::new();
    DEV.get_or_init(|| {
        let d = device_with(DeviceOptions::default());
        eprintln!("adapter: {:?}", d.caps);
        d
    })
}

/// Bindings capped at 8 KiB, so test-sized weights split into many chunks.
fn dev_small_bindings() -> &'static GpuDevice {
    static DEV: OnceLock<GpuDevice> = OnceLock::new();
    DEV.get_or_init(|| device_with(DeviceOptions { max_binding_bytes: Some(8192), ..Default::default() }))
}

fn assert_pass(result: emberlm_core::Result<CheckResult>) {
    let r = result.expect("the check ran");
    eprintln!("{}: max |err| {:.3e}, worst err/tol {:.3}", r.name, r.max_abs_err, r.worst_ratio);
    assert!(r.passed, "{} failed: {}", r.name, r.detail);
}

const DTYPES: [DType; 8] = DType::ALL;

/// GPT-OSS's clamped SwiGLU (its limit low enough that these checks' values cross it).
const GPT_OSS: Activation = Activation::SwigluOai { alpha: 1.702, limit: 2.0 };

#[test]
fn matvec_all_dtypes_every_row_split() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        // Rows not a multiple of a workgroup's; k giving 8, 16, 32 and 64 threads per row
        // (K formats round k up to 256), with and without a ragged last octet stride.
        for (n, k) in [(1, 32), (37, 96), (130, 544), (20, 1600), (9, 2080), (5, 8200)] {
            assert_pass(pollster::block_on(checks::check_matvec(dev(), dtype, n, k, i % 2 == 0, (n * k + i) as u64)));
        }
    }
}

#[test]
fn gated_matvec_all_dtypes_every_activation() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        // Outputs not a multiple of a workgroup's (with a partial last pair), k giving 8 to 64
        // threads per row.
        for (j, (inter, k)) in [(1, 32), (37, 96), (130, 544), (9, 2080), (5, 8200)].into_iter().enumerate() {
            let act = [Activation::Silu, Activation::GeluTanh, GPT_OSS][(i + j) % 3];
            for normed in [false, true] {
                assert_pass(pollster::block_on(checks::check_gated_matvec(dev(), dtype, act, inter, k, i % 2 == 1, normed, (inter * k + i) as u64)));
            }
        }
    }
}

/// Decode's folded norms: the input normalised in the matvec (Gemma's offset on odd seeds), the
/// result added (scaled, as Granite's residual) into y, every dtype and row split.
#[test]
fn matvec_folds_the_norm_before_and_the_residual_add_after() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        for (j, (n, k)) in [(1, 32), (37, 96), (130, 544), (9, 2080), (5, 8200)].into_iter().enumerate() {
            let seed = (n * k + i + j) as u64;
            assert_pass(pollster::block_on(checks::check_matvec_folded(dev(), dtype, n, k, i % 2 == 0, true, None, seed)));
            assert_pass(pollster::block_on(checks::check_matvec_folded(dev(), dtype, n, k, i % 2 == 1, false, Some([1.0, 0.22][j % 2]), seed)));
        }
    }
    // Weights split over bindings: each chunk normalises and accumulates its own rows.
    let d = dev_small_bindings();
    assert_pass(pollster::block_on(checks::check_matvec_folded(d, DType::Q4, 300, 256, true, true, None, 3)));
    assert_pass(pollster::block_on(checks::check_matvec_folded(d, DType::Q8, 300, 256, true, false, Some(1.0), 4)));
}

#[test]
fn gated_matvec_refuses_weights_split_over_bindings() {
    let d = dev_small_bindings();
    let w = emberlm_core::Tensor::new_weight(d, "gate|up", &[600, 256], DType::F32).unwrap();
    assert!(w.chunks.len() > 1 && !ops::gated_matvec_fits(&w));
    let x = emberlm_core::Tensor::new_zeroed(d, "x", &[256], DType::F32).unwrap();
    let out = emberlm_core::Tensor::new_zeroed(d, "out", &[300], DType::F32).unwrap();
    let mut plan = emberlm_core::Plan::new(d);
    assert!(ops::gated_matvec(&mut plan, &w, &x, 0, None, &out, Activation::Silu, None).is_err());
}

#[test]
fn matvec_with_bias_and_f32_rows_of_any_multiple_of_8() {
    assert_pass(pollster::block_on(checks::check_matvec(dev(), DType::F32, 11, 40, true, 5)));
    assert_pass(pollster::block_on(checks::check_matvec(dev(), DType::F16, 11, 200, true, 6)));
}

#[test]
fn chunked_weights_split_over_bindings() {
    let d = dev_small_bindings();
    for dtype in DTYPES {
        let r = pollster::block_on(checks::check_matvec(d, dtype, 300, 256, true, 7)).unwrap();
        assert!(r.name.contains("chunks") && !r.name.contains(" 1 chunks"), "expected several chunks: {}", r.name);
        assert_pass(Ok(r));
        assert_pass(pollster::block_on(checks::check_matmul(d, dtype, 5, 70, 256, false, 8)));
        assert_pass(pollster::block_on(checks::check_embedding(d, dtype, 200, 256, 1.0, 9)));
    }
}

#[test]
fn projections_write_side_by_side_into_fused_rows() {
    for dtype in DTYPES {
        for (m, via_matvec) in [(1, true), (4, true), (1, false), (6, false)] {
            assert_pass(pollster::block_on(checks::check_fused_projections(dev(), dtype, m, via_matvec, m as u64)));
        }
    }
}

#[test]
fn matmul_all_dtypes_odd_sizes() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        // One, two and four tokens per thread (1, 12, 33+), several row tiles, a k tail.
        for (m, n, k) in [(1, 37, 96), (12, 130, 96), (33, 65, 96), (70, 31, 160)] {
            assert_pass(pollster::block_on(checks::check_matmul(dev(), dtype, m, n, k, i % 2 == 1, (m * n + k) as u64)));
        }
    }
    assert_pass(pollster::block_on(checks::check_matmul(dev(), DType::F32, 3, 5, 40, true, 3)));
}

#[test]
fn attention_prefill_decode_window_softcap_gqa() {
    let base = AttentionCase { tokens: 7, hq: 4, hkv: 2, d: 64, pos0: 0, window: 0, softcap: 0.0, causal: true, sinks: false };
    let cases = [
        base,
        AttentionCase { pos0: 11, tokens: 5, ..base },                             // prefill after a cached prefix
        AttentionCase { hq: 3, hkv: 3, d: 80, ..base },                            // multi-head, d not a power of two
        AttentionCase { hq: 8, hkv: 1, d: 256, tokens: 2, ..base },                // multi-query, largest head
        AttentionCase { window: 4, pos0: 9, ..base },                              // sliding window
        AttentionCase { softcap: 5.0, ..base },                                    // Gemma 2 soft-capping
        AttentionCase { tokens: 1, pos0: 0, ..base },                              // decode, one key
        AttentionCase { tokens: 1, pos0: 700, ..base },                            // decode, three key splits
        AttentionCase { tokens: 1, pos0: 700, window: 300, ..base },               // decode, window, empty splits
        AttentionCase { tokens: 70, pos0: 3, hq: 2, hkv: 1, ..base },              // several key blocks per query
        AttentionCase { tokens: 20, pos0: 100, window: 70, ..base },               // windows that differ within a query tile
        AttentionCase { causal: false, ..base },                                   // bidirectional (embedding models)
        AttentionCase { causal: false, tokens: 70, hq: 2, hkv: 1, ..base },        // bidirectional, several key blocks
        AttentionCase { causal: false, tokens: 40, window: 8, ..base },            // bidirectional symmetric window, tiles see ahead
        AttentionCase { causal: false, tokens: 1, ..base },                        // one token
        AttentionCase { sinks: true, window: 4, pos0: 9, ..base },                 // GPT-OSS: sinks, window
        AttentionCase { sinks: true, tokens: 1, pos0: 700, ..base },               // sinks, split decode
        AttentionCase { sinks: true, tokens: 1, pos0: 3, ..base },                 // sinks, one split
        AttentionCase { sinks: true, tokens: 70, pos0: 3, hq: 2, hkv: 1, ..base }, // sinks, key blocks
        AttentionCase { hq: 4, hkv: 1, d: 576, tokens: 6, pos0: 2, ..base },       // MLA's latent heads (wide variant)
        AttentionCase { hq: 2, hkv: 1, d: 576, tokens: 70, pos0: 3, ..base },      // wide, several tiles and key blocks
        AttentionCase { hq: 4, hkv: 1, d: 272, tokens: 1, pos0: 700, ..base },     // wide, split decode
        // Decode tiles of heads sharing a kv head: 3 (SmolLM2's 9 / 3), 7 (Qwen2.5's 14 / 2),
        // 5 of 10, four tiles of 4 (MLA's 16 heads over the 576-wide latent), with splits,
        // sinks and a window.
        AttentionCase { hq: 9, hkv: 3, tokens: 1, pos0: 300, ..base },
        AttentionCase { hq: 14, hkv: 2, tokens: 1, pos0: 40, sinks: true, ..base },
        AttentionCase { hq: 10, hkv: 1, d: 32, tokens: 1, pos0: 600, window: 300, ..base },
        AttentionCase { hq: 16, hkv: 1, d: 576, tokens: 1, pos0: 520, ..base },
        AttentionCase { hq: 8, hkv: 2, d: 80, tokens: 1, pos0: 9, softcap: 5.0, ..base },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        assert_pass(pollster::block_on(checks::check_attention(dev(), case, 100 + i as u64)));
    }
}

#[test]
fn rms_norm_plain_residual_and_gemma_offset() {
    for (rows, cols, residual, offset) in [(1, 64, false, 0.0), (3, 1000, true, 0.0), (2, 576, false, 1.0), (5, 37, true, 1.0)] {
        assert_pass(pollster::block_on(checks::check_rms_norm(dev(), rows, cols, residual, offset, (rows * cols) as u64)));
    }
}

#[test]
fn head_rms_norm_inside_fused_rows_and_softcap() {
    for (tokens, heads, d, offset, w_off) in [(1, 2, 64, 0, 0.0), (5, 4, 128, 4 * 128, 1.0), (3, 1, 256, 7 * 256 + 3, 0.0)] {
        assert_pass(pollster::block_on(checks::check_head_rms_norm(dev(), tokens, heads, d, offset, w_off, 7 + d as u64)));
    }
    for (len, cap) in [(1, 30.0), (4099, 3.0), (70_000, 50.0)] {
        assert_pass(pollster::block_on(checks::check_logit_softcap(dev(), len, cap, len as u64)));
    }
}

#[test]
fn rope_kv_append_layouts_partial_rotary_and_gqa() {
    let base = RopeCase { layout: RopeLayout::Neox, tokens: 3, heads_q: 2, heads_kv: 2, d: 64, rot_dims: 64, pos0: 0 };
    let cases = [
        base,
        RopeCase { layout: RopeLayout::Interleaved, ..base },
        RopeCase { rot_dims: 32, ..base },                                   // partial rotary
        RopeCase { layout: RopeLayout::Interleaved, rot_dims: 16, ..base },  // partial, interleaved
        RopeCase { heads_q: 9, heads_kv: 3, tokens: 1, pos0: 4000, ..base }, // GQA decode step
        RopeCase { layout: RopeLayout::Interleaved, d: 80, rot_dims: 80, pos0: 17, ..base },
        RopeCase { tokens: 70, heads_q: 3, heads_kv: 1, d: 16, rot_dims: 16, pos0: 5, ..base }, // many workgroups
    ];
    for (i, case) in cases.into_iter().enumerate() {
        assert_pass(pollster::block_on(checks::check_rope_kv_append(dev(), case, 200 + i as u64)));
    }
}

/// MLA's ops: the per-head projections (every dtype, decode and prefill, a head's rows more
/// than a workgroup's) and the latent cache write with the rope parts rotated.
#[test]
fn multi_head_latent_attention_ops() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        for (tokens, heads, rows, k) in [(1, 4, 40, 24), (1, 2, 300, 64), (7, 3, 40, 24), (33, 2, 130, 96)] {
            assert_pass(pollster::block_on(checks::check_head_linear(dev(), dtype, tokens, heads, rows, k, 300 + i as u64)));
        }
    }
    for (i, (layout, tokens, heads, latent, rope, pos0)) in
        [(RopeLayout::Interleaved, 1, 4, 32, 16, 0), (RopeLayout::Neox, 3, 2, 24, 8, 9), (RopeLayout::Interleaved, 70, 3, 512, 64, 5)].into_iter().enumerate()
    {
        assert_pass(pollster::block_on(checks::check_latent_rope_append(dev(), layout, tokens, heads, latent, rope, pos0, 320 + i as u64)));
    }
}

#[test]
fn short_convolutions() {
    use checks::ShortConvCase;
    let mut seed = 300;
    // One token (decode), two (the checkpoint is the source state), many; the widest kernel;
    // channels past one workgroup.
    // Both styles: LFM2's gated one and Mamba2's with SiLU.
    for style in [ops::ConvStyle::GatedBcx, ops::ConvStyle::Silu] {
        for (tokens, kernel) in [(1, 3), (2, 3), (17, 3), (6, 8), (3, 2), (9, 4)] {
            for (from_state, bias) in [(false, false), (true, true), (true, false)] {
                seed += 1;
                let case = ShortConvCase { tokens, channels: 131, kernel, style, from_state, bias };
                assert_pass(pollster::block_on(checks::check_short_conv(dev(), case, seed)));
            }
        }
    }
}

/// Mamba2's scan: decode (one dispatch) and prefill (chunk states, then outputs) against the
/// token-by-token recurrence: one chunk, several (a chunk start at the last token too), from
/// zeros and from a state; groups of heads sharing B and C; heads wider than a workgroup.
#[test]
fn ssm_scans() {
    use checks::SsmCase;
    let base = SsmCase { tokens: 1, heads: 4, head_dim: 16, state: 32, groups: 1, from_state: true };
    let cases = [
        base,
        SsmCase { from_state: false, ..base },
        SsmCase { tokens: 2, ..base },
        SsmCase { tokens: 13, groups: 2, ..base },
        SsmCase { tokens: 65, groups: 4, from_state: false, ..base },
        SsmCase { tokens: 129, heads: 2, head_dim: 80, state: 8, groups: 1, from_state: true },
        SsmCase { tokens: 7, heads: 3, head_dim: 200, state: 5, groups: 3, from_state: true },
        // Past 32 chunks of 64: 128-token chunks.
        SsmCase { tokens: 2100, heads: 1, head_dim: 8, state: 4, groups: 1, from_state: true },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        assert_pass(pollster::block_on(checks::check_ssm_scan(dev(), case, 400 + i as u64)));
    }
}

#[test]
fn gated_activations() {
    for act in [Activation::Silu, Activation::GeluTanh, GPT_OSS] {
        for (rows, inter) in [(1, 64), (3, 173)] {
            assert_pass(pollster::block_on(checks::check_gated_activation(dev(), act, rows, inter, (rows + inter) as u64)));
        }
    }
}

#[test]
fn embedding_all_dtypes_with_scale() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        assert_pass(pollster::block_on(checks::check_embedding(dev(), dtype, 53, 96, if i % 2 == 0 { 1.0 } else { 24.0 }, i as u64)));
    }
}

#[test]
fn softmax_argmax_top_k() {
    assert_pass(pollster::block_on(checks::check_softmax(dev(), 2, 1001, 0.7, 1)));
    assert_pass(pollster::block_on(checks::check_softmax(dev(), 1, 3, 1.0, 2)));
    for cols in [1, 7, 1001, 50_000] {
        for masked in [false, true] {
            assert_pass(pollster::block_on(checks::check_argmax(dev(), cols.max(2), masked, cols as u64)));
        }
    }
    for (cols, k) in [(1001, 1), (1001, 40), (10, 16)] {
        assert_pass(pollster::block_on(checks::check_top_k(dev(), cols, k, k as u64)));
    }
}

#[test]
fn mixture_of_experts_every_dtype_decode_prefill_and_chunks() {
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        let case = MoeCase {
            tokens: 1,
            experts: 8,
            top_k: 2,
            hidden: 64,
            inter: 48,
            dtype,
            normalize: i % 2 == 0,
            bias: i % 3 == 0,
            experts_per_chunk: None,
            grouped: false,
            routing: ops::Routing::default(),
            selection_bias: false,
            accumulate: false,
        };
        assert_pass(pollster::block_on(checks::check_moe(dev(), case, 200 + i as u64)));
        let prefill = MoeCase { tokens: 9, experts: 5, top_k: 4, normalize: i % 2 == 1, bias: i % 3 != 0, ..case };
        for grouped in [false, true] {
            assert_pass(pollster::block_on(checks::check_moe(dev(), MoeCase { grouped, ..prefill }, 210 + i as u64)));
            // One and two experts per binding: every pick's expert in another chunk.
            for per in [1, 2] {
                let chunked = MoeCase { experts_per_chunk: Some(per), grouped, ..prefill };
                assert_pass(pollster::block_on(checks::check_moe(dev(), chunked, 220 + i as u64)));
            }
        }
        // Groups longer than a tile of tokens (32 with four tokens per thread).
        let long = MoeCase { tokens: 70, experts: 3, top_k: 2, grouped: true, ..case };
        assert_pass(pollster::block_on(checks::check_moe(dev(), long, 240 + i as u64)));
    }
    // Qwen3-MoE's shape of router: 128 experts, 8 picks, a prompt's worth of tokens.
    for grouped in [false, true] {
        let wide = MoeCase {
            tokens: 33,
            experts: 128,
            top_k: 8,
            hidden: 64,
            inter: 32,
            dtype: DType::Q8,
            normalize: true,
            bias: false,
            experts_per_chunk: None,
            grouped,
            routing: ops::Routing::default(),
            selection_bias: false,
            accumulate: false,
        };
        assert_pass(pollster::block_on(checks::check_moe(dev(), wide, 230)));
    }
}

/// DeepSeek's routers: V2's softmax limited to the best groups by their best expert, weights
/// unnormalised and scaled; V3's sigmoid with a selection bias, groups by their best two,
/// normalised and scaled; both adding to a shared expert's output, decode and grouped prefill.
#[test]
fn mixture_of_experts_deepseek_routing_onto_shared_expert_output() {
    let v2 = ops::Routing { groups: 4, groups_used: 2, scale: 16.0, ..ops::Routing::default() };
    // V3's (normalised, with a choice bias) as it is and without groups; V2's.
    for (i, (routing, v3)) in
        [(v2, false), (checks::DEEPSEEK_V3_ROUTING, true), (ops::Routing { groups: 1, ..checks::DEEPSEEK_V3_ROUTING }, true)].into_iter().enumerate()
    {
        for (tokens, grouped) in [(1, false), (5, false), (37, true)] {
            let case = MoeCase {
                tokens,
                experts: 32,
                top_k: 6,
                hidden: 64,
                inter: 32,
                dtype: DType::Q8,
                normalize: v3,
                bias: false,
                experts_per_chunk: None,
                grouped,
                routing,
                selection_bias: v3,
                accumulate: true,
            };
            assert_pass(pollster::block_on(checks::check_moe(dev(), case, 250 + i as u64)));
        }
    }
}

/// Router logits that are NaN pick nothing: the expert kernels skip the missing picks (no
/// out-of-range read) and the token's output is zero; other tokens are unaffected.
#[test]
fn mixture_of_experts_with_nan_router_logits_picks_nothing() {
    let d = dev();
    let (experts, top_k, hidden, inter) = (4, 2, 16, 8);
    let mut logits = vec![0.5f32, 2.0, -1.0, 1.0];
    logits.extend([f32::NAN, f32::NAN, 3.0, f32::NAN]); // one candidate for two picks
    let ones = |n: usize| vec![0.25f32; n];
    let gate_up = Tensor::from_packed(
        d,
        "gate|up",
        &[experts, 2 * inter, hidden],
        &PackedMatrix::pack(DType::F32, experts * 2 * inter, hidden, &ones(experts * 2 * inter * hidden)),
    )
    .unwrap();
    let down =
        Tensor::from_packed(d, "down", &[experts, hidden, inter], &PackedMatrix::pack(DType::F32, experts * hidden, inter, &ones(experts * hidden * inter)))
            .unwrap();
    let logits_t = Tensor::from_f32(d, "logits", &[2, experts], &logits).unwrap();
    let x = Tensor::from_f32(d, "x", &[2, hidden], &vec![1.0; 2 * hidden]).unwrap();
    let p = ops::MoeRouteParams::new(2, experts, top_k, true);
    let route = Tensor::new_zeroed(d, "route", &[p.route_len()], DType::F32).unwrap();
    let act = Tensor::new_zeroed(d, "act", &[2 * top_k, inter], DType::F32).unwrap();
    let y = Tensor::new_zeroed(d, "y", &[2, hidden], DType::F32).unwrap();
    let mut plan = Plan::new(d);
    ops::moe_route(&mut plan, &logits_t, None, &route, &p).unwrap();
    ops::expert_gated_matvec(&mut plan, &gate_up, &x, &route, None, &act, 2, top_k, Activation::Silu).unwrap();
    ops::expert_matvec(&mut plan, &down, &act, &route, None, &y, 2, top_k, false).unwrap();
    plan.finish().unwrap().run(d).unwrap();
    let r = pollster::block_on(route.read_u32(d)).unwrap();
    assert_eq!((r[0], r[1]), (1, 3), "token 0 picks its two largest logits");
    assert_eq!((r[4], r[5]), (2, u32::MAX), "token 1 has one candidate; the second pick is NONE: {r:?}");
    assert_eq!(f32::from_bits(r[6]), 1.0, "the one pick takes the whole weight");
    let y = pollster::block_on(y.read_f32(d)).unwrap();
    // gate = up = 0.25·16 = 4 per row; silu(4)·4·weight; down sums 8 of them ·0.25.
    let per_expert = 4.0 / (1.0 + (-4.0f32).exp()) * 4.0 * 0.25 * inter as f32;
    assert!(y.iter().all(|v| (v - per_expert).abs() < 1e-3), "{y:?}");
}

#[test]
fn browser_suite_passes_natively() {
    for (label, result) in pollster::block_on(checks::run_suite(dev())) {
        let r = result.unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(r.passed, "{}: {}", r.name, r.detail);
    }
}

/// A warm executable run again creates no buffers: a decode step allocates nothing.
#[test]
fn rerunning_an_executable_allocates_nothing() {
    // Its own device: the shared ones are allocating for tests running in parallel.
    let d = &device_with(DeviceOptions::default());
    let (n, k) = (64, 128);
    let values: Vec<f32> = (0..n * k).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
    let w = Tensor::from_packed(d, "w", &[n, k], &PackedMatrix::pack(DType::Q4, n, k, &values)).unwrap();
    let x = Tensor::from_f32(d, "x", &[k], &vec![0.5; k]).unwrap();
    let y = Tensor::new_zeroed(d, "y", &[n], DType::F32).unwrap();
    let ids = Tensor::from_u32(d, "argmax", &[0]).unwrap();
    let mut plan = Plan::new(d);
    ops::matvec(&mut plan, &w, &x, None, &y).unwrap();
    ops::argmax(&mut plan, &y, None, &ids, 1, n).unwrap();
    let mut exe = plan.finish().unwrap();
    exe.run(d).unwrap();
    let first = pollster::block_on(ids.read_u32(d)).unwrap();
    let before = d.buffers_created();
    for _ in 0..3 {
        exe.run(d).unwrap();
        assert_eq!(pollster::block_on(ids.read_u32(d)).unwrap(), first);
    }
    assert_eq!(d.buffers_created(), before, "a warm step and its read-back must reuse pooled buffers");
}

#[test]
fn bad_shapes_and_limits_are_clear_errors() {
    let d = dev();
    let w = Tensor::from_packed(d, "w", &[4, 64], &PackedMatrix::pack(DType::Q4, 4, 64, &[0.25; 256])).unwrap();
    let x_short = Tensor::from_f32(d, "x", &[32], &[1.0; 32]).unwrap();
    let y = Tensor::new_zeroed(d, "y", &[4], DType::F32).unwrap();
    let err = ops::matvec(&mut Plan::new(d), &w, &x_short, None, &y).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "matvec", .. }) && err.to_string().contains("`x` has 32 elements, needs 64"), "{err}");

    let err = Tensor::new_zeroed(d, "odd", &[2, 48], DType::Q4).unwrap_err();
    assert!(err.to_string().contains("not a multiple of 32"), "{err}");

    let small = dev_small_bindings();
    let err = Tensor::new_weight(small, "wide", &[2, 4096], DType::F32).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { limit_name: "maxStorageBufferBindingSize", .. }), "{err}");
    let err = Tensor::new_zeroed(small, "activations", &[64, 64], DType::F32).unwrap_err();
    assert!(err.to_string().contains("tensor `activations` [64, 64] needs 16384 bytes"), "{err}");

    let err = Tensor::new_zeroed(d, "huge row", &[2, 1 << 30], DType::F32).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");

    let q = Tensor::new_zeroed(d, "q", &[1, 64], DType::F32).unwrap();
    let cache = Tensor::new_zeroed(d, "cache", &[4 * 64], DType::F32).unwrap();
    let params =
        ops::AttentionParams { tokens: 1, heads_q: 1, heads_kv: 1, head_dim: 64, pos0: 4, window: 0, causal: true, scale: 1.0, softcap: 0.0, q_stride: 64 };
    let err = ops::attention(&mut Plan::new(d), &q, &cache, &cache, &q, &params).unwrap_err();
    assert!(err.to_string().contains("exceed the KV cache capacity 4"), "{err}");
}

/// A decode loop records a new plan per step; `finish_cached` must reuse the last executable
/// when only uniforms change (here x's row and the attention position, whose key splits use
/// pooled scratch) and give exactly what a freshly built executable gives.
#[test]
fn a_plan_of_the_same_shape_reuses_the_cached_executable() {
    use emberlm_core::ops::AttentionParams;
    use emberlm_core::StepCache;
    let d = dev();
    let (n, k) = (70, 256);
    let mut rng = checks::Rng::new(21);
    let w = Tensor::from_packed(d, "w", &[n, k], &PackedMatrix::pack(DType::Q4, n, k, &rng.vec(n * k, -1.0, 1.0))).unwrap();
    let x = Tensor::from_f32(d, "x", &[3, k], &rng.vec(3 * k, -1.0, 1.0)).unwrap();
    let (hq, hkv, hd, s_max) = (4, 2, 64, 1024);
    let q = Tensor::from_f32(d, "q", &[hq * hd], &rng.vec(hq * hd, -1.0, 1.0)).unwrap();
    let kc = Tensor::from_f32(d, "k", &[hkv * s_max * hd], &rng.vec(hkv * s_max * hd, -1.0, 1.0)).unwrap();
    let vc = Tensor::from_f32(d, "v", &[hkv * s_max * hd], &rng.vec(hkv * s_max * hd, -1.0, 1.0)).unwrap();
    let y = Tensor::new_zeroed(d, "y", &[n], DType::F32).unwrap();
    let out = Tensor::new_zeroed(d, "out", &[hq * hd], DType::F32).unwrap();
    let record = |x_row: usize, pos0: usize, y: &Tensor| {
        let mut plan = Plan::new(d);
        ops::matvec_into(&mut plan, &w, &x, x_row, None, y, 0).unwrap();
        let p = AttentionParams {
            tokens: 1,
            heads_q: hq,
            heads_kv: hkv,
            head_dim: hd,
            pos0,
            window: 0,
            causal: true,
            scale: 0.125,
            softcap: 0.0,
            q_stride: hq * hd,
        };
        ops::attention(&mut plan, &q, &kc, &vc, &out, &p).unwrap();
        plan
    };
    let read = |t: &Tensor| pollster::block_on(t.read_f32(d)).unwrap();

    let mut cache = StepCache::default();
    for (step, (x_row, pos0)) in [(0, 600), (1, 601), (2, 700)].into_iter().enumerate() {
        record(x_row, pos0, &y).finish_cached(&mut cache).unwrap().run(d).unwrap();
        let (got_y, got_out) = (read(&y), read(&out));
        record(x_row, pos0, &y).finish().unwrap().run(d).unwrap();
        assert_eq!(got_y, read(&y), "step {step}: matvec from the cached executable");
        assert_eq!(got_out, read(&out), "step {step}: attention from the cached executable");
        assert_eq!(cache.counts(), (1, step as u64), "step {step}: built once, then reused");
    }
    // Another output buffer is another shape: built anew.
    let y2 = Tensor::new_zeroed(d, "y2", &[n], DType::F32).unwrap();
    record(0, 600, &y2).finish_cached(&mut cache).unwrap().run(d).unwrap();
    assert_eq!(cache.counts(), (2, 2));
    assert!(read(&y2).iter().any(|v| *v != 0.0));
}

/// Pipelines compiled side by side (`PipelineCache::get_or_create_all`, what a plan's first step
/// does natively) are the ones later lookups get, each variant compiled once however often it is
/// listed; a variant that does not compile is an error naming its kernel, from whichever
/// thread compiled it, and leaves the others cached.
#[test]
fn pipelines_compile_side_by_side() {
    use emberlm_core::pipeline_cache::KernelKey;
    use emberlm_core::shader::Variant;
    let dev = device_with(DeviceOptions::default());
    let softcap = |wg: u32| KernelKey { kernel: "logit_softcap", variant: Variant::default().with("WG", wg) };
    let keys: Vec<KernelKey> = [32, 64, 128, 256, 64, 32].into_iter().map(softcap).collect();
    let got = dev.pipelines.get_or_create_all(&dev.device, &keys.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(dev.pipelines.len(), 4, "each distinct variant once");
    assert_eq!(got.len(), 6);
    assert_eq!((&got[0], &got[1]), (&got[5], &got[4]), "a key listed twice gets its one pipeline");
    let again = dev.pipelines.get_or_create(&dev.device, &softcap(128)).unwrap();
    assert_eq!(again, dev.pipelines.get_or_create(&dev.device, &softcap(128)).unwrap());
    assert_eq!(dev.pipelines.len(), 4, "looked up, not compiled again");
    // More invocations than any adapter allows in a workgroup: refused at pipeline creation.
    let err = dev.pipelines.get_or_create_all(&dev.device, &[&softcap(16), &softcap(1 << 20)]).unwrap_err();
    assert!(matches!(&err, Error::Validation { context, .. } if context.contains("logit_softcap")), "{err}");
    assert_eq!(dev.pipelines.len(), 5, "the good variant is cached, the failed one not");
}
