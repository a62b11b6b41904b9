"""Hybrid models (attention layers mixed with recurrent ones whose state cannot be trimmed,
mlx-lm's `ArraysCache`) in the continuous batch and the prompt cache, on a small random
LFM2 (mlx-lm's own model code, random weights: speed and state handling do not depend on
the values). A sequence running alone joins the batch when a second arrives, and a chat's
next turn reuses the state kept at the end of the previous prompt; greedy tokens are the
same as without the cache."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models import lfm2

from mlxollama import api
from mlxollama.engine.batch import Batch, plan
from mlxollama.engine.prompt_cache import DiskTier, PromptCache

CONFIG = {
    "model_type": "lfm2",
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "norm_eps": 1e-5,
    "conv_bias": False,
    "conv_L_cache": 3,
    "block_dim": 64,
    "block_multiple_of": 16,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": False,
    "intermediate_size": 128,
    "full_attn_idxs": [1, 3],
}
EOS = [0]
GREEDY = api.SamplingOptions.from_options({"temperature": 0, "num_predict": 12})


@pytest.fixture(scope="module")
def model():
    mx.random.seed(3)
    m = lfm2.Model(lfm2.ModelArgs.from_dict(CONFIG))
    mx.eval(m.parameters())
    return m


def prompt(seed: int, n: int) -> list[int]:
    return [1 + (seed * 7919 + i * 104729) % 500 for i in range(n)]


def run(model, prompts, cache: PromptCache | None, stagger: bool = False):
    """Greedy answers for `prompts` through one Batch (added one step apart with
    `stagger`), and how many prompt tokens each took from the cache."""
    batch = Batch(model, EOS, 8, cache)
    out: list[list[int]] = [[] for _ in prompts]
    hits = []
    pending = list(enumerate(prompts))
    while pending or batch.seqs:
        if pending and (stagger or not batch.seqs or len(hits) < len(prompts)):
            key, p = pending.pop(0)
            hits.append(batch.add(key, plan(p, GREEDY, 4096)))
            if not stagger:
                continue
        step = batch.step()
        assert not step.failed
        for key, token, finish, _ in step.tokens:
            if token is not None and finish != "stop":
                out[key].append(token)
    return out, hits


def test_a_sequence_alone_joins_the_batch_when_a_second_arrives(model):
    a, b = prompt(1, 40), prompt(2, 30)
    alone_a, _ = run(model, [a], None)
    alone_b, _ = run(model, [b], None)
    together, _ = run(model, [a, b], None, stagger=True)
    assert together == [alone_a[0], alone_b[0]]


def test_the_next_turn_reuses_the_state_at_the_end_of_the_prompt(model):
    cache = PromptCache(2**30)
    first = prompt(4, 300)
    [answer], [hit] = run(model, [first], cache)
    assert hit == 0 and len(cache) >= 1
    second = first + answer + prompt(5, 20)
    [with_cache], [hit] = run(model, [second], cache)
    assert hit >= len(first) - 1
    [without], _ = run(model, [second], None)
    assert with_cache == without


def test_a_shared_prompt_is_reused_by_a_batch(model):
    cache = PromptCache(2**30)
    shared = prompt(6, 200)
    run(model, [shared], cache)
    prompts = [shared + prompt(10 + i, 9) for i in range(3)]
    with_cache, hits = run(model, prompts, cache)
    assert all(h >= len(shared) - 1 for h in hits), hits
    without = [run(model, [p], None)[0][0] for p in prompts]
    assert with_cache == without


def test_the_disk_tier_serves_a_hybrid_prompt_after_a_restart(model, tmp_path):
    first = prompt(7, 300)
    run(model, [first], PromptCache(0, DiskTier(tmp_path, 2**30)))
    restarted = PromptCache(0, DiskTier(tmp_path, 2**30))  # memory tier off: disk only
    second = first + prompt(8, 10)
    [with_cache], [hit] = run(model, [second], restarted)
    assert hit == len(first) - 1  # the checkpoint: all of the first prompt but its last token
    [without], _ = run(model, [second], None)
    assert with_cache == without
