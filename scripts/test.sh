#!/usr/bin/env bash
# The whole suite: ruff (format + lint, through tox), import contracts and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/tox -q -e lint
.venv/bin/python -m pytest -q "$@"
