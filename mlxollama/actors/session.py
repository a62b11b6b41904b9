"""SessionActor: one per request. It feeds the token ids its model sends to the request's
`engine.decoder.Decoder` (incremental detokenization, stop strings that never leak, done
reasons, Ollama's timings) and puts the Chunks it makes on the queue the HTTP handler reads.
An embed request has nothing to detokenize: its `DirectReply` puts the model's one
`Embeddings` answer on the queue.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pykka
import structlog

from mlxollama.actors.messages import (
    Begin,
    Cancel,
    Embedded,
    EmptyAnswer,
    Ended,
    Fail,
    Token,
)
from mlxollama.api import Chunk

log = structlog.get_logger("mlxollama.session")

DONE = object()  # what a session's queue ends with

# A client that stops reading while connected would make its queue grow without bound;
# past this many undelivered chunks the session gives up its slot.
MAX_BACKLOG = 4096


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

    def tell(self, message: Any) -> None:
        with self._lock:
            if self.done:
                return
            match message:
                case Embedded(result):
                    result.total_duration = time.perf_counter_ns() - self.started_ns
                    self.out.put(result)
                case Fail(error):
                    self.out.put(error)
                case EmptyAnswer(reason, load_ns):
                    self.out.put(_empty_answer(reason, load_ns, self.started_ns))
                case Cancel():
                    self.cancelled.set()
                    self.cancel_model(self.id)
                case _:
                    return
            self.done = True
            self.out.put(DONE)

    def stop(self, block: bool = True, timeout: float | None = None) -> None:
        """Shutdown: the reader must not wait forever (what SessionActor.on_stop does)."""
        self.cancelled.set()
        self.tell(Fail(RuntimeError("the server is shutting down")))

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
        self.decoder = None

    def on_stop(self) -> None:
        if not self.done:  # stopped from outside (shutdown): the reader must not wait forever
            self.done = True
            self.out.put(RuntimeError("the server is shutting down"))
            self.out.put(DONE)

    def on_receive(self, message: Any) -> Any:
        if self.done:
            return None
        match message:
            case Token(token, finish, logprob):
                self._put(self.decoder.add(token, finish, logprob))
                if self.decoder.done:
                    if finish is None:  # a stop string: the model stops generating for us
                        self.cancel_model(self.id)
                    self._end()
                elif self.out.qsize() > MAX_BACKLOG:
                    log.warning(
                        "session.stalled", request_id=self.request_id, backlog=self.out.qsize()
                    )
                    self.cancel_model(self.id)
                    self._end()
            case Begin(decoder):
                self.decoder = decoder
            case Ended(reason):
                self._put(self.decoder.end(reason))
                self._end()
            case Fail(error):
                self._put([error])
                self._end()
            case EmptyAnswer(reason, load_ns):
                self._put([_empty_answer(reason, load_ns, self.started_ns)])
                self._end()
            case Cancel(reason):
                self.cancel_model(self.id)
                if reason is not None:  # the handler still reads: end it with a final chunk
                    if self.decoder is not None:
                        self._put(self.decoder.end(reason))
                    else:  # still waiting for its load or a slot
                        self._put([_empty_answer(reason, 0, self.started_ns)])
                self._end()
        return None

    def _put(self, items: list) -> None:
        for item in items:
            self.out.put(item)

    def _end(self) -> None:
        self.done = True
        self.out.put(DONE)
        self.stop()


def _empty_answer(reason: str, load_ns: int, started_ns: int) -> Chunk:
    total = time.perf_counter_ns() - started_ns
    return Chunk(done=True, done_reason=reason, load_duration=load_ns, total_duration=total)
