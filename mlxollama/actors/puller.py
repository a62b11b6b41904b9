"""PullerActor: one registry transfer (a pull or a push), on its own thread.

The actor runs `registry.pull` or `registry.push` as its one message, hands every progress
object to the `Transfer` it was started with, ends it with success or the error, and stops
itself. The HTTP threads never wait on a registry: they read a `Transfer`'s queues.

A `Transfer` is what requests share. Its listeners (one queue each) get every progress object
from the moment they join; a listener that joins a transfer already running first gets the
latest object of each status (so a second `pull` of the same model shows every layer where
it stands, and both requests share one download). A listener that leaves (its client hung
up) stops receiving, and the transfer goes on to the end, as in Ollama, so that nothing is
left half-done: blobs enter the store only once their digests are checked, and the manifest
is written last.

Commits: a pull writes its blobs and its manifest itself, under the store's file lock
(`Store.lock()`, inside `registry`), not through the StoreActor. The lock keeps it apart
from the StoreActor's create, copy and delete (and from other processes); the StoreActor
serializes only the daemon's own build-type writes, and a transfer that may run for an hour
must not hold up every create behind it.

Cancelling: the actor's thread is inside the transfer and reads no messages until it ends,
so `cancel()` is an event the progress callback checks; the next progress object raises
`TransferCancelled` there, which unwinds the transfer like any failure (temporary files go,
no manifest is written). `Runtime.stop()` cancels the transfers still running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from mlxollama.errors import MlxOllamaError

log = structlog.get_logger("mlxollama.transfer")

DONE = object()  # a listener's last item after success; after a failure it is the error
_RUN = object()


class TransferCancelled(MlxOllamaError):
    """The transfer was stopped before it finished (the daemon is shutting down)."""


class Transfer:
    """One pull or push as its requests see it: listeners, the latest objects, the outcome.

    Args:
        kind: "pull" or "push".
        name: the model name as given.
        request_id: the request that started it (logged with the transfer's events).
    """

    def __init__(self, kind: str, name: str, request_id: str | None = None):
        self.kind = kind
        self.name = name
        self.request_id = request_id
        self._lock = threading.Lock()
        self._listeners: list[queue.Queue] = []
        self._latest: dict[str, dict[str, Any]] = {}  # status -> its latest object, in order
        self._outcome: Any = None  # DONE or the exception, once finished
        self._cancelled = threading.Event()
        self._finished: set[str] = set()  # digests of the layers complete so far
        self.bytes = 0  # their sizes

    @property
    def layers(self) -> int:
        """Layers complete so far (transferred, or present already)."""
        return len(self._finished)

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    def listen(self) -> queue.Queue:
        """A queue of this transfer's progress objects, ending with DONE or the error."""
        q: queue.Queue = queue.Queue()
        with self._lock:
            for event in self._latest.values():
                q.put(event)
            if self._outcome is not None:
                q.put(self._outcome)
            else:
                self._listeners.append(q)
        return q

    def leave(self, q: queue.Queue) -> None:
        """Stop delivering to `q` (its client went away); the transfer goes on."""
        with self._lock:
            if q in self._listeners:
                self._listeners.remove(q)

    def publish(self, event: dict[str, Any]) -> None:
        """The progress callback. Raises TransferCancelled once `cancel()` was called."""
        if self._cancelled.is_set():
            raise TransferCancelled(f"the {self.kind} of '{self.name}' was stopped")
        status = str(event.get("status", ""))
        digest = event.get("digest")
        if not digest and "total" not in event:
            log.info(f"{self.kind}.progress", model=self.name, status=status)
        with self._lock:  # the registry reports from several worker threads at once
            complete = "total" in event and (event.get("completed") or 0) >= event["total"]
            if digest and complete and digest not in self._finished:
                self._finished.add(digest)
                self.bytes += int(event["total"])
            self._latest[status] = event
            for q in self._listeners:
                q.put(event)

    def finish(self, outcome: Any) -> None:
        """End every listener's queue with DONE or the error."""
        with self._lock:
            self._outcome = outcome
            for q in self._listeners:
                q.put(outcome)
            self._listeners.clear()

    def cancel(self) -> None:
        self._cancelled.set()


class PullerActor(pykka.ThreadingActor):
    """Runs one transfer and stops.

    Args:
        transfer: the shared state to publish to.
        run: `run(progress)` does the transfer (a `registry.pull` or `registry.push` with
            its arguments bound); its return value is ignored.
        on_end: called with the transfer once it has finished, whatever the outcome.
    """

    def __init__(
        self,
        transfer: Transfer,
        run: Callable[[Callable[[dict[str, Any]], None]], Any],
        on_end: Callable[[Transfer], None],
    ):
        super().__init__()
        self.transfer = transfer
        self._run = run
        self._on_end = on_end

    def on_start(self) -> None:
        self.actor_ref.tell(_RUN)

    def on_receive(self, message: Any) -> None:
        if message is _RUN:
            self._transfer()

    def _transfer(self) -> None:
        t = self.transfer
        structlog.contextvars.clear_contextvars()
        if t.request_id:
            structlog.contextvars.bind_contextvars(request_id=t.request_id)
        tic = time.perf_counter()
        log.info(f"{t.kind}.start", model=t.name)
        outcome: Any = DONE
        try:
            self._run(t.publish)
        except BaseException as exc:  # an escaping exception would kill the actor silently
            outcome = exc
        fields: dict[str, Any] = {
            "model": t.name,
            "layers": t.layers,
            "bytes": t.bytes,
            "duration_ms": round((time.perf_counter() - tic) * 1000, 1),
        }
        if outcome is not DONE:
            fields["error"] = str(outcome) or type(outcome).__name__
        log.info(f"{t.kind}.end", **fields)
        try:
            t.finish(outcome)
            self._on_end(t)
        finally:
            self.stop()
