"""Python's cyclic collector against a loaded model's long-lived heap.

Loading a model brings hundreds of thousands of container objects that live as long as it
does: the modules MLX, mlx-lm, transformers and Jinja import, a tokenizer's tables, the
model's modules and parameters. Every full (generation 2) collection walks all of them with
the GIL held: 60-90 ms on the 2-core box, during which no thread runs, so a burst's overflow
503, 5-20 ms otherwise, took up to 80 (docs/benchmarks.md, "Overload"). So once a model is
loaded, what survives a collection is frozen (`gc.freeze`: out of the collector's sight),
and later collections walk only what requests made. An unload thaws everything for one full
collection (the model's own cycles must still be freed) and freezes what is left.

`gc.collect()` does nothing while another thread is collecting (CPython returns at once),
and a cycle it missed would then be frozen for the model's lifetime: so each full collection
here is repeated until a `gc.callbacks` hook has seen one finish in this thread.

Process-wide, like the switch interval (`Runtime.start`): in an embedded runtime, a cycle
that was alive at a load and became garbage later is freed at the next unload, not sooner.
"""

from __future__ import annotations

import gc
import threading
import time

_lock = threading.Lock()  # two models' actors: one thaw/collect/freeze at a time


def settle() -> None:
    """After a load: collect what loading left behind, then freeze the survivors."""
    with _lock:
        _collect_here()
        gc.freeze()


def release() -> None:
    """At an unload: collect over everything, frozen or not, then freeze what is left."""
    with _lock:
        gc.unfreeze()
        _collect_here()
        gc.freeze()


def _collect_here() -> None:
    """A full collection that ran in this thread, not skipped for another thread's."""
    me = threading.get_ident()
    ran = threading.Event()

    def seen(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2 and threading.get_ident() == me:
            ran.set()

    gc.callbacks.append(seen)
    try:
        while not ran.is_set():
            gc.collect()
            if not ran.is_set():
                time.sleep(0.001)  # another thread's collection: let it finish
    finally:
        gc.callbacks.remove(seen)
