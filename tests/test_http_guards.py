"""Who may talk to the daemon (issue 9, defects 3 and 12), through a real waitress server:
the Host allow-list of a loopback bind (DNS rebinding), CORS and foreign origins (CSRF),
the API key (MLXOLLAMA_API_KEY) on every route, and `serve` refusing a network bind
without one."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import ollama
import openai
import orjson
import pykka
import pytest

from mlxollama.client import Client
from mlxollama.config import Config
from mlxollama.http.server import shutdown
from tests.daemons import Daemon, actor_classes, start_daemon

KEY = "k3y-for-the-guard-tests-7f3a"
MLXCTL = Path(sys.executable).with_name("mlxctl")


@pytest.fixture
def daemon(tmp_path, smollm2_store):
    """`daemon(**settings)`: a daemon on a private copy of the SmolLM2 store."""
    started: list[Daemon] = []

    def start(**env) -> Daemon:
        assert not pykka.ActorRegistry.get_all(), actor_classes()
        root = tmp_path / f"store{len(started)}"
        shutil.copytree(smollm2_store, root, symlinks=True)
        started.append(start_daemon(root, **env))
        return started[-1]

    yield start
    for d in started:
        shutdown(d.srv, d.runtime)
    assert not pykka.ActorRegistry.get_all()


def request(d: Daemon, method: str, path: str, body=None, headers=None):
    """(status, headers as a lower-case dict, body bytes)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
    if isinstance(body, (dict, list)):
        body = orjson.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def raw(d: Daemon, text: str) -> bytes:
    """A request written by hand (to send no Host at all); the whole answer."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as sock:
        sock.sendall(text.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def tags(d: Daemon) -> list[str]:
    return sorted(m.model for m in ollama.Client(host=f"http://127.0.0.1:{d.port}").list().models)


# -- Host (DNS rebinding) -------------------------------------------------------------------


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:11435",
    "localhost.evil.example",
    "10.0.0.1",
    "[::2]",
    "127.0.0.1:http",
    "[::1",
]
LOOPBACK_HOSTS = [
    "localhost",
    "LOCALHOST:11435",
    "127.0.0.1",
    "127.0.0.1:80",
    "[::1]:11435",
    "::1",
    "app.localhost:3000",
    "127.0.0.2",
    "localhost.",
]


@pytest.mark.model
def test_a_foreign_host_is_refused_on_a_loopback_bind(daemon):
    d = daemon()
    for host in FOREIGN_HOSTS:
        status, _, body = request(d, "GET", "/api/tags", headers={"Host": host})
        assert status == 403, host
        assert "host" in orjson.loads(body)["error"]
        status, _, body = request(d, "GET", "/v1/models", headers={"Host": host})
        assert status == 403, host
        assert orjson.loads(body)["error"]["type"]  # OpenAI's error object under /v1
        copy = {"source": "smollm2", "destination": "rebound"}
        status, _, _ = request(d, "POST", "/api/copy", copy, headers={"Host": host})
        assert status == 403, host
    assert tags(d) == ["smollm2:latest"]


@pytest.mark.model
def test_loopback_hosts_and_a_request_without_host_pass(daemon):
    d = daemon()
    for host in LOOPBACK_HOSTS:
        assert request(d, "GET", "/api/tags", headers={"Host": host})[0] == 200, host
    answer = raw(d, "GET /api/version HTTP/1.0\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"200", answer


@pytest.mark.model
def test_a_network_bind_does_not_restrict_the_host(daemon):
    d = daemon(host="0.0.0.0:0", api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    status, _, _ = request(d, "GET", "/api/tags", headers={"Host": "gpu-box.lan:11435", **auth})
    assert status == 200


@pytest.mark.model
def test_a_trusted_network_bind_without_a_key_refuses_rebindable_hosts(daemon):
    """Without a key a rebound page could read GET answers (no Origin on same-origin GETs):
    only names public DNS cannot hand an attacker pass."""
    d = daemon(host="0.0.0.0:0", trust_network="1")
    for host in ("192.168.1.20:11435", "[fe80::1]", "gpu-box", "gpu-box.lan", "mac.local:80"):
        assert request(d, "GET", "/api/tags", headers={"Host": host})[0] == 200, host
    for host in ("evil.example", "gpu-box.example.com:11435", "localhost.evil.example"):
        status, _, body = request(d, "GET", "/api/tags", headers={"Host": host})
        assert status == 403, host  # before the fix: 200, the model list to any page
        assert "MLXOLLAMA_API_KEY" in orjson.loads(body)["error"]


# -- Origin (CORS, CSRF) --------------------------------------------------------------------


@pytest.mark.model
def test_a_foreign_origin_cannot_copy_a_model_with_a_text_plain_post(daemon):
    """The CSRF of the probe: a page's "simple" cross-origin POST planted a tag."""
    d = daemon()
    status, headers, body = request(
        d,
        "POST",
        "/api/copy",
        orjson.dumps({"source": "smollm2", "destination": "planted"}),
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert status == 403, body
    assert "origin" in orjson.loads(body)["error"]
    assert "access-control-allow-origin" not in headers
    assert tags(d) == ["smollm2:latest"]


FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io",
    "https://evil.example/?http://localhost",
]


