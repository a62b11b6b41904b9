"""Ctrl-C and SIGTERM for every verb: stop at once, clean up, exit 130 or 143.

SIGTERM is turned into `Terminated`, a KeyboardInterrupt, so that the same cleanup runs for
both (a stream is closed, which the daemon takes as a cancel; an in-process generation
stops at its next step) and shells see the usual statuses (128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises `Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def signals_seen() -> Iterator[list[int]]:
    """The numbers of the signals that arrive while the block runs, whoever handles them
    (the server installs handlers of its own): Python writes each one to its wakeup fd.
    The list is filled when the block ends."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError):
            seen.extend(reader.recv(256))
        reader.close()
        writer.close()
