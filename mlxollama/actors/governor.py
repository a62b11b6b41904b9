"""GovernorActor: the one owner of residency (Ollama's scheduler).

It alone loads, evicts and expires models. Each loaded model has an entry with a reference
count (requests admitted and not yet finished), a keep-alive duration, an expiry deadline
and a last-use time. Loading one more model first evicts idle models (least recently used
first) while `max_loaded_models` or the memory budget says so; when nothing is idle the load
waits. Loads that wait beyond `max_queue` are refused at once: `acquire` answers a `Busy`
(HTTP 503) as its value, so that the refusal costs one log line and no traceback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from mlxollama.actors.messages import (
    Admission,
    Expire,
    Fail,
    LoadFailed,
    LoadTimeout,
    ModelDied,
    ModelLoaded,
    Release,
    Submit,
    Unload,
    Withdraw,
    tell,
)
from mlxollama.actors.model import ModelActor
from mlxollama.api import FOREVER
from mlxollama.config import Config
from mlxollama.engine.weights import memory_budget
from mlxollama.errors import Busy
from mlxollama.metrics import Metrics, ModelCounts
from mlxollama.store.store import Store

log = structlog.get_logger("mlxollama.governor")

BUSY = "server busy, please try again.  maximum pending requests exceeded"


@dataclass
class Entry:
    name: str
    digest: str
    ref: pykka.ActorRef
    size: int  # bytes: weights + KV estimate
    reserve: int  # bytes the memory budget counts: size + the prompt cache's cap
    context_length: int
    details: dict[str, Any]
    keep_alive: float
    state: str = "loading"  # loading | ready
    refs: int = 0
    pending: list[Admission] = field(default_factory=list)  # admitted while loading
    expires_at: float = FOREVER
    last_used: float = 0.0
    load_ns: int = 0
    timer: threading.Timer | None = None
    load_timer: threading.Timer | None = None
    generation: int = 0  # bumps whenever the keep-alive timer is reset
    prompt_cache: int = 0  # bytes its prompt cache holds (as of its last finished request)
    stopping: bool = False  # /api/stop asked: it unloads when its running requests end
    weights: str = ""  # the form its weights are held in (`engine.weights.Weights.label`)
    kv_cache_type: str | None = None  # MLXOLLAMA_KV_CACHE_TYPE; None: no KV cache (encoder)


def on_gpu() -> bool:
    """Whether models run on a GPU (Metal, CUDA) rather than MLX's CPU backend."""
    try:
        import mlx.core as mx

        return mx.default_device() != mx.cpu
    except Exception:
        return True


def in_flight_limit(config: Config) -> int:
    """Requests the daemon holds at once: every model's batch, plus one queue's worth."""
    return config.num_parallel * config.max_loaded_models + config.max_queue


# bytes a key or value element takes per KV cache type: float16, or `mx.quantize`'s packed
# bits plus a float16 scale and bias per group of 64 (engine.kv_quant.GROUP_SIZE)
KV_ELEMENT_BYTES = {"f16": 2.0, "q8_0": (8 + 32 / 64) / 8, "q4_0": (4 + 32 / 64) / 8}


def estimate_size(
    info: dict[str, Any],
    stored_size: int,
    num_parallel: int,
    num_ctx: int,
    kv_cache_type: str = "f16",
) -> int:
    """Weights plus a KV cache for `num_parallel` full contexts, its K and V elements of
    `kv_cache_type` (every layer counted as a full-context one: sliding-window layers, which
    stay float16, hold less than that)."""
    cfg = info.get("model_config", {})
    layers = cfg.get("num_hidden_layers", 0)
    heads = cfg.get("num_attention_heads", 1)
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or cfg.get("hidden_size", 0) // max(heads, 1)
    elements = 2 * layers * kv_heads * head_dim * num_ctx * num_parallel
    return stored_size + int(elements * KV_ELEMENT_BYTES[kv_cache_type])


