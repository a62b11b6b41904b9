#!/usr/bin/env bash
# The system packages the project needs, checked before anything is installed, and the one
# place that names them.
#   bash scripts/prereqs.sh test   # the test suite: skopeo and an OCI registry too
#   bash scripts/prereqs.sh demo   # the quick start
# As root on Debian/Ubuntu (apt-get), what is missing is installed; otherwise one line on
# stderr names it with the command that installs it, and the script exits 1 at once.
# OpenBLAS only makes MLX's CPU backend faster: `test` installs it as root (the suite runs
# about 10x faster), otherwise it is only noted.
set -euo pipefail
MODE=${1:-test}
WHAT=$([ "$MODE" = test ] && echo "the tests need" || echo "the quick start needs")
PYTHON=${PYTHON:-python3}
ROOT="$(dirname "$0")/.."

missing=()   # Debian packages without which the command fails
optional=()  # Debian packages that make it faster
if ! command -v "$PYTHON" > /dev/null; then
  missing+=(python3)
elif [ ! -x "$ROOT/.venv/bin/python" ] && ! "$PYTHON" -c "import ensurepip, venv" 2> /dev/null; then
  missing+=(python3-venv)
fi
if [ "$MODE" = test ]; then
  command -v skopeo > /dev/null || missing+=(skopeo)
  # tests/registry_server.py: $MLXOLLAMA_TEST_REGISTRY, Debian's docker-registry or
  # distribution's registry
  if [ ! -x "${MLXOLLAMA_TEST_REGISTRY:-/nonexistent}" ] && ! command -v docker-registry > /dev/null \
     && ! command -v registry > /dev/null; then
    missing+=(docker-registry)
  fi
fi
case "$(uname -s)" in
  Linux)
    # engine/__init__.py loads this libblas.so.3 (OpenBLAS) before MLX
    blas=no
    for dir in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do
      [ -e "$dir/openblas-pthread/libblas.so.3" ] && blas=yes
    done
    [ $blas = yes ] || optional+=(libopenblas0-pthread)
    ;;
  Darwin)
    if [ ${#missing[@]} -gt 0 ]; then
      brew=()
      for p in "${missing[@]}"; do
        case $p in docker-registry) brew+=(distribution) ;; python3*) brew+=(python) ;; *) brew+=("$p") ;; esac
      done
      echo "Error: $WHAT ${missing[*]} (not installed): brew install ${brew[*]}" >&2
      exit 1
    fi
    exit 0
    ;;
esac

if [ "$MODE" = test ]; then
  wanted=("${missing[@]}" "${optional[@]}")
else
  wanted=("${missing[@]}")
fi
[ ${#missing[@]} -gt 0 ] || [ ${#optional[@]} -gt 0 ] || exit 0
if [ ${#wanted[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "installing ${wanted[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${wanted[@]}"
elif [ ${#missing[@]} -gt 0 ]; then
  all=("${missing[@]}" "${optional[@]}")
  sudo=$([ "$(id -u)" = 0 ] || echo "sudo ")
  echo "Error: $WHAT ${missing[*]} (not installed): ${sudo}apt-get install -y ${all[*]}" >&2
  exit 1
else
  echo "note: MLX's CPU backend runs about 10x faster with OpenBLAS: sudo apt-get install -y ${optional[*]}" >&2
fi
