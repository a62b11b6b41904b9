"""`client.Client` against a stand-in daemon: a small http.server app on 127.0.0.1:0 that
answers in Ollama's shapes and records every request."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlxollama import client as client_module
from mlxollama.client import Client, DaemonUnreachable, ResponseError, base_url
from mlxollama.errors import Busy, ModelNotFound
from mlxollama.recipes.buildspec import BuildSpec


class StandIn:
    """Routes `(method, path)` to a function of the request body that returns
    `(status, body)`: a dict (JSON), bytes, or a list of dicts (streamed as NDJSON)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.blobs: dict[str, bytes] = {}
        self.disconnected = threading.Event()
        self.routes = {
            ("HEAD", "/"): lambda body: (200, b"Ollama is running"),
            ("GET", "/api/version"): lambda body: (200, {"version": "9.9.9"}),
        }

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        self.requests.append(
            {"method": h.command, "path": h.path, "headers": dict(h.headers), "raw": raw}
        )
        if h.path.startswith("/api/blobs/"):
            status, body = self.blob(h.command, h.path.rsplit("/", 1)[1], raw)
        else:
            route = self.routes.get((h.command, h.path))
            if route is None:
                status, body = 404, b"404 page not found"
            else:
                status, body = route(json.loads(raw) if raw else None)
        self.reply(h, status, body)

    def blob(self, method: str, digest: str, raw: bytes):
        if method == "HEAD":
            return (200, b"") if digest in self.blobs else (404, b"")
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
        self.blobs[digest] = raw
        return 201, b""

    def reply(self, h: BaseHTTPRequestHandler, status: int, body) -> None:
        if isinstance(body, list):
            h.send_response(status)
            h.send_header("Content-Type", "application/x-ndjson")
            h.end_headers()
            try:
                for obj in body:
                    if obj == "pause":
                        time.sleep(0.05)
                        continue
                    h.wfile.write(json.dumps(obj).encode() + b"\n")
                    h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.disconnected.set()
            return
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h.send_response(status)
        h.send_header(
            "Content-Type", "application/json" if isinstance(body, dict) else "text/plain"
        )
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def bodies(self, path: str) -> list[dict]:
        return [json.loads(r["raw"]) for r in self.requests if r["path"] == path]


@contextlib.contextmanager
def stand_in():
    """A running StandIn; its `host` is `127.0.0.1:<port>`."""
    app = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            app.handle(self)

        do_GET = do_POST = do_DELETE = do_HEAD

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    app.host = f"127.0.0.1:{httpd.server_address[1]}"
    try:
        yield app
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server():
    with stand_in() as app:
        yield app


@pytest.fixture
def client(server):
    with Client(server.host) as c:
        yield c


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_line(text: str, done: bool = False) -> dict:
    line = {"model": "m", "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant"}}
    line["message"]["content"] = text
    line["done"] = done
    if done:
        line.update(done_reason="stop", eval_count=2, eval_duration=1000)
    return line


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11435"),
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        (":8080", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://0.0.0.0:11435"),
        ("example.com", "http://example.com:11435"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("http://box:1234", "http://box:1234"),
        ("http://box", "http://box:80"),
        ("https://box/ollama/", "https://box:443/ollama"),
        (" HTTP://box:5 ", "http://box:5"),
    ],
)
def test_base_url_reads_hosts_as_ollama_does(value, url):
    assert base_url(value) == url


def test_a_client_ignores_daemon_settings_it_does_not_use(monkeypatch):
    """`mlxctl list` must not fail on a bad MLXOLLAMA_NUM_PARALLEL: that is the daemon's."""
    monkeypatch.setenv("MLXOLLAMA_NUM_PARALLEL", "0")
    monkeypatch.setenv("MLXOLLAMA_MAX_MEMORY", "lots")
    monkeypatch.setenv("MLXOLLAMA_HOST", "127.0.0.1:7777")
    with Client() as client:
        assert client.host == "http://127.0.0.1:7777"
    assert base_url() == "http://127.0.0.1:7777"


def test_base_url_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", ":7777")
    assert base_url() == "http://127.0.0.1:7777"
    assert Client().host == "http://127.0.0.1:7777"
    with pytest.raises(ValueError, match="port"):
        base_url("host:99999")
    with pytest.raises(ValueError, match="host:port"):
        base_url("host:")


def test_heartbeat_and_version(client, server):
    assert client.heartbeat() is True
    assert server.requests[-1]["method"] == "HEAD" and server.requests[-1]["path"] == "/"
    assert client.version() == {"version": "9.9.9"}
    assert Client(f"127.0.0.1:{closed_port()}").heartbeat() is False


def test_unreachable_daemon_raises_a_connection_error():
    c = Client(f"127.0.0.1:{closed_port()}")
    with pytest.raises(DaemonUnreachable, match="could not reach the mlxctl daemon") as e:
        c.list()
    assert isinstance(e.value, ConnectionError)
    with pytest.raises(DaemonUnreachable):
        c.chat("m", [{"role": "user", "content": "hi"}], stream=True)