class Occupancy:
    """The governor's counts, shared with the HTTP threads so that a request the governor
    would refuse is refused in its own thread, with no session thread started and no message
    to wait for: in a burst every thread hand-off waits its turn for the GIL, and a 503 must
    stay fast.

    An HTTP thread `reserve`s before it asks `acquire`; the governor settles the reservation
    when it handles that ask and publishes its counts in the same step (under one lock), so
    counts plus reservations never miss nor double-count a request. The governor still
    decides for every request that passes.
    """

    def __init__(self, config: Config):
        self.limit = in_flight_limit(config)
        self.per_model = config.num_parallel + config.max_queue  # a model's batch + queue
        self.num_parallel = config.num_parallel
        self._lock = threading.Lock()
        self._in_flight = 0
        self._refs: dict[str, int] = {}  # loaded (or loading) model -> requests admitted
        self._asking: dict[str, int] = {}  # model -> reserved, not yet handled by acquire
        self._models: tuple[ModelCounts, ...] = ()  # for /metrics and /api/health

    def reserve(self, name: str, empty: bool = False) -> bool:
        """Count a request to model `name` that is about to ask `acquire`; False (nothing
        counted) when the governor would refuse it: the daemon or the model is full."""
        with self._lock:
            if self._in_flight + sum(self._asking.values()) >= self.limit:
                return False
            asking = self._asking.get(name, 0)
            if not empty and self._refs.get(name, 0) + asking >= self.per_model:
                return False
            self._asking[name] = asking + 1
            return True

    def settle(self, name: str) -> None:
        """Forget a reservation whose `acquire` was never sent."""
        self.publish(None, name)

    def hold(self, name: str) -> Reservation | None:
        """`reserve` for a request that is not being submitted yet (the HTTP layer admits
        a burst as it reads it): the reservation is the submitter's once it `take`s it,
        and counts for nothing once `release`d. None: the governor would refuse it."""
        return Reservation(self, name) if self.reserve(name) else None

    def publish(self, governor: GovernorActor | None, settled: str | None = None) -> None:
        """The governor's new counts (and the reservation its ask just settled)."""
        with self._lock:
            if settled is not None:
                left = self._asking.get(settled, 0) - 1
                if left > 0:
                    self._asking[settled] = left
                else:
                    self._asking.pop(settled, None)
            if governor is not None:
                self._refs = {name: e.refs for name, e in governor.loaded.items()}
                self._in_flight = sum(self._refs.values()) + len(governor.waiting_loads)
                self._models = self._counts(governor)

    def models(self) -> tuple[ModelCounts, ...]:
        """The resident models' counts as last published (no message to the governor)."""
        with self._lock:
            return self._models

    def _counts(self, governor: GovernorActor) -> tuple[ModelCounts, ...]:
        """A model's `refs` are its admitted requests: up to `num_parallel` of them are in
        its batch once it is ready, the rest wait; loads not yet started wait too."""
        waiting: dict[str, int] = {}
        for adm, _ in governor.waiting_loads:
            waiting[adm.name] = waiting.get(adm.name, 0) + 1
        out = []
        for name, e in governor.loaded.items():
            active = min(e.refs, self.num_parallel) if e.state == "ready" else 0
            queued = e.refs - active + waiting.pop(name, 0)
            out.append(ModelCounts(name, e.state, active, queued, e.prompt_cache))
        for name, n in waiting.items():
            out.append(ModelCounts(name, "waiting", 0, n, 0))
        return tuple(out)


class Reservation:
    """A count `Occupancy.hold` made for model `name`, held until a submitter takes it
    (then `acquire` settles it, as a `reserve` of its own) or its holder releases it (the
    request never got that far). Either happens once, from any thread."""

    def __init__(self, occupancy: Occupancy, name: str):
        self.name = name
        self._occupancy: Occupancy | None = occupancy
        self._lock = threading.Lock()

    def take(self, name: str) -> bool:
        """Whether this reservation now counts the submitter's request to `name`; a
        reservation for another name (the one the model resolved to had changed) or one
        already released is released, and False says to `reserve` afresh."""
        occupancy = self._claim()
        if occupancy is None:
            return False
        if name == self.name:
            return True
        occupancy.settle(self.name)
        return False

    def release(self) -> None:
        """Give the count back, unless it was taken (idempotent)."""
        occupancy = self._claim()
        if occupancy is not None:
            occupancy.settle(self.name)

    def _claim(self) -> Occupancy | None:
        with self._lock:
            occupancy, self._occupancy = self._occupancy, None
            return occupancy


