#!/usr/bin/env bash
# The whole test suite: installs what it needs, then
#   1. Rust tests on lavapipe (shader-f16) and the CPU backend: every kernel and CPU op
#      against the f64 reference, GGUF and
#      safetensors parsing, tiny models of every architecture and SmolLM2 against transformers,
#      tokenizers and chat templates against Python, the `emberlm` CLI,
#   2. the kernel and tiny-model tests again on SwiftShader (no shader-f16; the browsers' adapter),
#   3. the wasm32 builds (plain, and threads on nightly) and the npm package (TypeScript), its
#      unit tests against the mock Hub,
#   4. in headless Chromium through WebGPU: every kernel, tiny models, the npm package (with
#      WebAssembly threads on a cross-origin isolated page too), the chat page (www/,
#      screenshots in tests/browser/screenshots/) and the Vite example,
#   5. the npm package and the terminal examples in Node, Deno and Bun.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

# Each phase's header says how long the suite has run, so a slow CI log shows where time went.
phase() { echo "== $* (at $((SECONDS / 60)) min $((SECONDS % 60)) s)"; }

LAVAPIPE=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
SWIFTSHADER=/usr/lib/chromium/vk_swiftshader_icd.json

# Release: the model test loads and repacks 100 MB of weights on the CPU.
phase "cargo test (lavapipe: shader-f16)"
VK_ICD_FILENAMES=$LAVAPIPE cargo test --release --workspace

phase "kernel and tiny-model tests (SwiftShader: no shader-f16)"
VK_ICD_FILENAMES=$SWIFTSHADER cargo test --release -p emberlm-core --test kernels
VK_ICD_FILENAMES=$SWIFTSHADER EMBERLM_TEST_BACKENDS=webgpu cargo test --release -p emberlm-models --test tiny_models

phase "wasm32 build and the npm package"
bash scripts/build-wasm.sh
(cd npm && npm run -s build)
phase "npm package unit tests (mock Hub: downloads, faults, cache)"
(cd npm && node --test test/)

phase "browser tests (headless Chromium, WebGPU on SwiftShader)"
(cd tests && node --test browser/)

phase "the npm package and the examples in Node, Deno and Bun"
(cd tests && node --test runtimes/)
phase "all passed"