def test_list_show_ps_pass_ollama_bodies_through(client, server):
    tags = {"models": [{"name": "a:latest", "digest": "ab" * 32, "size": 1}]}
    server.routes[("GET", "/api/tags")] = lambda body: (200, tags)
    server.routes[("POST", "/api/show")] = lambda body: (200, {"echo": body})
    server.routes[("GET", "/api/ps")] = lambda body: (200, {"models": []})
    assert client.list() == tags
    assert client.show("a") == {"echo": {"model": "a"}}
    assert client.show("a", verbose=True) == {"echo": {"model": "a", "verbose": True}}
    assert client.ps() == {"models": []}
    post = next(r for r in server.requests if r["path"] == "/api/show")
    assert post["headers"]["Content-Type"] == "application/json"


def test_chat_streams_ndjson_and_folds_without_stream(client, server):
    lines = [chat_line("Hel"), chat_line("lo"), chat_line("", done=True)]
    server.routes[("POST", "/api/chat")] = lambda body: (
        (200, lines) if body["stream"] else (200, {**lines[-1], "message": {"content": "Hello"}})
    )
    messages = [{"role": "user", "content": "hi"}]
    parts = list(client.chat("m", messages, options={"temperature": 0}, stream=True))
    assert [p["message"]["content"] for p in parts] == ["Hel", "lo", ""]
    assert parts[-1]["done"] and parts[-1]["eval_count"] == 2
    whole = client.chat("m", messages, keep_alive="10m", format="json")
    assert whole["message"]["content"] == "Hello"
    sent = server.bodies("/api/chat")
    assert sent[0] == {
        "model": "m",
        "messages": messages,
        "options": {"temperature": 0},
        "stream": True,
    }
    assert sent[1]["stream"] is False and sent[1]["keep_alive"] == "10m"
    assert sent[1]["format"] == "json"


def test_empty_requests_load_and_unload_with_one_object(client, server):
    answer = {"model": "m", "response": "", "done": True, "done_reason": "load"}
    server.routes[("POST", "/api/generate")] = lambda body: (200, answer)
    server.routes[("POST", "/api/chat")] = lambda body: (200, {**answer, "message": {}})
    stopped = {"model": "m:latest", "status": "unloaded", "running": 0}
    server.routes[("POST", "/api/stop")] = lambda body: (200, stopped)
    assert client.load("m") == answer
    assert client.unload("m") == stopped
    assert client.load("m", keep_alive=-1) == answer
    assert [p["done_reason"] for p in client.chat("m", [], stream=True)] == ["load"]
    assert list(client.generate("m", stream=True)) == [answer]
    sent = server.bodies("/api/generate")
    assert sent[0] == {"model": "m", "prompt": "", "stream": False}
    assert server.bodies("/api/stop") == [{"model": "m"}]
    assert sent[1]["keep_alive"] == -1
    assert server.bodies("/api/chat") == [{"model": "m", "messages": [], "stream": False}]


def test_generate_sends_ollama_fields(client, server):
    lines = [{"response": "a", "done": False}, {"response": "", "done": True}]
    server.routes[("POST", "/api/generate")] = lambda body: (200, lines)
    parts = client.generate("m", "p", system="s", template="t", raw=True, stream=True)
    assert [p["response"] for p in parts] == ["a", ""]
    body = server.bodies("/api/generate")[0]
    assert body == {
        "model": "m",
        "prompt": "p",
        "system": "s",
        "template": "t",
        "raw": True,
        "stream": True,
    }


def test_errors_map_to_domain_errors(client, server):
    routes = server.routes
    routes[("POST", "/api/show")] = lambda body: (404, {"error": "model 'ghost' not found"})
    routes[("POST", "/api/chat")] = lambda body: (400, {"error": "invalid format: nope"})
    routes[("POST", "/api/generate")] = lambda body: (
        503,
        {"error": "server busy, please try again.  maximum pending requests exceeded"},
    )
    with pytest.raises(ModelNotFound, match=r"^model 'ghost' not found$") as e:
        client.show("ghost")
    assert e.value.status_code == 404 and e.value.name == "ghost"
    with pytest.raises(ResponseError, match="invalid format: nope") as e:
        client.chat("m", [{"role": "user", "content": "x"}], stream=True)
    assert e.value.status_code == 400 and not isinstance(e.value, ModelNotFound)
    with pytest.raises(Busy, match="server busy") as e:
        client.generate("m", "x")
    assert e.value.status_code == 503
    with pytest.raises(ModelNotFound, match="404 page not found"):
        client.copy("a", "b")  # no route: a plain-text 404


def test_an_error_line_in_a_stream_raises(client, server):
    lines = [chat_line("Hi"), {"error": "model runner crashed"}]
    server.routes[("POST", "/api/chat")] = lambda body: (200, lines)
    stream = client.chat("m", [{"role": "user", "content": "x"}], stream=True)
    assert next(stream)["message"]["content"] == "Hi"
    with pytest.raises(ResponseError, match="model runner crashed") as e:
        next(stream)
    assert e.value.status_code == 500
    lines[1] = {"error": "model 'm' not found"}
    with pytest.raises(ModelNotFound):
        list(client.chat("m", [{"role": "user", "content": "x"}], stream=True))


