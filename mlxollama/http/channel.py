"""Waitress, hardened: deadlines for slow clients, a per-address cap, body limits enforced
while the request is read, and protocol errors in Ollama's JSON shape.

Stock waitress only closes a connection after `channel_timeout` seconds *without a byte*, so a
client that sends a header byte every 10 s holds its connection for ever; and at
`connection_limit` it stops accepting, so a hundred such clients lock everyone else out. It
reads a whole body (spooling it to a temp file) before the app can refuse it, and answers
malformed requests in plain text. Here:

- `Limits.header_timeout`: a request's headers must be complete this long after its first
  byte (after the accept, for a connection's first request), else the connection is closed.
- `Limits.min_body_rate`: once `body_grace` seconds have passed since the headers, a body must
  have arrived at this many bytes per second on average, else the connection is closed.
- `Limits.max_per_client`: open connections from one non-loopback address. Loopback peers are
  exempt (every local client is 127.0.0.1: a cap would let one local program lock out the
  others); the deadlines protect them, and so does shedding: at `connection_limit`, the
  connections that have no request running (headers pending, or idle keep-alive) are closed,
  oldest first, so a new client always gets in.
- `Limits.refusal` (the app's Host, Origin and API-key guards) is asked as soon as a
  request's headers are in: a refused request is answered 403/401 before a byte of its body
  is read, so nobody without the key can make the daemon spool a blob upload.
- The body limit for a path (`Limits.body_limit`, from the app's `BodyLimit`) is checked on
  `Content-Length` as soon as the headers are parsed (no `100 Continue` is sent, no byte of
  the body is kept), and a chunked body is cut off as soon as it passes the limit.
- Every error waitress answers itself (bad request line or header, headers too large, bad
  chunked encoding, unsupported transfer coding, the limits above) is `{"error": "..."}`,
  or OpenAI's error object under `/v1`.

Deadlines are checked in the server's maintenance pass, which runs every `cleanup_interval`
seconds (set to 1 s by `mlxollama.http.server.make_server`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon
import structlog
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ErrorTask, WSGITask

from mlxollama.http import errors
from mlxollama.http.admission import RESERVATION
from mlxollama.http.app import BodyLimit

log = structlog.get_logger("mlxollama.http")


def no_limit(path: str) -> int | None:
    return None


def no_refusal(method: str, path: str, header: Callable[[str], str | None]) -> None:
    return None


@dataclass(frozen=True)
class Limits:
    """What a client may take; the defaults are the daemon's (docs/daemon.md says why)."""

    header_timeout: float = 15.0  # seconds from a request's first byte to its blank line
    body_grace: float = 15.0  # seconds before the body rate is checked
    min_body_rate: float = 1024.0  # bytes per second, averaged since the headers
    max_per_client: int = 64  # open connections per non-loopback address
    loopback_exempt: bool = True  # loopback peers are not capped per address
    connection_limit: int = 1000  # open connections in all (at least 2 x threads)
    body_limit: Callable[[str], int | None] = no_limit  # per path; None: waitress's outer cap
    # (method, path, header) -> an HTTPError to answer instead of reading the body, or None
    refusal: Callable[..., falcon.HTTPError | None] = no_refusal
    # (method, path, header, size, body) -> a reservation for the handler (`RESERVATION` in
    # its environ), a whole answer to write now, or None; asked in the I/O thread when a
    # connection's only request has been read (`http/admission.py`)
    admission: Callable[..., Any] | None = None


