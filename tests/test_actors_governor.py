"""The GovernorActor's residency rules on fakes: keep-alive expiry, LRU eviction, the memory
budget, the queue caps and load failures, with an injected clock, a fake loader and a fake
model actor that speaks the ModelActor's messages. No model, no MLX work, no sleep longer
than 0.01 s (Ollama's sched_test.go runs the same kind of scenarios)."""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
from dataclasses import dataclass

import pykka
import pytest

from mlxollama.actors.governor import BUSY, GovernorActor, Occupancy
from mlxollama.actors.messages import (
    Admission,
    EmptyAnswer,
    Fail,
    LoadFailed,
    ModelLoaded,
    Release,
    Submit,
    Unload,
    Withdraw,
    tell,
)
from mlxollama.api import FOREVER, InferenceRequest
from mlxollama.config import Config
from mlxollama.errors import Busy


@dataclass(frozen=True)
class FinishAll:
    """To a FakeModel: end every request it holds."""


class FakeModel(pykka.ThreadingActor):
    """A ModelActor stand-in: loads through the fake loader, holds what is submitted until
    `FinishAll`, and tells the governor what the real one would."""

    def __init__(self, name, load, store, governor, num_parallel, max_waiting, *caches):
        super().__init__()
        self.name, self.load, self.store, self.governor = name, load, store, governor
        self.held: list[Admission] = []

    def on_start(self) -> None:
        try:
            self.load(self.store, self.name)
        except Exception as e:
            tell(self.governor, LoadFailed(self.name, e, self.actor_ref))
            self.actor_ref.tell(Unload())
            return
        tell(self.governor, ModelLoaded(self.name, 1_000, self.actor_ref))

    def on_stop(self) -> None:
        self.load.unloaded.append(self.name)

    def on_receive(self, message):
        match message:
            case Submit(adm):
                self.held.append(adm)
            case Withdraw(_, admission_id):
                for adm in [a for a in self.held if a.id == admission_id]:
                    self.held.remove(adm)
                    tell(self.governor, Release(self.name, self.actor_ref))
            case FinishAll():
                for adm in self.held:
                    tell(adm.session, EmptyAnswer("stop", 0))
                    tell(self.governor, Release(self.name, self.actor_ref))
                self.held.clear()
            case Unload():
                self.stop()
            case "held":
                return len(self.held)
        return None


class FakeLoader:
    """`load(store, name)`: records the loads; a name in `failing` raises, one in `slow`
    waits until `release` is set."""

    def __init__(self):
        self.loads: list[str] = []
        self.unloaded: list[str] = []
        self.failing: set[str] = set()
        self.slow: set[str] = set()
        self.release = threading.Event()

    def __call__(self, store, name):
        self.loads.append(name)
        if name in self.slow:
            self.release.wait(5)
        if name in self.failing:
            raise OSError(f"cannot read '{name}'")
        return object()


class Reply:
    """A session stand-in: what the governor and the model tell it, on a queue."""

    def __init__(self):
        self.messages: queue.Queue = queue.Queue()

    def tell(self, message) -> None:
        self.messages.put(message)

    def stop(self, *a, **k) -> None:
        pass

    def next(self, timeout: float = 5.0):
        return self.messages.get(timeout=timeout)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_ids = itertools.count(1)


def wait_until(check, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())


@pytest.fixture
def start(tmp_path):
    started = []

    def make(**settings):
        env = {"MLXOLLAMA_MODELS": str(tmp_path), "MLXOLLAMA_MAX_MEMORY": "1GB"}
        config = Config.from_env(env)
        config = dataclasses.replace(config, **settings)
        loader, clock = FakeLoader(), Clock()
        ref = GovernorActor.start(config, None, loader, clock=clock, model_actor=FakeModel)
        started.append(ref)
        return ref.proxy(), loader, clock

    yield make
    for ref in started:
        models = ref.proxy().unload_all().get(timeout=5)
        for m in models:
            m.stop(block=True, timeout=5)
        ref.stop(block=True, timeout=5)
    assert not pykka.ActorRegistry.get_all()


def acquire(gov, name: str, size: int = 100, keep_alive: float | None = None, empty=False):
    """Route one request for `name`: (its reply, the governor's refusal or None)."""
    request = InferenceRequest(
        model=name, kind="generate", prompt="" if empty else "hi", keep_alive=keep_alive
    )
    reply = Reply()
    adm = Admission(
        id=next(_ids), request=request, name=name, session=reply, out=queue.Queue(), num_ctx=64
    )
    facts = {"digest": f"sha256:{name}", "size": size, "context_length": 64, "details": {}}
    return reply, gov.acquire(adm, facts).get(timeout=5)


