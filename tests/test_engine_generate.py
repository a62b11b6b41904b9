"""Stop strings, context fitting and option mapping (no model needed), then streaming
generation on the real SmolLM2."""

import pytest

from mlxollama.api import SamplingOptions
from mlxollama.engine.context import fit_context
from mlxollama.engine.decoder import StopMatcher
from mlxollama.engine.generate import stream
from mlxollama.engine.sampling import make_sampling


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out, hit = [], False
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    return "".join(out), hit, out


@pytest.mark.parametrize(
    ("stops", "pieces", "text", "hit"),
    [
        ([], ["a", "b"], "ab", False),
        (["END"], ["hello ", "E", "N", "D", " more"], "hello ", True),
        (["END"], ["hello EN", "X"], "hello ENX", False),
        (["<|im_end|>"], ["Paris.<|im", "_end|>tail"], "Paris.", True),
        (["ab", "b"], ["xab"], "x", True),  # earliest stop wins
        (["\n\n"], ["one\n", "\ntwo"], "one", True),
        (["stop"], ["sto"], "sto", False),  # held back, then flushed at the end
    ],
)
def test_stop_strings_never_leak(stops, pieces, text, hit):
    got, got_hit, _ = feed_all(stops, pieces)
    assert (got, got_hit) == (text, hit)


def test_held_back_text_is_released_when_it_stops_matching():
    _, _, parts = feed_all(["END"], ["a E", "x"])
    assert parts[0] == "a " and parts[1] == "Ex"


def test_fit_context_keeps_start_and_end():
    b = fit_context(list(range(100)), num_ctx=20, num_predict=-1, num_keep=4)
    assert b.prompt_tokens[:4] == [0, 1, 2, 3]
    assert b.prompt_tokens[-1] == 99
    assert len(b.prompt_tokens) == 19 and b.max_tokens == 1


def test_fit_context_sizes_generation():
    assert fit_context([1] * 10, 100, -1).max_tokens == 90
    assert fit_context([1] * 10, 100, 5).max_tokens == 5
    assert fit_context([1] * 10, 100, 500).max_tokens == 90


def test_repeat_last_n_zero_disables_penalties():
    _, processors = make_sampling(SamplingOptions(repeat_penalty=1.3, repeat_last_n=0), 100)
    assert processors == []
    _, processors = make_sampling(SamplingOptions(repeat_penalty=1.3, presence_penalty=0.5), 100)
    assert len(processors) == 2


def prepared(lm, prompt_text, **opts):
    from mlxollama import api
    from mlxollama.engine.answer import prepare

    request = api.InferenceRequest(
        model=lm.name,
        kind="chat",
        messages=[api.Message("user", prompt_text)],
        options=api.parse_options({k: list(v) if k == "stop" else v for k, v in opts.items()}),
    )
    return prepare(lm, request, 2048)


def run(lm, prompt_text, **opts):
    chunks = list(stream(lm.model, prepared(lm, prompt_text, **opts)))
    return "".join(c.text for c in chunks), chunks[-1], chunks


@pytest.mark.model
def test_greedy_answer_names_paris(smollm2_loaded):
    text, final, _ = run(
        smollm2_loaded,
        "What is the capital of France? Answer in one sentence.",
        temperature=0.0,
        num_predict=40,
    )
    assert "Paris" in text
    assert final.done and final.done_reason == "stop"
    assert final.prompt_eval_count > 10 and final.eval_count > 3
    assert final.prompt_eval_duration > 0 and final.eval_duration > 0
    assert final.total_duration >= final.prompt_eval_duration + final.eval_duration


@pytest.mark.model
def test_stop_string_ends_answer_without_leaking(smollm2_loaded):
    q = "What is the capital of France? Answer in one sentence."
    text, final, _ = run(smollm2_loaded, q, temperature=0.0, num_predict=40, stop=("Paris",))
    assert "Paris" not in text and text  # the answer stopped right before it
    assert final.done_reason == "stop"


@pytest.mark.model
def test_num_predict_gives_length(smollm2_loaded):
    _, final, chunks = run(
        smollm2_loaded, "Count from one to fifty.", temperature=0.0, num_predict=5
    )
    assert final.done_reason == "length"
    assert final.eval_count == 5
    assert all(not c.done for c in chunks[:-1])


@pytest.mark.model
def test_seed_makes_sampling_reproducible(smollm2_loaded):
    opts = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_predict": 12}
    a, _, _ = run(smollm2_loaded, "Tell me a story.", seed=42, **opts)
    b, _, _ = run(smollm2_loaded, "Tell me a story.", seed=42, **opts)
    c, _, _ = run(smollm2_loaded, "Tell me a story.", seed=7, **opts)
    assert a == b
    assert a != c


@pytest.mark.model
def test_cancel_ends_stream_early(smollm2_loaded):
    seen = []
    chunks = stream(
        smollm2_loaded.model,
        prepared(smollm2_loaded, "Write a long essay.", temperature=0.0, num_predict=100),
        cancelled=lambda: len(seen) >= 3,
    )
    for c in chunks:
        seen.append(c)
    assert seen[-1].done and seen[-1].eval_count <= 4
