"""The weights form (`MLXOLLAMA_WEIGHTS`): the decision alone, then loads of a 4-bit model."""

from __future__ import annotations

import pytest

from mlxollama.config import Config
from mlxollama.engine.weights import choose

GB = 10**9
EIGHT_B = dict(quantized=True, stored_bytes=4_500_000_000, parameters=8 * GB, ram=128 * GB)


def pick(setting="auto", backend="cuda", other=20 * GB, budget=120 * GB, **kw):
    facts = {**EIGHT_B, **kw}
    return choose(setting, backend, other_bytes=other, budget=budget, stored_type="Q4_0", **facts)


def test_cuda_holds_bf16_when_dense_weights_and_kv_fit():
    w = pick()
    assert (w.dense, w.nbytes, w.label) == ("bf16", 16 * GB, "bf16 (dense)")


def test_cuda_keeps_the_stored_form_when_dense_would_not_fit():
    w = pick(budget=35 * GB)  # 16 GB dense + 20 GB KV > 35 GB
    assert (w.dense, w.nbytes, w.label) == (None, 4_500_000_000, "Q4_0 (stored)")
    assert pick(budget=36 * GB).dense == "bf16"  # the boundary fits


def test_cuda_leaves_an_unquantized_model_as_stored():
    assert pick(quantized=False, stored_bytes=16 * GB).dense is None


def test_metal_keeps_quantized_kernels():
    assert pick(backend="metal").dense is None
    assert pick("dense", backend="metal").dense == "bf16"


def test_cpu_converts_to_float32_below_a_quarter_of_ram():
    assert pick(backend="cpu", ram=129 * GB).label == "f32 (dense)"  # 32 GB < 129 GB / 4
    assert pick(backend="cpu", ram=100 * GB).dense is None  # 32 GB is not < 25 GB
    assert pick(backend="cpu", other=100 * GB).dense is None  # over the budget


def test_stored_and_dense_are_kept_whatever_fits():
    assert pick("stored").dense is None
    assert pick("dense", budget=1).dense == "bf16"
    assert pick("dense", backend="cpu", budget=1).nbytes == 32 * GB


def test_an_unknown_parameter_count_keeps_the_stored_form():
    assert pick("dense", parameters=0).dense is None


def test_the_setting_is_validated():
    with pytest.raises(ValueError, match="MLXOLLAMA_WEIGHTS"):
        Config.from_env({"MLXOLLAMA_WEIGHTS": "fp8"})
    with pytest.raises(ValueError, match="MLXOLLAMA_WARMUP"):
        Config.from_env({"MLXOLLAMA_WARMUP": "sometimes"})
    assert Config.from_env({"MLXOLLAMA_WEIGHTS": "Dense"}).weights == "dense"
