"""The prompt cache on the real SmolLM2: a prompt that starts like an earlier one prefills
only the rest, alone and inside the continuous batch, and greedy answers are token-identical
to the same requests without the cache; the cache never holds more than its cap."""

from __future__ import annotations

import pytest

from mlxollama import api
from mlxollama.engine.answer import prepare
from mlxollama.engine.batch import Batch
from mlxollama.engine.prompt_cache import PromptCache

pytestmark = pytest.mark.model

SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer briefly and precisely about subject {i}." for i in range(40)
)
QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is two plus two?"]


def sequence(lm, question: str, history: tuple = (), n: int = 12):
    messages = [api.Message("system", SYSTEM), *history, api.Message("user", question)]
    request = api.InferenceRequest(
        model=lm.name,
        kind="chat",
        messages=messages,
        options=api.parse_options({"temperature": 0, "num_predict": n}),
    )
    return prepare(lm, request, 4096).sequence


def run(lm, seqs, cache: PromptCache | None, batch: Batch | None = None):
    """Every sequence through one Batch at once: their tokens, and how many prompt tokens
    each took from the cache."""
    batch = batch or Batch(lm.model, lm.tokenizer.eos_token_ids, 8, cache)
    cached = [batch.add(i, s) for i, s in enumerate(seqs)]
    out: list[list[int]] = [[] for _ in seqs]
    while batch.seqs:
        step = batch.step()
        assert not step.failed
        for key, token, finish, _ in step.tokens:
            if token is not None and finish != "stop":
                out[key].append(token)
    return out, cached


def test_a_second_turn_prefills_only_what_is_new_and_answers_the_same(smollm2_loaded):
    lm = smollm2_loaded
    cache = PromptCache(2**30)
    first = sequence(lm, QUESTIONS[0])
    [answer], [hit] = run(lm, [first], cache)
    assert hit == 0 and len(cache) == 1
    history = (
        api.Message("user", QUESTIONS[0]),
        api.Message("assistant", lm.tokenizer.decode(answer)),
    )
    second = sequence(lm, "And the capital of Spain?", history)
    [with_cache], [hit] = run(lm, [second], cache)
    assert hit > len(first.prompt) - 2  # the whole first turn came from the cache
    [without], _ = run(lm, [second], None)
    assert with_cache == without


def test_a_shared_system_prompt_is_reused_inside_the_batch(smollm2_loaded):
    lm = smollm2_loaded
    cache = PromptCache(2**30)
    run(lm, [sequence(lm, "Hello!")], cache)  # leaves the system prompt in the cache
    seqs = [sequence(lm, q) for q in QUESTIONS]
    batch = Batch(lm.model, lm.tokenizer.eos_token_ids, 8, cache)
    with_cache, hits = run(lm, seqs, cache, batch)
    system_len = len(sequence(lm, "").prompt) - 8
    assert all(h >= system_len for h in hits), hits
    # what the batch prefilled (mlx-lm's own count): only the questions, even for the one
    # that started alone and moved into the batch before its first token
    rest = sum(len(s.prompt) - h for s, h in zip(seqs, hits, strict=True))
    assert batch.gen._counters.prompt_tokens <= rest
    without, _ = run(lm, [sequence(lm, q) for q in QUESTIONS], None)
    assert with_cache == without


def test_the_cache_never_holds_more_than_its_cap(smollm2_loaded):
    lm = smollm2_loaded
    probe = PromptCache(2**30)
    run(lm, [sequence(lm, QUESTIONS[0], n=2)], probe)
    one = probe.nbytes
    cache = PromptCache(int(one * 2.5))  # room for two entries of this size
    for i in range(5):
        run(lm, [sequence(lm, f"Question number {i}: say {i}.", n=2)], cache)
        assert cache.nbytes <= cache.max_bytes
    assert 1 <= len(cache) <= 2


def test_an_exact_repeat_still_evaluates_one_token(smollm2_loaded):
    lm = smollm2_loaded
    cache = PromptCache(2**30)
    seq = sequence(lm, QUESTIONS[1])
    tokens = list(seq.prompt)
    run(lm, [seq], cache)
    got, count = cache.fetch(tokens)
    assert got is not None and count == len(tokens) - 1
    off = PromptCache(0)
    assert off.fetch(tokens) == (None, 0)
