"""The actor runtime: what the HTTP layer talks to.

`Runtime` starts the GovernorActor and the StoreActor, and hands out `Session`s. A handler
calls `submit()` (which raises at once for a bad request, an unknown model or a full queue),
then reads the session's chunks from a queue, polling for client disconnects between
reads, and calls `session.cancel()` if the client goes away. Nothing here returns an
`mx.array`; handlers never touch MLX.

`pull` and `push` start a PullerActor per transfer (`actors/puller.py`) and stream its
progress the way `create` streams the StoreActor's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka
import structlog

from mlxollama import api
from mlxollama.actors.messages import Admission, Cancel, Withdraw, tell
from mlxollama.actors.model import wait_stopped
from mlxollama.actors.session import DONE, DirectReply, SessionActor
from mlxollama.api import Chunk, InferenceRequest
from mlxollama.config import Config
from mlxollama.engine.context import context_window
from mlxollama.engine.features import check
from mlxollama.errors import Busy, MlxOllamaError
from mlxollama.metrics import Metrics, ModelCounts, StreamTimer
from mlxollama.models.catalog import capabilities
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.store.info import text_layers
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store, StoredModel

if TYPE_CHECKING:
    from mlxollama.actors.governor import Reservation

__all__ = ["DONE", "RunningModel", "Runtime", "Session"]

log = structlog.get_logger("mlxollama.runtime")

SWITCH_INTERVAL = 0.0002  # seconds; see Runtime.start


class Session:
    """One request's stream, as the HTTP handler sees it.

    `queue` yields `Chunk`s (text pieces, then one with `done=True`) or, for an embed
    request, one `Embeddings`; or an `Exception` (raise it); then `DONE`. `model` is the model's display name.

    Every API reads its chunks through `get`, so `timer` (time to first token, the gaps
    between chunks, token counts) is measured here once for all of them.
    """

    def __init__(
        self,
        model: str,
        request_id: str,
        out: queue.Queue,
        cancel: Callable[[], None],
        timer: StreamTimer | None = None,
        interrupt: Callable[[], None] | None = None,
    ):
        self.model = model
        self.request_id = request_id
        self.queue = out
        self._cancel = cancel
        self._interrupt = interrupt or cancel
        self._timer = timer
        self.finished = False

    def get(self, timeout: float) -> Chunk | api.Embeddings | None:
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
        if self._timer is not None:
            self._timer.seen(item)
        return item

    def cancel(self) -> None:
        """Stop generating (the client went away); frees the slot within one step."""
        if not self.finished:
            self.finished = True
            self._cancel()

    def interrupt(self) -> None:
        """Stop generating for someone other than its reader (`Runtime.cancel_request`): the
        reader still gets the text so far and a final chunk with `done_reason` "cancel"."""
        if not self.finished:
            self._interrupt()


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
    on_gpu: bool = True  # False on MLX's CPU backend: /api/ps then shows size_vram 0
    prompt_cache: int = 0  # bytes of KV cache its prompt cache holds
    weights: str = ""  # the form its weights are held in, e.g. "bf16 (dense)"
    kv_cache_type: str | None = None  # MLXOLLAMA_KV_CACHE_TYPE; None: no KV cache (encoder)


class Names:
    """The names clients sent and the display names they resolved to, so that `hold` can
    count a request without touching the store; bounded (cleared when full). A stale entry
    only costs a reservation that `submit` gives back."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def remember(self, given: str, display: str) -> None:
        if self._names.get(given) != display:
            if len(self._names) >= self.LIMIT:
                self._names.clear()
            self._names[given] = display

    def get(self, given: str) -> str | None:
        return self._names.get(given)


