"""Which client a verb talks to: the daemon when one answers, else the store in-process.

Hybrid mode (the specification's): `run`, `chat`, `create`, `list`, `show`, `cp` and `rm`
use the daemon at `MLXOLLAMA_HOST` when it answers, and otherwise `sdk.Embedded` on the
same store. `ps` and `stop` only mean something with a daemon, so they ask for one.

Only an mlxollama daemon counts: `GET /api/version` must answer JSON with a `version` and
our `mlxollama` object, so Ollama, a web server or any other program on the port is never
taken for it (`occupant` says what it is instead). `check_address` does the same for
`mlxctl serve` before it loads anything.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

import click
import httpx

from mlxollama.client import Client, base_url
from mlxollama.config import parse_host

PROBE_TIMEOUT = 2.0  # seconds: a program that accepts and never answers is not a daemon


@dataclass
class Occupant:
    """What answers at an address: `daemon` is /api/version's body when it is ours."""

    what: str  # "nothing", "an mlxollama daemon (version X)", "a server that is not mlxollama…"
    daemon: dict[str, Any] | None = None


def occupant(host: str | None = None) -> Occupant:
    """Ask `host` (default `MLXOLLAMA_HOST`) what it is, within PROBE_TIMEOUT seconds.

    The probe carries no credentials: the API key goes only to a program that said it is
    an mlxollama daemon (a keyed one answers the probe 401 with its `Server` name)."""
    try:
        r = httpx.get(base_url(host) + "/api/version", timeout=PROBE_TIMEOUT)
    except httpx.ConnectError:
        return Occupant("nothing")
    except httpx.TimeoutException:
        return Occupant("a program that does not answer HTTP (not mlxollama)")
    except httpx.HTTPError:
        return Occupant("a program that does not speak HTTP (not mlxollama)")
    body = _json(r) if r.status_code == 200 else None
    if isinstance(body, dict) and isinstance(body.get("version"), str):
        if isinstance(body.get("mlxollama"), dict):
            return Occupant(f"an mlxollama daemon (version {body['version']})", body)
        return Occupant(f"a server that is not mlxollama (Ollama {body['version']}?)")
    if r.status_code == 401 and r.headers.get("server") == "mlxollama":  # waitress's ident
        # it asks for an API key: the verbs will say so
        return Occupant("an mlxollama daemon that asks for MLXOLLAMA_API_KEY", {})
    server = r.headers.get("server")
    return Occupant(
        f"a server that is not mlxollama (HTTP {r.status_code} to GET /api/version"
        + (f", Server: {server})" if server else ")")
    )


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def connect(embedded: bool = False, announce: bool = False):
    """The daemon's `Client`, or `Embedded` when none answers (or `embedded` asks for it).

    Args:
        embedded: skip the daemon and run in this process. Default: False.
        announce: say on stderr that no daemon answered (for verbs that run a model, where
            it matters: the model loads in this process). Default: False.
    """
    if not embedded:
        client = Client()
        found = occupant(client.host)
        if found.daemon is not None:
            return client
        client.close()
        if announce:
            there = "" if found.what == "nothing" else f" ({found.what} is there)"
            click.echo(f"no daemon at {client.host}{there}: running in-process", err=True)
    return local()


def local():
    """The store in this process (for `verify` and `gc`, which the daemon has no API for)."""
    from mlxollama.sdk import Embedded

    return Embedded()


def daemon() -> Client:
    """The daemon's client; a clear error when none is running."""
    client = Client()
    found = occupant(client.host)
    if found.daemon is None:
        client.close()
        if found.what != "nothing":
            raise click.ClickException(
                f"{client.host} is not an mlxollama daemon: {found.what} answers there; "
                "point MLXOLLAMA_HOST at the daemon, or start one with 'mlxctl serve'"
            )
        raise click.ClickException(
            f"no mlxctl daemon is running at {client.host}: start one with 'mlxctl serve'"
        )
    return client


def is_daemon(client) -> bool:
    return isinstance(client, Client)


# -- mlxctl serve ----------------------------------------------------------------------------


def check_address(value: str) -> str:
    """Fail with one line when the daemon cannot listen at `value` (MLXOLLAMA_HOST), naming
    what holds the port and what to do; `host:port` when it is free. Run before anything
    loads, so the answer comes in a second rather than after the runtime started."""
    host, port = parse_host(value).bind
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if port == 0:
        return where
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise click.ClickException(f"cannot listen on {where}: {e.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
            try:
                s.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise click.ClickException(f"cannot listen on {where}: {e.strerror}") from None
                raise click.ClickException(_in_use(host, port, where)) from None
    return where


def _in_use(host: str, port: int, where: str) -> str:
    ask = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    found = occupant(f"[{ask}]:{port}" if ":" in ask else f"{ask}:{port}")
    what = found.what if found.what != "nothing" else "another program"
    if found.daemon is not None:
        what = "another " + what.removeprefix("an ")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    return (
        f"{where} is in use by {what}: stop it, or set MLXOLLAMA_HOST to another address "
        f"(e.g. MLXOLLAMA_HOST=127.0.0.1:{free})"
    )
