#!/usr/bin/env bash
# The CPU kernel bench (crates/emberlm-cpu/benches/kernels.rs) built for wasm32-wasip1 with
# simd128, then with relaxed SIMD too, and run in Node's V8 (what Chromium runs): the browser
# CPU backend's matvec and matmul per weight dtype, without a page or a model. Not a test.
#   bash tests/bench/wasm-kernels.sh [q4 q8 … --tokens 60]
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
for flavour in plain relaxed; do
  features=+simd128
  [ "$flavour" = relaxed ] && features=+simd128,+relaxed-simd
  RUSTFLAGS="-C target-feature=$features" cargo bench -q -p emberlm-cpu --bench kernels --target wasm32-wasip1 \
    --no-run --target-dir "target/wasi-$flavour"
  program=$(ls -t target/wasi-$flavour/wasm32-wasip1/release/deps/kernels-*.wasm | head -1)
  echo "== $flavour build"
  # Node 20's experimental relaxed SIMD has crashed (SIGSEGV) on exit, after the last figure.
  rc=0
  node --experimental-wasm-relaxed-simd --no-warnings tests/bench/wasi-run.mjs "$program" "$@" || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 139 ] || exit "$rc"
done