class Runtime:
    """Starts and stops the actors; the one object `http/` and `mlxctl serve` hold.

    Args:
        config: settings (store root, limits).
        store: the store (default: the one at `config.models`).
        load_model: `load(store, name, weights) -> LoadedModel` (default `models.load.load`); tests
            inject fakes.
        pull, push: `registry.pull` and `registry.push` (the defaults); tests inject fakes
            with the same signatures.
    """

    def __init__(
        self, config: Config, store: Store | None = None, load_model=None, pull=None, push=None
    ):
        self.config = config
        self._store = store or Store(config.models)
        if load_model is None:
            from mlxollama.models.load import load as load_model
        self._load = load_model
        from mlxollama import registry

        self._pull = pull or functools.partial(registry.pull, hf_endpoint=config.hf_endpoint)
        self._push = push or registry.push
        self._credentials = registry.Credentials.from_config(config)
        self._transfers: dict[tuple, tuple[Any, Any]] = {}  # key -> (Transfer, ref)
        self._transfers_lock = threading.Lock()
        self._stopping = False
        self._ids = itertools.count(1)
        self._sessions: weakref.WeakSet = weakref.WeakSet()  # live SessionActors, DirectReplys
        # generations by request id, for DELETE /api/requests/{id}; an entry goes with its
        # handler's Session
        self._running: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self.metrics = Metrics()
        self.governor = None
        self.occupancy = None
        self.store_actor = None
        self._names = Names()  # names clients used -> display names they resolved to

    def start(self) -> Runtime:
        from mlxollama.actors.governor import GovernorActor, Occupancy, on_gpu
        from mlxollama.actors.store_actor import StoreActor

        # Each token crosses three threads (model, session, HTTP). On the CPU backend, with
        # Python's default 5 ms switch interval, the model thread can wait that long for the
        # GIL behind the others once per step, and 0.2 ms keeps steps moving. On a GPU the
        # model thread builds the next step while the device runs this one, and 0.2 ms
        # hands the GIL away mid-build: there the default is 1.1-1.8x faster
        # (docs/benchmarks.md, "The GIL").
        if not on_gpu():
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self.occupancy = Occupancy(self.config)
        self.governor = GovernorActor.start(
            self.config, self._store, self._load, occupancy=self.occupancy, metrics=self.metrics
        )
        self.metrics.watch_residency(self.occupancy.models)
        self._governor = self.governor.proxy()  # built once: a proxy costs ~0.2 ms to make
        self.store_actor = StoreActor.start(self._store)
        self._store_proxy = self.store_actor.proxy()
        return self

    def stop(self) -> None:
        """Unload everything and stop this runtime's actors (SIGINT/SIGTERM); other actors in
        the process are left alone."""
        if self.governor is None:
            return
        self._stop_transfers()
        models = []
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            models = self.governor.proxy().unload_all().get(timeout=30)
        for ref in models:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=30)
            wait_stopped(ref, 30)
        for ref in [self.governor, self.store_actor, *list(self._sessions)]:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=30)

    @property
    def store(self) -> Store:
        """For reads (list, show, blobs); writes go through the methods below."""
        return self._store

    # -- inference ---------------------------------------------------------------------------

    def submit(self, request: InferenceRequest, reservation: Reservation | None = None) -> Session:
        """Admit a generate, chat or embed request.

        `reservation`: the count `hold` made for it while the HTTP layer read it; taken
        here when it is for the model the request resolves to, else released.

        An empty request (no prompt / no messages) loads the model, or unloads it when
        `keep_alive` is 0; its session yields one final chunk with `done_reason` "load" or
        "unload".

        Raises:
            InvalidName, ModelNotFound: the model.
            InvalidOption: options.
            UnsupportedModel: a capability the model lacks (e.g. chat on an embedding model).
            Busy: the daemon, the model's queue or the queue of loads is full (HTTP 503),
                refused here from the governor's published counts or by the governor itself
                (a model actor whose queue is full after all answers it on the session's
                queue, before any chunk).
        Load failures (corrupted blob, timeout) arrive the same way.
        """
        from mlxollama.actors.governor import estimate_size
        from mlxollama.engine.weights import for_model

        submitted = time.perf_counter()
        stored = self._store.get(request.model)
        info = self._store.config(stored)
        name = stored.name.display()
        self._names.remember(request.model, name)
        request.require(name, info.get("capabilities", ["completion"]))
        if request.kind != "embed":
            check(request, str(stored.name), capabilities(self._store, stored))
        request.options = api.parse_options(request.options)
        # the window, decided here for the model actor too: request options over the
        # model's PARAMETERs
        params = text_layers(self._store, stored)["parameters"]
        opts = api.merge_options(params, request.options)
        num_ctx = context_window(opts, self.config.context_length, info.get("context_length"))
        # an encoder keeps no KV cache between steps: its weights are what stays resident;
        # a generative model may also fill its prompt cache, up to its cap: the budget
        # reserves that much (`reserve`), `/api/ps` shows what it holds
        size = reserve = stored.size
        weights = None
        if request.kind != "embed":
            kv = estimate_size(
                info, 0, self.config.num_parallel, num_ctx, self.config.kv_cache_type
            )
            weights = for_model(
                info,
                stored.size,
                self.config.weights,
                other_bytes=kv + self.config.prompt_cache,
                budget=self.config.max_memory,
            )
            size = weights.nbytes + kv
            reserve = size + self.config.prompt_cache
        facts = {
            "weights": weights,
            "digest": stored.digest,
            "size": size,
            "reserve": reserve,
            "context_length": num_ctx,
            "details": _details(info),
            "kv_cache_type": None if request.kind == "embed" else self.config.kv_cache_type,
        }
        out: queue.Queue = queue.Queue()
        admission_id = next(self._ids)
        governor = self.governor

        def cancel_model(aid: int) -> None:
            tell(governor, Withdraw(name, aid))

        self._reserve(name, request, reservation)
        try:
            if request.kind == "embed":  # one answer, nothing to detokenize: no session thread
                session_ref = DirectReply(admission_id, out, cancel_model)
            else:
                session_ref = SessionActor.start(
                    admission_id, request.request_id, out, cancel_model
                )
        except BaseException:
            self.occupancy.settle(name)  # the governor will never see this one
            raise
        self._sessions.add(session_ref)
        adm = Admission(
            id=admission_id,
            request=request,
            name=name,
            session=session_ref,
            out=out,
            num_ctx=num_ctx,
        )
        try:
            asked = self._governor.acquire(adm, facts)
        except BaseException:  # the governor is gone: it will never settle this one
            self.occupancy.settle(name)
            session_ref.stop()
            raise
        try:
            refused = asked.get(timeout=30)  # it settles
        except BaseException:
            session_ref.stop()
            raise
        if refused is not None:  # Busy comes back as a value: Pykka logs raised ones
            session_ref.stop(block=False)  # nothing was sent to it: no need to wait
            raise refused
        timer = self.metrics.stream(name, submitted)
        session = Session(
            name,
            request.request_id,
            out,
            lambda: tell(session_ref, Cancel()),
            timer,
            lambda: tell(session_ref, Cancel("cancel")),
        )
        if request.request_id and request.kind != "embed":  # an embed ends within one batch
            self._running[request.request_id] = session
        return session

    def cancel_request(self, request_id: str) -> str | None:
        """Cancel the running generation whose request id is `request_id`; its stream ends
        with a final chunk whose `done_reason` is "cancel". Returns its model's name, or
        None when no such generation is running."""
        session = self._running.get(request_id)
        if session is None or session.finished:
            return None
        session.interrupt()
        self.metrics.cancels.labels(session.model).inc()
        log.info("request.cancel", request_id=request_id, model=session.model)
        return session.model

    def stop_model(self, name: str) -> tuple[str, int | None]:
        """Unload model `name` now, or when its running requests end (`ollama stop`).

        Returns:
            (its display name, requests it is still running: None when it is not loaded).
        Raises:
            InvalidName, ModelNotFound: no such model in the store.
        """
        display = self._store.get(name).name.display()
        return display, self._governor.stop_model(display).get(timeout=30)

    def residency(self) -> tuple[ModelCounts, ...]:
        """The resident models' counts as the governor last published them (no message)."""
        return self.occupancy.models() if self.occupancy is not None else ()

    @property
    def stopping(self) -> bool:
        """True once `stop` began (SIGINT/SIGTERM), or before `start`."""
        return self._stopping or self.governor is None

    def store_writable(self) -> bool:
        """Whether a file can be created in the store's root (a probe: create, remove)."""
        try:
            fd, path = tempfile.mkstemp(prefix=".health-", dir=self._store.root)
        except OSError:
            return False
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return True

    def hold(self, model: str) -> Reservation | bool | None:
        """Count a non-empty request for `model` before it is parsed (the HTTP layer's
        I/O thread, `http/admission.py`), for `submit` to take.

        Returns:
            a Reservation; False: the governor would refuse it now (503); None: `model` is
            not a name a request resolved before (nothing counted: `submit` decides).
        """
        name = self._names.get(model)
        if name is None or self.occupancy is None:
            return None
        return self.occupancy.hold(name) or False

    def _reserve(
        self, name: str, request: InferenceRequest, reservation: Reservation | None
    ) -> None:
        """Refuse in this thread what the governor would refuse (see `Occupancy`), unless
        the request came with its count already reserved.

        Raises:
            Busy: the daemon or the model's batch and queue are full.
        """
        from mlxollama.actors.governor import BUSY

        if reservation is not None and reservation.take(name):
            return
        if not self.occupancy.reserve(name, request.empty):
            log.warning("queue.reject", model=name, request_id=request.request_id)
            raise Busy(BUSY)

    def ps(self) -> list[RunningModel]:
        return [
            RunningModel(
                name=m["name"],
                digest=m["digest"],
                size=m["size"],
                details=m["details"],
                expires_at=m["expires_at"],
                context_length=m["context_length"],
                active=m["active"],
                on_gpu=m["on_gpu"],
                prompt_cache=m.get("prompt_cache", 0),
                weights=m.get("weights", ""),
                kv_cache_type=m.get("kv_cache_type"),
            )
            for m in self._governor.ps().get(timeout=30)
        ]

    # -- store writes (serialized through the StoreActor) -------------------------------------

    def create(self, name: str, spec: BuildSpec) -> Iterator[dict[str, Any]]:
        """Build a model; yields Ollama's progress objects, ending with `{"status": "success"}`.
        Errors are raised from the iterator."""
        events: queue.Queue = queue.Queue()
        future = self._store_proxy.create(name, spec, events.put)
        while True:
            try:
                yield events.get(timeout=0.1)
                continue
            except queue.Empty:
                pass
            if _done(future):
                break
        while not events.empty():
            yield events.get()
        future.get()  # raises the build's error, if any

    def copy(self, source: str, destination: str) -> StoredModel:
        return self._store_proxy.copy(source, destination).get()

    def delete(self, name: str) -> StoredModel:
        return self._store_proxy.delete(name).get()

    # -- registry transfers (a PullerActor each) ----------------------------------------------

    def pull(
        self,
        name: str,
        insecure: bool = False,
        credentials=None,
        request_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Pull `name` from its registry; yields Ollama's progress objects, ending with
        `{"status": "success"}`. Errors are raised from the iterator; a second pull of the
        same name while one runs joins it. Closing the iterator early leaves the transfer
        running to its end.

        Args:
            credentials: `registry.Credentials`; default: the daemon's (MLXOLLAMA_REGISTRY_*).

        Raises:
            InvalidName: at once, before anything starts.
            RegistryError, DigestMismatch, UnsupportedModel: from the iterator.
        """
        target = parse_name(name)
        creds = credentials or self._credentials

        def run(progress) -> None:
            self._pull(self._store, name, insecure=insecure, credentials=creds, progress=progress)

        return self._transfer("pull", target.display(), run, request_id, (insecure, creds))

    def push(
        self,
        name: str,
        insecure: bool = False,
        credentials=None,
        request_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Push the stored model `name` to the registry its name points at; yields progress
        objects as `pull` does.

        Raises:
            InvalidName, ModelNotFound: at once.
            RegistryError: from the iterator.
        """
        stored = self._store.get(name)
        creds = credentials or self._credentials

        def run(progress) -> None:
            self._push(self._store, name, insecure=insecure, credentials=creds, progress=progress)

        return self._transfer("push", stored.name.display(), run, request_id, (insecure, creds))

    def _transfer(self, kind: str, name: str, run, request_id: str | None, settings: tuple):
        from mlxollama.actors.puller import PullerActor, Transfer

        # a request joins a running transfer only with the same `insecure` and credentials
        key = (kind, name.casefold(), *settings)
        with self._transfers_lock:
            if self._stopping or self.governor is None:
                raise MlxOllamaError(f"cannot {kind} '{name}': the daemon is stopping")
            if key in self._transfers:
                transfer, ref = self._transfers[key]
                listener = transfer.listen()
            else:
                transfer = Transfer(kind, name, request_id)
                listener = transfer.listen()  # before it starts: this one misses nothing

                def ended(t: Transfer) -> None:
                    with self._transfers_lock:
                        if self._transfers.get(key, (None,))[0] is t:
                            del self._transfers[key]

                ref = PullerActor.start(transfer, run, ended)
                self._transfers[key] = (transfer, ref)
        return _follow(transfer, listener, ref)

    def _stop_transfers(self) -> None:
        """Cancel the transfers still running and wait for their actors (SIGINT/SIGTERM)."""
        with self._transfers_lock:
            self._stopping = True
            running = list(self._transfers.values())
        for transfer, _ in running:
            transfer.cancel()
        for _, ref in running:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=30)


def _follow(transfer, listener: queue.Queue, ref) -> Iterator[dict[str, Any]]:
    """A listener's progress objects; leaving early (close) leaves the transfer running."""
    from mlxollama.actors.puller import DONE as END

    try:
        while True:
            try:
                item = listener.get(timeout=1.0)
            except queue.Empty:
                if not ref.is_alive() and not transfer.finished:
                    raise MlxOllamaError(
                        f"the {transfer.kind} of '{transfer.name}' ended without a result"
                    ) from None
                continue
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        transfer.leave(listener)


def _done(future) -> bool:
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except Exception:
        return True
    return True


def _details(info: dict[str, Any]) -> dict[str, Any]:
    return api.ModelDetails.from_config(info).to_json()
