#!/usr/bin/env bash
# wasm32 size of candle-core's quantised matmul against emberlm-cpu's, each in a cdylib doing the
# same job (quantise, then matmul, for the 4–8-bit formats), release + LTO, simd128; printed raw
# and gzipped. emberlm's number includes emberlm-core, which the bundle carries anyway.
#   bash tests/bench/candle-eval/wasm-size/size.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for probe in candle emberlm; do
  (cd "$here/$probe" && RUSTFLAGS='-C target-feature=+simd128 --cfg getrandom_backend="wasm_js"' \
    cargo build -q --release --target wasm32-unknown-unknown)
  wasm=$(ls "$here/$probe"/target/wasm32-unknown-unknown/release/*.wasm)
  echo "$probe: $(stat -c %s "$wasm") bytes, $(gzip -9 -c "$wasm" | wc -c) gzipped"
done
