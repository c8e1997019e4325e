#!/usr/bin/env bash
# Builds crates/emberlm-wasm for wasm32 and runs wasm-bindgen into npm/wasm (the npm package's
# engine; the browser tests load it from there too).
# Prints the bundle sizes (raw and gzipped).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-npm/wasm}
cargo build -q -p emberlm-wasm --target wasm32-unknown-unknown --profile wasm-release
wasm-bindgen --target web --out-dir "$out" target/wasm32-unknown-unknown/wasm-release/emberlm_wasm.wasm
wasm="$out/emberlm_wasm_bg.wasm"
js="$out/emberlm_wasm.js"
printf 'wasm: %s bytes raw, %s gzipped; js glue: %s bytes raw, %s gzipped\n' \
  "$(wc -c <"$wasm")" "$(gzip -9 -c "$wasm" | wc -c)" "$(wc -c <"$js")" "$(gzip -9 -c "$js" | wc -c)"
