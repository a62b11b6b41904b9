"""The operations endpoints (issue 14, item 3) on a real waitress daemon: `/metrics` parsed by
prometheus_client's own text parser and moving with real traffic, `/api/health`,
`/api/stop` (then `/api/ps` is empty), and cancelling one running stream by its
`X-Request-Id` while another runs on."""

from __future__ import annotations

import http.client
import shutil
import threading

import openai
import orjson
import pykka
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mlxollama.cli.main import cli
from mlxollama.client import Client
from mlxollama.errors import ModelNotFound
from mlxollama.http.server import shutdown
from tests.daemons import Daemon, actor_classes, start_daemon, wait_until

KEY = "ops-test-key-5b1e"
LONG = {"temperature": 0, "num_predict": 4000, "num_ctx": 4096}


@pytest.fixture
def daemon(tmp_path):
    """`daemon(store=None, **settings)`: a daemon on a private copy of `store` (or empty)."""
    started: list[Daemon] = []

    def start(store=None, **env) -> Daemon:
        assert not pykka.ActorRegistry.get_all(), actor_classes()
        root = tmp_path / f"store{len(started)}"
        if store is None:
            root.mkdir()
        else:
            shutil.copytree(store, root, symlinks=True)
        started.append(start_daemon(root, **env))
        return started[-1]

    yield start
    for d in started:
        shutdown(d.srv, d.runtime)


