"""The actor runtime on real tiny models: batching, queue caps, cancellation, residency."""

from __future__ import annotations

import threading
import time

import pykka
import pytest

from mlxollama.actors.messages import Stats
from mlxollama.actors.runtime import Runtime
from mlxollama.api import FOREVER, InferenceRequest, Message
from mlxollama.config import Config
from mlxollama.errors import Busy, DigestMismatch, ModelNotFound
from mlxollama.store.store import Store

pytestmark = pytest.mark.model


def config(root, **env) -> Config:
    base = {"MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_KEEP_ALIVE": "5m"}
    base.update({f"MLXOLLAMA_{k.upper()}": str(v) for k, v in env.items()})
    return Config.from_env(base)


@pytest.fixture
def tiny_root(tmp_path, tiny_store):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(tiny_store, root)
    return root


@pytest.fixture
def runtime_factory(tiny_root):
    started = []

    def make(load=None, **env) -> Runtime:
        rt = Runtime(config(tiny_root, **env), load_model=load).start()
        started.append(rt)
        return rt

    yield make
    for rt in started:
        rt.stop()
    assert not pykka.ActorRegistry.get_all()


def ask(model="tiny-a", n=8, **kw) -> InferenceRequest:
    options = {"temperature": 0, "num_predict": n, **kw.pop("options", {})}
    return InferenceRequest(
        model=model, kind="chat", messages=[Message("user", "hello")], options=options, **kw
    )


def drain(session, stamps=None, stop_after=None):
    chunks = []
    while True:
        try:
            c = session.get(0.05)
        except StopIteration:
            return chunks
        if c is None:
            continue
        chunks.append(c)
        if stamps is not None:
            stamps.append(time.perf_counter())
        if stop_after is not None and len(chunks) >= stop_after:
            session.cancel()
            return chunks


