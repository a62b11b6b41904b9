#!/usr/bin/env bash
# The whole suite: ruff (format + lint, through tox), import contracts and tests. First the
# system packages the tests need (scripts/prereqs.sh: installed as root with apt-get, else
# one line naming them, before anything is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh test
bash scripts/setup.sh
.venv/bin/tox -q -e lint
.venv/bin/python -m pytest -q "$@"
