"""A real daemon in the test process (waitress on the real actor Runtime), shared by the
end-to-end suites (test_daemon, test_openai, test_embed)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import ollama
import orjson
import pykka

from mlxollama import log
from mlxollama.actors.messages import Stats
from mlxollama.actors.runtime import Runtime
from mlxollama.config import Config
from mlxollama.http.app import create_app
from mlxollama.http.server import make_server, thread_count


def wait_until(check, timeout: float, interval: float = 0.01) -> bool:
    """Poll `check` until it is true or `timeout` seconds have passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


class Daemon(SimpleNamespace):
    """A started daemon in this process: `runtime`, `config`, `root`, `port`, `log_path`."""

    def client(self) -> ollama.Client:
        return ollama.Client(host=f"http://127.0.0.1:{self.port}", timeout=120)

    def call(self, method: str, path: str, body=None, headers=None):
        """One request with http.client: (status, X-Request-Id, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        if isinstance(body, (dict, list)):
            body = orjson.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp.getheader("X-Request-Id"), data

    def active(self) -> int:
        """Sessions admitted and not finished, as the governor counts them."""
        return sum(m.active for m in self.runtime.ps())

    def model_stats(self) -> dict[str, dict]:
        """Each loaded ModelActor's own counts: {"active": ..., "waiting": ...}."""
        loaded = self.runtime.governor.proxy().loaded.get(timeout=10)
        return {name: e.ref.ask(Stats(), timeout=10) for name, e in dict(loaded).items()}

    def events(self) -> list[dict]:
        """Every line of the JSONL log, parsed (a line that does not parse fails the test)."""
        return [orjson.loads(line) for line in self.log_path.read_bytes().splitlines()]


def start_daemon(root: Path, pull=None, push=None, threads: int | None = None, **env) -> Daemon:
    """A daemon on the store at `root`; `env` are settings without the prefix
    (`num_parallel=8`); `pull`/`push` replace the registry functions (fakes); `threads`:
    waitress's worker threads (default: what `mlxctl serve` starts)."""
    settings = {"MLXOLLAMA_MODELS": str(root)}
    settings.update({f"MLXOLLAMA_{k.upper()}": str(v) for k, v in env.items()})
    config = Config.from_env(settings)
    log.configure(root / "logs", console=False)
    runtime = Runtime(config, pull=pull, push=push).start()
    srv = make_server(
        create_app(runtime, config), "127.0.0.1", 0, threads=threads or thread_count(config)
    )
    threading.Thread(target=srv.run, name="waitress", daemon=True).start()
    return Daemon(
        runtime=runtime,
        config=config,
        srv=srv,
        root=root,
        port=srv.effective_port,
        log_path=root / "logs" / "daemon.log",
    )


def actor_classes() -> list[str]:
    return sorted(ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all())


def no_sessions() -> bool:
    return "SessionActor" not in actor_classes()


def raw_post(port: int, path: str, body: dict, headers: str = "") -> socket.socket:
    """A POST on a raw socket, so that the test reads at its own pace and hangs up at will.
    `headers`: extra header lines, each ending in CRLF."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def answer(sock: socket.socket) -> tuple[int, str, dict]:
    """Read one HTTP response from a raw socket: (status, content type, JSON body)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, resp.getheader("Content-Type"), orjson.loads(resp.read())
