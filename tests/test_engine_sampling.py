"""Options that cannot hurt the model (issue 9, defects 1 and 2): every option is checked or
clamped before it reaches the sampler, a sequence whose sampler fails ends only its own
stream, the model keeps sampling afterwards, and null options are skipped as Ollama does.
The daemon tests run the real SmolLM2 (and all-MiniLM) through a real daemon with the
official `ollama` client."""

from __future__ import annotations

import shutil
import threading

import ollama
import pykka
import pytest

from mlxollama import api
from mlxollama.engine import sampling
from mlxollama.errors import InvalidOption
from mlxollama.http.server import shutdown
from tests.daemons import actor_classes, start_daemon, wait_until

# MLX comes through mlxollama.engine, never imported first: that would keep OpenBLAS out of
# this whole test session (engine/__init__.py) and make every model 10x slower.
mx = sampling.mx

STORY = "Write a long story about a dragon who learns to bake bread."
USER = [{"role": "user", "content": "Say hello."}]

# What LlamaIndex's `Ollama` LLM and LangChain's `OllamaEmbeddings` put in `options`.
LLAMAINDEX_OPTIONS = {"temperature": None, "num_ctx": 3900}
LANGCHAIN_EMBED_OPTIONS = {
    "mirostat": None,
    "mirostat_eta": None,
    "mirostat_tau": None,
    "num_ctx": None,
    "num_gpu": None,
    "num_thread": None,
    "repeat_last_n": None,
    "repeat_penalty": None,
    "temperature": None,
    "stop": None,
    "tfs_z": None,
    "top_k": None,
    "top_p": None,
}


# -- options, without a model ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("min_p", 2, 'option "min_p" must be between 0 and 1'),
        ("min_p", -0.1, 'option "min_p" must be between 0 and 1'),
        ("top_p", 1.5, 'option "top_p" must be between 0 and 1'),
        ("typical_p", -1, 'option "typical_p" must be between 0 and 1'),
        ("temperature", -0.5, 'option "temperature" must be at least 0'),
        ("repeat_last_n", -2, 'option "repeat_last_n" must be at least -1'),
        ("repeat_penalty", -1, 'option "repeat_penalty" must be at least 0'),
        ("seed", 2**64, 'option "seed" must be of type int'),
        ("num_predict", 1e30, 'option "num_predict" must be of type int'),
        ("top_k", -(2**70), 'option "top_k" must be of type int'),
        ("temperature", 1e39, 'option "temperature" must be of type float32'),
        ("temperature", "inf", 'option "temperature" must be of type float32'),
        ("top_p", "nan", 'option "top_p" must be of type float32'),
    ],
)
def test_options_out_of_range_are_refused(name, value, message):
    with pytest.raises(InvalidOption) as e:
        api.parse_options({name: value})
    assert message in str(e.value)


def test_null_options_are_skipped():
    assert api.parse_options(LLAMAINDEX_OPTIONS) == {"num_ctx": 3900}
    assert api.parse_options(LANGCHAIN_EMBED_OPTIONS) == {}


@pytest.mark.parametrize("top_k", [100, 10**6, 0, -5])
def test_top_k_off_the_vocabulary_turns_top_k_off(top_k):
    """llama.cpp's rule: top_k <= 0 or >= the vocabulary size samples from all of it."""
    options = api.SamplingOptions(temperature=1.0, top_k=top_k, top_p=1.0)
    sampler, _ = sampling.make_sampling(options, num_ctx=64)
    logprobs = mx.log(mx.softmax(mx.random.normal((1, 100)), axis=-1))
    token = sampler(logprobs)
    mx.eval(token)
    assert 0 <= token.item() < 100


def test_a_tiny_temperature_is_greedy():
    """1 / 1e-300 overflows float32: below the floor sampling is greedy, not garbage."""
    sampler, _ = sampling.make_sampling(api.SamplingOptions(temperature=1e-300), num_ctx=64)
    logprobs = mx.log(mx.softmax(mx.random.normal((1, 100)), axis=-1))
    assert sampler(logprobs).item() == mx.argmax(logprobs, axis=-1).item()


def test_a_failed_compiled_sampler_leaves_the_random_state_usable():
    """mlx-lm's filters are compiled with mx.random.state as input and output: one that
    raises leaves a placeholder in the global key, and every unseeded sample after it
    fails (`Attempting to eval an array without a primitive`) until it is reset."""
    from mlx_lm.sample_utils import apply_top_k

    logprobs = mx.log(mx.softmax(mx.random.normal((1, 100)), axis=-1))
    with pytest.raises(ValueError):
        apply_top_k(logprobs, 1000)
    sampling.restore_random_state()
    sampler, _ = sampling.make_sampling(api.SamplingOptions(temperature=1.0), num_ctx=64)
    mx.eval(sampler(logprobs))


