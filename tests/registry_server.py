"""A real OCI registry for tests, and a fault-injecting, byte-counting proxy in front of it.

The registry is CNCF distribution 2.8 as Debian packages it (`apt-get install
docker-registry`; `brew install distribution` on macOS gives `registry`), started on a free
port with its own config and storage in a temporary folder:

    reg = start_registry(tmp)                  # reg.address "127.0.0.1:PORT", reg.url
    reg = start_registry(tmp, htpasswd=True)   # Basic auth; reg.username / reg.password
    reg.stop()

`Proxy(reg.address)` forwards every request to it (GET/HEAD/POST/PATCH/PUT/DELETE, bodies
with Content-Length or chunked, Range passed through, responses streamed, `Location`
rewritten to the proxy) and records what passed, so a test can count and break transfers:

    proxy.name("library/smollm2:latest")   # "127.0.0.1:PROXYPORT/library/smollm2:latest"
    proxy.blob_bytes(digest)               # body bytes served by blob GETs (all, or one)
    proxy.blob_gets(digest)                # those requests, with their headers (Range)
    proxy.cut_after(digest, n)             # never serve that blob past byte n: drop there
    proxy.corrupt(digest)                  # flip the first byte of each body served for it
    proxy.fail_with(503, path="/manifests/", times=1)
    proxy.reset()                          # forget faults and recorded requests

Fixtures (bind them in a test module: `proxy = registry_server.proxy`): `registry` (session,
no auth), `auth_registry` (module, htpasswd user `docker`), `proxy` (per test, in front of
`registry`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHUNK = 1 << 16
# Headers that describe one hop of a connection, not the message: never forwarded as is.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",  # set again from what is actually sent
    "host",
    "expect",  # the proxy answers 100-continue itself
}
BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})(?:\?.*)?$")


# -- the registry ----------------------------------------------------------------------------


def registry_binary() -> str | None:
    """`$MLXOLLAMA_TEST_REGISTRY`, Debian's `docker-registry` or distribution's `registry`."""
    for candidate in (
        os.environ.get("MLXOLLAMA_TEST_REGISTRY"),
        shutil.which("docker-registry"),
        "/usr/bin/docker-registry",
        shutil.which("registry"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Registry:
    """A running registry process."""

    address: str  # "127.0.0.1:PORT"
    root: Path
    process: subprocess.Popen
    log_path: Path
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def name(self, ref: str) -> str:
        """A model name on this registry: `library/m:tag` -> `127.0.0.1:PORT/library/m:tag`."""
        return f"{self.address}/{ref}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_registry(tmp: Path, htpasswd: bool = False, timeout: float = 20.0) -> Registry:
    """Start a registry listening on 127.0.0.1 (a free port), storing under `tmp/data`.

    With `htpasswd`, the htpasswd file named in the config does not exist, so the registry
    creates it with user `docker` and a random password, which it logs; both are parsed
    into `username` / `password` (no bcrypt tool needed).

    Raises:
        RuntimeError: no registry binary, or it did not come up within `timeout` seconds.
    """
    binary = registry_binary()
    if binary is None:
        raise RuntimeError(
            "no OCI registry binary: apt-get install docker-registry "
            "(or set MLXOLLAMA_TEST_REGISTRY to distribution's `registry`)"
        )
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    auth = (
        f'auth: {{htpasswd: {{realm: basic-realm, path: "{tmp / "htpasswd"}"}}}}\n'
        if htpasswd
        else ""
    )
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info, accesslog: {disabled: true}}\n"  # the proxy records requests
        "storage:\n"
        f'  filesystem: {{rootdirectory: "{tmp / "data"}"}}\n'
        "  delete: {enabled: true}\n"
        "  maintenance: {uploadpurging: {enabled: false}}\n"
        'http: {addr: "127.0.0.1:0", secret: "mlxollama-tests"}\n' + auth
    )
    log_path = tmp / "registry.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    reg = Registry(address="", root=tmp, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    try:
        while not reg.address:
            text = reg.log()
            if htpasswd and reg.password is None:
                m = re.search(r"password=(\S+) user=(\S+)", text)
                if m:
                    reg.password, reg.username = m.group(1).strip('"'), m.group(2).strip('"')
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", text)
            if m and (reg.password is not None or not htpasswd):
                reg.address = m.group(1)
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not start:\n{text}")
            time.sleep(0.02)
        want = 401 if htpasswd else 200
        while _status(reg.address, "/v2/") != want:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry does not answer /v2/ with {want}:\n{reg.log()}")
            time.sleep(0.02)
    except BaseException:
        reg.stop()
        raise
    return reg


def _status(address: str, path: str) -> int | None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


# -- the proxy -------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request that reached the proxy (filled in as it is answered)."""

    method: str
    path: str
    headers: dict[str, str]  # header names lower-cased
    status: int | None = None
    received: int = 0  # request body bytes
    sent: int = 0  # response body bytes written to the client
    dropped: bool = False  # the proxy cut the connection mid-body
    done: bool = False  # the proxy has finished with it

    @property
    def digest(self) -> str | None:
        m = BLOB_PATH.match(self.path)
        return m.group("digest") if m else None