@pytest.mark.model
def test_every_request_from_a_foreign_origin_is_refused(daemon):
    d = daemon()
    for origin in FOREIGN_ORIGINS:
        for method, path, body in [
            ("DELETE", "/api/delete", {"model": "smollm2"}),
            ("POST", "/api/generate", {"model": "smollm2", "prompt": "hi"}),
            ("PUT", "/api/copy", {"source": "smollm2", "destination": "put"}),
            ("GET", "/api/tags", None),
        ]:
            status, headers, data = request(d, method, path, body, headers={"Origin": origin})
            assert status == 403, (origin, method, data)
            assert "access-control-allow-origin" not in headers
    assert tags(d) == ["smollm2:latest"]


@pytest.mark.model
def test_a_foreign_preflight_is_refused(daemon):
    d = daemon()
    status, headers, _ = request(
        d,
        "OPTIONS",
        "/api/chat",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403
    assert "access-control-allow-origin" not in headers


ALLOWED_ORIGINS = [
    "http://localhost",
    "http://localhost:3000",
    "https://127.0.0.1:8443",
    "http://0.0.0.0:5173",
    "app://obsidian.md",
    "file://",
    "tauri://localhost",
    "vscode-webview://1abc2def",
    "vscode-file://vscode-app",
]


@pytest.mark.model
def test_an_allowed_origins_preflight_gets_the_cors_headers(daemon):
    d = daemon()
    for n, origin in enumerate(ALLOWED_ORIGINS):
        status, headers, _ = request(
            d,
            "OPTIONS",
            "/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,"
                "x-stainless-retry-count,anthropic-version",
            },
        )
        assert status == 204, origin
        assert headers["access-control-allow-origin"] == origin
        assert "Origin" in headers["vary"]
        assert "POST" in headers["access-control-allow-methods"]
        allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
        assert {
            "authorization",
            "content-type",
            "x-stainless-os",
            "x-stainless-retry-count",
            "anthropic-version",
            "x-api-key",
        } <= allowed
        assert int(headers["access-control-max-age"]) > 0
        # and the request itself is answered, with the origin echoed
        status, headers, _ = request(
            d,
            "POST",
            "/api/copy",
            {"source": "smollm2", "destination": f"copy{n}"},
            headers={"Origin": origin, "Content-Type": "application/json"},
        )
        assert status == 200, origin
        assert headers["access-control-allow-origin"] == origin
        assert f"copy{n}:latest" in tags(d)


@pytest.mark.model
def test_mlxollama_origins_adds_origins(daemon):
    d = daemon(origins="https://app.example, https://*.corp.example")
    for origin in ("https://app.example", "https://chat.corp.example", "http://localhost:8080"):
        status, headers, _ = request(d, "GET", "/api/tags", headers={"Origin": origin})
        assert status == 200, origin
        assert headers["access-control-allow-origin"] == origin
    for origin in ("https://evil.example", "http://app.example", "https://app.example.evil"):
        status, _, _ = request(d, "GET", "/api/tags", headers={"Origin": origin})
        assert status == 403, origin


