"""The waitress layer under hostile or broken clients (issue 9, defects 5, 7 and part of 13):
slow headers and bodies are cut off, one address cannot hold every connection, bodies over
the JSON limit are refused before they are read, and protocol errors answer in JSON.

A real daemon (waitress on the real actor Runtime, empty store) with short deadlines."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
import time
from types import SimpleNamespace

import orjson
import pytest

from mlxollama import log
from mlxollama.actors.runtime import Runtime
from mlxollama.config import Config
from mlxollama.http.app import create_app
from mlxollama.http.channel import Limits
from mlxollama.http.server import make_server, shutdown
from tests.daemons import answer

LIMIT = 64 * 1024  # MLXOLLAMA_MAX_BODY in these tests
OLD_CONNECTION_LIMIT = 100  # waitress's connection_limit before the fix, max(100, 2 * threads)


@pytest.fixture
def serve(tmp_path):
    """Start a daemon with `Limits(**fields)`; every one started is stopped at the end."""
    started = []

    def start(**fields) -> SimpleNamespace:
        root = tmp_path / f"store{len(started)}"
        config = Config.from_env({"MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_MAX_BODY": "64KiB"})
        log.configure(root / "logs", console=False)
        runtime = Runtime(config).start()
        app = create_app(runtime, config)
        srv = make_server(app, "127.0.0.1", 0, threads=8, limits=Limits(**fields))
        threading.Thread(target=srv.run, name="waitress", daemon=True).start()
        started.append((srv, runtime))
        return SimpleNamespace(port=srv.effective_port, srv=srv)

    yield start
    for srv, runtime in started:
        shutdown(srv, runtime)


def version(port: int, timeout: float = 20) -> tuple[int, float]:
    """GET /api/version with http.client: (status, seconds it took)."""
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/api/version")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.monotonic() - began


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (EOF or reset), without blocking."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1 << 16) == b""
    except OSError:
        return True


class Trickle:
    """Connections that each send `head` at once, then `text` one byte every `every` seconds,
    as slowloris does."""

    def __init__(self, port: int, count: int, text: bytes, every: float, head: bytes = b""):
        self.socks = [
            socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)
        ]
        for sock in self.socks:
            sock.sendall(head)
        self.text, self.every = text, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for i in range(len(self.text)):
            for sock in self.socks:
                with contextlib.suppress(OSError):  # closed by the server
                    sock.send(self.text[i : i + 1])
            if self.stop.wait(self.every):
                return

    def open_count(self) -> int:
        return sum(not closed_by_server(s) for s in self.socks)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


SLOW_HEADERS = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200


def test_slowloris_neither_locks_out_others_nor_stays(serve):
    d = serve(header_timeout=3.0)
    slow = Trickle(d.port, OLD_CONNECTION_LIMIT + 30, SLOW_HEADERS, every=0.5)
    try:
        time.sleep(1.0)  # every slow connection is accepted and trickling
        began = time.monotonic()
        status, took = version(d.port, timeout=20)
        assert status == 200 and took < 5, took  # before the fix: no answer in 20 s
        assert slow.open_count() == len(slow.socks)  # none cut before its deadline
        # each is closed within a few seconds of its 3 s header deadline
        end = time.monotonic() + 15
        while slow.open_count() and time.monotonic() < end:
            time.sleep(0.2)
        assert slow.open_count() == 0
        assert time.monotonic() - began >= 1.5
    finally:
        slow.close()
    assert version(d.port)[0] == 200


def test_at_the_connection_limit_the_longest_idle_make_room(serve):
    d = serve(header_timeout=60.0, connection_limit=20)  # the deadline is not what helps here
    slow = Trickle(d.port, 30, SLOW_HEADERS, every=0.5)
    try:
        time.sleep(1.0)
        status, took = version(d.port, timeout=20)
        assert status == 200 and took < 10, took  # waitress alone: not accepted
        assert slow.open_count() < 20  # the oldest slow ones were closed
    finally:
        slow.close()


def test_silent_connections_are_closed_after_the_header_deadline(serve):
    d = serve(header_timeout=2.0)
    socks = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(5)]
    blank = Trickle(d.port, 5, b"\r\n" * 100, every=0.25)  # blank lines never start a request
    end = time.monotonic() + 12
    while (blank.open_count() or not all(map(closed_by_server, socks))) and (
        time.monotonic() < end
    ):
        time.sleep(0.2)
    assert all(closed_by_server(s) for s in socks) and blank.open_count() == 0
    blank.close()
    for s in socks:
        s.close()


def test_an_idle_keep_alive_connection_outlives_the_header_deadline(serve):
    d = serve(header_timeout=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    conn.request("GET", "/api/version")
    conn.getresponse().read()
    sock = conn.sock
    time.sleep(3.0)  # idle between requests: waitress's channel_timeout applies, not ours
    conn.request("GET", "/api/version")
    assert conn.getresponse().status == 200 and conn.sock is sock  # the same connection
    conn.close()


def test_a_long_first_request_keeps_its_connection(serve, monkeypatch):
    """The moment after waitress finishes a connection's first request (and before the header
    clock restarts) is not read as "no headers since the accept"."""
    from waitress.channel import HTTPChannel

    finish = HTTPChannel.service
    gaps = [2.5]

    def slow_to_finish(self):  # widen the first request's gap from a few microseconds to 2.5 s
        finish(self)
        if gaps:
            time.sleep(gaps.pop())

    monkeypatch.setattr(HTTPChannel, "service", slow_to_finish)
    d = serve(header_timeout=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    conn.request("GET", "/api/version")
    assert conn.getresponse().read()
    sock = conn.sock
    time.sleep(3.0)  # before the fix: closed as a header timeout during the gap
    conn.request("GET", "/api/version")
    assert conn.getresponse().status == 200 and conn.sock is sock
    conn.close()


def test_shedding_spares_an_upload_in_progress(serve):
    """At the connection limit only connections with nothing running are shed: a blob upload
    whose body is arriving is not idle, however long ago it was accepted."""
    import hashlib

    d = serve(header_timeout=60.0, connection_limit=20)
    data = bytes(range(256)) * 2048  # 512 KiB, sent 32 KiB at a time over ~1.6 s
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload = socket.create_connection(("127.0.0.1", d.port), timeout=20)
    upload.sendall(
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
    )
    time.sleep(0.3)  # the oldest connection now, by far
    slow = Trickle(d.port, 30, SLOW_HEADERS, every=0.5)
    try:
        for at in range(0, len(data), 32 * 1024):
            upload.sendall(data[at : at + 32 * 1024])  # before the fix: reset mid-body
            time.sleep(0.1)
        status, _, _ = answer_any(upload)
        assert status == 201
    finally:
        slow.close()
        upload.close()


def answer_any(sock: socket.socket) -> tuple[int, str, bytes]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, resp.getheader("Content-Type"), resp.read()


def test_a_slow_body_is_cut_off(serve):
    d = serve(body_grace=2.0, min_body_rate=1000)
    head = b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n"
    slow = Trickle(d.port, 3, b"{" * 100, every=0.05, head=head)  # then ~20 bytes/s
    try:
        end = time.monotonic() + 15
        while slow.open_count() and time.monotonic() < end:
            time.sleep(0.2)
        assert slow.open_count() == 0
    finally:
        slow.close()


def test_a_quick_request_in_pieces_is_served(serve):
    d = serve(header_timeout=5.0)
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=20)
    sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    time.sleep(0.5)
    sock.sendall(b"Accept: */*\r\n\r\n")
    status, _, body = answer(sock)
    assert status == 200 and "version" in body
    sock.close()


def test_one_remote_address_cannot_take_every_connection(serve):
    # the per-address cap applies to non-loopback peers; here 127.0.0.1 counts as remote
    d = serve(max_per_client=4, loopback_exempt=False)
    held = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(4)]
    time.sleep(0.5)
    extra = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    status, kind, body = answer(extra)  # answered at once, before any request
    assert status == 503 and kind.startswith("application/json"), (status, body)
    assert "connections" in body["error"]
    extra.close()
    held.pop().close()
    time.sleep(0.5)
    assert version(d.port)[0] == 200  # a place is free again
    for s in held:
        s.close()


def test_loopback_is_not_capped_per_address(serve):
    d = serve(max_per_client=4)
    held = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(10)]
    time.sleep(0.3)
    assert version(d.port)[0] == 200
    for s in held:
        s.close()


def test_content_length_over_the_limit_is_refused_before_the_body(serve):
    d = serve()
    for path, shape in (("/api/chat", "ollama"), ("/v1/chat/completions", "openai")):
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n".encode()
            + b"{" * 1000
        )
        # the answer comes although 1 GiB less 1000 bytes of the body were never sent
        status, kind, body = answer(sock)
        assert status == 413 and kind.startswith("application/json")
        message = body["error"] if shape == "ollama" else body["error"]["message"]
        assert f"the limit is {LIMIT} bytes" in message
        sock.close()


def test_expect_continue_over_the_limit_gets_413_not_continue(serve):
    d = serve()
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    status, _, body = answer(sock)
    assert status == 413 and "limit" in body["error"]
    sock.close()


def test_blob_uploads_are_not_held_to_the_json_limit(serve):
    d = serve()
    data = b"x" * (2 * LIMIT)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=20)
    conn.request("POST", "/api/blobs/sha256:" + "0" * 64, body=data)
    resp = conn.getresponse()
    body = orjson.loads(resp.read())
    conn.close()
    assert resp.status == 400 and "digest" in body["error"]  # read and hashed, not a 413


def test_a_chunked_body_is_cut_off_at_the_limit(serve):
    d = serve()
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    sock.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB a chunk, never a last chunk
    sent = 0
    while sent < 64 * LIMIT and not select.select([sock], [], [], 0.05)[0]:
        try:
            sock.sendall(chunk)
        except OSError:
            break
        sent += 0x4000
    assert sent <= 4 * LIMIT, sent  # before the fix: read on and on (to 4 MiB), no answer
    status, _, body = answer(sock)
    assert status == 413 and "limit" in body["error"]
    sock.close()


BAD = [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n", 400),
    (b"GET /api/version HTTP/1.1\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
    (b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    (b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /api/chat HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
]


@pytest.mark.parametrize(("request_bytes", "expected"), BAD)
def test_protocol_errors_answer_json(serve, request_bytes, expected):
    d = serve()
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    sock.sendall(request_bytes)
    status, kind, body = answer(sock)
    assert status == expected and kind.startswith("application/json")
    assert isinstance(body["error"], str) and body["error"]
    sock.close()


def test_protocol_errors_under_v1_answer_openai_errors(serve):
    d = serve()
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"
    )
    status, kind, body = answer(sock)
    assert status == 400 and kind.startswith("application/json")
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    sock.close()
