"""Admission while a request is read: a burst's overflow is answered 503 by waitress's I/O
thread, with no worker thread and no handler.

In a burst every thread hand-off waits its turn for the GIL: a worker that would only say
503 first competes with the admitted requests' workers, their sessions and the model thread
for it, and the I/O thread, which reads each request, waits behind all of them between two
`recv`s (docs/benchmarks.md "Overload" has the figures). So when the I/O thread has read a
whole inference request it counts it here (`Runtime.hold`) before any worker sees it: a
request that fits keeps its reservation, which the handler's `submit` takes; one that does
not is answered at once. What the governor would refuse is exactly what is refused here.

Only what can be decided for certain and cheaply is decided here; everything else goes the
ordinary way (the handler validates, resolves and reserves, and may answer 503 too):
- an inference POST (`PATHS`) with a body of at most `PEEK_LIMIT` bytes, that is a JSON
  object naming a `model` a request resolved before (`Runtime.hold`: no store access) and
  carrying something to run (`prompt`, `messages` or `input`: an empty request loads or
  unloads, which the model's queue does not bound);
- no `Origin` header: a browser's answer needs the app's CORS headers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from mlxollama.http import errors

log = structlog.get_logger("mlxollama.http")

RESERVATION = "mlxollama.reservation"  # the WSGI environ key of a request's reservation
PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
    }
)
PEEK_LIMIT = 64 << 10  # bytes of body parsed in the I/O thread (orjson: ~0.1 ms at this size)
CONTENT = ("prompt", "messages", "input")


BODIES = {path: errors.body_at(path, 503, errors.BUSY_MESSAGE) for path in PATHS}


class Admission:
    """`Limits.admission` for a daemon app: (method, path, header, size, body) -> a
    reservation to hand the handler, the bytes of a 503 to write, or None (not decided
    here)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.metrics = getattr(runtime, "metrics", None)

    def __call__(
        self,
        method: str,
        path: str,
        header: Callable[[str], str | None],
        size: int,
        body: Callable[[], bytes],
    ) -> Any:
        if method != "POST" or path not in PATHS or size > PEEK_LIMIT:
            return None
        if header("Origin") is not None:
            return None
        tic = time.perf_counter()
        model = model_to_run(body())
        if model is None:
            return None
        held = self.runtime.hold(model)
        if held is not False:
            return held  # a Reservation, or None: the handler decides
        request_id = uuid.uuid4().hex
        seconds = time.perf_counter() - tic
        log.warning(
            "queue.reject",
            method=method,
            path=path,
            model=model,
            status=503,
            request_id=request_id,
            duration_ms=round(seconds * 1000, 1),
        )
        if self.metrics is not None:
            self.metrics.request(path, method, 503, seconds)
        return errors.unavailable(BODIES[path], f"X-Request-Id: {request_id}")


def model_to_run(data: bytes) -> str | None:
    """The `model` of a JSON object body that carries something to run, else None."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    if not isinstance(model, str) or not any(body.get(key) for key in CONTENT):
        return None
    return model
