"""What the daemon's logs may hold: never a registry secret, and no traceback for a refusal.

The first half runs `mlxserve` as a user would (console on, JSONL file in `<store>/logs`)
with registry credentials in its environment (a right password, a wrong one, a token) and
makes pulls and pushes fail every way they can against a real registry with Basic auth
(tests/registry_server.py): refused, missing, unreachable, a registry answering 500. Then the
secrets appear in neither the file nor stderr, and the file is private (0600 in a 0700
folder). The second half checks that an expected 503 (the daemon's or one model's queue full) writes
one `queue.reject` line and no traceback, and nothing from Pykka.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import structlog

from mlxollama import log
from tests import registry_server
from tests.daemons import raw_post, start_daemon, wait_until
from tests.test_http_transfer import add_model

auth_registry = registry_server.auth_registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=orjson.dumps(body) if body is not None else None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def serve(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """`mlxserve` on the store at `root`, its stderr to `root/stderr.txt`; waits until it
    answers."""
    port = free_port()
    full = {
        **os.environ,
        "MLXOLLAMA_MODELS": str(root),
        "MLXOLLAMA_HOST": f"127.0.0.1:{port}",
        **env,
    }
    mlxserve = Path(sys.executable).parent / "mlxserve"
    with open(root / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            [str(mlxserve)], env=full, stdout=err, stderr=subprocess.STDOUT, cwd=root
        )

    def up() -> bool:
        try:
            return call(port, "GET", "/api/version")[0] == 200
        except OSError:
            return proc.poll() is not None

    assert wait_until(up, 60, 0.1) and proc.poll() is None, (root / "stderr.txt").read_text()
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


CREDENTIALS = ["right-password", "wrong-password", "token"]


@pytest.mark.parametrize("kind", CREDENTIALS)
def test_failing_transfers_leave_no_secret_in_the_logs(kind, auth_registry, tmp_path):
    if kind == "right-password":
        username, password, token = auth_registry.username, auth_registry.password, None
    elif kind == "wrong-password":
        username, password, token = "docker", "wrong-" + secrets.token_hex(12), None
    else:
        username, password, token = None, None, "tok-" + secrets.token_hex(16)
    env = {}
    if username:
        env["MLXOLLAMA_REGISTRY_USERNAME"] = username
        env["MLXOLLAMA_REGISTRY_PASSWORD"] = password
    else:
        env["MLXOLLAMA_REGISTRY_TOKEN"] = token
    secret = password or token
    forms = {secret, base64.b64encode(f"{username}:{password}".encode()).decode()}

    proxy = registry_server.Proxy(auth_registry.address)
    root = tmp_path / "store"
    root.mkdir()
    pushed = proxy.name(f"team/{kind}:v1")
    from mlxollama.store.store import Store

    add_model(Store(root), pushed, seed=kind)
    proc, port = serve(root, env)
    try:
        proxy.fail_with(500, path="/manifests/v1", method="PUT")  # the push's last step
        closed = free_port()
        attempts = [
            ("/api/pull", proxy.name("team/missing:v1"), {401, 404}),
            ("/api/push", pushed, {401, 502}),
            ("/api/pull", f"127.0.0.1:{closed}/team/m:v1", {502}),
            ("/api/push", f"127.0.0.1:{closed}/team/{kind}:v1", {404}),  # not stored
        ]
        for path, name, statuses in attempts:
            for stream in (False, True):
                status, data = call(
                    port, "POST", path, {"model": name, "insecure": True, "stream": stream}
                )
                if stream:
                    assert b'"error"' in data, data
                else:
                    assert status in statuses, (path, name, status, data)
                assert not any(f in data.decode() for f in forms)
        # an unexpected failure too: a pull whose manifest GET is answered 500 every time
        proxy.fail_with(500, path="/manifests/", method="GET")
        status, data = call(
            port, "POST", "/api/pull", {"model": pushed, "insecure": True, "stream": False}
        )
        assert status in (401, 502), data
    finally:
        stop(proc)
        proxy.stop()

    text = (root / "logs" / "daemon.log").read_text()
    console = (root / "stderr.txt").read_text()
    assert "pull.end" in text and "push.end" in text and "pull.end" in console
    for form in forms:
        assert form not in text, f"{form!r} in daemon.log"
        assert form not in console, f"{form!r} on stderr"
    assert "password='" not in text + console  # a Credentials repr
    assert stat.S_IMODE((root / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "logs" / "daemon.log").stat().st_mode) == 0o600


def test_no_locals_and_secret_keys_are_redacted(tmp_path, capfd):
    """Any traceback is rendered without locals, and a value under a secret-looking key is
    replaced wherever it sits in an event."""
    log.configure(tmp_path / "logs", console=True)
    logger = structlog.get_logger("mlxollama.test")

    def fails(password: str) -> None:
        local_secret = password * 2  # noqa: F841  (a local that a show_locals would print)
        raise RuntimeError("kaboom")

    secret = "-".join(("hunter2", "local"))  # the source lines a traceback shows hide it
    try:
        fails(secret)
    except RuntimeError:
        logger.error("boom", exc_info=True)
    logger.info(
        "event",
        password="hunter2-pw",
        nested={"Authorization": "Basic aHVudGVy"},
        api_key="hunter2-key",
        items=[{"token": "hunter2-tok"}],
    )
    logging.getLogger("some.library").warning("with %s", "args", extra={"token": "hunter2-x"})
    log.configure(None, console=False)
    text = (tmp_path / "logs" / "daemon.log").read_text()
    err = capfd.readouterr().err
    assert "kaboom" in text and "kaboom" in err
    for leaked in ("hunter2-local", "hunter2-pw", "aHVudGVy", "hunter2-key", "hunter2-tok"):
        assert leaked not in text, leaked
        assert leaked not in err, leaked
    lines = [orjson.loads(line) for line in text.splitlines()]
    event = next(e for e in lines if e["event"] == "event")
    assert event["password"] == "[redacted]"
    assert event["nested"]["Authorization"] == "[redacted]"


def test_scrub_keeps_shapes_and_finds_secrets_in_text():
    from collections import namedtuple

    Pair = namedtuple("Pair", "user password")
    out = log.scrub({"pair": Pair("ann", "https://ann:hunter2@host"), "n": (1, 2)})
    assert out["pair"] == Pair("ann", "https://[redacted]@host")  # before: TypeError
    assert out["n"] == (1, 2)
    for text, leaked in (
        ("GET https://ann:p@ss@registry.example/v2/", "ss@"),  # "@" in the password
        ("retry with api_key=sk-hunter2&x=1", "hunter2"),
        ("apikey=hunter2 failed", "hunter2"),
        ("client_secret=hunter2", "hunter2"),
    ):
        assert leaked not in log.scrub(text), text


def test_the_log_rotates_and_rotated_files_stay_private(tmp_path):
    log.configure(tmp_path / "logs", console=False, max_bytes=2000, backups=2)
    logger = structlog.get_logger("mlxollama.test")
    for i in range(200):
        logger.info("filler", i=i, pad="x" * 40)
    log.configure(None, console=False)
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    for name in files:
        path = tmp_path / "logs" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert path.stat().st_size <= 2000 + 300  # rotated at the first line past the cap


def test_the_credentials_repr_hides_secrets():
    from mlxollama.registry import Credentials

    c = Credentials(username="u", password="hunter2", token="t0ken", host="r.example")
    assert "hunter2" not in repr(c) and "t0ken" not in repr(c) and "hunter2" not in str(c)
    assert "u" in repr(c) and "r.example" in repr(c)


# -- a refusal is one line ------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("full", ["the daemon", "the model"])
def test_a_busy_503_logs_one_line_without_a_traceback(full, smollm2_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    # the daemon: 1 model x 1 slot + 1 queued is its whole capacity; the model: the daemon
    # would take 2 more (2 models), but the model's batch and queue hold only 2
    loaded = 1 if full == "the daemon" else 2
    d = start_daemon(root, num_parallel=1, max_queue=1, max_loaded_models=loaded)
    body = {"model": "smollm2", "prompt": "Count: 1, 2, 3,", "options": {"num_predict": 4000}}
    holders = []
    try:
        holders.append(raw_post(d.port, "/api/generate", body))
        assert wait_until(lambda: d.active() == 1, 120)
        holders.append(raw_post(d.port, "/api/generate", body))
        assert wait_until(lambda: d.active() == 2, 60)
        status, request_id, data = d.call("POST", "/api/generate", {**body, "stream": False})
        assert status == 503, data
        assert orjson.loads(data)["error"].startswith("server busy")
        time.sleep(0.2)  # let every thread's line reach the file
        events = d.events()
        mine = [e for e in events if e.get("request_id") == request_id]
        # answered as it was read (http/admission.py): no handler ran, one line says it all
        assert [e["event"] for e in mine] == ["queue.reject"], mine
        assert {k: mine[0][k] for k in ("method", "path", "model", "status")} == {
            "method": "POST",
            "path": "/api/generate",
            "model": "smollm2",
            "status": 503,
        }
        assert not [e for e in events if "exception" in e], "a traceback was logged"
        assert not [e for e in events if e.get("logger") == "pykka"]
    finally:
        for sock in holders:
            sock.close()
        assert wait_until(lambda: d.active() == 0, 60)
        from mlxollama.http.server import shutdown

        shutdown(d.srv, d.runtime)


def test_in_the_background_a_stalled_stream_never_blocks_a_log_call(tmp_path):
    """Before: each caller wrote its own line under the handlers' locks, so a console that
    does not drain (a full pipe) blocked every thread that logged, the I/O thread too."""
    import threading

    read_end, write_end = os.pipe()
    stalled = os.fdopen(write_end, "w")
    saved = sys.stderr
    sys.stderr = stalled  # the console handler binds to it
    try:
        log.configure(tmp_path / "logs", console=True, background=True)
    finally:
        sys.stderr = saved
    logger = structlog.get_logger("mlxollama.test")
    done = threading.Event()

    def many() -> None:
        for i in range(3000):  # far more than a pipe's 64 KiB
            logger.info("line", i=i, pad="x" * 100)
        done.set()

    threading.Thread(target=many, daemon=True).start()
    assert done.wait(10), "a log call blocked on the stalled console"
    # now let the writer go on: drain the pipe until it is closed
    threading.Thread(
        target=lambda: [None for _ in iter(lambda: os.read(read_end, 1 << 20), b"")], daemon=True
    ).start()
    log.configure(None, console=False)  # writes what is queued, then stops the writer
    stalled.close()
    lines = (tmp_path / "logs" / "daemon.log").read_text().splitlines()
    assert len(lines) == 3000 and '"i":2999' in lines[-1]


def test_a_background_writer_that_stops_closes_its_files(tmp_path):
    """Before: `stop()` ended the writer thread but left its file handler open (it is not on
    the root logger in background mode, so configure's cleanup never saw it)."""
    log.configure(tmp_path / "a", console=False, background=True)
    (first,) = log._writer.handlers
    structlog.get_logger("mlxollama.test").info("before")
    log.configure(tmp_path / "b", console=False, background=True)
    assert first.stream is None, "the first writer's daemon.log is still open"
    assert b'"event":"before"' in (tmp_path / "a" / "daemon.log").read_bytes()
    log.stop()