def loaded(gov) -> list[str]:
    return sorted(m["name"] for m in gov.ps().get(timeout=5) if m["state"] == "ready")


def held(gov, name: str) -> int:
    entry = gov.loaded.get(timeout=5).get(name)
    return 0 if entry is None or entry.state != "ready" else entry.ref.ask("held", timeout=5)


def finish(gov, name: str) -> None:
    gov.loaded.get(timeout=5)[name].ref.tell(FinishAll())


def test_an_idle_model_expires_after_its_keep_alive(start):
    gov, loader, clock = start(keep_alive=0.05)
    acquire(gov, "a")
    assert wait_until(lambda: held(gov, "a") == 1)
    (entry,) = gov.ps().get()
    assert entry["expires_at"] == clock.now + 0.05  # busy: its deadline moves with the clock
    clock.now += 10
    finish(gov, "a")
    assert wait_until(lambda: loader.unloaded == ["a"])
    assert gov.ps().get() == []


def test_keep_alive_zero_unloads_when_idle_and_forever_never(start):
    gov, loader, _ = start()
    acquire(gov, "a", keep_alive=0)
    acquire(gov, "b", keep_alive=FOREVER)
    assert wait_until(lambda: held(gov, "a") == 1 and held(gov, "b") == 1)
    finish(gov, "a")
    finish(gov, "b")
    assert wait_until(lambda: loader.unloaded == ["a"])
    (b,) = gov.ps().get()
    assert b["name"] == "b" and b["expires_at"] == FOREVER


def test_the_least_recently_used_idle_model_is_evicted(start):
    gov, loader, clock = start(max_loaded_models=2)
    for name in ("a", "b"):
        clock.now += 1
        acquire(gov, name)
        assert wait_until(lambda n=name: held(gov, n) == 1)
        finish(gov, name)
    assert wait_until(lambda: loaded(gov) == ["a", "b"] and gov.ps().get()[0]["active"] == 0)
    clock.now += 1
    acquire(gov, "a")  # a is used again: b is now the least recently used
    assert wait_until(lambda: held(gov, "a") == 1)
    finish(gov, "a")
    clock.now += 1
    acquire(gov, "c")
    assert wait_until(lambda: held(gov, "c") == 1)
    # b's actor stops in its own thread: its on_stop may come after c is serving
    assert wait_until(lambda: loader.unloaded == ["b"]) and loaded(gov) == ["a", "c"]


def test_the_memory_budget_evicts_idle_models_and_a_busy_one_makes_loads_wait(start):
    gov, loader, _ = start(max_memory=250)
    acquire(gov, "a", size=100)
    acquire(gov, "b", size=100)
    assert wait_until(lambda: held(gov, "a") == 1 and held(gov, "b") == 1)
    finish(gov, "a")  # a idle, b busy: 100 + 100 + 100 > 250, so a goes
    _, refused = acquire(gov, "c", size=100)
    assert refused is None
    assert wait_until(lambda: held(gov, "c") == 1)
    assert loader.unloaded == ["a"] and loaded(gov) == ["b", "c"]

    _, refused = acquire(gov, "d", size=100)  # nothing idle: the load waits, it is not refused
    assert refused is None and "d" not in loader.loads
    assert len(gov.waiting_loads.get()) == 1
    finish(gov, "b")  # b becomes idle and is evicted for d
    assert wait_until(lambda: held(gov, "d") == 1)
    assert loader.unloaded == ["a", "b"] and loaded(gov) == ["c", "d"]


def test_a_model_larger_than_the_budget_still_loads_alone(start):
    gov, _, _ = start(max_memory=50)
    acquire(gov, "big", size=100)
    assert wait_until(lambda: held(gov, "big") == 1)


def test_loads_waiting_beyond_max_queue_are_refused_at_once(start):
    gov, loader, _ = start(max_loaded_models=1, max_queue=2)
    acquire(gov, "a")
    assert wait_until(lambda: held(gov, "a") == 1)
    waiting = [acquire(gov, name)[1] for name in ("b", "c")]
    assert waiting == [None, None]
    _, refused = acquire(gov, "d")
    assert isinstance(refused, Busy) and str(refused) == BUSY
    finish(gov, "a")  # a unloads for b; c waits for b
    assert wait_until(lambda: held(gov, "b") == 1)
    assert loader.loads == ["a", "b"]


