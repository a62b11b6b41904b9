"""The native API over a real waitress server, driven by the official `ollama` client and raw
sockets, on a fake runtime (scripted sessions) and a real store. No MLX is loaded."""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import ollama
import orjson
import pytest
import structlog

from mlxollama import __version__
from mlxollama.actors.runtime import DONE, RunningModel, Session
from mlxollama.api import Chunk
from mlxollama.config import Config, parse_host
from mlxollama.errors import Busy, UnsupportedModel
from mlxollama.http.app import create_app
from mlxollama.http.errors import BUSY_MESSAGE
from mlxollama.http.server import make_server, shutdown
from mlxollama.store import manifests as mt
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store

FINAL = Chunk(
    done=True,
    done_reason="stop",
    prompt_eval_count=5,
    eval_count=2,
    total_duration=9_000_000,
    load_duration=1_000_000,
    prompt_eval_duration=2_000_000,
    eval_duration=3_000_000,
)


def add_model(store: Store, name: str) -> None:
    """A stored model written by hand (no MLX): a config blob, one tensor, params, template."""
    config = {
        "model_format": "mlx",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "135M",
        "file_type": "Q4_1",
        "capabilities": ["completion"],
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
    }

    def layer(media_type: str, data: bytes, title: str | None = None) -> Descriptor:
        return Descriptor(media_type, store.blobs.put_bytes(data), len(data), title)

    with store.lock():
        manifest = Manifest(
            config=layer(mt.CONFIG_MEDIA_TYPE, orjson.dumps(config)),
            layers=(
                layer(mt.TENSOR_MEDIA_TYPE, b"tensor of " + name.encode(), "w"),
                layer(mt.TEMPLATE_MEDIA_TYPE, b"{{ .Prompt }}"),
                layer(mt.PARAMS_MEDIA_TYPE, orjson.dumps({"stop": ["<|im_end|>"]})),
            ),
        )
        store.put_manifest(parse_name(name), manifest)


class FakeRuntime:
    """The Runtime interface with scripted sessions.

    `script` lists what each session's feeder thread does in turn: put a Chunk or an
    exception on the queue, sleep for a number of seconds, or wait for a threading.Event (a
    gate the test opens). Cancelling a session sets `cancelled`.
    """

    def __init__(self, store: Store):
        self._store = store
        self.script: list = [Chunk(text="Hello"), Chunk(text=" world"), FINAL]
        self.busy = False
        self.requests: list = []
        self.submitted = threading.Event()
        self.cancelled = threading.Event()
        self.running: list[RunningModel] = []
        self.creates: list = []
        self.create_steps = None  # a function (name, spec) -> iterator of progress dicts
        self.stopped = False

    @property
    def store(self) -> Store:
        return self._store

    def submit(self, request, reservation=None):
        self.requests.append(request)
        if self.busy:
            raise Busy("the queue is full")
        model = self._store.get(request.model)
        if request.empty:
            reason = "unload" if request.keep_alive == 0 else "load"
            steps = [Chunk(done=True, done_reason=reason)]
        else:
            steps = list(self.script)
        out: queue.Queue = queue.Queue()
        session = Session(model.name.display(), request.request_id, out, self.cancelled.set)
        threading.Thread(target=self._feed, args=(steps, out), daemon=True).start()
        self.submitted.set()
        return session

    def _feed(self, steps, out: queue.Queue) -> None:
        for step in steps:
            if isinstance(step, threading.Event):
                while not step.wait(0.01):
                    if self.cancelled.is_set():
                        return
            elif isinstance(step, (int, float)):
                if self.cancelled.wait(step):
                    return
            else:
                out.put(step)
        out.put(DONE)

    def ps(self):
        return self.running

    def create(self, name, spec):
        self.creates.append((name, spec))
        if self.create_steps is not None:
            yield from self.create_steps(name, spec)
            return
        yield {"status": "parsing GGUF"}
        yield {"status": "writing manifest"}
        yield {"status": "success"}

    def copy(self, source, destination):
        return self._store.copy(source, destination)

    def delete(self, name):
        return self._store.remove(name)

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def runtime(tmp_path) -> FakeRuntime:
    store = Store(tmp_path / "models")
    add_model(store, "smol")
    return FakeRuntime(store)


@pytest.fixture
def server(runtime):
    config = Config.from_env(
        {"MLXOLLAMA_MODELS": str(runtime.store.root), "MLXOLLAMA_MAX_BODY": "64KiB"}
    )
    app = create_app(runtime, config)
    srv = make_server(app, "127.0.0.1", 0, threads=8)
    loop = threading.Thread(target=srv.run, daemon=True)
    loop.start()
    yield SimpleNamespace(port=srv.effective_port, runtime=runtime)
    shutdown(srv, runtime)  # the loop thread (a daemon) ends at its next poll timeout


@pytest.fixture
def client(server) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{server.port}")


