"""Everything that touches MLX: import, load, templates, sampling, generation.

Importing this package first gives MLX's CPU backend a fast BLAS when one is installed:
MLX's Linux CPU wheel bundles a reference BLAS, and loading OpenBLAS globally before the
first `import mlx` makes MLX's BLAS calls resolve to it (about 10x faster float32 matmuls
measured on 2 cores). On macOS and with the CUDA backend nothing changes. A path given in
`MLXOLLAMA_BLAS` that cannot be loaded fails the import (a silent fallback would leave the
user with a 10x slower engine and no clue). `describe()` says what was chosen.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

from mlxollama.config import Config
from mlxollama.errors import MlxOllamaError

_BLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)


class BlasError(MlxOllamaError):
    """MLXOLLAMA_BLAS names a library that cannot be loaded."""


def _preload_blas(choice: str) -> tuple[str | None, str]:
    """(the loaded library's path or None, why none was loaded).

    Raises:
        BlasError: `choice` is a path that does not exist or does not load.
    """
    if choice not in ("auto", "off"):
        if not os.path.exists(choice):
            raise BlasError(f"MLXOLLAMA_BLAS={choice}: cannot load it: no such file")
        try:
            return _load(choice), ""
        except OSError as e:
            reason = str(e).removeprefix(f"{choice}: ")
            raise BlasError(f"MLXOLLAMA_BLAS={choice}: cannot load it: {reason}") from None
    if not sys.platform.startswith("linux"):
        return None, "Accelerate" if sys.platform == "darwin" else "none"
    if choice == "off":
        return None, "none (MLXOLLAMA_BLAS=off: MLX's bundled reference BLAS)"
    for path in _BLAS_CANDIDATES:
        if os.path.exists(path):
            try:
                return _load(path), ""
            except OSError:
                continue
    return None, "none (no OpenBLAS found: apt-get install libopenblas0-pthread)"


def _load(path: str) -> str:
    if "mlx.core" not in sys.modules:  # afterwards MLX has bound its own BLAS already
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    return path


_IMPORTED_LATE = "mlx.core" in sys.modules
BLAS, _NO_BLAS = _preload_blas(Config.blas())
if _IMPORTED_LATE and BLAS:
    BLAS, _NO_BLAS = None, "none (mlx was imported before mlxollama.engine)"


@functools.cache
def describe() -> dict[str, str]:
    """What runs the models, as `mlxctl serve` logs it and `/api/version` reports it:
    `backend` (cpu, metal or cuda), `blas` (the loaded library's path, or why none) and
    `mlx` and `mlx_lm` (their versions). Imports MLX."""
    import mlx.core as mx
    from mlx_lm import __version__ as mlx_lm_version

    if mx.default_device().type == mx.cpu:
        backend = "cpu"
    else:
        backend = "metal" if sys.platform == "darwin" else "cuda"
    return {
        "backend": backend,
        "blas": BLAS or _NO_BLAS,
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm_version,
    }


def memory() -> dict[str, int]:
    """MLX's allocator in bytes: `active_memory` now and `peak_memory` since the process
    started (what `mlxctl bench` reports). A query of counters, safe from any thread."""
    import mlx.core as mx

    return {"active_memory": mx.get_active_memory(), "peak_memory": mx.get_peak_memory()}
