"""Which form a model's weights take in memory: as stored, or dense.

The fastest form depends on the backend (measured, issue 15): Metal's quantized kernels are
fast, so stored quantization stays; MLX's CPU backend has a fast path (BLAS) for float32
only; on CUDA the quantized matmul's step time grows almost linearly with the batch while
bf16 barely moves, so batched serving is 2-8x faster dense, when the dense weights and the
KV cache fit the memory budget. `MLXOLLAMA_WEIGHTS` picks: `auto` (the rule above),
`stored` or `dense`. The choice is a pure function of its inputs (`choose`), made where the
memory estimate is made, so the estimate, `/api/ps` and the load agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

SETTINGS = ("auto", "stored", "dense")
# the dtype a dense model takes on each backend, as `loader.convert` names it
DENSE_DTYPE = {"cpu": "fp32", "cuda": "bf16", "metal": "bf16"}
_DTYPE_BYTES = {"fp32": 4, "bf16": 2}
_LABEL = {"fp32": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class Weights:
    """The chosen form: `dense` is the dtype to convert to ("bf16", "fp32"), None to keep
    the stored form; `nbytes` is what the weights then occupy; `label` is what `/api/ps`
    shows (`Q4_0 (stored)`, `bf16 (dense)`)."""

    dense: str | None
    nbytes: int
    label: str


def choose(
    setting: str,
    backend: str,
    *,
    quantized: bool,
    stored_bytes: int,
    parameters: int,
    other_bytes: int,
    budget: int,
    ram: int,
    stored_type: str = "",
) -> Weights:
    """The form for one load.

    Args:
        setting: `auto`, `stored` or `dense` (MLXOLLAMA_WEIGHTS).
        backend: `cpu`, `cuda` or `metal` (`engine.describe()["backend"]`).
        quantized: whether the stored weights are quantized.
        stored_bytes: the stored weights' size.
        parameters: the model's parameter count (0: unknown, then the stored form stays).
        other_bytes: what else the model holds besides weights (its KV cache estimate and
            prompt cache cap), counted with the dense weights against `budget`.
        budget: the memory budget (MLXOLLAMA_MAX_MEMORY or its auto value).
        ram: the machine's RAM (CPU `auto` converts only below a quarter of it, as before).
        stored_type: the stored quantization's name for the label (`file_type`).
    """
    if setting not in SETTINGS:
        raise ValueError(f"MLXOLLAMA_WEIGHTS must be one of {', '.join(SETTINGS)}, got {setting!r}")
    dtype = DENSE_DTYPE.get(backend, "bf16")
    dense_bytes = parameters * _DTYPE_BYTES[dtype]
    stored = Weights(None, stored_bytes, f"{stored_type or 'as stored'} (stored)")
    dense = Weights(dtype, dense_bytes, f"{_LABEL[dtype]} (dense)")
    if parameters <= 0 or setting == "stored":
        return stored
    if setting == "dense":
        return dense
    fits = dense_bytes + other_bytes <= budget
    if backend == "cpu":
        return dense if fits and dense_bytes < ram // 4 else stored
    if backend == "cuda":
        return dense if quantized and fits else stored
    return stored  # Metal: its quantized kernels are the fast path


def ram() -> int:
    """The machine's RAM in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def memory_budget(max_memory: int | None) -> int:
    """Bytes the loaded models may use: `MLXOLLAMA_MAX_MEMORY`, or (None) 90% of the
    device's memory: the GPU's (Metal, CUDA) or the machine's RAM."""
    if max_memory:
        return max_memory
    size = 0
    try:
        import mlx.core as mx

        size = int(mx.device_info().get("memory_size") or 0)
    except Exception:
        pass
    return int((size or ram()) * 0.9)


def for_model(
    info: dict[str, Any],
    stored_bytes: int,
    setting: str = "auto",
    *,
    other_bytes: int = 0,
    budget: int | None = None,
) -> Weights:
    """`choose` for a stored model's config blob `info` on this machine's backend.

    Args:
        budget: the memory budget; None: 90% of the device's memory (the daemon's default).
    """
    from mlxollama.engine import describe

    memory = ram()
    return choose(
        setting,
        describe()["backend"],
        quantized=bool(info.get("model_config", {}).get("quantization")),
        stored_bytes=stored_bytes,
        parameters=int(info.get("parameter_count") or 0),
        other_bytes=other_bytes,
        budget=memory_budget(budget),
        ram=memory,
        stored_type=str(info.get("file_type") or ""),
    )
