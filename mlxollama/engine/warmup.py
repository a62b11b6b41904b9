"""Warm a freshly loaded model's kernels before clients meet them.

On a GPU the first use of a shape compiles kernels (on a cold H200 the first burst of 8
concurrent streams ran 5-7x slower than the next; the first 4-bit matmul alone took ~38 s).
`warm` runs, through a throwaway `Batch` built like the model's own, a solo sequence's
prefill and decode, one full prefill step, and a decode step at every batch size from
`size` down to 1, with greedy and sampled sequences (their samplers are different kernels).
It keeps nothing: no prompt cache, no KV cache, and the outputs of later requests are the
same as without it. MLX's CPU backend compiles nothing per shape, so `needed` says no there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from mlxollama.api import SamplingOptions
from mlxollama.engine.batch import PREFILL_STEP, Batch, plan

_GREEDY = SamplingOptions(temperature=0.0)
_SAMPLED = SamplingOptions(seed=0)


def needed(backend: str) -> bool:
    """Whether `backend` pays for cold shapes (GPUs do; MLX's CPU backend does not)."""
    return backend != "cpu"


def _prompt(n: int, salt: int) -> list[int]:
    # low ids exist in every vocabulary; varied so no two prompts share a prefix
    return [10 + (salt * 7 + i * 13) % 200 for i in range(n)]


def warm(model, eos: Iterable[int], size: int, kv_type: str = "f16") -> float:
    """Run every batch size up to `size` and one full prefill step once, with the KV cache
    type the model's requests use (quantized attention has kernels of its own); returns
    seconds."""
    tic = time.perf_counter()
    batch = Batch(model, eos, size, kv_type=kv_type)
    try:
        window = PREFILL_STEP * 2 + size + 8

        def add(key: int, prompt: list[int], tokens: int) -> None:
            options = _GREEDY if key % 2 else _SAMPLED
            seq = plan(prompt, options, window)
            seq.max_tokens = tokens
            batch.add(key, seq)

        add(0, _prompt(8, 0), 3)  # alone, short: the solo path
        for _ in range(2):
            batch.step()
        # the others join (the solo one moves into the batch); one prompt a full prefill
        # step long; each ends one step after the previous, so every size runs once
        for key in range(1, size):
            length = PREFILL_STEP + 8 if key == 1 else 8
            add(key, _prompt(length, key), key + 1)
        while batch.seqs:
            batch.step()
    finally:
        batch.close()
    return time.perf_counter() - tic
