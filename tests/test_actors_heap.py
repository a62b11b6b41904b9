"""actors/heap.py: the collections around a load and an unload free every cycle."""

from __future__ import annotations

import gc
import threading
import weakref

from mlxollama.actors import heap


class Node:
    """A cycle's member, so that only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


class Slow:
    """Its finalizer, run inside a collection, waits with the GIL released."""

    def __init__(self, started: threading.Event, go: threading.Event) -> None:
        self.me, self.started, self.go = self, started, go

    def __del__(self) -> None:
        self.started.set()
        self.go.wait(5)


def test_an_unload_frees_a_cycle_while_another_thread_collects():
    """CPython's gc.collect() returns at once while another thread collects; release() then
    froze the cycle it had missed, for as long as the next model stayed (failed before)."""
    started, go = threading.Event(), threading.Event()
    try:

        def collect_slowly() -> None:
            Slow(started, go)
            gc.collect()

        other = threading.Thread(target=collect_slowly)
        other.start()
        assert started.wait(5)  # the other thread is inside its collection now
        node = Node()
        gone = weakref.ref(node)
        del node
        threading.Timer(0.2, go.set).start()
        heap.release()
        assert gone() is None
        other.join(5)
    finally:
        go.set()
        gc.unfreeze()