def call(server, method: str, path: str, body=None, headers=None):
    """One request with http.client: (status, response, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    if isinstance(body, (dict, list)):
        body = orjson.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp, data


def error_of(data: bytes) -> str:
    return orjson.loads(data)["error"]


def raw_post(server, path: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket (so the test can hang up whenever it likes)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    data = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


# -- health, version, routing ---------------------------------------------------------------


def test_health_and_version(server):
    status, resp, data = call(server, "GET", "/")
    assert (status, data) == (200, b"Ollama is running")
    assert resp.getheader("Content-Type").startswith("text/plain")
    status, _, data = call(server, "HEAD", "/")
    assert (status, data) == (200, b"")
    status, resp, data = call(server, "GET", "/api/version")
    body = orjson.loads(data)
    assert status == 200 and body["version"] == __version__
    assert {"backend", "blas", "mlx", "mlx_lm"} <= set(body["mlxollama"])  # how mlxctl knows us
    assert resp.getheader("Content-Type").startswith("application/json")
    assert call(server, "HEAD", "/api/version")[0] == 200


def test_request_id_header(server):
    _, first, _ = call(server, "GET", "/api/version")
    _, second, _ = call(server, "GET", "/api/version")
    ids = [r.getheader("X-Request-Id") for r in (first, second)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]


def test_unknown_route_and_wrong_method_answer_json(server):
    status, _, data = call(server, "GET", "/api/nope")
    assert status == 404 and error_of(data) == "404 page not found"
    status, resp, data = call(server, "GET", "/api/chat")
    assert status == 405 and error_of(data)
    assert "POST" in resp.getheader("Allow")


# -- tags, show, ps, copy, delete -----------------------------------------------------------


def test_tags(server, client):
    models = client.list().models
    assert [m.model for m in models] == ["smol:latest"]
    m = models[0]
    assert m.size > 0 and len(m.digest) == 64 and m.details.family == "llama"
    status, _, data = call(server, "GET", "/api/tags")
    entry = orjson.loads(data)["models"][0]
    assert status == 200 and entry["name"] == "smol:latest" and entry["modified_at"].endswith("Z")
    assert call(server, "HEAD", "/api/tags")[:1] == (200,)


def test_show(server, client):
    shown = client.show("smol")
    assert shown.template == "{{ .Prompt }}"
    assert "stop" in shown.parameters and "FROM" in shown.modelfile
    assert shown.details.quantization_level == "Q4_1"
    status, _, data = call(server, "POST", "/api/show", {"name": "smol"})  # legacy field
    assert status == 200 and orjson.loads(data)["model_info"]["llama.context_length"] == 8192
    status, _, data = call(server, "POST", "/api/show", {})
    assert (status, error_of(data)) == (400, "model is required")
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert (e.value.status_code, e.value.error) == (404, "model 'nope' not found")


def test_ps(server, client):
    now = time.time()
    details = {"family": "llama", "format": "mlx"}
    server.runtime.running = [
        RunningModel("a:latest", "d1", 100, details, now + 300, 4096, 0),
        RunningModel("b:latest", "d2", 200, details, math.inf, 8192, 1),
    ]
    models = client.ps().models
    assert [m.model for m in models] == ["b:latest", "a:latest"]  # latest expiry first
    assert models[0].expires_at.year >= 2300  # forever, as Ollama shows it
    assert models[1].size_vram == models[1].size == 100 and models[1].context_length == 4096
    assert abs(models[1].expires_at.timestamp() - (now + 300)) < 1
    status, _, data = call(server, "GET", "/api/ps")
    assert status == 200 and orjson.loads(data)["models"][1]["expires_at"].endswith("Z")


def test_copy_and_delete(server, client):
    assert client.copy("smol", "smol2").status == "success"
    assert {m.model for m in client.list().models} == {"smol:latest", "smol2:latest"}
    status, _, data = call(server, "POST", "/api/copy", {"source": "nope", "destination": "x"})
    assert (status, error_of(data)) == (404, 'model "nope" not found')
    status, _, data = call(server, "POST", "/api/copy", {"source": "smol", "destination": "a b"})
    assert (status, error_of(data)) == (400, 'destination "a b" is invalid')
    status, _, data = call(server, "POST", "/api/copy", {"source": "smol"})
    assert status == 400
    assert client.delete("smol2").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("smol2")
    assert (e.value.status_code, e.value.error) == (404, "model 'smol2' not found")
    status, _, data = call(server, "DELETE", "/api/delete", {"model": "bad name"})
    assert status == 400 and "invalid model name" in error_of(data)


# -- generate and chat ----------------------------------------------------------------------


def test_generate_stream(server, client):
    parts = list(client.generate("smol", "Hi", stream=True))
    assert "".join(p.response for p in parts) == "Hello world"
    assert [p.done for p in parts] == [False, False, True]
    last = parts[-1]
    assert last.done_reason == "stop" and last.eval_count == 2 and last.total_duration == 9_000_000
    assert last.model == "smol"  # echoed as the client sent it
    request = server.runtime.requests[-1]
    assert (request.kind, request.prompt, request.model) == ("generate", "Hi", "smol")


def test_generate_stream_headers(server):
    status, resp, data = call(server, "POST", "/api/generate", {"model": "smol", "prompt": "Hi"})
    assert status == 200 and resp.getheader("Content-Type") == "application/x-ndjson"
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert [line["response"] for line in lines] == ["Hello", " world", ""]
    assert lines[-1]["prompt_eval_count"] == 5 and "context" not in lines[-1]


def test_generate_not_streamed(server, client):
    answer = client.generate("smol", "Hi", stream=False)
    assert (answer.response, answer.done, answer.done_reason) == ("Hello world", True, "stop")
    assert answer.prompt_eval_count == 5 and answer.eval_duration == 3_000_000


def test_generate_maps_fields(server):
    body = {
        "model": "smol",
        "prompt": "Hi",
        "system": "be brief",
        "template": "{{ .Prompt }}",
        "options": {"temperature": 0, "num_ctx": 2048, "stop": ["x"], "no_such_option": 1},
        "keep_alive": "10m",
        "think": False,
        "format": "",
        "stream": False,
    }
    assert call(server, "POST", "/api/generate", body)[0] == 200
    r = server.runtime.requests[-1]
    assert (r.system, r.template, r.keep_alive, r.raw) == (
        "be brief",
        "{{ .Prompt }}",
        600.0,
        False,
    )
    assert r.options == {"temperature": 0.0, "num_ctx": 2048, "stop": ["x"]}
    assert len(r.request_id) == 32
    call(server, "POST", "/api/generate", {"model": "smol", "prompt": "x", "keep_alive": -1})
    assert server.runtime.requests[-1].keep_alive == math.inf


def test_chat(server, client):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    parts = list(client.chat("smol", messages=messages, stream=True))
    assert "".join(p.message.content for p in parts) == "Hello world"
    assert parts[0].message.role == "assistant" and parts[-1].done_reason == "stop"
    answer = client.chat("smol", messages=messages, stream=False)
    assert answer.message.content == "Hello world" and answer.eval_count == 2
    request = server.runtime.requests[-1]
    assert request.kind == "chat" and [m.role for m in request.messages] == ["system", "user"]


def test_empty_prompt_loads_and_answers_one_object(server, client):
    status, resp, data = call(server, "POST", "/api/generate", {"model": "smol"})
    assert status == 200 and resp.getheader("Content-Type").startswith("application/json")
    body = orjson.loads(data)
    assert (body["done"], body["done_reason"], body["response"]) == (True, "load", "")
    answer = client.chat("smol", messages=[], keep_alive=0)
    assert (answer.done_reason, answer.message.content) == ("unload", "")
    parts = list(client.generate("smol", "", stream=True))
    assert len(parts) == 1 and parts[0].done_reason == "load"


def test_stream_arrives_incrementally(server, client):
    gate = threading.Event()
    server.runtime.script = [Chunk(text="first"), gate, Chunk(text="second"), FINAL]
    parts = client.generate("smol", "Hi", stream=True)
    assert next(parts).response == "first"  # while the session is still held at the gate
    assert not gate.is_set()
    gate.set()
    assert [p.response for p in parts] == ["second", ""]


def test_mid_stream_error_is_a_final_line(server, client):
    server.runtime.script = [Chunk(text="a"), RuntimeError("the model crashed")]
    status, _, data = call(server, "POST", "/api/generate", {"model": "smol", "prompt": "Hi"})
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert status == 200 and lines == [lines[0], {"error": "the model crashed"}]
    assert lines[0]["response"] == "a"
    parts = client.chat("smol", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert next(parts).message.content == "a"
    with pytest.raises(ollama.ResponseError, match="the model crashed"):
        next(parts)
    # not streamed: nothing was sent yet, so the error gets its status
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("smol", "Hi", stream=False)
    assert (e.value.status_code, e.value.error) == (500, "the model crashed")


def test_a_session_that_ends_without_a_final_chunk_says_so(server):
    server.runtime.script = [Chunk(text="a")]
    status, _, data = call(server, "POST", "/api/generate", {"model": "smol", "prompt": "Hi"})
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert lines[1:] == [{"error": "the generation ended without a final chunk"}]
    status, _, data = call(
        server, "POST", "/api/generate", {"model": "smol", "prompt": "x", "stream": False}
    )
    assert (status, error_of(data)) == (500, "the generation ended without a final chunk")


def test_error_before_first_chunk_gets_its_status(server, client):
    server.runtime.script = [UnsupportedModel("cannot load this one")]
    with pytest.raises(ollama.ResponseError) as e:
        next(client.generate("smol", "Hi", stream=True))
    assert (e.value.status_code, e.value.error) == (400, "cannot load this one")
    server.runtime.script = [RuntimeError("load failed: out of memory")]
    status, resp, data = call(server, "POST", "/api/chat", {"model": "smol", "messages": []})
    assert status == 200  # an empty chat is a load, answered by the fake without the script
    status, resp, data = call(
        server,
        "POST",
        "/api/chat",
        {"model": "smol", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (status, error_of(data)) == (500, "load failed: out of memory")
    assert resp.getheader("Content-Type").startswith("application/json")


def test_busy_is_503_with_ollamas_text(server, client):
    server.runtime.busy = True
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("smol", "Hi")
    assert (e.value.status_code, e.value.error) == (503, BUSY_MESSAGE)
    assert "try again.  maximum" in BUSY_MESSAGE


def test_unknown_model_and_invalid_name(server, client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("nope", messages=[{"role": "user", "content": "hi"}])
    assert (e.value.status_code, e.value.error) == (404, "model 'nope' not found")
    status, _, data = call(server, "POST", "/api/generate", {"model": "a b", "prompt": "x"})
    assert status == 400 and "invalid model name" in error_of(data)
    status, _, data = call(server, "POST", "/api/generate", {"prompt": "x"})
    assert (status, error_of(data)) == (400, "model is required")


def test_client_disconnect_mid_stream_cancels(server):
    server.runtime.script = [Chunk(text="first"), threading.Event()]  # then silence
    sock = raw_post(server, "/api/generate", {"model": "smol", "prompt": "Hi"})
    assert b'"first"' in read_until(sock, b'"first"')
    assert not server.runtime.cancelled.is_set()
    start = time.monotonic()
    sock.close()
    assert server.runtime.cancelled.wait(2)
    assert time.monotonic() - start < 0.5


def test_client_disconnect_before_first_chunk_cancels(server):
    server.runtime.script = [threading.Event()]  # loading forever
    sock = raw_post(
        server, "/api/chat", {"model": "smol", "messages": [{"role": "user", "content": "x"}]}
    )
    assert server.runtime.submitted.wait(2)
    start = time.monotonic()
    sock.close()
    assert server.runtime.cancelled.wait(2)
    assert time.monotonic() - start < 0.5


def test_client_disconnect_while_collecting_cancels(server):
    server.runtime.script = [Chunk(text="a"), threading.Event()]
    sock = raw_post(server, "/api/generate", {"model": "smol", "prompt": "Hi", "stream": False})
    assert server.runtime.submitted.wait(2)
    time.sleep(0.1)  # let the handler take the first chunk and wait for the rest
    sock.close()
    assert server.runtime.cancelled.wait(2)


def test_stream_that_finishes_is_not_cancelled(server, client):
    list(client.generate("smol", "Hi", stream=True))
    client.generate("smol", "Hi", stream=False)
    time.sleep(0.1)
    assert not server.runtime.cancelled.is_set()


# -- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/api/generate", b"", "missing request body"),
        ("/api/generate", b"{not json", "invalid JSON in request body"),
        ("/api/generate", b"[1, 2]", "request body must be a JSON object, not array"),
        (
            "/api/chat",
            b'{"model": "smol", "messages": "x"}',
            '"messages" must be an array, not string',
        ),
        ("/api/chat", b'{"model": "smol", "messages": ["x"]}', "each message must be an object"),
        (
            "/api/chat",
            b'{"model": "smol", "messages": [{"role": "robot"}]}',
            "invalid message role",
        ),
        (
            "/api/generate",
            b'{"model": "smol", "stream": "yes"}',
            '"stream" must be a boolean, not string',
        ),
        ("/api/generate", b'{"model": 7}', '"model" must be a string, not number'),
        ("/api/generate", b'{"model": "smol", "prompt": ["a"]}', '"prompt" must be a string'),
        (
            "/api/generate",
            b'{"model": "smol", "options": {"temperature": "hot"}}',
            'option "temperature" must be of type float32',
        ),
        ("/api/generate", b'{"model": "smol", "options": [1]}', '"options" must be an object'),
        ("/api/generate", b'{"model": "smol", "keep_alive": "300"}', 'invalid duration "300"'),
        ("/api/generate", b'{"model": "smol", "keep_alive": true}', "keep_alive"),
        ("/api/generate", b'{"model": "smol", "format": "yaml"}', "invalid format: 'yaml'"),
        (
            "/api/generate",
            b'{"model": "smol", "format": {"type": "object", "if": {}}}',
            "unsupported JSON schema in format",
        ),
        (
            "/api/chat",
            b'{"model": "smol", "messages": [], "tools": [{"type": "function", '
            b'"function": {"name": "f"}}]}',
            "registry.ollama.ai/library/smol:latest does not support tools",
        ),
        (
            "/api/chat",
            b'{"model": "smol", "messages": [], "tools": [{"type": "function"}]}',
            "each tool needs",
        ),
        ("/api/generate", b'{"model": "smol", "context": [1, 2]}', '"context" is not supported'),
        (
            "/api/generate",
            b'{"model": "smol", "raw": true, "system": "s"}',
            "raw mode does not support",
        ),
        ("/api/generate", b'{"model": "smol", "top_logprobs": 50}', "top_logprobs must be between"),
        ("/api/generate", b'{"model": "smol", "think": "extreme"}', "invalid think value"),
        (
            "/api/generate",
            b'{"model": "smol", "think": true}',
            '"smol" does not support thinking',
        ),
        (
            "/api/generate",
            b'{"model": "smol", "prompt": "x", "images": ["aGk="]}',
            "registry.ollama.ai/library/smol:latest does not support vision",
        ),
        (
            "/api/chat",
            b'{"model": "smol", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}',
            "registry.ollama.ai/library/smol:latest does not support vision",
        ),
        (
            "/api/generate",
            b'{"model": "smol", "prompt": "x", "suffix": "y"}',
            "registry.ollama.ai/library/smol:latest does not support insert",
        ),
    ],
)
def test_bad_requests_are_400_with_a_readable_error(server, path, body, expected):
    status, resp, data = call(server, "POST", path, body, {"Content-Type": "application/json"})
    assert status == 400, data
    assert expected in error_of(data)
    assert resp.getheader("Content-Type").startswith("application/json")
    assert not server.runtime.requests  # nothing reached the runtime


def test_tools_are_refused_with_ollamas_wording(server, client):
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("smol", messages=[{"role": "user", "content": "x"}], tools=[tool])
    assert e.value.status_code == 400
    assert e.value.error == "registry.ollama.ai/library/smol:latest does not support tools"
    with pytest.raises(ollama.ResponseError) as e:  # the model is looked up first, as in Ollama
        client.chat("nope", messages=[{"role": "user", "content": "x"}], tools=[tool])
    assert e.value.status_code == 404


def test_form_content_type_is_still_read_as_json(server):
    body = orjson.dumps({"model": "smol", "prompt": "Hi", "stream": False})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    status, _, data = call(server, "POST", "/api/generate", body, headers)
    assert status == 200 and orjson.loads(data)["response"] == "Hello world"


def test_oversized_body_is_413_json(server):
    body = {"model": "smol", "prompt": "x" * (100 * 1024)}
    status, _, data = call(server, "POST", "/api/generate", body)
    assert status == 413 and "MLXOLLAMA_MAX_BODY" in error_of(data)


# -- blobs and create -----------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_blob_upload(server, client, tmp_path):
    data = b"GGUF" + os.urandom(200 * 1024)  # larger than the JSON body limit
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    digest = digest_of(data)
    assert call(server, "HEAD", f"/api/blobs/{digest}")[0] == 404
    assert client.create_blob(path) == digest
    assert call(server, "HEAD", f"/api/blobs/{digest}")[0] == 200
    assert server.runtime.store.blobs.read_bytes(digest) == data
    status, _, _ = call(server, "POST", f"/api/blobs/{digest}", data)
    assert status == 200  # already present
    status, _, _ = call(server, "POST", f"/api/blobs/{digest.replace(':', '-')}", data)
    assert status == 200  # sha256-<hex> is accepted too


def test_blob_upload_errors(server):
    status, _, data = call(server, "POST", f"/api/blobs/{digest_of(b'other')}", b"these bytes")
    assert status == 400
    assert error_of(data) == (
        f'digest mismatch, expected "{digest_of(b"other")}", got "{digest_of(b"these bytes")}"'
    )
    assert not server.runtime.store.blobs.exists(digest_of(b"these bytes"))
    status, _, data = call(server, "POST", "/api/blobs/sha256:abc", b"x")
    assert status == 400 and error_of(data).startswith("invalid digest format")
    assert call(server, "HEAD", "/api/blobs/md5:abc")[0] == 400


def upload(server, data: bytes) -> str:
    digest = digest_of(data)
    assert call(server, "POST", f"/api/blobs/{digest}", data)[0] == 201
    return digest


def test_create_from_uploaded_gguf(server, client):
    data = b"GGUF" + b"\0" * 64
    digest = upload(server, data)
    seen = {}

    def steps(name, spec):
        path = Path(spec.source)
        seen.update(path=path, exists=path.exists(), data=path.read_bytes(), spec=spec)
        yield {"status": "parsing GGUF"}
        yield {"status": "success"}

    server.runtime.create_steps = steps
    progress = list(
        client.create(
            "new",
            files={"model.gguf": digest},
            template="{{ .Prompt }}",
            system="be brief",
            parameters={"temperature": 0.5, "stop": ["<|x|>"]},
            messages=[{"role": "user", "content": "hi"}],
            license="MIT",
            quantize="q4_0",
            stream=True,
        )
    )
    assert [p.status for p in progress] == ["parsing GGUF", "success"]
    assert seen["exists"] and seen["path"].name == "model.gguf" and seen["data"] == data
    assert not seen["path"].exists() and not seen["path"].parent.exists()  # cleaned up
    name, spec = server.runtime.creates[-1]
    assert name == "new"
    assert (spec.template, spec.system, spec.license, spec.quantize) == (
        "{{ .Prompt }}",
        "be brief",
        ["MIT"],
        "q4_0",
    )
    assert spec.parameters == {"temperature": 0.5, "stop": ["<|x|>"]}
    assert spec.messages == [{"role": "user", "content": "hi"}]


def test_create_not_streamed_answers_the_last_progress(server, client):
    digest = upload(server, b"GGUF-a")
    assert client.create("new", files={"weights": digest}, stream=False).status == "success"
    _, spec = server.runtime.creates[-1]
    assert spec.source.endswith("weights.gguf")  # a GGUF recognised by its magic bytes


def test_create_from_a_safetensors_folder(server):
    config, weights = upload(server, b'{"model_type": "llama"}'), upload(server, b"tensors")
    seen = {}

    def steps(name, spec):
        folder = Path(spec.source)
        seen.update({p.name: p.read_bytes() for p in folder.iterdir()})
        yield {"status": "success"}

    server.runtime.create_steps = steps
    body = {"model": "st", "files": {"config.json": config, "model.safetensors": weights}}
    status, _, data = call(server, "POST", "/api/create", body)
    assert status == 200 and orjson.loads(data.splitlines()[-1]) == {"status": "success"}
    assert seen == {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"tensors"}


def test_create_from_a_stored_model(server, client):
    client.create("derived", from_="smol", system="hello", stream=False)
    _, spec = server.runtime.creates[-1]
    assert spec.source == "registry.ollama.ai/library/smol:latest" and spec.system == "hello"


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"files": {}}, 400, "model is required"),
        ({"model": "a b", "from": "smol"}, 400, "invalid model name"),
        ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "x", "from": "nope"}, 404, "model 'nope' not found"),
        ({"model": "x", "files": {"../m.gguf": "GOOD"}}, 400, "invalid file name"),
        ({"model": "x", "files": {"/etc/m.gguf": "GOOD"}}, 400, "invalid file name"),
        ({"model": "x", "files": {"a/../m.gguf": "GOOD"}}, 400, "invalid file name"),
        ({"model": "x", "files": {"a//m.gguf": "GOOD"}}, 400, "invalid file name"),
        ({"model": "x", "files": {"..": "GOOD"}}, 400, "invalid file name"),
        ({"model": "x", "files": {"m.gguf": "sha256:xyz"}}, 400, "invalid digest format"),
        ({"model": "x", "files": {"m.gguf": "sha256:" + "0" * 64}}, 400, "not found"),
        ({"model": "x", "files": {"m.gguf": 7}}, 400, "must be a string"),
        ({"model": "x", "files": "m.gguf"}, 400, '"files" must be an object'),
        ({"model": "x", "from": "smol", "parameters": {"top_k": "many"}}, 400, "top_k"),
        ({"model": "x", "from": "smol", "license": [1]}, 400, '"license" must be'),
        ({"model": "x", "from": "smol", "adapters": {"a": "b"}}, 400, "adapters"),
    ],
)
def test_create_bad_requests(server, body, status, expected):
    good = upload(server, b"GGUF-good")
    body = orjson.loads(orjson.dumps(body).replace(b'"GOOD"', f'"{good}"'.encode()))
    got, _, data = call(server, "POST", "/api/create", body)
    assert got == status, data
    assert expected in error_of(data)
    assert not server.runtime.creates


def test_create_errors_before_and_after_the_first_progress(server):
    digest = upload(server, b"GGUF-bad")

    def fails_at_once(name, spec):
        raise UnsupportedModel("unsupported architecture 'gpt2'")
        yield

    server.runtime.create_steps = fails_at_once
    body = {"model": "x", "files": {"m.gguf": digest}}
    status, _, data = call(server, "POST", "/api/create", body)
    assert (status, error_of(data)) == (400, "unsupported architecture 'gpt2'")

    def fails_later(name, spec):
        yield {"status": "parsing GGUF"}
        raise RuntimeError("disk full")

    server.runtime.create_steps = fails_later
    status, _, data = call(server, "POST", "/api/create", body)
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert status == 200 and lines == [{"status": "parsing GGUF"}, {"error": "disk full"}]
    status, _, data = call(server, "POST", "/api/create", {**body, "stream": False})
    assert (status, error_of(data)) == (500, "disk full")


def test_create_whose_client_leaves_keeps_its_files_until_the_build_ends(server):
    digest = upload(server, b"GGUF-slow")
    gate, finished = threading.Event(), threading.Event()
    seen = {}

    def slow(name, spec):
        yield {"status": "parsing GGUF"}
        gate.wait(5)
        seen["exists"] = Path(spec.source).exists()
        yield {"status": "success"}
        seen["path"] = Path(spec.source)
        finished.set()

    server.runtime.create_steps = slow
    sock = raw_post(server, "/api/create", {"model": "x", "files": {"m.gguf": digest}})
    assert b"parsing GGUF" in read_until(sock, b"parsing GGUF")
    sock.close()
    time.sleep(0.1)
    gate.set()
    assert finished.wait(5)
    assert seen["exists"]
    deadline = time.monotonic() + 2
    while seen["path"].exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not seen["path"].exists()


# -- logging --------------------------------------------------------------------------------


def test_request_end_is_logged_once_per_request(server, client):
    with structlog.testing.capture_logs() as logs:
        list(client.generate("smol", "Hi", stream=True))
        client.generate("smol", "Hi", stream=False)
        client.list()
        with pytest.raises(ollama.ResponseError):
            client.show("nope")
        time.sleep(0.1)  # the stream's end is logged on the server thread after the last byte
    starts = [e for e in logs if e["event"] == "request.start"]
    ends = [e for e in logs if e["event"] == "request.end"]
    assert len(starts) == len(ends) == 4
    assert len({e["request_id"] for e in ends}) == 4
    streamed, collected, tags, missing = ends
    assert starts[0]["model"] == "smol" and starts[0]["path"] == "/api/generate"
    for end in (streamed, collected):
        assert end["status"] == 200 and end["done_reason"] == "stop"
        assert (end["prompt_eval_count"], end["eval_count"], end["total_ms"]) == (5, 2, 9.0)
    assert tags["status"] == 200 and "model" not in tags
    assert (missing["status"], missing["error"]) == (404, "model 'nope' not found")


def test_disconnect_is_logged(server):
    server.runtime.script = [Chunk(text="first"), threading.Event()]
    with structlog.testing.capture_logs() as logs:
        sock = raw_post(server, "/api/generate", {"model": "smol", "prompt": "Hi"})
        read_until(sock, b'"first"')
        sock.close()
        assert server.runtime.cancelled.wait(2)
        time.sleep(0.05)
    (end,) = [e for e in logs if e["event"] == "request.end"]
    assert end["error"] == "client disconnected"


# -- the server -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("127.0.0.1", 11435)),
        ("", ("127.0.0.1", 11435)),
        ("0.0.0.0", ("0.0.0.0", 11435)),
        ("example.com:8080", ("example.com", 8080)),
        (":11434", ("0.0.0.0", 11434)),
        ("http://127.0.0.1:11434", ("127.0.0.1", 11434)),
        ("http://localhost", ("localhost", 80)),
        ("https://localhost/some/path", ("localhost", 443)),
        ("[::1]:9000", ("::1", 9000)),
        ("::1", ("::1", 11435)),
        (' "127.0.0.1:1234" ', ("127.0.0.1", 1234)),
        ("127.0.0.1:11435", ("127.0.0.1", 11435)),
        (":8080", ("0.0.0.0", 8080)),
        ("localhost", ("localhost", 11435)),
        ("http://0.0.0.0", ("0.0.0.0", 80)),
        ("https://example.com", ("example.com", 443)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("http://:81", ("0.0.0.0", 81)),
        ("host:1234/path", ("host", 1234)),
    ],
)
def test_parse_host(value, expected):
    """Where the daemon binds (`mlxctl serve` checks the same address before it loads)."""
    assert parse_host(value).bind == expected


@pytest.mark.parametrize(
    "value",
    [
        "host:port",
        "host:70000",
        "ftp://host",
        "[::1",
        "host:",
        "localhost::11435",  # two colons are a bare IPv6 address only when they are one
        "host:1:2",
        "http://admin:hunter2@host:8080",
    ],
)
def test_parse_host_rejects(value):
    with pytest.raises(ValueError, match="MLXOLLAMA_HOST") as e:
        parse_host(value)
    assert "hunter2" not in str(e.value)  # an error names no credentials


SERVE_SCRIPT = """
import sys
from types import SimpleNamespace
from mlxollama.config import Config, parse_host
from mlxollama.http.server import serve

