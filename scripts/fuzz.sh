#!/usr/bin/env bash
# cargo-fuzz (libFuzzer, nightly) on the parsers of hostile model files: GGUF, the safetensors
# header, config.json + tokenizer.json + tokenizer_config.json, chat templates
# (tests/fuzz/fuzz_targets). Seeds come from the tiny fixtures. Not part of the test suite,
# which runs the fixed-seed mutation fuzzer on stable
# (crates/emberlm-models/tests/fuzz_model_files.rs).
#   bash scripts/fuzz.sh [seconds per target, default 60] [target ...]
# libFuzzer's panic hook aborts on every panic, even one the engine catches natively (a panic
# inside the tokenizers crate): in wasm those are traps, so they count as findings here.
# Findings land in tests/fuzz/artifacts/<target>/; the corpora in target/fuzz-corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf safetensors_header hf_json chat_template)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

# Seed corpora from the fixtures.
CORPUS=target/fuzz-corpus
TINY=tests/fixtures/tiny
mkdir -p "$CORPUS"/{gguf,safetensors_header,hf_json,chat_template}
for arch in qwen2 llama gemma2 phi3; do cp "$TINY/$arch/model.gguf" "$CORPUS/gguf/$arch.gguf"; done
cp tests/fixtures/spm/*.gguf "$CORPUS/gguf/" 2>/dev/null || true
node -e '
  const fs = require("fs");
  const st = fs.readFileSync(process.argv[1]);
  const n = 8 + Number(st.readBigUInt64LE(0));
  fs.writeFileSync(process.argv[2], st.subarray(0, n + 64));
' "$TINY/qwen2/model.safetensors" "$CORPUS/safetensors_header/qwen2"
for arch in qwen2 llama; do
  { cat "$TINY/$arch/config.json"; printf '\0'; cat "$TINY/$arch/tokenizer.json"; printf '\0'; cat "$TINY/$arch/tokenizer_config.json"; } > "$CORPUS/hf_json/$arch"
done
cp "$TINY"/templates/*.jinja "$CORPUS/chat_template/"

for t in "${TARGETS[@]}"; do
  echo "== fuzz $t for ${SECONDS_PER_TARGET} s"
  # Inputs up to 1 MiB (the GGUF seeds are ~450 kB); 10 s and 2 GiB per input at most.
  cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "$CORPUS/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=1048576 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
