"""Running the app on waitress: the bind address, the thread pool, and a clean stop.

Settings that matter (see the stack notes): `channel_request_lookahead=1` so that waitress
notices a client that hangs up while its request is silent (queued, loading, prefilling);
enough worker threads that every admitted stream and every queued request has one and a
503 can still be answered; a 1 MiB output watermark so that a client that stops reading
blocks its own stream rather than filling memory.

Against slow and greedy clients (`mlxollama.http.channel`, docs/daemon.md): waitress's
`channel_timeout` (120 s, kept) only closes a connection after that long *without a byte*,
so our own deadlines (headers within 15 s, a body at 1 KiB/s or more) do the real work and
are checked every `cleanup_interval` = 1 s (waitress's default 30 s would let a slow client
sit for up to 45 s); `connection_limit` is 1000 (or 2 x threads, if more; waitress's 100
let 110 slow clients lock everyone out), with the file-descriptor limit raised to fit;
`asyncore_use_poll` because select() cannot watch descriptors above 1023.
"""

from __future__ import annotations

import resource
import signal
import threading
from dataclasses import replace

import structlog
from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer

from mlxollama.config import Config, parse_host
from mlxollama.http import guards
from mlxollama.http.app import DaemonApp, create_app
from mlxollama.http.channel import Limits, create_server

log = structlog.get_logger("mlxollama.http")

BLOB_CAP = 1 << 40  # waitress's outer body limit; JSON bodies have their own, lower one


def thread_count(config: Config) -> int:
    """Worker threads: one per generating slot, one per queued request, and 8 to spare (so a
    503, /api/tags or /api/ps is answered while everything else waits)."""
    return config.num_parallel * config.max_loaded_models + config.max_queue + 8


def make_server(app, host: str, port: int, threads: int, limits: Limits | None = None):
    """A waitress server bound to `host:port` (port 0: any free port, see `effective_port`);
    `run()` serves until `close()` is called from another thread.

    Args:
        limits: deadlines and caps for clients (tests pass short ones). A `DaemonApp`'s
            body limit and guards are applied as soon as a request's headers are in.
    """
    limits = limits or Limits()
    if isinstance(app, DaemonApp):  # refuse on the headers what the app would refuse
        limits = replace(
            limits,
            body_limit=app.body_limit.limit_for,
            refusal=app.guards.refusal,
            admission=app.admission,
        )
    return create_server(
        app,
        limits,
        host=host,
        port=port,
        threads=threads,
        channel_request_lookahead=1,
        connection_limit=connection_limit(limits, threads),
        cleanup_interval=1,
        asyncore_use_poll=True,  # select() cannot watch descriptors above 1023
        max_request_body_size=BLOB_CAP,
        outbuf_high_watermark=1 << 20,
        ident="mlxollama",
    )


FD_RESERVE = 256  # descriptors kept for model files, logs, temp files, the trigger


def connection_limit(limits: Limits, threads: int) -> int:
    """`limits.connection_limit` (at least 2 x threads), within the descriptors the process
    may open: the soft limit is raised towards the hard one first, as Go does at start."""
    wanted = max(limits.connection_limit, 2 * threads)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < target:
        new = target if hard == resource.RLIM_INFINITY else min(target, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):  # macOS refuses more than OPEN_MAX
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - FD_RESERVE))


def serve(config: Config, runtime) -> None:
    """Serve the API until SIGINT or SIGTERM, then stop the runtime and return.

    Args:
        config: settings; reads `host`, `num_parallel`, `max_loaded_models`, `max_queue`
            and `max_body`; `api_key`, `trust_network` and `origins` for what it exposes.
        runtime: a started Runtime; it is stopped on the way out.

    Raises:
        ValueError: a non-loopback `host` without `api_key` or `trust_network`.
    """
    guards.check_exposure(config)
    host, port = parse_host(config.host).bind
    threads = thread_count(config)
    srv = make_server(create_app(runtime, config), host, port, threads)
    stop = threading.Event()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    loop = threading.Thread(target=srv.run, name="waitress", daemon=True)
    loop.start()
    log.info(
        "server.listening", addresses=listening(srv), threads=threads, **guards.exposure(config)
    )
    try:
        while loop.is_alive() and not stop.wait(0.5):
            pass
    finally:
        log.info("server.stopping")
        shutdown(srv, runtime)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("server.stopped")


def shutdown(srv, runtime) -> None:
    """Stop accepting, end every session (their streams finish), then stop the workers and
    close what is left. The trigger stays open until the workers are gone: a worker that
    finishes a response pulls it."""
    sockets = _socket_map(srv)
    for dispatcher in list(sockets.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            wasyncore.dispatcher.close(dispatcher)  # the listening socket only
    try:
        runtime.stop()
    finally:
        srv.task_dispatcher.shutdown()
        wasyncore.close_all(sockets)


def _socket_map(srv) -> dict:
    # A single server keeps it as `_map`; a MultiSocketServer (a host name that resolves to
    # several addresses, such as localhost) as `map`.
    return srv.map if isinstance(srv, MultiSocketServer) else srv._map


def listening(srv) -> list[str]:
    """The bound addresses, `host:port` each."""
    if isinstance(srv, MultiSocketServer):
        return [f"{host}:{port}" for host, port in srv.effective_listen]
    return [f"{srv.effective_host}:{srv.effective_port}"]