def test_a_full_model_refuses_more_requests(start):
    gov, _, _ = start(num_parallel=1, max_queue=1)
    acquire(gov, "a")
    assert wait_until(lambda: held(gov, "a") == 1)
    _, second = acquire(gov, "a")  # the model's batch (1) + queue (1)
    _, third = acquire(gov, "a")
    assert second is None and isinstance(third, Busy)
    _, empty = acquire(gov, "a", empty=True)  # a load request holds no slot
    assert empty is None


def test_a_withdrawn_request_frees_its_slot(start):
    gov, loader, _ = start()
    loader.slow.add("a")
    acquire(gov, "a")
    waiting_id = next(_ids) - 1
    acquire(gov, "a")
    running_id = next(_ids) - 1
    gov.actor_ref.tell(Withdraw("a", waiting_id))  # still waiting for the load
    assert wait_until(lambda: gov.ps().get()[0]["active"] == 1)
    loader.release.set()
    assert wait_until(lambda: held(gov, "a") == 1)
    gov.actor_ref.tell(Withdraw("a", running_id))  # at the model: the model releases it
    assert wait_until(lambda: held(gov, "a") == 0 and gov.ps().get()[0]["active"] == 0)


def test_shutdown_fails_the_waiting_loads_and_starts_none(start):
    gov, loader, _ = start(max_loaded_models=1)
    acquire(gov, "a")
    assert wait_until(lambda: held(gov, "a") == 1)
    reply, _ = acquire(gov, "b")
    for ref in gov.unload_all().get():
        ref.stop(block=True, timeout=5)
    assert "shutting down" in str(reply.next().error)
    assert loader.loads == ["a"] and gov.ps().get() == []


def test_a_failed_load_fails_its_requests_and_is_forgotten(start):
    gov, loader, _ = start()
    loader.failing.add("broken")
    reply, refused = acquire(gov, "broken")
    assert refused is None
    message = reply.next()
    assert isinstance(message, Fail) and "cannot read 'broken'" in str(message.error)
    assert wait_until(lambda: gov.ps().get() == [])


def test_a_load_that_takes_too_long_times_out(start):
    gov, loader, _ = start(load_timeout=0.05)
    loader.slow.add("slow")
    reply, _ = acquire(gov, "slow")
    message = reply.next()
    loader.release.set()
    assert isinstance(message, Fail) and isinstance(message.error, TimeoutError)
    assert wait_until(lambda: gov.ps().get() == [])


def test_empty_requests_load_and_unload(start):
    gov, loader, _ = start()
    reply, _ = acquire(gov, "a", empty=True)
    assert reply.next() == EmptyAnswer("load", 1_000)
    reply, _ = acquire(gov, "a", empty=True, keep_alive=0)  # loaded already: no load time
    assert reply.next() == EmptyAnswer("unload", 0)
    assert wait_until(lambda: loader.unloaded == ["a"])
    reply, _ = acquire(gov, "ghost", empty=True, keep_alive=0)  # nothing to unload
    assert reply.next() == EmptyAnswer("unload", 0) and loader.loads == ["a"]


def test_a_held_reservation_counts_until_taken_or_given_back():
    """`Occupancy.hold` (the HTTP layer's count of a request it is still reading): it counts
    like `reserve`; `release` gives it back once; `take` keeps it for the submitter, or gives
    it back when the request resolved to another model."""
    occupancy = Occupancy(
        Config.from_env({"MLXOLLAMA_NUM_PARALLEL": "1", "MLXOLLAMA_MAX_QUEUE": "1"})
    )
    first, second = occupancy.hold("a"), occupancy.hold("a")
    assert first and second and occupancy.hold("a") is None  # the model's batch + queue: 2
    second.release()
    second.release()  # idempotent: one count back, not two
    third = occupancy.hold("a")
    assert third and occupancy.hold("a") is None
    assert first.take("a") and not first.take("a")  # taken once; then it is the submitter's
    first.release()  # a taken reservation is no longer the holder's to give back
    assert occupancy.hold("a") is None
    assert not third.take("b")  # resolved to another model: given back
    assert occupancy.hold("a") and occupancy.hold("b")