def scrape(d: Daemon, headers=None) -> dict[tuple[str, tuple], float]:
    """Every sample of `/metrics`: {(name, sorted labels): value}, as Prometheus parses it."""
    status, _, body = d.call("GET", "/metrics", headers=headers)
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def stream(d: Daemon, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streamed generate whose answer has begun (headers and the first line are sent)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
    conn.request("POST", "/api/generate", body=orjson.dumps({**body, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def unanswered(d: Daemon, path: str) -> list[str]:
    """The request ids of `path` requests whose `request.end` is not logged yet (a
    non-streamed answer sends its `X-Request-Id` only with the answer)."""
    events = d.events()
    ended = {e["request_id"] for e in events if e["event"] == "request.end"}
    return [
        e["request_id"]
        for e in events
        if e["event"] == "request.start" and e["path"] == path and e["request_id"] not in ended
    ]


def lines(resp: http.client.HTTPResponse) -> list[dict]:
    return [orjson.loads(line) for line in resp.read().splitlines() if line.strip()]


# -- without a model ------------------------------------------------------------------------


def test_metrics_parse_and_count_requests_by_route_template(daemon):
    d = daemon()
    assert d.call("GET", "/api/tags")[0] == 200
    assert d.call("POST", "/api/show", {"model": "nope"})[0] == 404
    assert d.call("GET", "/api/no/such/route/" + "x" * 40)[0] == 404
    assert d.call("GET", "/v1/models/some/model")[0] == 404
    samples = scrape(d)
    total = "mlxollama_requests_total"
    assert value(samples, total, route="/api/tags", method="GET", status="200") == 1
    assert value(samples, total, route="/api/show", method="POST", status="404") == 1
    # no raw path becomes a label: an unknown route is "unmatched", a path parameter stays
    # in its template
    assert value(samples, total, route="unmatched", method="GET", status="404") == 1
    assert value(samples, total, route="/v1/models/{model:path}", method="GET", status="404") == 1
    assert not any("x" * 40 in str(labels) or "some/model" in str(labels) for _, labels in samples)
    assert value(samples, "mlxollama_models_loaded", state="ready") == 0
    # the scrape itself is counted by the next one
    assert value(scrape(d), total, route="/metrics", method="GET", status="200") == 1


def test_health_stop_and_cancel_answer_without_a_model(daemon):
    d = daemon()
    status, _, body = d.call("GET", "/api/health")
    assert status == 200
    health = orjson.loads(body)
    assert health["status"] == "ok" and health["store_writable"] is True
    assert health["models"] == [] and health["loading"] == []
    status, _, body = d.call("POST", "/api/stop", {"model": "ghost"})
    assert status == 404 and orjson.loads(body) == {"error": "model 'ghost' not found"}
    assert d.call("POST", "/api/stop", {})[0] == 400
    assert d.call("POST", "/api/stop", {"model": 3})[0] == 400
    status, _, body = d.call("DELETE", "/api/requests/" + "0" * 32)
    assert status == 404 and "no running request" in orjson.loads(body)["error"]
    with pytest.raises(ModelNotFound):
        Client(f"127.0.0.1:{d.port}").unload("ghost")


def test_health_is_503_when_the_store_cannot_be_written(daemon, tmp_path):
    d = daemon()
    # a store whose folder went away (an unmounted disk): no file can be made there, even
    # by root, whom permissions would not stop
    moved = tmp_path / "moved"
    d.root.rename(moved)
    try:
        status, _, body = d.call("GET", "/api/health")
    finally:
        moved.rename(d.root)
    assert status == 503
    health = orjson.loads(body)
    assert health["status"] == "store_not_writable" and health["store_writable"] is False
    assert d.call("GET", "/api/health")[0] == 200
    d.runtime.stop()  # what SIGTERM starts: the listener is still open for a moment
    status, _, body = d.call("GET", "/api/health")
    assert status == 503 and orjson.loads(body)["status"] == "stopping"


def test_metrics_and_health_are_guarded_by_the_api_key(daemon):
    d = daemon(api_key=KEY)
    for path in ("/metrics", "/api/health"):
        assert d.call("GET", path)[0] == 401
        assert d.call("GET", path, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    assert d.call("DELETE", "/api/requests/abc")[0] == 401
    assert d.call("POST", "/api/stop", {"model": "x"})[0] == 401


# -- with the tiny models -------------------------------------------------------------------


@pytest.mark.model
def test_metrics_move_with_a_generate_a_load_and_an_eviction(daemon, tiny_store):
    d = daemon(tiny_store, max_loaded_models=1)
    client = d.client()
    answer = client.generate("tiny-a", "hello", options={"temperature": 0, "num_predict": 5})
    assert answer.eval_count > 0
    parts = list(
        client.generate(
            "tiny-a", "hello", options={"temperature": 0, "num_predict": 5}, stream=True
        )
    )
    model = "tiny-a:latest"
    total = "mlxollama_requests_total"
    samples: dict = {}

    def settled() -> bool:  # a stream's last line is out before its handler counts it
        samples.update(scrape(d))
        return (
            value(samples, total, route="/api/generate", method="POST", status="200") == 2
            and value(samples, "mlxollama_sessions_active", model=model) == 0
        )

    assert wait_until(settled, 10), samples
    generated = value(samples, "mlxollama_generated_tokens_total", model=model)
    assert generated == answer.eval_count + parts[-1].eval_count
    assert value(samples, "mlxollama_prompt_tokens_total", model=model, source="evaluated") > 0
    assert value(samples, "mlxollama_time_to_first_token_seconds_count", model=model) == 2
    assert value(samples, "mlxollama_inter_token_seconds_count", model=model) >= 1
    assert value(samples, "mlxollama_model_load_seconds_count", model=model) == 1
    assert value(samples, "mlxollama_models_loaded", state="ready") == 1
    assert value(samples, "mlxollama_sessions_active", model=model) == 0
    assert value(samples, "mlxollama_prompt_cache_bytes", model=model) >= 0
    # a second model evicts the first (max_loaded_models=1)
    assert client.generate("tiny-b", "").done_reason == "load"
    samples.clear()

    def evicted() -> bool:  # the evicted model unloads in its own thread
        samples.update(scrape(d))
        return (
            value(samples, "mlxollama_model_unloads_total", model=model, reason="evicted") == 1
            and value(samples, "mlxollama_model_unload_seconds_count", model=model) == 1
        )

    assert wait_until(evicted, 30), samples
    assert value(samples, "mlxollama_model_load_seconds_count", model="tiny-b:latest") == 1
    status, _, body = d.call("GET", "/api/health")
    assert status == 200 and orjson.loads(body)["models"] == ["tiny-b:latest"]


@pytest.mark.model
def test_stop_unloads_an_idle_model_at_once_despite_its_keep_alive(daemon, tiny_store):
    d = daemon(tiny_store)
    client = d.client()
    assert client.generate("tiny-a", "", keep_alive=-1).done_reason == "load"
    assert [m.model for m in client.ps().models] == ["tiny-a:latest"]
    assert Client(f"127.0.0.1:{d.port}").unload("tiny-a") == {
        "model": "tiny-a:latest",
        "status": "unloaded",
        "running": 0,
    }
    assert client.ps().models == []
    samples = scrape(d)
    assert value(samples, "mlxollama_model_unloads_total", model="tiny-a:latest", reason="stop")
    status, _, body = d.call("POST", "/api/stop", {"model": "tiny-a"})  # not running now
    assert status == 200, body  # a success, as in Ollama
    assert orjson.loads(body) == {"model": "tiny-a:latest", "status": "not_loaded", "running": 0}


@pytest.mark.model
def test_mlxctl_stop_unloads_through_the_route(daemon, tiny_store, monkeypatch):
    d = daemon(tiny_store)
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{d.port}")
    assert d.client().generate("tiny-b", "").done_reason == "load"
    out = CliRunner().invoke(cli, ["stop", "tiny-b"])
    assert out.exit_code == 0, out.output
    assert d.runtime.ps() == []
    out = CliRunner().invoke(cli, ["stop", "tiny-b"])  # not loaded: a success, as in Ollama
    assert out.exit_code == 0 and out.output == ""
    out = CliRunner().invoke(cli, ["stop", "ghost"])
    assert out.exit_code == 1 and 'couldn\'t find model "ghost" to stop' in out.output
    samples = scrape(d)  # all went through /api/stop
    for status in ("200", "404"):
        assert value(
            samples, "mlxollama_requests_total", route="/api/stop", method="POST", status=status
        )


@pytest.mark.model
def test_stop_lets_a_running_request_finish_then_unloads(daemon, tiny_store):
    d = daemon(tiny_store)
    conn, resp = stream(d, {"model": "tiny-a", "prompt": "hi", "options": LONG})
    try:
        status, _, body = d.call("POST", "/api/stop", {"model": "tiny-a"})
        assert status == 200
        assert orjson.loads(body) == {"model": "tiny-a:latest", "status": "stopping", "running": 1}
        assert [m["name"] for m in orjson.loads(d.call("GET", "/api/ps")[2])["models"]] == [
            "tiny-a:latest"
        ]
        assert resp.readline().strip()  # still generating
    finally:
        conn.close()  # hang up: the request ends, and with it the model
    assert wait_until(lambda: d.runtime.ps() == [], 30), d.runtime.ps()


@pytest.mark.model
def test_cancel_ends_the_named_stream_only(daemon, tiny_store):
    d = daemon(tiny_store, num_parallel=2)
    assert d.client().generate("tiny-a", "").done_reason == "load"
    body = {"model": "tiny-a", "prompt": "hi", "options": LONG}
    first, first_resp = stream(d, body)
    second, second_resp = stream(d, body)
    try:
        request_id = first_resp.getheader("X-Request-Id")
        assert request_id and request_id != second_resp.getheader("X-Request-Id")
        first_resp.readline()
        status, _, data = d.call("DELETE", f"/api/requests/{request_id}")
        assert status == 204 and data == b""
        ended = lines(first_resp)  # the stream ends on its own, with a final chunk
        assert ended[-1]["done"] is True and ended[-1]["done_reason"] == "cancel"
        assert ended[-1]["eval_count"] < LONG["num_predict"]
        assert all(not chunk["done"] for chunk in ended[:-1])
        # the other stream runs on
        assert wait_until(lambda: d.active() == 1, 10), d.runtime.ps()
        assert orjson.loads(second_resp.readline())["done"] is False
        assert d.call("DELETE", f"/api/requests/{request_id}")[0] == 404  # over already
        samples = scrape(d)
        assert value(samples, "mlxollama_requests_cancelled_total", model="tiny-a:latest") == 1
    finally:
        first.close()
        second.close()
    assert wait_until(lambda: d.active() == 0, 10)


@pytest.mark.model
def test_cancel_answers_a_non_streamed_request_with_its_done_reason(daemon, tiny_store):
    d = daemon(tiny_store)
    assert d.client().generate("tiny-a", "").done_reason == "load"
    answer: dict = {}

    def ask() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
        conn.request(
            "POST",
            "/api/generate",
            orjson.dumps({"model": "tiny-a", "prompt": "hi", "options": LONG, "stream": False}),
        )
        resp = conn.getresponse()
        answer.update(status=resp.status, id=resp.getheader("X-Request-Id"), body=resp.read())
        conn.close()

    thread = threading.Thread(target=ask)
    thread.start()
    assert wait_until(lambda: d.active() == 1, 30)
    running = unanswered(d, "/api/generate")
    assert len(running) == 1
    assert d.call("DELETE", f"/api/requests/{running[0]}")[0] == 204
    thread.join(60)
    assert answer["status"] == 200 and answer["id"] == running[0]
    final = orjson.loads(answer["body"])
    assert final["done"] is True and final["done_reason"] == "cancel"


@pytest.mark.model
def test_cancel_ends_a_queued_request_and_an_openai_stream(daemon, tiny_store):
    d = daemon(tiny_store, num_parallel=1)
    assert d.client().generate("tiny-a", "").done_reason == "load"
    oa = openai.OpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="x", max_retries=0)
    running = oa.chat.completions.with_raw_response.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=4000,
        temperature=0,
    )
    chunks = running.parse()
    next(iter(chunks))
    answer: dict = {}

    def queued() -> None:  # waits for the only slot
        conn, resp = stream(d, {"model": "tiny-a", "prompt": "hi", "options": LONG})
        answer.update(id=resp.getheader("X-Request-Id"), lines=lines(resp))
        conn.close()

    thread = threading.Thread(target=queued)
    thread.start()
    assert wait_until(lambda: d.active() == 2, 30)
    waiting = unanswered(d, "/api/generate")
    assert len(waiting) == 1 and waiting[0] != running.headers["x-request-id"]
    assert d.call("DELETE", f"/api/requests/{waiting[0]}")[0] == 204
    thread.join(30)
    # the queued one ends with only its final chunk; the OpenAI stream runs on, until it is
    # cancelled too and finishes with OpenAI's "stop"
    assert answer["id"] == waiting[0]
    assert [(x["done"], x["done_reason"], x["response"]) for x in answer["lines"]] == [
        (True, "cancel", "")
    ]
    assert wait_until(lambda: d.active() == 1, 10)  # the model let go of it too
    assert d.call("DELETE", f"/api/requests/{running.headers['x-request-id']}")[0] == 204
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "stop"
    assert wait_until(lambda: d.active() == 0, 10)


@pytest.mark.model
def test_metrics_count_embeddings(daemon, minilm_store):
    d = daemon(minilm_store)
    answer = d.client().embed("all-minilm", ["one sentence", "and another"])
    assert len(answer.embeddings) == 2
    samples = scrape(d)
    model = "all-minilm:latest"
    assert value(
        samples, "mlxollama_requests_total", route="/api/embed", method="POST", status="200"
    )
    assert value(samples, "mlxollama_prompt_tokens_total", model=model, source="evaluated") == (
        answer.prompt_eval_count
    )
    assert value(samples, "mlxollama_model_load_seconds_count", model=model) == 1
    assert not any(
        name.startswith("mlxollama_time_to_first_token") and ("model", model) in labels
        for name, labels in samples
    )