@dataclass
class _Fail:
    status: int
    path: str | None
    method: str | None
    times: int | None
    body: bytes


@dataclass
class _Faults:
    cut: dict[str, int] = field(default_factory=dict)  # digest -> serve bytes [0, n) only
    corrupt: set[str] = field(default_factory=set)
    fails: list[_Fail] = field(default_factory=list)
    blob_delay: float = 0.0
    bearer: tuple[str, str, str] | None = None  # (token, username, password)


class Proxy:
    """An HTTP proxy in front of `upstream` ("host:port") on 127.0.0.1, with knobs."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._seen: list[Seen] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def name(self, ref: str) -> str:
        """A model name through the proxy: `library/m:tag` -> `127.0.0.1:PORT/library/m:tag`."""
        return f"{self.address}/{ref}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- knobs ------------------------------------------------------------------------------

    def cut_after(self, digest: str, n: int) -> None:
        """Serve blob `digest` only up to byte offset `n`, then drop the connection (a pull
        killed halfway). It holds for every GET, ranged or not, until `reset`."""
        with self._lock:
            self._faults.cut[digest] = n

    def corrupt(self, digest: str) -> None:
        """Flip the first byte of every body served for blob `digest` (length unchanged)."""
        with self._lock:
            self._faults.corrupt.add(digest)

    def fail_with(
        self,
        status: int,
        path: str | None = None,
        method: str | None = None,
        times: int | None = None,
        body: bytes = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}',
    ) -> None:
        """Answer `status` without asking upstream, to requests whose path contains `path`
        and whose method is `method` (None: any), `times` times (None: until `reset`)."""
        with self._lock:
            self._faults.fails.append(_Fail(status, path, method, times, body))

    def require_bearer(self, token: str, username: str, password: str) -> None:
        """Act as a registry with token auth (Docker Hub, ghcr): `/v2/` answers 401 with a
        `WWW-Authenticate: Bearer realm=<proxy>/token` challenge unless it gets
        `Bearer <token>`, and `/token` hands out `token` for HTTP Basic `username:password`."""
        with self._lock:
            self._faults.bearer = (token, username, password)

    def delay_blobs(self, seconds: float) -> None:
        """Wait `seconds` before answering each blob GET (so concurrent pulls overlap)."""
        with self._lock:
            self._faults.blob_delay = seconds

    def reset(self) -> None:
        """Forget every fault and every recorded request."""
        with self._lock:
            self._faults = _Faults()
            self._seen.clear()

    # -- what passed ------------------------------------------------------------------------

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """What reached the proxy, in arrival order; waits (up to 5 s) for requests still
        being answered, since a client may hold every byte before the handler has counted."""
        with self._lock:
            seen = list(self._seen)
        deadline = time.monotonic() + 5
        while not all(r.done for r in seen) and time.monotonic() < deadline:
            time.sleep(0.005)
        return [
            r
            for r in seen
            if (method is None or r.method == method) and (path is None or path in r.path)
        ]

    def blob_gets(self, digest: str | None = None) -> list[Seen]:
        """Blob GETs (of `digest`, or of any blob), in arrival order."""
        return [
            r
            for r in self.requests("GET")
            if r.digest is not None and (digest is None or r.digest == digest)
        ]

    def blob_bytes(self, digest: str | None = None) -> int:
        """Blob body bytes served by GETs (of `digest`, or of all blobs)."""
        return sum(r.sent for r in self.blob_gets(digest))

    def sent(self) -> int:
        """Every response body byte served (manifests and API answers included)."""
        return sum(r.sent for r in self.requests())

    def received(self) -> int:
        """Every request body byte received (uploads)."""
        return sum(r.received for r in self.requests())

    # -- used by the handler ----------------------------------------------------------------

    def _arrived(self, method: str, path: str, headers: dict[str, str]) -> Seen:
        seen = Seen(method, path, headers)
        with self._lock:
            self._seen.append(seen)
        return seen

    def _fail_for(self, method: str, path: str) -> _Fail | None:
        with self._lock:
            for fail in self._faults.fails:
                if fail.times == 0:
                    continue
                if (fail.method is None or fail.method == method) and (
                    fail.path is None or fail.path in path
                ):
                    if fail.times is not None:
                        fail.times -= 1
                    return fail
        return None

    def _blob_faults(self, digest: str) -> tuple[int | None, bool, float]:
        with self._lock:
            f = self._faults
            return f.cut.get(digest), digest in f.corrupt, f.blob_delay


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (or a cut we made) is part of the tests, not an error.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards the client, as registries do

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    @property
    def proxy(self) -> Proxy:
        return self.server.proxy  # type: ignore[attr-defined]

    # -- request body -----------------------------------------------------------------------

    def _body(self, seen: Seen):
        """The request body as chunks (Content-Length or chunked), counted as read."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                data = self.rfile.read(size)
                self.rfile.readline()  # the CRLF after the chunk
                seen.received += len(data)
                yield data
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(CHUNK, left))
            if not data:
                raise ConnectionError("the client closed the request body early")
            left -= len(data)
            seen.received += len(data)
            yield data

    # -- one request ------------------------------------------------------------------------

    def _forward(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        seen = self.proxy._arrived(self.command, self.path, headers)
        try:
            self._handle(seen)
        finally:
            seen.done = True

    def _handle(self, seen: Seen) -> None:
        proxy = self.proxy
        fail = proxy._fail_for(self.command, self.path)
        if fail is not None:
            for _ in self._body(seen):
                pass
            seen.status = fail.status
            self.send_response(fail.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(fail.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(fail.body)
                seen.sent = len(fail.body)
            return

        if proxy._faults.bearer is not None and self._bearer_refused(seen, *proxy._faults.bearer):
            return
        host, port = proxy.upstream.rsplit(":", 1)
        upstream = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            try:
                upstream.connect()
            except OSError:
                seen.status = 502
                self.close_connection = True
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_upstream(upstream, seen)
            resp = upstream.getresponse()
            self._answer(resp, seen)
        finally:
            upstream.close()

    def _bearer_refused(self, seen: Seen, token: str, username: str, password: str) -> bool:
        """Answer the token endpoint or a 401 challenge; False lets the request through."""
        basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        auth = self.headers.get("Authorization", "")
        if self.path.startswith("/token"):
            ok = auth == basic
            body = json.dumps({"token": token}).encode() if ok else b'{"details":"denied"}'
            self._reply(seen, 200 if ok else 401, body)
            return True
        if auth == f"Bearer {token}":
            return False
        for _ in self._body(seen):
            pass
        realm = f"http://{self.proxy.address}/token"
        challenge = f'Bearer realm="{realm}",service="proxy",scope="repository:any:pull,push"'
        self._reply(seen, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', challenge)
        return True

    def _reply(self, seen: Seen, status: int, body: bytes, challenge: str | None = None) -> None:
        seen.status = status
        self.send_response(status)
        if challenge:
            self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            seen.sent = len(body)

    def _send_upstream(self, upstream: http.client.HTTPConnection, seen: Seen) -> None:
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        upstream.putheader("Host", self.proxy.upstream)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                upstream.putheader(key, value)
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        elif self.headers.get("Content-Length") is not None:
            upstream.putheader("Content-Length", self.headers["Content-Length"])
        upstream.endheaders()
        for data in self._body(seen):
            upstream.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            upstream.send(b"0\r\n\r\n")

    def _answer(self, resp: http.client.HTTPResponse, seen: Seen) -> None:
        seen.status = resp.status
        m = BLOB_PATH.match(self.path)
        blob = m is not None and self.command == "GET" and resp.status in (200, 206)
        cut, corrupt, delay = self.proxy._blob_faults(m.group("digest")) if blob else (None, 0, 0)
        if delay:
            time.sleep(delay)

        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = resp.getheader("Content-Length")
        if no_body:
            body = None
        elif length is None:
            body = [resp.read()]  # small API answers only; blobs always have a length
            length = str(len(body[0]))
        else:
            body = iter(lambda: resp.read(CHUNK), b"")

        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() in HOP_BY_HOP:
                continue
            if key.lower() in ("location", "docker-upload-location"):
                value = value.replace(f"//{self.proxy.upstream}", f"//{self.proxy.address}")
            self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if body is None:
            return

        offset = 0  # absolute offset in the blob of the next byte served
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.getheader("Content-Range") or "")
            offset = int(m.group(1)) if m else 0
        first = True
        for chunk in body:
            data = chunk
            if cut is not None and offset + len(data) > cut:
                data = data[: max(0, cut - offset)]
            if corrupt and first and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            first = False
            if data:
                self.wfile.write(data)
                seen.sent += len(data)  # (read once the request is done: see `requests`)
                offset += len(data)
            if cut is not None and offset >= cut:
                self._drop(seen)
                return

    def _drop(self, seen: Seen) -> None:
        """End the connection mid-body: the client sees fewer bytes than Content-Length."""
        seen.dropped = True
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


# -- an upload that does not use mlxollama.registry -----------------------------------------


def upload_model(address: str, store, model: str, ref: str, auth=None) -> bytes:
    """Push a stored model's blobs and manifest bytes to `address` as `repo:tag`, with plain
    httpx (HEAD to skip present blobs, POST + monolithic PUT), so the pull tests do not
    depend on our own push; `auth` is anything httpx takes. Returns the manifest bytes."""
    import httpx

    from mlxollama.store.manifests import MANIFEST_MEDIA_TYPE

    stored = store.get(model)
    data = (store.manifests_dir / stored.name.path()).read_bytes()
    repo, tag = ref.rsplit(":", 1)
    with httpx.Client(base_url=f"http://{address}", auth=auth, timeout=60) as c:
        for digest in dict.fromkeys(stored.manifest.digests()):
            if c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
                continue
            r = c.post(f"/v2/{repo}/blobs/uploads/")
            r.raise_for_status()
            r = c.put(
                httpx.URL(r.headers["Location"]).copy_merge_params({"digest": digest}),
                content=store.blobs.read_bytes(digest),
                headers={"Content-Type": "application/octet-stream"},
            )
            r.raise_for_status()
        r = c.put(
            f"/v2/{repo}/manifests/{tag}",
            content=data,
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
        )
        r.raise_for_status()
    return data


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A registry without auth for the whole session (tests use their own repositories)."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    """A registry with HTTP Basic auth: user `docker`, password `auth_registry.password`."""
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), htpasswd=True)
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry):
    """A fresh proxy in front of the session's `registry`."""
    p = Proxy(registry.address)
    yield p
    p.stop()
