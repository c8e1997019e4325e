#!/usr/bin/env bash
# Builds crates/emberlm-wasm for wasm32 twice and runs wasm-bindgen on each (the npm package's
# engine; the browser tests load it from there too):
#   npm/wasm          the plain build (stable Rust): WebGPU, the CPU backend on one thread; used
#                     in Node, Deno, Bun, on a page's main thread and where the page is not
#                     cross-origin isolated;
#   npm/wasm-threads  the threads build (nightly: std rebuilt with atomics, one shared memory):
#                     the CPU backend on rayon over Web Workers, for cross-origin isolated pages.
# and each again with relaxed SIMD (emberlm_wasm_relaxed_bg.wasm beside the other: the CPU
# backend's Q4 dot product in one instruction per 16 bytes), which the package loads where the
# engine validates relaxed SIMD. The relaxed build must have exactly the same JS glue: checked.
# Prints the bundle sizes (raw and gzipped).
# Usage: build-wasm.sh [plain-out-dir [threads-out-dir]]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-npm/wasm}
threads_out=${2:-npm/wasm-threads}

sizes() {
  local wasm="$1/emberlm_wasm_bg.wasm" js="$1/emberlm_wasm.js"
  printf '%s: wasm %s bytes raw, %s gzipped; js glue: %s bytes raw, %s gzipped\n' "$1" \
    "$(wc -c <"$wasm")" "$(gzip -9 -c "$wasm" | wc -c)" "$(wc -c <"$js")" "$(gzip -9 -c "$js" | wc -c)"
}

# Function names (the name section, ~1 MB raw / 0.2 MB gzipped per build) only label frames in
# stack traces; a panic's message and source location survive without them.
bindgen() { wasm-bindgen --target web --remove-name-section --remove-producers-section "$@"; }

# Runs wasm-bindgen on a relaxed-SIMD build ($2) into a scratch folder and keeps its .wasm as
# $1/emberlm_wasm_relaxed_bg.wasm, after checking its glue is the one already in $1.
relaxed_beside() {
  local scratch="$2.bindgen"
  rm -rf "$scratch" && bindgen --out-dir "$scratch" "$2"
  if ! cmp -s "$scratch/emberlm_wasm.js" "$1/emberlm_wasm.js"; then
    echo "build-wasm: the relaxed-SIMD build's JS glue differs from $1's; it cannot share it" >&2
    exit 1
  fi
  cp "$scratch/emberlm_wasm_bg.wasm" "$1/emberlm_wasm_relaxed_bg.wasm"
  printf '%s: relaxed-SIMD wasm %s bytes raw, %s gzipped\n' "$1" "$(wc -c <"$1/emberlm_wasm_relaxed_bg.wasm")" "$(gzip -9 -c "$1/emberlm_wasm_relaxed_bg.wasm" | wc -c)"
}

echo "build-wasm: plain build (a few minutes the first time)"
cargo build -q -p emberlm-wasm --target wasm32-unknown-unknown --profile wasm-release
bindgen --out-dir "$out" target/wasm32-unknown-unknown/wasm-release/emberlm_wasm.wasm
sizes "$out"
# RUSTFLAGS replaces .cargo/config.toml's flags for the target, so simd128 is repeated here.
echo "build-wasm: plain build with relaxed SIMD"
RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  cargo build -q -p emberlm-wasm --target wasm32-unknown-unknown --profile wasm-release --target-dir target/wasm-relaxed
relaxed_beside "$out" target/wasm-relaxed/wasm32-unknown-unknown/wasm-release/emberlm_wasm.wasm

# The linker is told to make the memory shared and imported (wasm-bindgen hands it to every
# worker) and to export the thread-local storage hooks wasm-bindgen's thread start calls. A
# shared memory needs a declared maximum: 4 GiB, the wasm32 limit the loader checks against.
echo "build-wasm: threads build (nightly, std rebuilt with atomics: a few minutes the first time)"
link=""
for arg in --shared-memory --import-memory --max-memory=4294967296 \
  --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base; do
  link="$link -C link-arg=$arg"
done
# rustc warns once per crate that `atomics` is unstable: its log is shown only if the build fails
# (the code's own warnings show in the plain build above).
threads_build() { # target dir, extra target features
  mkdir -p "$1"
  if ! RUSTFLAGS="-C target-feature=+simd128$2,+atomics,+bulk-memory,+mutable-globals$link" \
    cargo +nightly build -q -p emberlm-wasm --target wasm32-unknown-unknown --profile wasm-release \
    -Z build-std=panic_abort,std --target-dir "$1" 2>"$1/build.log"; then
    cat "$1/build.log" >&2
    exit 1
  fi
}
threads_build target/wasm-threads ""
bindgen --out-dir "$threads_out" target/wasm-threads/wasm32-unknown-unknown/wasm-release/emberlm_wasm.wasm
sizes "$threads_out"
echo "build-wasm: threads build with relaxed SIMD"
threads_build target/wasm-threads-relaxed ",+relaxed-simd"
relaxed_beside "$threads_out" target/wasm-threads-relaxed/wasm32-unknown-unknown/wasm-release/emberlm_wasm.wasm
