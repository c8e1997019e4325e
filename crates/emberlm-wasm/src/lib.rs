//! wasm-bindgen exports of emberlm: `EmberModel` (load GGUF or safetensors, tokenize, chat
//! templates, generate), device information, and the self-tests, which run every GPU kernel and
//! every CPU op against the f64 reference inside the browser (the same checks as `cargo test`).

mod hash;
mod model;
#[cfg(target_feature = "atomics")]
mod threads;

pub use hash::ContentHasher;
pub use model::EmberModel;

use emberlm_core::{DeviceOptions, GpuDevice};
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// Panic messages since the last [`take_panics`], at most a few: in wasm a panic aborts (a
/// trap, which JavaScript sees as `RuntimeError: unreachable`), so the npm package reads the
/// message here to say what went wrong.
static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => info.payload().downcast_ref::<String>().cloned().unwrap_or_else(|| "a panic".into()),
        };
        if let Ok(mut panics) = PANICS.lock() {
            if panics.len() < 4 {
                panics.push(message);
            }
        }
        console_error_panic_hook::hook(info);
    }));
}

/// The panic messages since the last call (see [`PANICS`]), oldest first.
#[wasm_bindgen(js_name = takePanics)]
pub fn take_panics() -> Vec<String> {
    PANICS.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceReport {
    adapter_name: String,
    backend: String,
    shader_f16: bool,
    subgroups: bool,
    subgroup_min_size: u32,
    subgroup_max_size: u32,
    max_buffer_size: u64,
    max_storage_binding: u64,
    max_workgroup_storage: u32,
}

impl DeviceReport {
    fn of(dev: &GpuDevice) -> Self {
        let c = &dev.caps;
        Self {
            adapter_name: c.adapter_name.clone(),
            backend: c.backend.clone(),
            shader_f16: c.shader_f16,
            subgroups: c.subgroups,
            subgroup_min_size: c.subgroup_min_size,
            subgroup_max_size: c.subgroup_max_size,
            max_buffer_size: c.max_buffer_size,
            max_storage_binding: c.max_storage_binding,
            max_workgroup_storage: c.max_workgroup_storage,
        }
    }
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    // u64 limits do not fit a JS number exactly; as plain numbers they are fine for reporting.
    let serializer = serde_wasm_bindgen::Serializer::new().serialize_large_number_types_as_bigints(false);
    value.serialize(&serializer).map_err(|e| JsValue::from_str(&e.to_string()))
}

async fn device(allow_subgroups: bool) -> Result<GpuDevice, JsValue> {
    GpuDevice::new(DeviceOptions { allow_subgroups, ..Default::default() }).await.map_err(|e| JsValue::from_str(&e.to_string()))
}

/// What the WebGPU adapter offers, as the engine sees it.
#[wasm_bindgen(js_name = deviceInfo)]
pub async fn device_info() -> Result<JsValue, JsValue> {
    to_js(&DeviceReport::of(&device(true).await?))
}

#[cfg(feature = "selftest")]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckReport {
    label: String,
    name: String,
    passed: bool,
    max_abs_err: f64,
    worst_ratio: f64,
    detail: String,
}

#[cfg(feature = "selftest")]
#[derive(Serialize)]
struct SelfTestReport {
    device: DeviceReport,
    checks: Vec<CheckReport>,
}

/// Runs every kernel on seeded random data and compares with the CPU reference. With
/// `allowSubgroups = false` the shared-memory reduction paths run instead.
#[cfg(feature = "selftest")]
#[wasm_bindgen(js_name = kernelSelfTest)]
pub async fn kernel_self_test(allow_subgroups: bool) -> Result<JsValue, JsValue> {
    let dev = device(allow_subgroups).await?;
    let mut checks = Vec::new();
    for (label, result) in emberlm_core::checks::run_suite(&dev).await {
        checks.push(match result {
            Ok(r) => CheckReport {
                label,
                name: r.name,
                passed: r.passed,
                // Infinity does not survive JSON; failed exact checks report -1.
                max_abs_err: if r.max_abs_err.is_finite() { r.max_abs_err } else { -1.0 },
                worst_ratio: if r.worst_ratio.is_finite() { r.worst_ratio } else { -1.0 },
                detail: r.detail,
            },
            Err(e) => CheckReport { name: label.clone(), label, passed: false, max_abs_err: -1.0, worst_ratio: -1.0, detail: e.to_string() },
        });
    }
    to_js(&SelfTestReport { device: DeviceReport::of(&dev), checks })
}

#[cfg(feature = "selftest")]
#[derive(Serialize)]
struct CpuCheckReport {
    name: String,
    passed: bool,
    detail: String,
}

#[cfg(feature = "selftest")]
#[derive(Serialize)]
struct CpuSelfTestReport {
    device: String,
    checks: Vec<CpuCheckReport>,
}

/// Runs every CPU-backend op on seeded random data and compares with the f64 reference: the
/// wasm build's `simd128` kernels, checked where they run.
#[cfg(feature = "selftest")]
#[wasm_bindgen(js_name = cpuSelfTest)]
pub fn cpu_self_test() -> Result<JsValue, JsValue> {
    let checks = emberlm_cpu::checks::run_all()
        .into_iter()
        .map(|(name, r)| CpuCheckReport { name, passed: r.is_ok(), detail: r.err().map(|e| e.to_string()).unwrap_or_default() })
        .collect();
    to_js(&CpuSelfTestReport { device: emberlm_cpu::CpuDevice::new(None).describe(), checks })
}