def wait_until(check, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return check()


def active(rt) -> int:
    return sum(m.active for m in rt.ps())


def test_streams_are_batched_and_interleaved(runtime_factory):
    rt = runtime_factory(num_parallel=8)
    drain(rt.submit(ask(n=2)))  # load first
    sessions = [rt.submit(ask(n=40)) for _ in range(8)]
    stamps = [[] for _ in sessions]
    threads = [
        threading.Thread(target=drain, args=(s, st)) for s, st in zip(sessions, stamps, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    firsts, lasts = [s[0] for s in stamps], [s[-1] for s in stamps]
    assert max(firsts) < min(lasts)  # every stream started before any finished
    assert all(len(s) > 5 for s in stamps)


def test_overflow_gets_busy_and_admitted_ones_complete(runtime_factory):
    rt = runtime_factory(num_parallel=1, max_queue=1)
    drain(rt.submit(ask(n=1)))
    sessions = []
    for _ in range(4):  # refused at submit (the governor's counts), or on the session's queue
        try:
            sessions.append(rt.submit(ask(n=20)))
        except Busy as e:
            sessions.append(e)
    results = []
    for s in sessions:
        try:
            results.append(s if isinstance(s, Busy) else drain(s)[-1])
        except Busy as e:
            results.append(e)
    busy = [r for r in results if isinstance(r, Busy)]
    done = [r for r in results if not isinstance(r, Busy)]
    assert len(busy) == 2 and len(done) == 2
    assert "maximum pending requests exceeded" in str(busy[0])
    assert all(r.done and r.eval_count == 20 for r in done)


def test_cancelled_streams_free_their_slots(runtime_factory):
    rt = runtime_factory(num_parallel=4)
    drain(rt.submit(ask(n=1)))
    sessions = [rt.submit(ask(n=500, options={"num_ctx": 2048})) for _ in range(20)]
    assert wait_until(lambda: active(rt) == 20)
    for s in sessions:
        s.cancel()
    t0 = time.monotonic()
    assert wait_until(lambda: active(rt) == 0, timeout=1.0), rt.ps()
    assert time.monotonic() - t0 < 1.0
    final = drain(rt.submit(ask(n=5)))[-1]
    assert final.done and final.eval_count == 5


def test_stop_strings_cut_the_answer_and_free_the_slot(runtime_factory):
    rt = runtime_factory()
    text = "".join(c.text for c in drain(rt.submit(ask(n=30))))
    assert len(text) > 4
    stop = text[2:4]
    chunks = drain(rt.submit(ask(n=30, options={"stop": [stop]})))
    assert "".join(c.text for c in chunks) == text[: text.index(stop)]
    assert chunks[-1].done_reason == "stop"
    assert wait_until(lambda: active(rt) == 0)


def test_second_model_evicts_the_idle_first(runtime_factory):
    rt = runtime_factory(max_loaded_models=1)
    drain(rt.submit(ask("tiny-a", n=2)))
    assert [m.name for m in rt.ps()] == ["tiny-a:latest"]
    drain(rt.submit(ask("tiny-b", n=2)))
    assert [m.name for m in rt.ps()] == ["tiny-b:latest"]


def test_busy_model_is_not_evicted_the_load_waits(runtime_factory):
    rt = runtime_factory(max_loaded_models=1)
    long = rt.submit(ask("tiny-a", n=200, options={"num_ctx": 2048}))
    assert wait_until(lambda: active(rt) == 1)
    other = rt.submit(ask("tiny-b", n=2))
    assert [m.name for m in rt.ps()] == ["tiny-a:latest"]
    long.cancel()
    final = drain(other)[-1]
    assert final.done and [m.name for m in rt.ps()] == ["tiny-b:latest"]


def test_keep_alive_expiry_unloads(runtime_factory):
    rt = runtime_factory()
    drain(rt.submit(ask(n=2, keep_alive=0.3)))
    (m,) = rt.ps()
    assert m.expires_at - time.time() < 1
    assert wait_until(lambda: rt.ps() == [], timeout=3)


def test_empty_requests_load_and_unload(runtime_factory):
    rt = runtime_factory()
    final = drain(rt.submit(InferenceRequest(model="tiny-a", kind="generate", keep_alive=FOREVER)))[
        -1
    ]
    assert final.done_reason == "load" and final.load_duration > 0
    (m,) = rt.ps()
    assert m.expires_at == FOREVER
    final = drain(rt.submit(InferenceRequest(model="tiny-a", kind="chat", keep_alive=0)))[-1]
    assert final.done_reason == "unload"
    assert wait_until(lambda: rt.ps() == [])


def test_unknown_model_raises_before_anything_starts(runtime_factory):
    rt = runtime_factory()
    with pytest.raises(ModelNotFound):
        rt.submit(ask("ghost"))
    assert rt.ps() == []


def test_corrupted_model_fails_the_request_and_is_forgotten(runtime_factory, tiny_root):
    from mlxollama.store import manifests as mt

    store = Store(tiny_root)
    layer = store.get("tiny-b").manifest.layers_of(mt.TENSOR_MEDIA_TYPE)[0]
    path = store.blobs.path(layer.digest)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    rt = runtime_factory()
    with pytest.raises(DigestMismatch, match="tiny-b"):
        drain(rt.submit(ask("tiny-b")))
    assert wait_until(lambda: rt.ps() == [])
    assert drain(rt.submit(ask("tiny-a", n=3)))[-1].eval_count == 3


def test_load_timeout(runtime_factory):
    from mlxollama.models.load import load

    def slow(store, name, weights):
        time.sleep(1.5)
        return load(store, name, weights)

    rt = runtime_factory(load=slow, load_timeout=0.3)
    with pytest.raises(TimeoutError, match="tiny-a"):
        drain(rt.submit(ask()))


def failing_decode(should_fail):
    """A loader whose model raises "boom" on a decode step whenever `should_fail()` says so."""
    from mlxollama.models.load import load

    def flaky(store, name, weights):
        lm = load(store, name, weights)
        real = lm.model

        class Wrapped:
            def __getattr__(self, a):
                return getattr(real, a)

            def __call__(self, *a, **k):
                if a[0].shape[1] == 1 and should_fail():  # decode steps only
                    raise RuntimeError("boom")
                return real(*a, **k)

        lm.model = Wrapped()
        return lm

    return flaky


def test_step_failure_is_reported_and_the_model_keeps_serving(runtime_factory):
    broken = {"on": True}
    flaky = failing_decode(lambda: broken["on"])

    rt = runtime_factory(load=flaky)
    with pytest.raises(RuntimeError, match="generation failed: boom"):
        drain(rt.submit(ask(n=5)))
    broken["on"] = False
    assert wait_until(lambda: active(rt) == 0)
    assert drain(rt.submit(ask(n=5)))[-1].eval_count == 5


def test_stop_unloads_everything(tiny_root):
    rt = Runtime(config(tiny_root)).start()
    drain(rt.submit(ask(n=2)))
    session = rt.submit(ask(n=500, options={"num_ctx": 2048}))
    rt.stop()
    with pytest.raises(RuntimeError):
        drain(session)
    assert not pykka.ActorRegistry.get_all()


def test_a_solo_request_joins_the_batch_midway_without_losing_its_place(runtime_factory):
    """A request alone runs on the single-sequence path; when a second arrives it moves into
    the batch with its KV cache. Its answer must be the one it gives alone (greedy)."""
    rt = runtime_factory(num_parallel=4)
    alone = drain(rt.submit(ask(n=40)))
    other_alone = drain(rt.submit(ask("tiny-a", n=10, options={"seed": 1, "temperature": 0})))
    first = rt.submit(ask(n=40))
    got = []
    while len(got) < 6:  # let it generate on its own for a while
        c = first.get(0.05)
        if c is not None:
            got.append(c)
    second = rt.submit(ask("tiny-a", n=10, options={"seed": 1, "temperature": 0}))
    got += drain(first)
    later = drain(second)
    text = lambda chunks: "".join(c.text for c in chunks)  # noqa: E731
    assert text(got) == text(alone)
    assert got[-1].eval_count == alone[-1].eval_count == 40
    assert text(later) == text(other_alone)


def test_a_failed_batch_step_fails_the_batch_and_serves_the_waiting(runtime_factory):
    fail = threading.Event()

    def once() -> bool:
        if fail.is_set():
            fail.clear()
            return True
        return False

    flaky = failing_decode(once)

    rt = runtime_factory(load=flaky, num_parallel=2)
    drain(rt.submit(ask(n=1)))
    running = [rt.submit(ask(n=2000, options={"num_ctx": 2048})) for _ in range(2)]
    waiting = rt.submit(ask(n=5))

    def model_stats():
        ref = rt.governor.proxy().loaded.get()["tiny-a:latest"].ref
        return ref.ask(Stats(), timeout=5)

    # the model actor itself (not just the governor) has both in its batch and one waiting
    assert wait_until(lambda: model_stats() == {"active": 2, "waiting": 1})
    fail.set()
    for s in running:
        with pytest.raises(RuntimeError, match="generation failed: boom"):
            drain(s)
    assert drain(waiting)[-1].eval_count == 5  # admitted to the fresh batch, and answered
    assert wait_until(lambda: active(rt) == 0)


def test_a_tiny_context_answers_instead_of_killing_the_model(runtime_factory):
    rt = runtime_factory()
    final = drain(rt.submit(ask(n=5, options={"num_ctx": 1})))[-1]
    assert final.done and final.done_reason == "length"
    assert drain(rt.submit(ask(n=3)))[-1].eval_count == 3


def test_ps_reports_the_context_a_modelfile_sets(runtime_factory, tiny_root):
    from mlxollama.models.create import create
    from mlxollama.recipes.buildspec import BuildSpec

    create(Store(tiny_root), "tiny-ctx", BuildSpec(source="tiny-a", parameters={"num_ctx": 512}))
    rt = runtime_factory()
    drain(rt.submit(ask("tiny-ctx", n=2)))
    assert [m.context_length for m in rt.ps()] == [512]


@pytest.fixture
def tiny_q4_root(tmp_path, smollm2_store):
    """A store with `tiny-q4`: a tiny random llama, 4-bit."""
    from mlxollama.models.create import create
    from mlxollama.recipes.buildspec import BuildSpec
    from tests.conftest import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "q4-src", Store(smollm2_store), quantize=True)
    create(Store(tmp_path / "store"), "tiny-q4", BuildSpec(source=str(folder)))
    return tmp_path / "store"


@pytest.mark.parametrize(
    ("form", "label"), [("stored", "int4 (stored)"), ("dense", "f32 (dense)"), ("auto", "f32")]
)
def test_weights_form_shows_in_ps_and_the_estimate(tiny_q4_root, form, label):
    """On CPU `auto` is float32 (fits), `stored` keeps 4-bit; /api/ps and the memory estimate
    follow the form: dense weights are 4 bytes a parameter."""
    from mlxollama.actors.governor import estimate_size

    rt = Runtime(config(tiny_q4_root, weights=form)).start()
    try:
        answer = drain(rt.submit(ask("tiny-q4", n=3)))
        assert answer[-1].eval_count == 3
        [m] = rt.ps()
        assert m.weights.startswith(label)
        store = Store(tiny_q4_root)
        info, stored = store.config(store.get("tiny-q4")), store.get("tiny-q4")
        kv = estimate_size(info, 0, rt.config.num_parallel, m.context_length)
        weights = stored.size if form == "stored" else 4 * info["parameter_count"]
        assert m.size - m.prompt_cache == weights + kv  # ps adds what its prompt cache holds
    finally:
        rt.stop()


def test_warmup_keeps_outputs_and_load_unload(runtime_factory):
    """Warmup (forced on CPU) runs every batch size and leaves nothing behind: the same
    greedy tokens as without it, and the model still unloads on keep_alive 0."""
    outputs = []
    for warmup in ("off", "on"):
        rt = runtime_factory(warmup=warmup, num_parallel=3)
        sessions = [rt.submit(ask("tiny-a", n=6, options={"seed": 1})) for _ in range(3)]
        outputs.append(["".join(c.text for c in drain(s)) for s in sessions])
        drain(rt.submit(InferenceRequest(model="tiny-a", kind="generate", keep_alive=0)))
        assert rt.ps() == []
        rt.stop()
    assert outputs[0] == outputs[1]