class Refused(Exception):
    """An answer decided on the headers: waitress's error shape (`code`, `reason`) plus the
    `error` text and extra response headers."""

    def __init__(self, code: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.headers = headers or {}


def body_too_large(message: str) -> Refused:
    return Refused(413, "Content Too Large", message)


class Parser(HTTPRequestParser):
    """Waitress's parser that refuses a body over the path's limit while reading it, and
    notes when the body started. Once it has an error it swallows the rest of the data: the
    connection closes after the error answer, so nothing after it is a request."""

    def __init__(self, adj, limits: Limits):
        super().__init__(adj)
        self.limits = limits
        self.body_started: float | None = None  # time.monotonic() when the headers were in
        self.limit: int | None = None
        self.reservation: Any = None  # from `Limits.admission`; released when done

    def received(self, data: bytes) -> int:
        had_headers = self.headers_finished
        consumed = super().received(data)
        if self.error is None and self.headers_finished:
            if not had_headers:
                self._headers_done()
            elif self.limit is not None and self.body_rcv.__len__() > self.limit:
                self._refuse(None)  # a chunked body (a fixed one was checked on its length)
        if self.error is not None:
            self.expect_continue = False  # waitress's own refusals too: no 100 before an error
            return len(data)
        return consumed

    def _headers_done(self) -> None:
        self.body_started = time.monotonic()
        headers = self.headers  # waitress's keys: upper case, "-" as "_"
        refused = self.limits.refusal(
            self.command, self.path, lambda name: headers.get(name.upper().replace("-", "_"))
        )
        if refused is not None:  # 403/401: not a byte of the body is read
            reason = str(refused.status).partition(" ")[2]
            self._fail(Refused(refused.status_code, reason, refused.description, refused.headers))
            return
        self.limit = self.limits.body_limit(self.path)
        if self.limit is not None and self.content_length > self.limit:
            self._refuse(self.content_length)

    def close(self) -> None:
        """Waitress calls this once the request is done with (served or not): a reservation
        its handler did not take goes back."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None
        super().close()

    def peek_body(self) -> bytes:
        """The body read so far, leaving it for the app to read."""
        return self.body_rcv.getbuf().get() if self.body_rcv is not None else b""

    def _refuse(self, size: int | None) -> None:
        self._fail(body_too_large(BodyLimit.message(size, self.limit or 0)))

    def _fail(self, error: Refused) -> None:
        self.error = error
        self.expect_continue = False  # the point of Expect: refuse before the body is sent
        self.completed = True


class JsonErrorTask(ErrorTask):
    """Waitress's error answer with a JSON body in the shape of the API under its path."""

    def execute(self) -> None:
        exc = self.request.error
        status = f"{exc.code} {exc.reason}"
        message = getattr(exc, "message", None) or f"{status}: {exc.body}"
        path = getattr(self.request, "path", "") or ""
        body = errors.body_at(path, exc.code, message)
        log.info("request.refused", status=exc.code, path=path, error=message)
        self.status = status
        self.response_headers.extend((getattr(exc, "headers", None) or {}).items())
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Task(WSGITask):
    """Waitress's WSGI task, handing the request's reservation to the app."""

    def get_environment(self) -> dict:
        environ = super().get_environment()
        environ[RESERVATION] = getattr(self.request, "reservation", None)
        return environ


class Channel(HTTPChannel):
    """One connection: its header clock, its body rate, and no parsing after an error.

    The header clock runs from the accept until the first request is served, then from the
    first byte after each request served (blank lines between requests do not restart it).
    A connection being served (from the moment a worker takes it until its clocks are reset),
    reading a body, or holding output not yet sent is never timed out or shed."""

    error_task_class = JsonErrorTask
    task_class = Task

    def __init__(self, server: Server, sock, addr, adj, map=None):
        self.accepted_at = self.idle_since = time.monotonic()
        self.served = False
        self.in_service = False  # a worker thread is serving its requests
        self.first_byte_at: float | None = None  # since the last request served
        self.client = client_of(addr)
        self.counted = False
        super().__init__(server, sock, addr, adj, map=map)
        self.parser_class = self._new_parser
        server.clients[self.client] += 1
        self.counted = True

    def _new_parser(self, adj) -> Parser:
        return Parser(adj, self.server.limits)

    def received(self, data: bytes) -> bool:
        if any(r.error for r in self.requests):
            return True  # an error answer is on its way and the connection will close
        if data and self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        return super().received(data)

    def send_continue(self) -> None:
        self.request.body_started = time.monotonic()  # the client waited for this
        super().send_continue()

    def service(self) -> None:
        # Set before and cleared after the clocks are reset: between waitress popping the last
        # request and the lines below, the maintenance pass would otherwise see a connection
        # with no request that has owed headers since its accept, and close it (and drop the
        # tail of a long answer still in its buffers).
        self.in_service = True
        try:
            super().service()
        finally:
            self.served = True
            self.idle_since = time.monotonic()
            # a request already begun (pipelined) gets its full time from now
            self.first_byte_at = self.idle_since if self.request is not None else None
            self.in_service = False

    def answered_in_place(self) -> bool:
        """Ask `Limits.admission` about the connection's only request, just read, and when it
        answers write that answer now, from the I/O thread (no worker: see
        `http/admission.py`); True when the request needs no task. Called with
        `requests_lock` held."""
        if self.close_when_flushed:  # an answer written here is on its way: nothing after it
            for request in self.requests:
                request.close()
            self.requests = []
            return True
        admission = self.server.limits.admission
        if admission is None or self.in_service or len(self.requests) != 1:
            return False  # a worker is serving this connection: it answers in order
        req = self.requests[0]
        if req.error is not None:
            return False
        headers = req.headers
        decided = admission(
            req.command,
            req.path,
            lambda name: headers.get(name.upper().replace("-", "_")),
            max(req.content_length, req.body_bytes_received),  # a chunked body: the latter
            req.peek_body,
        )
        if not isinstance(decided, bytes):
            req.reservation = decided
            return False
        sent = 0
        with contextlib.suppress(OSError):  # sent now: the next pass may be a GIL turn away
            sent = self.socket.send(decided)
        if sent < len(decided):  # the rest (a fresh socket's buffer takes it all, in practice)
            with self.outbuf_lock:
                self.outbufs[-1].append(decided[sent:])
                self.total_outbufs_len += len(decided) - sent
        self.close_when_flushed = True
        req.close()
        self.requests = []
        return True

    def busy(self) -> bool:
        """Whether the connection is doing something a deadline or shedding must not cut:
        serving, reading a body, or sending an answer."""
        req = self.request
        return bool(
            self.requests
            or self.in_service
            or self.will_close
            or self.total_outbufs_len
            or (req is not None and req.headers_finished and not req.completed)
        )

    def waiting_since(self) -> float | None:
        """When this connection started owing us request headers; None if it does not (a
        request is running, its headers are in, or it is idle between requests)."""
        req = self.request
        if self.requests or self.in_service or (req is not None and req.headers_finished):
            return None
        return self.first_byte_at if self.served else self.accepted_at

    def overdue(self, now: float) -> str | None:
        """Why this connection should be closed now, if it should."""
        if self.requests or self.in_service or self.will_close or self.total_outbufs_len:
            return None
        limits = self.server.limits
        since = self.waiting_since()
        if since is not None and now - since > limits.header_timeout:
            return "header_timeout"
        req = self.request
        if req is not None and req.body_started is not None and not req.completed:
            elapsed = now - max(req.body_started, self.idle_since)
            if elapsed > limits.body_grace and req.body_bytes_received < limits.min_body_rate * (
                elapsed
            ):
                return "slow_body"
        return None

    def idle_for(self, now: float) -> float | None:
        """How long this connection has had no request running (None: it is busy)."""
        if self.busy():
            return None
        since = self.waiting_since()
        return now - (since if since is not None else self.idle_since)

    def del_channel(self, map=None) -> None:
        if self.counted:
            self.counted = False
            clients = self.server.clients
            clients[self.client] -= 1
            if clients[self.client] <= 0:
                del clients[self.client]
        super().del_channel(map)


def client_of(addr) -> str:
    host = addr[0] if isinstance(addr, tuple) and addr else str(addr)
    return host.removeprefix("::ffff:")  # an IPv4 peer on a dual-stack socket


def is_loopback(host: str) -> bool:
    if host == "localhost":  # a Unix socket
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# A request read is held (`Server.start_read`) until the burst it came in is read: while a
# loop pass still reads something, or, once two or more wait, until nothing new has come
# for BURST_GAP (a pass can find nothing while the rest of a burst is still on its way: a
# client on the same cores sends it in 2-10 ms); never longer than BURST_WAIT.
BURST_GAP = 0.004  # s
BURST_WAIT = 0.03  # s
TOO_MANY_RESPONSE = errors.unavailable(errors.error_body("too many connections from this address"))


class Server(TcpWSGIServer):
    """Waitress's TCP server with `Limits`: the deadlines in its maintenance pass, the
    per-address cap at accept, and shedding idle connections at the connection limit."""

    def __init__(self, *args, limits: Limits, **kwargs):
        self.limits = limits
        self.clients: Counter[str] = Counter()
        self.refused = 0
        self._pending: list[Channel] = []  # requests read, not yet started (`add_task`)
        self._pending_since = 0.0
        self._read = False  # whether this loop pass took a connection or a request
        self._read_at = 0.0  # when a pass last took one
        super().__init__(*args, **kwargs)

    def channel_class(self, server, conn, addr, adj, map=None) -> Channel | None:
        """Waitress calls this for each accepted connection (in place of a channel class)."""
        client = client_of(addr)
        exempt = self.limits.loopback_exempt and is_loopback(client)
        if not exempt and self.clients[client] >= self.limits.max_per_client:
            self.refused += 1
            with contextlib.suppress(OSError):  # a few bytes: the socket buffer takes them
                conn.send(TOO_MANY_RESPONSE)
            conn.close()
            return None
        return Channel(self, conn, addr, adj, map=map)

    def handle_accept(self) -> None:
        """Accept every connection waiting (up to the connection limit), where waitress takes
        one per loop pass: each pass waits its turn for the GIL, so under load a burst of 64
        connections took 64 turns before its overflow could be answered."""
        for _ in range(max(1, self.adj.connection_limit - len(self._map))):
            try:
                accepted = self.accept()
                if accepted is None:
                    return  # nothing more is waiting
                conn, addr = accepted
                self.set_socket_options(conn)
            except OSError:  # a connection reset before it was taken (waitress: the same)
                continue
            self.reading()
            self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def add_task(self, task) -> None:
        """From the I/O thread, a request just read is answered here (`answered_in_place`) or
        held until the loop has read every connection that is ready (`start_read`): a worker
        started sooner competes with this thread for the GIL while it reads the rest of a
        burst. From a worker (the next pipelined request), straight to the workers."""
        if not isinstance(task, Channel) or task.in_service:
            super().add_task(task)
            return
        self.reading()
        if not task.answered_in_place():
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(task)

    def reading(self) -> None:
        """Note that this loop pass took a connection or a request: one more pass follows
        (the trigger keeps it from sleeping in `select`) before the requests are started."""
        self._read_at = time.monotonic()
        if not self._read:
            self._read = True
            self.trigger.pull_trigger()

    def start_read(self) -> None:
        """Hand the requests read to the workers once their burst is in (`BURST_GAP`): a lone
        request as soon as a pass reads nothing new, several once nothing new has come for
        `BURST_GAP`, and any after `BURST_WAIT`."""
        if not self._pending:
            return
        now = time.monotonic()
        burst = len(self._pending) > 1 and now - self._read_at < BURST_GAP
        if (self._read or burst) and now - self._pending_since < BURST_WAIT:
            self._read = False
            self.trigger.pull_trigger()  # one more pass, at once
            return
        self._read = False
        pending, self._pending = self._pending, []
        for task in pending:
            super().add_task(task)

    def readable(self) -> bool:
        # asyncore asks every dispatcher this before each `select`: the end of the last pass
        self.start_read()
        if self.accepting and len(self._map) >= self.adj.connection_limit:
            self.shed(len(self._map) - self.adj.connection_limit + 1)
        return super().readable()

    def shed(self, count: int) -> None:
        """Close the `count` connections idle longest (no request running), to make room."""
        channels = list(self.active_channels.values())
        count -= sum(ch.will_close for ch in channels)  # closing already, from the last round
        now = time.monotonic()
        idle = [(t, ch) for ch in channels if (t := ch.idle_for(now)) is not None]
        idle.sort(key=lambda pair: pair[0], reverse=True)
        for _, channel in idle[: max(count, 0)]:
            channel.will_close = True
        if count > 0 and idle:
            log.warning("connections.shed", count=min(count, len(idle)))

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # channel_timeout: idle connections
        mono = time.monotonic()
        closed: Counter[str] = Counter()
        for channel in list(self.active_channels.values()):
            reason = channel.overdue(mono)
            if reason:
                channel.will_close = True
                closed[reason] += 1
        if self.refused:
            closed["per_client_cap"], self.refused = self.refused, 0
        if closed:
            log.warning("connections.closed", **closed)


def create_server(app, limits: Limits, **adjustments):
    """`waitress.create_server` with `Server`: one per address that `host` resolves to (a
    MultiSocketServer when there are several)."""
    from waitress.adjustments import Adjustments
    from waitress.task import ThreadedTaskDispatcher

    adj = Adjustments(**adjustments)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict = {}
    servers = [
        Server(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=info, limits=limits)
        for info in adj.listen
    ]
    if len(servers) == 1:
        return servers[0]
    listen = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(socket_map, adj, listen, dispatcher, log_info=servers[0].log_info)