class Runtime:
    store = None
    def ps(self):
        return []
    def stop(self):
        print("runtime stopped", flush=True)

serve(Config.from_env({"MLXOLLAMA_HOST": sys.argv[1]}), Runtime())
print("serve returned", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(tmp_path, sig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVE_SCRIPT), f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/api/ps")
                assert orjson.loads(conn.getresponse().read()) == {"models": []}
                break
            except (ConnectionRefusedError, OSError):
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "runtime stopped" in out and "serve returned" in out


# -- the real runtime with SmolLM2 ----------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory, smollm2_store):
    """The actor Runtime and the app on waitress, on a copy of the SmolLM2 store; one
    generating slot (a stream that is not cancelled would hold up the next request) and one
    place in the queue."""
    import shutil

    from mlxollama.actors.runtime import Runtime

    root = tmp_path_factory.mktemp("http-live") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    config = Config.from_env(
        {"MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_NUM_PARALLEL": "1", "MLXOLLAMA_MAX_QUEUE": "1"}
    )
    runtime = Runtime(config).start()
    srv = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=16)
    threading.Thread(target=srv.run, daemon=True).start()
    try:
        yield SimpleNamespace(port=srv.effective_port, runtime=runtime)
    finally:
        shutdown(srv, runtime)


@pytest.fixture
def live_client(live) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{live.port}", timeout=120)


