"""Which client a verb talks to: the daemon when one answers, else the store in-process.

Hybrid mode (the specification's): `run`, `chat`, `create`, `list`, `show`, `cp` and `rm`
use the daemon at `MLXOLLAMA_HOST` when `HEAD /` answers, and otherwise `sdk.Embedded` on the
same store. `ps` and `stop` only mean something with a daemon, so they ask for one.
"""

from __future__ import annotations

import click

from mlxollama.client import Client


def connect(embedded: bool = False, announce: bool = False):
    """The daemon's `Client`, or `Embedded` when none answers (or `embedded` asks for it).

    Args:
        embedded: skip the daemon and run in this process. Default: False.
        announce: say on stderr that no daemon answered (for verbs that run a model, where
            it matters: the model loads in this process). Default: False.
    """
    if not embedded:
        client = Client()
        if client.heartbeat():
            return client
        client.close()
        if announce:
            click.echo(f"no daemon at {client.host}: running in-process", err=True)
    return local()


def local():
    """The store in this process (for `verify` and `gc`, which the daemon has no API for)."""
    from mlxollama.sdk import Embedded

    return Embedded()


def daemon() -> Client:
    """The daemon's client; a clear error when none is running."""
    client = Client()
    if not client.heartbeat():
        client.close()
        raise click.ClickException(
            f"no mlxctl daemon is running at {client.host}: start one with 'mlxctl serve'"
        )
    return client


def is_daemon(client) -> bool:
    return isinstance(client, Client)