@pytest.mark.model
def test_a_star_in_mlxollama_origins_allows_every_origin(daemon):
    d = daemon(origins="*")
    status, headers, _ = request(d, "GET", "/api/tags", headers={"Origin": "https://any.example"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://any.example"


@pytest.mark.model
def test_requests_without_an_origin_are_unaffected(daemon):
    d = daemon()
    status, headers, _ = request(
        d, "POST", "/api/copy", {"source": "smollm2", "destination": "cli-copy"}
    )
    assert status == 200
    assert "access-control-allow-origin" not in headers
    assert "cli-copy:latest" in tags(d)


# -- the API key ----------------------------------------------------------------------------


@pytest.mark.model
def test_without_the_api_key_every_route_answers_401(daemon):
    d = daemon(api_key=KEY)
    for method, path, body in [
        ("GET", "/api/tags", None),
        ("GET", "/api/version", None),
        ("POST", "/api/copy", {"source": "smollm2", "destination": "nokey"}),
        ("POST", "/api/chat", {"model": "smollm2", "messages": []}),
        ("GET", "/api/nonexistent", None),
    ]:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"x-api-key": KEY[:-1]},
            {"Authorization": KEY},
            {"Authorization": f"Basic {KEY}"},
        ):
            status, answer, data = request(d, method, path, body, headers)
            assert status == 401, (method, path, headers)
            assert "MLXOLLAMA_API_KEY" in orjson.loads(data)["error"]
            assert answer["www-authenticate"].startswith("Bearer")
            assert KEY.encode() not in data
    status, _, data = request(d, "GET", "/v1/models")
    assert status == 401
    assert orjson.loads(data)["error"]["message"]
    assert tags_with_key(d) == ["smollm2:latest"]


def tags_with_key(d: Daemon) -> list[str]:
    client = ollama.Client(host=f"http://127.0.0.1:{d.port}", headers={"x-api-key": KEY})
    return sorted(m.model for m in client.list().models)


@pytest.mark.model
def test_the_api_key_opens_every_route_as_bearer_or_x_api_key(daemon, monkeypatch):
    d = daemon(api_key=KEY)
    for headers in (
        {"Authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {KEY}"},
        {"x-api-key": KEY},
    ):
        assert request(d, "GET", "/api/tags", headers=headers)[0] == 200
        assert request(d, "GET", "/v1/models", headers=headers)[0] == 200
    # a health check needs no key (it says only that the daemon runs)
    assert request(d, "HEAD", "/")[0] == 200
    assert request(d, "GET", "/")[0] == 200
    # the official clients, each with its own way of sending a key
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    official = ollama.Client(host=f"http://127.0.0.1:{d.port}")
    official.copy("smollm2", "via-ollama")
    assert "via-ollama:latest" in [m.model for m in official.list().models]
    v1 = openai.OpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key=KEY, max_retries=0)
    assert "smollm2:latest" in [m.id for m in v1.models.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{d.port}/v1", api_key="ollama", max_retries=0
        ).models.list()
    # mlxollama's own client sends MLXOLLAMA_API_KEY
    monkeypatch.setenv("MLXOLLAMA_API_KEY", KEY)
    with Client(host=f"127.0.0.1:{d.port}") as ours:
        assert ours.heartbeat()
        assert "smollm2:latest" in [m["model"] for m in ours.list()["models"]]
    assert KEY not in d.log_path.read_text()


@pytest.mark.model
def test_an_allowed_origins_preflight_needs_no_key(daemon):
    """Browsers send a preflight without credentials; the request that follows carries them."""
    d = daemon(api_key=KEY)
    preflight = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    status, headers, _ = request(d, "OPTIONS", "/api/chat", headers=preflight)
    assert status == 204
    status, headers, _ = request(d, "GET", "/api/tags", headers={"Origin": preflight["Origin"]})
    assert status == 401
    assert headers["access-control-allow-origin"] == preflight["Origin"]  # readable by the page


# -- serve(): what it binds, and what it says -----------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "", "gpu-box.lan"])
def test_a_network_bind_needs_a_key_or_a_trusted_network(host):
    from mlxollama.http import guards

    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    config = Config.from_env({"MLXOLLAMA_HOST": bind})
    with pytest.raises(ValueError, match="MLXOLLAMA_API_KEY") as e:
        guards.check_exposure(config)
    assert "MLXOLLAMA_TRUST_NETWORK" in str(e.value)
    assert "\n" not in str(e.value)
    keyed = Config.from_env({"MLXOLLAMA_HOST": bind, "MLXOLLAMA_API_KEY": KEY})
    guards.check_exposure(keyed)
    trusted = Config.from_env({"MLXOLLAMA_HOST": bind, "MLXOLLAMA_TRUST_NETWORK": "1"})
    guards.check_exposure(trusted)


