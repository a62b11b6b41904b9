"""What the actors tell each other: small frozen dataclasses, one per message, dispatched
with `match`. Also the `Admission` they pass around and `tell`, which never raises for an
actor that has stopped."""

from __future__ import annotations

import contextlib
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import pykka

from mlxollama.api import Embeddings, InferenceRequest
from mlxollama.engine.decoder import Decoder, TokenLogprob


def tell(ref: Any, message: Any) -> None:
    """`ref.tell(message)`, ignoring an actor that has stopped.

    A session stops when its request ends, a model when it is unloaded; messages still on
    their way to them mean nothing, and raising here would kill the sender.
    """
    if ref is None:
        return
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


@dataclass
class Admission:
    """A request on its way to a model: what the governor and the model actor need.

    `session` is what the model's messages for it go to: a SessionActor's ref or a
    `DirectReply`. `num_ctx` is the request's context window, decided by the runtime.
    """

    id: int
    request: InferenceRequest
    name: str  # the model's display name
    session: Any
    out: queue.Queue
    num_ctx: int
    started_ns: int = field(default_factory=time.perf_counter_ns)
    load_ns: int = 0


# -- to a SessionActor (or a DirectReply) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """The sequence was admitted: `decoder` turns its tokens into chunks."""

    decoder: Decoder


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token; `finish` is "stop" (an end token) or "length" on the last."""

    token: int
    finish: str | None = None
    logprob: TokenLogprob | None = None  # when the request asked for logprobs


@dataclass(frozen=True, slots=True)
class Ended:
    """The sequence ended without another token (no room left for an answer)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    error: BaseException


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client went away (`reason` None: nobody reads the queue any more), or someone
    cancelled the request by its id (`reason` "cancel": the stream ends with a final chunk
    whose `done_reason` says so)."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EmptyAnswer:
    """The answer to an empty request: done reason "load" or "unload"."""

    reason: str
    load_ns: int


@dataclass(frozen=True, slots=True)
class Embedded:
    result: Embeddings


# -- to a ModelActor ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    admission: Admission


@dataclass(frozen=True, slots=True)
class Step:
    """Self-sent: generate one token for every active sequence."""


@dataclass(frozen=True, slots=True)
class Unload:
    pass


@dataclass(frozen=True, slots=True)
class Stats:
    """Ask: {"active": ..., "waiting": ...}."""


# -- to a ModelActor and to the GovernorActor --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Drop admission `admission_id` of model `name` (cancelled, or its stop string hit)."""

    name: str
    admission_id: int


# -- to the GovernorActor, from a model actor (`ref`: a newer load of the model has another) --


@dataclass(frozen=True, slots=True)
class ModelLoaded:
    name: str
    load_ns: int
    ref: Any


@dataclass(frozen=True, slots=True)
class LoadFailed:
    name: str
    error: BaseException
    ref: Any


@dataclass(frozen=True, slots=True)
class ModelDied:
    name: str
    error: BaseException
    ref: Any


@dataclass(frozen=True, slots=True)
class Release:
    """A request of model `name` has finished; `prompt_cache` is the bytes its prompt cache
    holds now (for `/api/ps`)."""

    name: str
    ref: Any
    prompt_cache: int = 0


# -- to the GovernorActor, from its timers -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expire:
    """Model `name`'s keep-alive ran out (for its timer `generation`)."""

    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class LoadTimeout:
    name: str
    ref: Any
