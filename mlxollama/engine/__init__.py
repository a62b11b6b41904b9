"""Everything that touches MLX: import, load, templates, sampling, generation.

Importing this package first gives MLX's CPU backend a fast BLAS when one is installed:
MLX's Linux CPU wheel bundles a reference BLAS, and loading OpenBLAS globally before the
first `import mlx` makes MLX's BLAS calls resolve to it (about 10x faster float32 matmuls
measured on 2 cores). On macOS and with the CUDA backend nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

_BLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)


def _preload_blas() -> str | None:
    choice = os.environ.get("MLXOLLAMA_BLAS", "auto")
    if not sys.platform.startswith("linux") or choice == "off" or "mlx.core" in sys.modules:
        return None
    candidates = _BLAS_CANDIDATES if choice == "auto" else (choice,)
    for path in candidates:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
                return path
            except OSError:
                continue
    return None


BLAS = _preload_blas()