SHORT = {"num_predict": 6, "temperature": 0}


@pytest.mark.model
def test_live_generate_and_chat(live_client):
    parts = list(live_client.generate("smollm2", "Say hello.", options=SHORT, stream=True))
    final = parts[-1]
    assert final.done and final.done_reason in ("stop", "length")
    assert 0 < final.eval_count <= 6 and final.prompt_eval_count > 0
    assert "".join(p.response for p in parts).strip()
    answer = live_client.chat(
        "smollm2", messages=[{"role": "user", "content": "Say hello."}], options=SHORT
    )
    assert answer.message.content.strip() and answer.done_reason in ("stop", "length")
    assert answer.total_duration >= answer.eval_duration > 0


@pytest.mark.model
def test_live_disconnect_frees_the_only_slot(live, live_client):
    body = {"model": "smollm2", "prompt": "Count to a thousand.", "options": {"num_predict": 5000}}
    sock = raw_post(live, "/api/generate", body)
    assert b'"done":false' in read_until(sock, b'"done":false')
    sock.close()
    # With one slot, this answers only if the first stream was cancelled.
    answer = live_client.generate("smollm2", "Hi", options=SHORT)
    assert answer.done
    (running,) = live_client.ps().models
    assert running.model == "smollm2:latest" and running.context_length > 0
    # the official client ignores the extra field; the wire says the form held (CPU: f32)
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    conn.request("GET", "/api/ps")
    assert orjson.loads(conn.getresponse().read())["models"][0]["weights"] == "f32 (dense)"
    conn.close()