# -- the real daemon ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def d(tmp_path_factory, minilm_store):
    """A daemon on a copy of the store with SmolLM2 and all-MiniLM, 3 slots."""
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("sampling") / "store"
    shutil.copytree(minilm_store, root, symlinks=True)
    daemon = start_daemon(root, num_parallel=3)
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def client(d) -> ollama.Client:
    return d.client()


def sampled(client: ollama.Client, **options) -> ollama.ChatResponse:
    """A short unseeded sampled answer: it draws from the model's shared random state."""
    return client.chat(
        model="smollm2", messages=USER, options={"temperature": 0.8, "num_predict": 8, **options}
    )


@pytest.mark.model
def test_top_k_past_the_vocabulary_and_min_p_2_leave_the_model_sampling(client):
    assert sampled(client, top_k=50000).eval_count > 0  # clamped: top_k is off
    with pytest.raises(ollama.ResponseError) as e:
        sampled(client, min_p=2)
    assert e.value.status_code == 400
    assert 'option "min_p" must be between 0 and 1' in e.value.error
    for _ in range(2):  # the next unseeded sampled requests on the model still work
        assert sampled(client).eval_count > 0


FAULTY_SEED = 4242  # the marker of the request whose sampler breaks


def faulty_make_sampling(real):
    """`make_sampling` whose sampler, for the marked request, fails on its third token the
    way top_k 50000 did: inside mlx-lm's compiled filter, poisoning the random state."""
    from mlx_lm.sample_utils import apply_top_k

    def make(options, num_ctx):
        sampler, processors = real(options, num_ctx)
        if options.seed != FAULTY_SEED:
            return sampler, processors
        calls = [0]

        def breaking(logprobs):
            calls[0] += 1
            if calls[0] >= 3:
                return apply_top_k(logprobs, 10**7)
            return sampler(logprobs)

        return breaking, processors

    return make


@pytest.mark.model
def test_a_sequence_failing_mid_batch_ends_only_its_own_stream(d, client, monkeypatch):
    monkeypatch.setattr(sampling, "make_sampling", faulty_make_sampling(sampling.make_sampling))
    results: dict[str, object] = {}
    started = {name: threading.Event() for name in ("a", "b", "faulty")}

    def run(name: str, options: dict) -> None:
        text = []
        try:
            for part in client.chat(
                model="smollm2",
                messages=[{"role": "user", "content": STORY}],
                options=options,
                stream=True,
            ):
                started[name].set()
                text.append(part.message.content)
                if part.done:
                    results[name] = (part.done_reason, part.eval_count, "".join(text))
        except ollama.ResponseError as e:
            results[name] = e
        finally:
            started[name].set()

    greedy = {"temperature": 0, "num_predict": 60}
    threads = {
        "a": threading.Thread(target=run, args=("a", greedy)),
        "b": threading.Thread(target=run, args=("b", greedy)),
    }
    for t in threads.values():
        t.start()
    assert started["a"].wait(120) and started["b"].wait(120)
    faulty = {"temperature": 0.8, "seed": FAULTY_SEED, "num_predict": 60}
    threads["faulty"] = threading.Thread(target=run, args=("faulty", faulty))
    threads["faulty"].start()
    for t in threads.values():
        t.join(300)
    assert isinstance(results["faulty"], ollama.ResponseError), results["faulty"]
    assert "generation failed" in results["faulty"].error
    for name in ("a", "b"):
        reason, count, text = results[name]
        assert (reason, count) == ("length", 60), results[name]
        assert text.strip()
    assert wait_until(lambda: d.active() == 0, 30)
    monkeypatch.undo()
    assert sampled(client).done_reason == "length"  # the random state was restored


@pytest.mark.model
def test_llamaindex_null_temperature_is_skipped(client):
    answer = client.chat(
        model="smollm2", messages=USER, options=LLAMAINDEX_OPTIONS | {"num_predict": 4}
    )
    assert answer.done and answer.message.content


@pytest.mark.model
def test_langchain_embeddings_null_options_are_skipped(client):
    out = client.embed(
        model="all-minilm",
        input=["hello", "world"],
        options=LANGCHAIN_EMBED_OPTIONS,
        keep_alive=None,
    )
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 384
