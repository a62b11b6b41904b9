"""`MLXOLLAMA_NUM_PARALLEL=auto` (the default): a batch size the memory budget affords."""

from __future__ import annotations

import pytest

from mlxollama.config import Config


@pytest.mark.parametrize(
    "memory, slots",
    [("64GiB", 16), ("32GiB", 16), ("16GiB", 8), ("8GiB", 8), ("6GiB", 4), ("2GiB", 1)],
)
def test_auto_follows_the_budget(memory, slots):
    assert Config.from_env({"MLXOLLAMA_MAX_MEMORY": memory}).num_parallel == slots
    explicit = {"MLXOLLAMA_MAX_MEMORY": memory, "MLXOLLAMA_NUM_PARALLEL": "3"}
    assert Config.from_env(explicit).num_parallel == 3


def test_auto_without_a_budget_reads_ram_and_bad_values_fail():
    assert Config.from_env({}).num_parallel in (1, 4, 8, 16)
    assert Config.from_env({"MLXOLLAMA_NUM_PARALLEL": "AUTO"}).num_parallel >= 1
    with pytest.raises(ValueError, match="MLXOLLAMA_NUM_PARALLEL must be a positive integer"):
        Config.from_env({"MLXOLLAMA_NUM_PARALLEL": "0"})
