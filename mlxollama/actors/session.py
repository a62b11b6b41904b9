"""SessionActor: one per request. It turns the token ids its model sends into text
(incremental detokenization, stop strings that never leak) and puts Chunks on the queue the
HTTP handler reads, with Ollama's timings on the last one. An embed request has nothing to
detokenize: its `DirectReply` puts the model's one `Embeddings` answer on the queue.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from mlxollama.api import Chunk, InferenceRequest
from mlxollama.engine.generate import StopMatcher

log = structlog.get_logger("mlxollama.session")

DONE = object()  # what a session's queue ends with


def tell(ref: pykka.ActorRef | None, message: Any) -> None:
    """`ref.tell(message)`, ignoring an actor that has stopped.

    A session stops when its request ends, a model when it is unloaded; messages still on
    their way to them mean nothing, and raising here would kill the sender.
    """
    if ref is None:
        return
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


# A client that stops reading while connected would make its queue grow without bound;
# past this many undelivered chunks the session gives up its slot.
MAX_BACKLOG = 4096


@dataclass
class Admission:
    """A request on its way to a model: what the governor and the model actor need."""

    id: int
    request: InferenceRequest
    name: str  # the model's display name
    session: pykka.ActorRef | DirectReply  # what the model's messages for it go to
    out: queue.Queue
    started_ns: int = field(default_factory=time.perf_counter_ns)
    load_ns: int = 0
    uid: int | None = None  # the BatchGenerator's id, while in the batch


# Messages to a SessionActor (tuples, so the model actor's hot loop stays cheap).
TOKEN = "token"  # (TOKEN, token_id, finish_reason | None)
BEGIN = "begin"  # (BEGIN, tokenizer, sampling options, prompt token count, model proxy)
FAIL = "fail"  # (FAIL, exception)
CANCEL = "cancel"  # (CANCEL,)
LOADED = "loaded"  # (LOADED, done_reason, load_ns): an empty request's answer
EMBEDDED = "embedded"  # (EMBEDDED, api.Embeddings): an embed request's answer


class DirectReply:
    """A request's reply channel without a SessionActor, for answers that need no
    detokenizing (embeddings): the messages a SessionActor would get go straight onto the
    handler's queue. It saves a thread per request, a third of an embedding's overhead.

    It has an actor ref's `tell` and `stop`, so the model and governor treat it the same.
    """

    def __init__(self, admission_id: int, out: queue.Queue, cancel_model):
        self.id = admission_id
        self.out = out
        self.cancel_model = cancel_model
        self.started_ns = time.perf_counter_ns()
        self.done = False
        # set by the HTTP side's cancel; the model actor polls it between sub-batches
        self.cancelled = threading.Event()
        self._lock = threading.Lock()

    def tell(self, message: tuple) -> None:
        kind = message[0]
        with self._lock:
            if self.done:
                return
            if kind == EMBEDDED:
                result = message[1]
                result.total_duration = time.perf_counter_ns() - self.started_ns
                self.out.put(result)
            elif kind == FAIL:
                self.out.put(message[1])
            elif kind == LOADED:
                total = time.perf_counter_ns() - self.started_ns
                self.out.put(
                    Chunk(
                        done=True,
                        done_reason=message[1],
                        load_duration=message[2],
                        total_duration=total,
                    )
                )
            elif kind == CANCEL:
                self.cancelled.set()
                self.cancel_model(self.id)
            else:
                return
            self.done = True
            self.out.put(DONE)

    def stop(self, block: bool = True, timeout: float | None = None) -> None:
        """Shutdown: the reader must not wait forever (what SessionActor.on_stop does)."""
        self.cancelled.set()
        self.tell((FAIL, RuntimeError("the server is shutting down")))

    def is_alive(self) -> bool:
        return not self.done


class SessionActor(pykka.ThreadingActor):
    def __init__(self, admission_id: int, request_id: str, out: queue.Queue, cancel_model):
        super().__init__()
        self.id = admission_id
        self.request_id = request_id
        self.out = out
        self.cancel_model = cancel_model  # tells the model/governor to drop this session
        self.started_ns = time.perf_counter_ns()
        self.done = False
        self.final = Chunk(done=True, done_reason="length")

    def on_stop(self) -> None:
        if not self.done:  # stopped from outside (shutdown): the reader must not wait forever
            self.done = True
            self.out.put(RuntimeError("the server is shutting down"))
            self.out.put(DONE)

    def on_receive(self, message: tuple) -> Any:
        kind = message[0]
        if self.done:
            return None
        if kind == TOKEN:
            self._token(message[1], message[2])
        elif kind == BEGIN:
            _, tokenizer, options, prompt_count, load_ns = message
            self.detokenizer = copy.copy(tokenizer.detokenizer)
            self.detokenizer.reset()
            self.stops = StopMatcher(options.stop)
            self.final.prompt_eval_count = prompt_count
            self.final.load_duration = load_ns
            self.admitted_ns = time.perf_counter_ns()
            self.first_ns = None
        elif kind == FAIL:
            self._end(error=message[1])
        elif kind == LOADED:
            self.final.done_reason, self.final.load_duration = message[1], message[2]
            self._end()
        elif kind == CANCEL:
            self.cancel_model(self.id)
            self._end(error=None, cancelled=True)
        return None

    def _token(self, token: int, finish: str | None) -> None:
        now = time.perf_counter_ns()
        if self.first_ns is None:
            self.first_ns = now
            self.final.prompt_eval_duration = now - self.admitted_ns
        self.final.eval_count += 1
        if finish == "stop":  # an end-of-generation token: not part of the answer
            self.final.done_reason = "stop"
            self._flush_and_end()
            return
        self.detokenizer.add_token(token)
        text, hit = self.stops.feed(self.detokenizer.last_segment)
        if text:
            self._put(Chunk(text=text))
        if hit:
            self.final.done_reason = "stop"
            self.cancel_model(self.id)  # the model stops generating for us
            self._end()
        elif finish is not None:
            self.final.done_reason = "length"
            self._flush_and_end()
        elif self.out.qsize() > MAX_BACKLOG:
            log.warning("session.stalled", request_id=self.request_id, backlog=self.out.qsize())
            self.cancel_model(self.id)
            self._end(cancelled=True)

    def _flush_and_end(self) -> None:
        self.detokenizer.finalize()
        text, hit = self.stops.feed(self.detokenizer.last_segment)
        if not hit:
            text += self.stops.flush()
        if text:
            self._put(Chunk(text=text))
        self._end()

    def _put(self, item) -> None:
        self.out.put(item)

    def _end(self, error: BaseException | None = None, cancelled: bool = False) -> None:
        self.done = True
        if error is not None:
            self.out.put(error)
        elif not cancelled:
            end = time.perf_counter_ns()
            first = getattr(self, "first_ns", None) or end
            self.final.eval_duration = end - first
            self.final.total_duration = end - self.started_ns
            self.out.put(self.final)
        self.out.put(DONE)
        self.stop()
