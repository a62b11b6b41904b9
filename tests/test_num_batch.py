"""`num_batch`, the prefill step: validated like every option, per load in the daemon (the
Modelfile's value; one batch shares its step) and per request in the embedded SDK."""

from __future__ import annotations

import pytest

from mlxollama import api
from mlxollama.engine import batch
from mlxollama.errors import InvalidOption
from mlxollama.sdk import Embedded
from tests.daemons import start_daemon


@pytest.mark.parametrize("value", [0, -1, api.MAX_NUM_BATCH + 1])
def test_out_of_range_is_refused(value):
    with pytest.raises(InvalidOption, match='option "num_batch" must be between 1 and 8192'):
        api.coerce_option("num_batch", value)
    assert api.coerce_option("num_batch", "64") == 64  # a Modelfile PARAMETER's string
    assert api.prefill_step({}) == 512 and api.prefill_step({"num_batch": 7}) == 7


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    """The prefill step of every sequence that ran solo (through mlx-lm's generate_step)."""
    seen: list[int] = []
    real = batch.generate_step

    def spy(*args, prefill_step_size, **kwargs):
        seen.append(prefill_step_size)
        return real(*args, prefill_step_size=prefill_step_size, **kwargs)

    monkeypatch.setattr(batch, "generate_step", spy)
    return seen


@pytest.mark.model
def test_modelfile_and_request_values_apply(store_root, steps):
    sdk = Embedded(store_root)
    sdk.create("small-steps", "smollm2", parameters={"num_batch": 32})
    options = {"num_predict": 2, "temperature": 0}
    sdk.generate("small-steps", "Hello there", options=options)
    sdk.generate("small-steps", "Hello again", options={**options, "num_batch": 8})
    assert steps == [32, 8]  # in-process, each request runs alone: its own value wins

    d = start_daemon(store_root)
    try:
        status, _, body = d.call(
            "POST",
            "/api/generate",
            {"model": "small-steps", "prompt": "Hi", "options": {"num_batch": 0}},
        )
        assert status == 400 and b'num_batch\\" must be between 1 and 8192' in body
        for extra in ({}, {"num_batch": 8}):
            status, _, _ = d.call(
                "POST",
                "/api/generate",
                {"model": "small-steps", "prompt": "Hi", "stream": False,
                 "options": {**options, **extra}},
            )  # fmt: skip
            assert status == 200
    finally:
        d.srv.close()
        d.runtime.stop()
    assert steps[2:] == [32, 32]  # the daemon: per load, the Modelfile's value
