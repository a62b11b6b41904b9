"""Issue 3's acceptance, end to end: a real waitress server on the real actor Runtime (real
models: the tiny random llamas where speed matters, SmolLM2 where answers matter), driven by
the official `ollama` client, http.client and raw sockets; and `mlxctl serve` as a process.

Order matters: `Runtime.stop()` stops every Pykka actor in the process, so the tests that
start a daemon of their own (tiny models) come first, before the module's SmolLM2 daemon is
started; `tiny_daemon` checks that no other runtime is alive.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import ollama
import orjson
import pykka
import pytest

from mlxollama.actors.governor import on_gpu
from mlxollama.http.server import shutdown
from mlxollama.store import manifests as mt
from tests.daemons import (
    Daemon,
    actor_classes,
    answer,
    no_sessions,
    raw_post,
    start_daemon,
    wait_until,
)

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France? Answer in one sentence."
# Ollama's exact text (two spaces after the full stop); clients match on it.
BUSY_TEXT = "server busy, please try again.  maximum pending requests exceeded"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
GREEDY = {"temperature": 0}


# -- helpers -------------------------------------------------------------------------------


def read_lines(sock: socket.socket, n: int) -> bytes:
    """Read until `n` unfinished NDJSON objects have arrived (chunk framing left in)."""
    buf = b""
    while buf.count(b'"done":false') < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the stream ended early: {buf[-300:]!r}")
        buf += chunk
    return buf


def request_id_of(raw: bytes) -> str:
    m = re.search(rb"X-Request-Id: ([0-9a-f]{32})", raw, re.IGNORECASE)
    assert m, raw[:500]
    return m.group(1).decode()


def names(client: ollama.Client) -> list[str]:
    return [m.model for m in client.ps().models]


# -- daemons of their own, on the tiny models (before the module's SmolLM2 daemon) ----------


@pytest.fixture
def tiny_daemon(tmp_path, tiny_store):
    """`tiny_daemon(**settings)`: a daemon on a private copy of the tiny store."""
    started: list[Daemon] = []

    def start(**env) -> Daemon:
        assert not pykka.ActorRegistry.get_all(), (
            "another runtime is running in this process; its actors would be stopped too: "
            f"{actor_classes()}"
        )
        root = tmp_path / "store"
        shutil.copytree(tiny_store, root)
        started.append(start_daemon(root, **env))
        return started[-1]

    yield start
    for d in started:
        shutdown(d.srv, d.runtime)
    assert not pykka.ActorRegistry.get_all()


@pytest.mark.parametrize("gpu, expected", [(False, 0.0002), (True, 0.005)])
def test_the_switch_interval_is_lowered_on_the_cpu_backend_only(
    gpu, expected, tmp_path, monkeypatch
):
    """0.2 ms helps the CPU backend's model thread get the GIL once per step; on a GPU it
    hands the GIL away while the next step is built (docs/benchmarks.md, "The GIL")."""
    from mlxollama.actors import governor
    from mlxollama.actors.runtime import Runtime
    from mlxollama.config import Config

    monkeypatch.setattr(governor, "on_gpu", lambda: gpu)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        runtime = Runtime(Config.from_env({"MLXOLLAMA_MODELS": str(tmp_path)})).start()
        runtime.stop()
        assert sys.getswitchinterval() == pytest.approx(expected)
    finally:
        sys.setswitchinterval(before)


def test_a_full_queue_answers_503_at_once_and_admitted_requests_complete(tiny_daemon):
    d = tiny_daemon(num_parallel=1, max_queue=1)
    client = d.client()
    assert client.generate("tiny-a", "").done_reason == "load"

    results: dict[str, object] = {}
    first_line = threading.Event()

    def long_stream() -> None:  # holds the one slot
        parts = []
        options = {**GREEDY, "num_predict": 600, "num_ctx": 2048}
        for part in client.generate("tiny-a", "hello", options=options, stream=True):
            parts.append(part)
            first_line.set()
        results["a"] = parts[-1]

    def queued() -> None:  # waits in the model's queue for the slot
        results["b"] = d.client().generate("tiny-a", "hi", options={**GREEDY, "num_predict": 10})

    a = threading.Thread(target=long_stream)
    a.start()
    assert first_line.wait(30)
    b = threading.Thread(target=queued)
    b.start()
    assert wait_until(lambda: d.active() == 2, 10), d.runtime.ps()
    assert d.model_stats()["tiny-a:latest"] == {"active": 1, "waiting": 1}

    overflow = []
    for _ in range(3):
        t0 = time.perf_counter()
        status, _, data = d.call(
            "POST", "/api/generate", {"model": "tiny-a", "prompt": "x", "stream": False}
        )
        overflow.append(time.perf_counter() - t0)
        assert (status, orjson.loads(data)) == (503, {"error": BUSY_TEXT})
    t0 = time.perf_counter()
    with pytest.raises(ollama.ResponseError) as e:  # the official client sees it the same way
        list(client.chat("tiny-a", messages=[{"role": "user", "content": "x"}], stream=True))
    overflow.append(time.perf_counter() - t0)
    assert (e.value.status_code, e.value.error) == (503, BUSY_TEXT)
    assert max(overflow) < 0.5, overflow
    assert not results  # the admitted ones were still running while the overflow was refused

    a.join(60)
    b.join(60)
    assert results["a"].done and results["a"].eval_count == 600
    assert results["b"].done and results["b"].eval_count == 10
    assert wait_until(lambda: d.active() == 0, 2)
    rejects = [e for e in d.events() if e["event"] == "queue.reject"]
    assert len(rejects) == 4


def test_overflow_is_refused_while_every_worker_thread_is_busy(tiny_daemon):
    """The burst's overflow is answered by waitress's I/O thread as it reads the request
    (`http/admission.py`). It failed before: with both worker threads serving the admitted
    requests, a 503 waited for one of them to finish (here: the whole 1500-token stream)."""
    d = tiny_daemon(num_parallel=1, max_queue=1, threads=2)
    assert d.client().generate("tiny-a", "").done_reason == "load"
    for _ in range(3):  # bad options: 400, and the reservation each made is given back
        status, _, data = d.call(
            "POST", "/api/generate", {"model": "tiny-a", "prompt": "x", "options": {"min_p": 2}}
        )
        assert status == 400, data
    options = {**GREEDY, "num_predict": 1500, "num_ctx": 2048}
    running = raw_post(
        d.port, "/api/generate", {"model": "tiny-a", "prompt": "hi", "options": options}
    )
    read_lines(running, 2)
    small = {**GREEDY, "num_predict": 5}
    queued = raw_post(
        d.port,
        "/api/generate",
        {"model": "tiny-a", "prompt": "hi", "stream": False, "options": small},
    )
    assert wait_until(lambda: d.active() == 2, 10), d.runtime.ps()

    chat = {"model": "tiny-a", "messages": [{"role": "user", "content": "x"}]}
    shapes = {
        "/api/generate": ({"model": "tiny-a", "prompt": "x"}, {"error": BUSY_TEXT}),
        "/api/chat": (chat, {"error": BUSY_TEXT}),
        "/v1/chat/completions": (chat, "api_error"),
        "/v1/messages": ({**chat, "max_tokens": 5}, "overloaded_error"),
    }
    for path, (body, expected) in shapes.items():
        t0 = time.perf_counter()
        sock = raw_post(d.port, path, body)
        sock.settimeout(5)
        status, _, got = answer(sock)
        elapsed = time.perf_counter() - t0
        sock.close()
        assert status == 503 and elapsed < 0.5, (path, status, got, elapsed)
        if isinstance(expected, dict):
            assert got == expected
        else:
            assert expected in orjson.dumps(got).decode(), (path, got)
    assert d.active() == 2  # the admitted two were never disturbed

    running.close()  # the stream is cancelled; the queued request runs and answers
    queued.settimeout(60)
    status, _, got = answer(queued)
    assert status == 200 and got["done"] and got["eval_count"] == 5, got
    assert wait_until(lambda: d.active() == 0, 5)
    rejects = [e for e in d.events() if e["event"] == "queue.reject"]
    assert len(rejects) == len(shapes)
    # nothing stays reserved: the model's batch and queue take two requests again
    status, _, data = d.call(
        "POST",
        "/api/generate",
        {"model": "tiny-a", "prompt": "x", "stream": False, "options": small},
    )
    assert status == 200, data


def test_killed_streams_free_their_slots_within_a_second(tiny_daemon):
    d = tiny_daemon(num_parallel=20, max_queue=4)
    client = d.client()
    assert client.generate("tiny-a", "").done_reason == "load"
    body = {
        "model": "tiny-a",
        "prompt": "hello",
        "options": {**GREEDY, "num_predict": 1500, "num_ctx": 2048},
    }
    socks = [raw_post(d.port, "/api/generate", body) for _ in range(20)]
    for sock in socks:
        read_lines(sock, 3)
    assert d.active() == 20 and d.model_stats()["tiny-a:latest"] == {"active": 20, "waiting": 0}

    for sock in socks:
        sock.close()
    t0 = time.monotonic()
    freed = wait_until(
        lambda: d.active() == 0 and d.model_stats()["tiny-a:latest"] == {"active": 0, "waiting": 0},
        1.0,
    )
    elapsed = time.monotonic() - t0
    assert freed and elapsed < 1.0, (elapsed, d.runtime.ps(), d.model_stats())

    # /api/ps has no active count; an idle model's expiry is a fixed deadline, while a busy
    # one's moves with the clock (now + keep_alive), so two reads tell them apart.
    first = d.call("GET", "/api/ps")[2]
    time.sleep(0.2)
    second = d.call("GET", "/api/ps")[2]
    assert first == second, (first, second)
    assert [m["name"] for m in orjson.loads(first)["models"]] == ["tiny-a:latest"]
    assert wait_until(no_sessions, 2), actor_classes()

    answer = client.generate("tiny-a", "hello", options={**GREEDY, "num_predict": 5})
    assert answer.done and answer.done_reason == "length" and answer.eval_count == 5

    def gone() -> list[dict]:
        return [
            e
            for e in d.events()
            if e["event"] == "request.end" and e.get("error") == "client disconnected"
        ]

    assert wait_until(lambda: len(gone()) == 20, 3), len(gone())


def test_residency_eviction_keep_alive_and_ps_shape(tiny_daemon):
    import mlx.core as mx

    d = tiny_daemon(max_loaded_models=1)
    client = d.client()
    tags = {m.model: m for m in client.list().models}
    short = {**GREEDY, "num_predict": 2}

    client.generate("tiny-a", "hi", options=short)
    assert names(client) == ["tiny-a:latest"]
    client.generate("tiny-b", "hi", options=short, keep_alive=-1)
    assert names(client) == ["tiny-b:latest"]  # the idle tiny-a was evicted
    events = d.events()
    assert any(e["event"] == "model.evict" and e["model"] == "tiny-a:latest" for e in events)
    assert any(e["event"] == "model.unload" and e["model"] == "tiny-a:latest" for e in events)

    (raw,) = orjson.loads(d.call("GET", "/api/ps")[2])["models"]
    assert RFC3339.fullmatch(raw["expires_at"]), raw["expires_at"]
    assert (raw["name"], raw["model"], raw["digest"]) == (
        "tiny-b:latest",
        "tiny-b:latest",
        tags["tiny-b:latest"].digest,
    )
    assert raw["size"] > tags["tiny-b:latest"].size  # weights + KV
    assert raw["size_vram"] == (raw["size"] if on_gpu() else 0)
    assert raw["details"]["family"] == "llama" and raw["context_length"] > 0
    (forever,) = client.ps().models
    assert forever.expires_at.year > 2200  # keep_alive -1: Ollama's "forever"

    # keep_alive 1 (seconds): tiny-a evicts the idle tiny-b, then expires by itself
    client.generate("tiny-a", "hi", options=short, keep_alive=1)
    (m,) = client.ps().models
    assert m.model == "tiny-a:latest"
    assert 0 < m.expires_at.timestamp() - time.time() <= 1.5
    loaded_memory = mx.get_active_memory()
    t0 = time.monotonic()
    assert wait_until(lambda: not client.ps().models, 3), client.ps()
    assert time.monotonic() - t0 < 2.5
    assert d.call("GET", "/api/ps")[2] == b'{"models":[]}'
    # its memory is returned: the weights are freed, and not kept in MLX's cache either
    manifest = d.runtime.store.get("tiny-a").manifest
    weights = sum(layer.size for layer in manifest.layers_of(mt.TENSOR_MEDIA_TYPE))
    assert wait_until(lambda: loaded_memory - mx.get_active_memory() >= 0.9 * weights, 2), (
        loaded_memory,
        mx.get_active_memory(),
    )
    assert mx.get_cache_memory() < weights
    assert any(
        e["event"] == "model.stop" and e["reason"] == "expired" and e["model"] == "tiny-a:latest"
        for e in d.events()
    )


# -- the module's SmolLM2 daemon -----------------------------------------------------------


@pytest.fixture(scope="module")
def smol(tmp_path_factory, smollm2_store):
    """The real daemon on a copy of the SmolLM2 store: 8 generating slots, a 64 KiB body cap."""
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("daemon") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    d = start_daemon(root, num_parallel=8, max_body="64KiB")
    yield d
    shutdown(d.srv, d.runtime)


def test_the_official_client_passes(smol):
    client = smol.client()
    (tag,) = client.list().models
    assert tag.model == "smollm2:latest" and len(tag.digest) == 64 and tag.size > 50_000_000
    assert tag.details.family == "llama" and tag.details.quantization_level == "Q4_1"

    shown = client.show("smollm2")
    assert "<|im_end|>" in shown.parameters and "<|im_start|>" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in shown.capabilities

    options = {**GREEDY, "num_predict": 40}
    answer = client.generate("smollm2", QUESTION, options=options)
    assert "Paris" in answer.response and answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count > 5 and 0 < answer.eval_count < 40
    assert answer.total_duration >= answer.eval_duration > 0
    parts = list(client.generate("smollm2", QUESTION, options=options, stream=True))
    assert len(parts) > 3 and [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.response for p in parts) == answer.response  # greedy: the same answer
    assert parts[-1].eval_count == answer.eval_count

    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat("smollm2", messages=messages, options=options)
    assert reply.message.role == "assistant" and "Paris" in reply.message.content
    assert reply.done_reason == "stop" and reply.eval_count > 0
    chunks = list(client.chat("smollm2", messages=messages, options=options, stream=True))
    assert len(chunks) > 3 and chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert "".join(c.message.content for c in chunks) == reply.message.content

    (running,) = client.ps().models
    assert running.model == "smollm2:latest" and running.digest == tag.digest
    assert running.size > tag.size
    assert running.size_vram == (running.size if on_gpu() else 0)
    assert dt.datetime.now(dt.UTC) < running.expires_at
    assert running.details.family == "llama" and running.context_length > 0

    unloaded = client.chat("smollm2", messages=[], keep_alive=0)
    assert (unloaded.done, unloaded.done_reason, unloaded.message.content) == (True, "unload", "")
    assert wait_until(lambda: not client.ps().models, 2), client.ps()
    loaded = client.generate("smollm2", "")
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    assert loaded.load_duration > 0
    assert names(client) == ["smollm2:latest"]

    progress = client.create(
        "pirate",
        from_="smollm2",
        system="You are a pirate.",
        parameters={"temperature": 0.2, "num_predict": 7, "stop": ["<|im_end|>", "Arr"]},
        stream=True,
    )
    statuses = [p.status for p in progress]
    assert statuses[-1] == "success"
    pirate = client.show("pirate")
    assert (
        "SYSTEM You are a pirate." in pirate.modelfile
    )  # the client's ShowResponse has no .system
    status, _, data = smol.call("POST", "/api/show", {"model": "pirate"})
    assert status == 200 and orjson.loads(data)["system"] == "You are a pirate."
    assert re.search(r"temperature\s+0\.2", pirate.parameters)
    assert re.search(r"num_predict\s+7", pirate.parameters) and "Arr" in pirate.parameters
    assert pirate.modelinfo["general.architecture"] == "llama"
    assert client.create("pirate-b", from_="pirate").status == "success"
    assert "SYSTEM You are a pirate." in client.show("pirate-b").modelfile

    assert client.copy("pirate", "crew/pirate:copy").status == "success"
    assert {m.model for m in client.list().models} == {
        "smollm2:latest",
        "pirate:latest",
        "pirate-b:latest",
        "crew/pirate:copy",
    }
    assert client.show("crew/pirate:copy").modelfile == client.show("pirate").modelfile.replace(
        "pirate:latest", "crew/pirate:copy"
    )
    for name in ("pirate", "pirate-b", "crew/pirate:copy"):
        assert client.delete(name).status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("pirate")
    assert (e.value.status_code, e.value.error) == (404, "model 'pirate' not found")
    assert [m.model for m in client.list().models] == ["smollm2:latest"]
    assert client.show("smollm2").template == shown.template  # the shared blobs survived

    assert wait_until(lambda: smol.active() == 0, 2)


def test_eight_streams_are_served_concurrently(smol):
    n = 8
    barrier = threading.Barrier(n)
    firsts: list[float | None] = [None] * n
    lasts: list[float | None] = [None] * n
    finals: list = [None] * n
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            client = smol.client()
            client.list()  # connect before the race
            barrier.wait(30)
            prompt = f"Write a long story about a dragon named Ember{i}."
            for part in client.generate(
                "smollm2", prompt, options={**GREEDY, "num_predict": 16}, stream=True
            ):
                now = time.perf_counter()
                if firsts[i] is None and part.response:
                    firsts[i] = now
                if part.done:
                    lasts[i], finals[i] = now, part
        except BaseException as e:
            errors.append(e)

    peak = [0]
    running = threading.Event()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], smol.active())
            time.sleep(0.01)

    running.set()
    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.perf_counter() - t0
    running.clear()
    sampler.join()

    assert not errors, errors
    assert all(f is not None and f.done and f.eval_count == 16 for f in finals), finals
    assert max(firsts) < min(lasts), (wall, firsts, lasts)  # interleaved, not one by one
    assert peak[0] == n
    assert wait_until(lambda: smol.active() == 0, 2)


def test_bad_requests_get_clear_errors_and_leave_nothing_behind(smol):
    ok = smol.client().generate("smollm2", "Hi", options={**GREEDY, "num_predict": 2})
    assert ok.done
    assert wait_until(no_sessions, 2), actor_classes()  # the answer's session ends first
    before = {ref.actor_urn for ref in pykka.ActorRegistry.get_all()}

    big = "x" * (80 * 1024)
    user = [{"role": "user", "content": "hi"}]
    cases = [
        # malformed JSON, no JSON object
        ("POST", "/api/generate", b'{"model": "smollm2",', 400, "invalid JSON"),
        ("POST", "/api/chat", b"not json", 400, "invalid JSON"),
        ("POST", "/api/show", b"{'model': 'smollm2'}", 400, "invalid JSON"),
        ("POST", "/api/generate", b"", 400, "missing request body"),
        ("POST", "/api/chat", b"[1, 2]", 400, "must be a JSON object"),
        # wrong types
        ("POST", "/api/generate", {"model": "smollm2", "prompt": 5}, 400, '"prompt" must be'),
        ("POST", "/api/generate", {"model": 5, "prompt": "x"}, 400, '"model" must be'),
        ("POST", "/api/generate", {"model": "smollm2", "stream": "no"}, 400, '"stream"'),
        ("POST", "/api/generate", {"model": "smollm2", "options": [1]}, 400, '"options"'),
        (
            "POST",
            "/api/generate",
            {"model": "smollm2", "prompt": "x", "options": {"temperature": "hot"}},
            400,
            "temperature",
        ),
        ("POST", "/api/chat", {"model": "smollm2", "keep_alive": "soon"}, 400, "duration"),
        ("POST", "/api/chat", {"model": "smollm2", "messages": "hi"}, 400, '"messages"'),
        ("POST", "/api/chat", {"model": "smollm2", "messages": ["hi"]}, 400, "message"),
        (
            "POST",
            "/api/chat",
            {"model": "smollm2", "messages": [{"role": 5, "content": "hi"}]},
            400,
            "role",
        ),
        ("POST", "/api/show", {"model": ["smollm2"]}, 400, '"model" must be'),
        # unknown models
        ("POST", "/api/generate", {"model": "ghost", "prompt": "x"}, 404, "'ghost' not found"),
        ("POST", "/api/chat", {"model": "ghost", "messages": user}, 404, "'ghost' not found"),
        ("POST", "/api/show", {"model": "ghost"}, 404, "'ghost' not found"),
        ("DELETE", "/api/delete", {"model": "ghost"}, 404, "'ghost' not found"),
        ("POST", "/api/copy", {"source": "ghost", "destination": "g2"}, 404, "not found"),
        ("POST", "/api/create", {"model": "g3", "from": "ghost"}, 404, "'ghost' not found"),
        # invalid names
        ("POST", "/api/generate", {"model": "bad name!", "prompt": "x"}, 400, "invalid model name"),
        ("POST", "/api/chat", {"model": "a/b/c/d/e", "messages": user}, 400, "invalid model name"),
        ("POST", "/api/show", {"model": "x:y:z"}, 400, "invalid model name"),
        ("POST", "/api/copy", {"source": "smollm2", "destination": "no good"}, 400, "invalid"),
        ("POST", "/api/create", {"model": "bad name!", "from": "smollm2"}, 400, "invalid model"),
        # failures inside the model actor, after the session started
        (
            "POST",
            "/api/generate",
            {"model": "smollm2", "prompt": "x", "template": "{{ .Broken", "stream": False},
            400,
            "template",
        ),
        (
            "POST",
            "/api/generate",
            {"model": "smollm2", "prompt": "x", "template": "{{ nofunc .Prompt }}"},
            400,
            "template",
        ),
        # oversized bodies
        ("POST", "/api/generate", {"model": "smollm2", "prompt": big}, 413, "too large"),
        (
            "POST",
            "/api/chat",
            {"model": "smollm2", "messages": [{"role": "user", "content": big}]},
            413,
            "too large",
        ),
        ("POST", "/api/show", {"model": "smollm2", "pad": big}, 413, "too large"),
    ]
    for method, path, body, status, text in cases:
        got, _, data = smol.call(method, path, body, {"Content-Type": "application/json"})
        error = orjson.loads(data)
        assert got == status and list(error) == ["error"], (path, body, got, data)
        assert isinstance(error["error"], str) and text in error["error"], (path, body, data)

    # nothing leaked: no session left, no admission counted, every actor as before
    assert wait_until(lambda: smol.active() == 0, 1), smol.runtime.ps()
    assert smol.model_stats() == {"smollm2:latest": {"active": 0, "waiting": 0}}
    assert wait_until(no_sessions, 2), actor_classes()
    assert {ref.actor_urn for ref in pykka.ActorRegistry.get_all()} == before
    assert actor_classes() == ["GovernorActor", "ModelActor", "StoreActor"]
    answer = smol.client().chat(
        "smollm2", messages=[{"role": "user", "content": QUESTION}], options=GREEDY
    )
    assert "Paris" in answer.message.content and answer.done_reason == "stop"
    assert [m.model for m in smol.client().list().models] == ["smollm2:latest"]


def test_the_jsonl_log_has_one_request_end_per_request(smol):
    offset = smol.log_path.stat().st_size
    sent: dict[str, tuple[str, int]] = {}  # request id -> (what, status)
    short = {**GREEDY, "num_predict": 4}

    def call(what: str, method: str, path: str, body=None, expect: int = 200) -> bytes:
        status, request_id, data = smol.call(method, path, body)
        assert status == expect, (what, status, data)
        assert request_id not in sent
        sent[request_id] = (what, status)
        return data

    was_loaded = bool(smol.runtime.ps())
    call("unload", "POST", "/api/generate", {"model": "smollm2", "keep_alive": 0})
    assert wait_until(lambda: not smol.runtime.ps(), 2)
    q = {"model": "smollm2", "prompt": QUESTION, "options": short}
    m = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "options": short}
    call("generate", "POST", "/api/generate", {**q, "stream": False})  # loads the model
    call("generate", "POST", "/api/generate", q)
    call("chat", "POST", "/api/chat", {**m, "stream": False})
    call("chat", "POST", "/api/chat", m)
    call("tags", "GET", "/api/tags")
    call("show", "POST", "/api/show", {"model": "smollm2"})
    call("ps", "GET", "/api/ps")
    call("health", "HEAD", "/")
    call("version", "GET", "/api/version")
    call("missing", "POST", "/api/generate", {"model": "ghost", "prompt": "x"}, 404)
    call("malformed", "POST", "/api/chat", b"{", 400)
    call("no route", "GET", "/api/nope", None, 404)
    sock = raw_post(smol.port, "/api/generate", {**q, "options": {"num_predict": 300}})
    killed = request_id_of(read_lines(sock, 1))
    sock.close()
    sent[killed] = ("killed", 200)
    assert wait_until(lambda: smol.active() == 0, 2)
    call("unload", "POST", "/api/chat", {"model": "smollm2", "messages": [], "keep_alive": 0})

    def window() -> list[dict]:
        return [orjson.loads(line) for line in smol.log_path.read_bytes()[offset:].splitlines()]

    def ends() -> list[dict]:
        return [e for e in window() if e["event"] == "request.end" and e["request_id"] in sent]

    def unloaded() -> bool:  # the first unload (if the model was loaded), and the last
        return sum(e["event"] == "model.unload" for e in window()) >= 1 + was_loaded

    assert wait_until(lambda: len(ends()) >= len(sent) and unloaded(), 5), (len(ends()), sent)
    events = smol.events()  # every line of the whole file parses
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    ends_of = {rid: [e for e in ends() if e["request_id"] == rid] for rid in sent}
    assert all(len(found) == 1 for found in ends_of.values()), ends_of
    for rid, (what, status) in sent.items():
        (end,) = ends_of[rid]
        assert end["status"] == status and end["duration_ms"] >= 0, end
        if what in ("generate", "chat"):
            assert end["model"] == "smollm2" and end["done_reason"] == "length", end
            prompt = end["prompt_eval_count"] + end.get("prompt_cached_count", 0)
            assert prompt > 5 and end["eval_count"] == 4, end
            assert end["total_ms"] >= end["eval_ms"] > 0, end
        elif what == "killed":
            assert end["error"] == "client disconnected", end
        elif what == "unload":
            assert end["done_reason"] == "unload", end
        elif status >= 400:
            assert end["error"], end

    # across the whole file (every test of this module): each request started once, ended once
    starts = [e["request_id"] for e in events if e["event"] == "request.start"]
    all_ends = [e["request_id"] for e in events if e["event"] == "request.end"]
    assert len(starts) == len(set(starts)) and len(all_ends) == len(set(all_ends))
    assert set(starts) == set(all_ends)

    loads = [e for e in window() if e["event"] == "model.load"]
    unloads = [e for e in window() if e["event"] == "model.unload"]
    assert [e["model"] for e in loads] == ["smollm2:latest"] and loads[0]["seconds"] > 0
    assert [e["model"] for e in unloads] == ["smollm2:latest"] * (1 + was_loaded)


# -- mlxctl serve as a process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_then_stops_cleanly_on_sigterm(store_root, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MLXOLLAMA_MODELS": str(store_root),
        "MLXOLLAMA_HOST": f"127.0.0.1:{port}",
    }
    mlxctl = Path(sys.executable).with_name("mlxctl")
    command = [str(mlxctl)] if mlxctl.exists() else [sys.executable, "-m", "mlxollama.cli.main"]
    out, err = (tmp_path / "stdout").open("wb"), (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen([*command, "serve"], env=env, stdout=out, stderr=err)
    try:

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                resp = conn.getresponse()
                return (resp.status, resp.read()) == (200, b"Ollama is running")
            except OSError:
                return False

        assert wait_until(answers, 60, interval=0.1)
        client = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=120)
        reply = client.chat(
            "smollm2",
            messages=[{"role": "user", "content": QUESTION}],
            options={**GREEDY, "num_predict": 40},
        )
        assert "Paris" in reply.message.content
        assert names(client) == ["smollm2:latest"]

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    stderr = (tmp_path / "stderr").read_text()
    # a clean stop, and the exit status says why it stopped (128 + SIGTERM, as a shell would)
    assert rc == 143 and elapsed < 5, (rc, elapsed, stderr[-2000:])
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-2000:]
    events = [
        orjson.loads(line)
        for line in (store_root / "logs" / "daemon.log").read_bytes().splitlines()
    ]
    kinds = [e["event"] for e in events]
    assert "model.load" in kinds and "server.stopped" in kinds
    assert any(e["event"] == "model.unload" and e["model"] == "smollm2:latest" for e in events)
    assert kinds.index("model.unload") < kinds.index("server.stopped")
    assert any(e["event"] == "request.end" and e.get("eval_count") for e in events)