class GovernorActor(pykka.ThreadingActor):
    """Args:
    config: the limits (max_loaded_models, max_queue, num_parallel, keep_alive, ...).
    store: what models load from.
    load: `load(store, name, weights) -> LoadedModel`, handed to each model actor.
    clock: epoch seconds, for keep-alive deadlines and LRU order (the timers run in real
        seconds).
    occupancy: the counts shared with the HTTP threads.
    model_actor: the actor class started per model (`ModelActor`; tests pass a fake that
        speaks its messages).
    metrics: where loads and unloads are counted (`mlxollama.metrics`; default: its own).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        load,
        clock: Callable[[], float] = time.time,
        occupancy: Occupancy | None = None,
        model_actor: type[pykka.Actor] = ModelActor,
        metrics: Metrics | None = None,
    ):
        super().__init__()
        self.metrics = metrics or Metrics()
        self.config, self.store, self.load, self.clock = config, store, load, clock
        self.model_actor = model_actor
        self.occupancy = occupancy or Occupancy(config)
        self.budget = memory_budget(config.max_memory)
        # Requests admitted and not finished, all models together; the HTTP server sizes its
        # thread pool from the same numbers, so a 503 can always be answered.
        self.limit = in_flight_limit(config)
        self.on_gpu = on_gpu()
        self.loaded: dict[str, Entry] = {}
        self.waiting_loads: list[tuple[Admission, dict]] = []  # (admission, model facts)
        self.retiring: list[pykka.ActorRef] = []  # unloaded models whose actors may still run
        self._starting = False

    # -- the API (asks) ----------------------------------------------------------------------

    def acquire(self, adm: Admission, facts: dict[str, Any]) -> Busy | None:
        """Route an admitted request to its model, loading it if needed.

        Returns:
            None, or a `Busy` (too many requests or loads are waiting) for the caller to
            raise. A refusal is an expected answer, not a failure of this ask: raised here,
            Pykka would log it with its traceback, which made a 503 the slowest answer.
        """
        try:
            return self._acquire(adm, facts)
        finally:
            self.occupancy.publish(self, settled=adm.name)

    def _acquire(self, adm: Admission, facts: dict[str, Any]) -> Busy | None:
        entry = self.loaded.get(adm.name)
        if entry is not None and entry.digest != facts["digest"] and entry.refs == 0:
            self._unload(entry, "changed")  # the tag now points at another model
            entry = None
        request = adm.request
        in_flight = sum(e.refs for e in self.loaded.values()) + len(self.waiting_loads)
        if in_flight >= self.limit:  # every one of them holds an HTTP thread
            log.warning("queue.reject", model=adm.name, request_id=request.request_id)
            return Busy(BUSY)
        if entry is not None and not request.empty and entry.refs >= self.occupancy.per_model:
            # the model's batch and queue are full: refuse here, at once, rather than behind
            # the model actor's current step (its own check stays, for releases in flight)
            log.warning("queue.reject", model=adm.name, request_id=request.request_id)
            return Busy(BUSY)
        if entry is None and request.empty and request.keep_alive == 0:
            ModelActor.answer_loaded(adm, "unload")  # nothing loaded, nothing to unload
            return None
        if entry is None:
            if len(self.waiting_loads) >= self.config.max_queue:
                log.warning("queue.reject", model=adm.name, request_id=request.request_id)
                return Busy(BUSY)
            self.waiting_loads.append((adm, facts))
            self._start_waiting_loads()
            return None
        self._route(entry, adm)
        return None

    def ps(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for e in self.loaded.values():
            expires = e.expires_at if e.refs == 0 else now + e.keep_alive
            out.append(
                {
                    "name": e.name,
                    "digest": e.digest,
                    "size": e.size + e.prompt_cache,
                    "details": e.details,
                    "expires_at": expires,
                    "context_length": e.context_length,
                    "active": e.refs,
                    "prompt_cache": e.prompt_cache,
                    "kv_cache_type": e.kv_cache_type,
                    "state": e.state,
                    "on_gpu": self.on_gpu,
                    "weights": e.weights,
                }
            )
        return sorted(out, key=lambda m: m["expires_at"], reverse=True)

    def stop_model(self, name: str) -> int | None:
        """Unload model `name` as `ollama stop` does: its keep-alive becomes 0, so it unloads
        now when idle, else as soon as the requests it is running (or loading for) end;
        they are not cut short. Returns how many requests it is still running, or None
        when it is not loaded (nor loading)."""
        entry = self.loaded.get(name)
        if entry is None:
            return None
        entry.keep_alive, entry.stopping = 0, True
        running = entry.refs
        if running == 0 and entry.state == "ready":
            self._unload(entry, "stop")
        self._publish()
        return running

    def unload_all(self) -> list[pykka.ActorRef]:
        """Unload every model; returns their actors' refs so the caller can wait for them.
        The loads still waiting are failed first: an unload would start them."""
        for adm, _ in self.waiting_loads:
            tell(adm.session, Fail(RuntimeError("the server is shutting down")))
        self.waiting_loads.clear()
        for entry in list(self.loaded.values()):
            self._unload(entry, "shutdown")
        self._publish()
        return list(self.retiring)  # the caller waits for each (`model.wait_stopped`)

    # -- messages from model actors and timers (tells) --------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            return self._on_message(message)
        finally:
            self._publish()

    def _publish(self) -> None:
        self.occupancy.publish(self)

    def _on_message(self, message: Any) -> None:
        if isinstance(message, Withdraw):
            self._cancel(message.name, message.admission_id)
            return
        entry = self.loaded.get(message.name)
        if entry is None:
            return
        if getattr(message, "ref", entry.ref) is not entry.ref:
            return  # from an earlier load of the same model
        match message:
            case ModelLoaded(_, load_ns):
                entry.state, entry.load_ns = "ready", load_ns
                self.metrics.loaded(entry.name, load_ns / 1e9)
                if entry.load_timer is not None:
                    entry.load_timer.cancel()
                pending, entry.pending = entry.pending, []
                entry.refs -= len(pending)
                for adm in pending:
                    adm.load_ns = entry.load_ns
                    self._route(entry, adm)
                self._maybe_idle(entry)
            case LoadFailed(name, error) | ModelDied(name, error):
                if isinstance(message, LoadFailed):
                    self.metrics.load_failed(name)
                else:
                    self.metrics.unloading(name, "died")
                self.loaded.pop(name, None)
                self._cancel_timer(entry)
                for adm in entry.pending:
                    tell(adm.session, Fail(error))
                self._start_waiting_loads()
            case Release(prompt_cache=held):
                entry.prompt_cache = held
                entry.refs = max(0, entry.refs - 1)
                entry.last_used = self.clock()
                self._maybe_idle(entry)
            case Expire(_, generation) if generation == entry.generation and entry.refs == 0:
                self._unload(entry, "expired")
            case LoadTimeout(name) if entry.state == "loading":
                error = TimeoutError(f"timed out waiting for model '{name}' to load")
                for adm in entry.pending:
                    tell(adm.session, Fail(error))
                entry.pending.clear()
                self._unload(entry, "load_timeout")

    # -- internals ---------------------------------------------------------------------------

    def _route(self, entry: Entry, adm: Admission) -> None:
        request = adm.request
        if request.keep_alive is not None:
            entry.keep_alive = request.keep_alive  # last writer wins, as in Ollama
            entry.stopping = False
        entry.refs += 1
        self._cancel_timer(entry)
        entry.last_used = self.clock()
        if entry.state == "loading":
            entry.pending.append(adm)
            return
        if request.empty:
            reason = "unload" if request.keep_alive == 0 else "load"
            ModelActor.answer_loaded(adm, reason)
            entry.refs -= 1
            self._maybe_idle(entry)
            return
        try:
            entry.ref.tell(Submit(adm))
        except pykka.ActorDeadError:  # it died; its "died" message is on the way
            tell(adm.session, Fail(RuntimeError(f"model '{entry.name}' stopped")))
            entry.refs -= 1

    def _maybe_idle(self, entry: Entry) -> None:
        if entry.refs > 0 or entry.state != "ready":
            return
        if entry.keep_alive == 0:
            self._unload(entry, "stop" if entry.stopping else "keep_alive")
            return
        self._cancel_timer(entry)
        entry.expires_at = self.clock() + entry.keep_alive
        if entry.keep_alive != FOREVER:
            generation = entry.generation
            me = self.actor_ref
            entry.timer = threading.Timer(
                entry.keep_alive, lambda: tell(me, Expire(entry.name, generation))
            )
            entry.timer.daemon = True
            entry.timer.start()
        self._start_waiting_loads()

    def _cancel_timer(self, entry: Entry) -> None:
        entry.generation += 1
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.expires_at = FOREVER

    def _cancel(self, name: str, admission_id: int) -> None:
        for i, (adm, _) in enumerate(self.waiting_loads):
            if adm.id == admission_id:
                del self.waiting_loads[i]
                return
        entry = self.loaded.get(name)
        if entry is None:
            return
        for adm in entry.pending:
            if adm.id == admission_id:
                entry.pending.remove(adm)
                entry.refs -= 1
                return
        tell(entry.ref, Withdraw(name, admission_id))

    def _unload(self, entry: Entry, reason: str) -> None:
        self._cancel_timer(entry)
        if entry.load_timer is not None:
            entry.load_timer.cancel()
        self.loaded.pop(entry.name, None)
        self.metrics.unloading(entry.name, reason)
        log.info(
            "model.evict" if reason == "evicted" else "model.stop", model=entry.name, reason=reason
        )
        tell(entry.ref, Unload())
        self.retiring = [r for r in self.retiring if r.is_alive()] + [entry.ref]
        self._start_waiting_loads()

    def _start_waiting_loads(self) -> None:
        """Start the loads that fit, evicting idle models (LRU) to make room."""
        if self._starting:  # an eviction below unloads a model, which calls us again
            return
        self._starting = True
        try:
            self._start_fitting_loads()
        finally:
            self._starting = False

    def _start_fitting_loads(self) -> None:
        still = []
        for adm, facts in self.waiting_loads:
            entry = self.loaded.get(adm.name)
            if entry is not None:  # another request started this load meanwhile
                self._route(entry, adm)
            elif self._make_room(facts.get("reserve", facts["size"])):
                entry = self._start_load(adm, facts)
                self._route(entry, adm)
            else:
                still.append((adm, facts))
        self.waiting_loads = still

    def _make_room(self, size: int) -> bool:
        def fits() -> bool:
            used = sum(e.reserve for e in self.loaded.values())
            return len(self.loaded) < self.config.max_loaded_models and (
                used + size <= self.budget or not self.loaded
            )

        while not fits():
            idle = [e for e in self.loaded.values() if e.refs == 0 and e.state == "ready"]
            if not idle:
                return False
            victim = min(idle, key=lambda e: (e.last_used, e.name))
            self._unload(victim, "evicted")
        return True

    def _start_load(self, adm: Admission, facts: dict[str, Any]) -> Entry:
        ref = self.model_actor.start(
            adm.name,
            self.load,
            self.store,
            self.actor_ref,
            self.config.num_parallel,
            self.config.max_queue,
            self.config.prompt_cache,
            self.config.prompt_cache_disk,
            self.metrics,
            facts.get("weights"),
            self.config.warmup,
            self.config.kv_cache_type,
        )
        keep_alive = adm.request.keep_alive
        entry = Entry(
            name=adm.name,
            digest=facts["digest"],
            ref=ref,
            size=facts["size"],
            reserve=facts.get("reserve", facts["size"]),
            context_length=facts["context_length"],
            details=facts["details"],
            weights=getattr(facts.get("weights"), "label", ""),
            kv_cache_type=facts.get("kv_cache_type"),
            keep_alive=self.config.keep_alive if keep_alive is None else keep_alive,
        )
        self.loaded[adm.name] = entry
        me, name = self.actor_ref, adm.name
        entry.load_timer = threading.Timer(
            self.config.load_timeout, lambda: tell(me, LoadTimeout(name, ref))
        )
        entry.load_timer.daemon = True
        entry.load_timer.start()
        return entry