@pytest.mark.model
def test_live_unload_with_keep_alive_zero(live_client):
    live_client.generate("smollm2", "Hi", options=SHORT)
    assert [m.model for m in live_client.ps().models] == ["smollm2:latest"]
    assert live_client.generate("smollm2", "", keep_alive=0).done_reason == "unload"
    deadline = time.monotonic() + 30
    while live_client.ps().models and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_client.ps().models == []


@pytest.mark.model
def test_live_full_queue_is_503(live, live_client):
    body = {"model": "smollm2", "prompt": "Count to a thousand.", "options": {"num_predict": 5000}}
    generating = raw_post(live, "/api/generate", body)
    waiting = None
    try:
        assert b'"done":false' in read_until(generating, b'"done":false')
        waiting = raw_post(live, "/api/generate", body)
        deadline = time.monotonic() + 10
        while live.runtime.ps()[0].active < 2:
            assert time.monotonic() < deadline, "the second request was not queued"
            time.sleep(0.02)
        with pytest.raises(ollama.ResponseError) as e:
            live_client.generate("smollm2", "Hi", options=SHORT)
        assert (e.value.status_code, e.value.error) == (503, BUSY_MESSAGE)
    finally:
        generating.close()
        if waiting is not None:
            waiting.close()
    deadline = time.monotonic() + 10
    while live.runtime.ps()[0].active:  # both hang-ups cancel their sessions
        assert time.monotonic() < deadline, "the sessions were not cancelled"
        time.sleep(0.02)
    assert live_client.generate("smollm2", "Hi", options=SHORT).done


@pytest.mark.model
def test_live_bad_requests(live_client):
    with pytest.raises(ollama.ResponseError) as e:
        live_client.generate("smollm2", "Hi", options={"temperature": "hot"})
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        live_client.generate("nope", "Hi")
    assert (e.value.status_code, e.value.error) == (404, "model 'nope' not found")


@pytest.mark.model
def test_live_create_from_an_uploaded_gguf(live_client, smollm2_gguf):
    digest = live_client.create_blob(smollm2_gguf)
    progress = list(
        live_client.create(
            "smol-upload",
            files={smollm2_gguf.name: digest},
            parameters={"stop": ["<|im_end|>"]},
            system="You are terse.",
            stream=True,
        )
    )
    assert progress[-1].status == "success"
    assert "smol-upload:latest" in [m.model for m in live_client.list().models]
    shown = live_client.show("smol-upload")
    assert shown.details.family == "llama" and "You are terse." in shown.modelfile
    answer = live_client.chat(
        "smol-upload", messages=[{"role": "user", "content": "Hi"}], options=SHORT
    )
    assert answer.done
    assert live_client.delete("smol-upload").status == "success"
