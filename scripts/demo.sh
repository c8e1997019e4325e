#!/usr/bin/env bash
# The main job. Until the model and chat-page work lands (issues "Models" and "Chat page"),
# this shows the engine itself: the adapter the engine found, every kernel checked against
# the CPU reference in headless Chromium through the wasm build, and the decode matvec
# benchmark at real model shapes on this machine's WebGPU adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
bash scripts/build-wasm.sh
(cd tests && node --test browser/kernels.test.mjs)
cargo bench -q -p emberlm-core --bench matvec -- --iters 10