def test_closing_a_stream_drops_the_connection(client, server):
    lines = [chat_line("tick")]
    for _ in range(200):
        lines += ["pause", chat_line("tick")]
    server.routes[("POST", "/api/chat")] = lambda body: (200, lines)
    stream = client.chat("m", [{"role": "user", "content": "x"}], stream=True)
    assert next(stream)["message"]["content"] == "tick"
    stream.close()
    assert server.disconnected.wait(5), "the stand-in kept writing to an open connection"


def test_copy_and_delete(client, server):
    server.routes[("POST", "/api/copy")] = lambda body: (200, b"")
    server.routes[("DELETE", "/api/delete")] = lambda body: (200, b"")
    assert client.copy("a", "b") == {"status": "success"}
    assert client.delete("b") == {"status": "success"}
    assert server.bodies("/api/copy") == [{"source": "a", "destination": "b"}]
    assert server.bodies("/api/delete") == [{"model": "b"}]
    assert [r["method"] for r in server.requests] == ["POST", "DELETE"]


def create_route(server):
    progress = [{"status": "parsing GGUF"}, {"status": "writing manifest"}, {"status": "success"}]
    server.routes[("POST", "/api/create")] = lambda body: (200, progress)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_create_uploads_a_gguf_file_in_chunks(client, server, tmp_path, monkeypatch):
    monkeypatch.setattr(client_module, "CHUNK_SIZE", 1000)
    data = bytes(range(256)) * 20  # 5,120 bytes: six chunks
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(data)
    create_route(server)
    events = []
    spec = BuildSpec(source=str(gguf), parameters={"temperature": 0.0, "stop": ["<|x|>"]})
    spec.system, spec.quantize, spec.license = "Be brief.", "int8", ["MIT"]
    assert client.create("tiny", spec=spec, progress=events.append) == {"status": "success"}
    assert server.blobs == {digest(data): data}
    upload = next(r for r in server.requests if r["method"] == "POST" and "blobs" in r["path"])
    assert upload["headers"]["Content-Length"] == str(len(data))
    copying = [e for e in events if e["status"].startswith("copying file")]
    assert [e["completed"] for e in copying] == [1000, 2000, 3000, 4000, 5000, 5120]
    assert events[0] == {"status": "gathering model components"}
    assert [e["status"] for e in events[-3:]] == ["parsing GGUF", "writing manifest", "success"]
    assert server.bodies("/api/create") == [
        {
            "model": "tiny",
            "files": {"tiny.gguf": digest(data)},
            "system": "Be brief.",
            "quantize": "int8",
            "parameters": {"temperature": 0.0, "stop": ["<|x|>"]},
            "license": ["MIT"],
            "stream": True,
        }
    ]


def test_create_sends_only_missing_blobs_of_a_folder(client, server, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": b"weights",
        "tokenizer.json": b"{}",
        "merges.txt": b"a b",
        "README.md": b"not sent",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    server.blobs[digest(b"weights")] = b"weights"  # the daemon has the weights already
    create_route(server)
    client.create("hf", str(folder))
    posted = [r["path"] for r in server.requests if r["method"] == "POST" and "blobs" in r["path"]]
    assert sorted(posted) == sorted(
        f"/api/blobs/{digest(files[n])}" for n in ("config.json", "tokenizer.json", "merges.txt")
    )
    sent = server.bodies("/api/create")[0]
    assert sent["files"] == {n: digest(d) for n, d in files.items() if n != "README.md"}
    assert "from" not in sent


def test_create_from_a_model_name(client, server):
    create_route(server)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    client.create(
        "mine", "smollm2", template="{{ .Prompt }}", parameters={"top_k": "5"}, messages=messages
    )
    assert server.bodies("/api/create") == [
        {
            "model": "mine",
            "from": "smollm2",
            "template": "{{ .Prompt }}",
            "messages": messages,
            "parameters": {"top_k": 5},
            "stream": True,
        }
    ]
    assert not [r for r in server.requests if "blobs" in r["path"]]


def test_create_refuses_what_the_json_form_cannot_carry(client, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        client.create("x", "./missing.gguf")
    with pytest.raises(ValueError, match="from_"):
        client.create("x")
    spec = BuildSpec(source=str(tmp_path), tokenizer=str(tmp_path))
    with pytest.raises(Exception, match="--embedded"):
        client.create("x", spec=spec)


def test_create_error_before_streaming(client, server):
    server.routes[("POST", "/api/create")] = lambda body: (400, {"error": "invalid model name"})
    with pytest.raises(ResponseError, match="invalid model name") as e:
        client.create("../x", "smollm2")
    assert e.value.status_code == 400


def test_a_slow_daemon_times_out_with_a_clear_error(server):
    def slow(body):
        time.sleep(0.5)
        return 200, {"models": []}

    server.routes[("GET", "/api/tags")] = slow
    with pytest.raises(DaemonUnreachable, match="did not answer in time"):
        Client(server.host, timeout=0.1).list()
