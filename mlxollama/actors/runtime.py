"""The actor runtime: what the HTTP layer talks to.

`Runtime` starts the GovernorActor and the StoreActor, and hands out `Session`s. A handler
calls `submit()` (which raises at once for a bad request, an unknown model or a full queue),
then reads the session's chunks from a queue, polling for client disconnects between
reads, and calls `session.cancel()` if the client goes away. Nothing here returns an
`mx.array`; handlers never touch MLX.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mlxollama.api import Chunk, InferenceRequest
from mlxollama.config import Config
from mlxollama.store.buildspec import BuildSpec
from mlxollama.store.store import Store, StoredModel

DONE = object()  # the sentinel a session queue ends with


class Session:
    """One request's stream, as the HTTP handler sees it.

    `queue` yields `Chunk`s (text pieces, then one with `done=True`), or an `Exception`
    (raise it), then `DONE`. `model` is the model's display name.
    """

    def __init__(self, model: str, request_id: str, out: queue.Queue, cancel: Callable[[], None]):
        self.model = model
        self.request_id = request_id
        self.queue = out
        self._cancel = cancel
        self.finished = False

    def get(self, timeout: float) -> Chunk | None:
        """The next chunk, or None after `timeout` seconds without one (poll for disconnects
        then). Raises the error a failed generation reports; returns the final chunk once and
        then raises `StopIteration`."""
        if self.finished:
            raise StopIteration
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is DONE:
            self.finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.done:
            self.finished = True
        return item

    def cancel(self) -> None:
        """Stop generating (the client went away); frees the slot within one step."""
        if not self.finished:
            self.finished = True
            self._cancel()


@dataclass
class RunningModel:
    """One `/api/ps` entry's facts."""

    name: str
    digest: str
    size: int
    details: dict[str, Any]
    expires_at: float  # epoch seconds; float("inf") for forever
    context_length: int
    active: int  # sessions generating or waiting


class Runtime:
    """Starts and stops the actors; the one object `http/` and `mlxctl serve` hold.

    Args:
        config: settings (store root, limits).
        store: the store (default: the one at `config.models`).
        load_model: how a model is loaded (default `engine.loader.load`); tests inject fakes.
    """

    def __init__(self, config: Config, store: Store | None = None, load_model=None):
        raise NotImplementedError

    def start(self) -> Runtime:
        raise NotImplementedError

    def stop(self) -> None:
        """Unload everything and stop every actor (SIGINT/SIGTERM)."""
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------------

    def submit(self, request: InferenceRequest) -> Session:
        """Admit a generate/chat request.

        An empty request (no prompt / no messages) loads the model, or unloads it when
        `keep_alive` is 0; its session yields one final chunk with `done_reason` "load" or
        "unload".

        Raises:
            InvalidName, ModelNotFound: the model.
            InvalidOption: options or messages.
            UnsupportedModel: a capability the model lacks (e.g. chat on an embedding model).
            Busy: the queue is full (HTTP 503).
        Load failures (corrupted blob, timeout) arrive as an exception on the session's queue
        before any chunk.
        """
        raise NotImplementedError

    def ps(self) -> list[RunningModel]:
        raise NotImplementedError

    # -- store writes (serialized through the StoreActor) -------------------------------------

    def create(self, name: str, spec: BuildSpec) -> Iterator[dict[str, Any]]:
        """Build a model; yields Ollama's progress objects, ending with `{"status": "success"}`.
        Errors are raised from the iterator."""
        raise NotImplementedError

    def copy(self, source: str, destination: str) -> StoredModel:
        raise NotImplementedError

    def delete(self, name: str) -> StoredModel:
        raise NotImplementedError

    @property
    def store(self) -> Store:
        """For reads (list, show, blobs); writes go through the methods above."""
        raise NotImplementedError