@pytest.mark.parametrize("host", ["127.0.0.1:0", "localhost:0", "[::1]:0", "127.0.0.5:0"])
def test_a_loopback_bind_needs_no_key(host):
    from mlxollama.http import guards

    guards.check_exposure(Config.from_env({"MLXOLLAMA_HOST": host}))


def test_the_api_key_is_not_in_the_configs_repr():
    config = Config.from_env({"MLXOLLAMA_API_KEY": KEY})
    assert config.api_key == KEY
    assert KEY not in repr(config)


def serve_env(tmp_path, **settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLXOLLAMA_", "OLLAMA_"))}
    env["MLXOLLAMA_MODELS"] = str(tmp_path / "store")
    env.update({f"MLXOLLAMA_{k.upper()}": v for k, v in settings.items()})
    return env


def test_serve_refuses_a_network_bind_without_an_api_key(tmp_path):
    done = subprocess.run(
        [MLXCTL, "serve"],
        env=serve_env(tmp_path, host="0.0.0.0:0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "0.0.0.0" in errors[0] and "MLXOLLAMA_API_KEY" in errors[0]
    assert "server.listening" not in done.stderr


def test_serve_says_what_it_exposes_and_never_the_key(tmp_path):
    proc = subprocess.Popen(
        [MLXCTL, "serve"],
        env=serve_env(tmp_path, host="0.0.0.0:0", api_key=KEY, origins="https://app.example"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "server.listening" in line:
                break
        else:
            pytest.fail("".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1]
    listening = lines[-1]
    assert "0.0.0.0:" in listening
    assert "api key" in listening.lower()
    assert "https://app.example" in listening
    assert KEY not in "".join(lines) + rest
    assert KEY not in (tmp_path / "store" / "logs" / "daemon.log").read_text()


# -- refused on the headers: a body nobody may send is never read ---------------------------


def head_only(d: Daemon, head: str) -> tuple[bytes, float]:
    """Send request headers announcing a huge body, and none of it; the answer and the
    seconds it took (the server must answer on the headers alone)."""
    import time

    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as sock:
        t0 = time.monotonic()
        sock.sendall(head.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - t0


@pytest.mark.model
def test_uploads_without_the_key_or_from_a_foreign_origin_are_refused_before_the_body(daemon):
    """Blob uploads have no body limit (model files); without this, anyone who can reach the
    port could make the daemon spool terabytes before the guards saw the request."""
    d = daemon(api_key=KEY)
    digest = "sha256:" + "ab" * 32
    huge = 100 * 2**30  # 100 GiB announced (under the 1 TiB blob cap), nothing sent
    answer, seconds = head_only(
        d,
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {huge}\r\nExpect: 100-continue\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"100 Continue" not in answer and b"www-authenticate: bearer" in head.lower()
    assert "MLXOLLAMA_API_KEY" in orjson.loads(body)["error"]
    assert seconds < 10, seconds
    temp = [p for p in (d.root / "blobs").rglob("*") if p.is_file() and "tmp" in p.name]
    assert not temp, temp

    answer, _ = head_only(
        d,
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {huge}\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    # a JSON body over the limit from a foreign origin: refused for the origin, not the size
    answer, _ = head_only(
        d,
        "POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {huge}\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 403") and b"origin" in answer, answer[:300]


@pytest.mark.model
def test_the_cli_probe_sends_no_key_to_whatever_holds_the_port(daemon, monkeypatch):
    """`mlxctl` asks the port what it is before it talks: a program that is not the daemon
    never sees MLXOLLAMA_API_KEY, and a keyed daemon is still found."""
    from mlxollama.cli import connect

    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        conn, _ = listener.accept()
        with conn:
            seen.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    monkeypatch.setenv("MLXOLLAMA_API_KEY", KEY)
    found = connect.occupant(f"127.0.0.1:{listener.getsockname()[1]}")
    thread.join(10)
    listener.close()
    assert found.daemon is None and "not mlxollama" in found.what
    assert seen and KEY.encode() not in seen[0]  # before the fix: "Bearer <key>" in it
    d = daemon(api_key=KEY)
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{d.port}")
    client = connect.connect()
    assert connect.is_daemon(client) and client.list()["models"]
    client.close()
