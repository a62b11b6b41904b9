"""Ollama's native `/api/*` resources: thin translations between HTTP bodies and the runtime.

Generate and Chat validate the body, build an `InferenceRequest`, `submit` it, and wait for
the session's first item before sending any header, so that a load failure, an unknown model
or a full queue still gets its proper status. Then they stream NDJSON lines (or collect one
object when `stream` is false), polling the session with a short timeout and checking
waitress's `client_disconnected` on every timeout; a client that goes away cancels its
session. An error after the first line becomes a final `{"error": "..."}` line, as in Ollama.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Protocol

import falcon
import orjson
import structlog

from mlxollama import api
from mlxollama.actors.runtime import RunningModel, Session
from mlxollama.api import field, json_type
from mlxollama.engine.features import check, validate
from mlxollama.engine.grammar import schema_of
from mlxollama.errors import BlobNotFound, InvalidName, ModelNotFound
from mlxollama.http.admission import RESERVATION
from mlxollama.http.errors import bad_request, error_body, log_failure, status_of
from mlxollama.models import catalog
from mlxollama.models.catalog import capabilities
from mlxollama.store.names import parse_name

log = structlog.get_logger("mlxollama.http")

POLL = 0.05  # seconds between disconnect checks while a session is silent
NDJSON = "application/x-ndjson"
THINK_LEVELS = ("high", "medium", "low", "max")
CLIENT_CLOSED = "499 Client Closed Request"  # nginx's status, which Ollama logs for this case


# -- request bodies ------------------------------------------------------------------------


def read_json(req: falcon.Request) -> dict[str, Any]:
    """The request body as a JSON object, whatever its Content-Type (curl -d sends a form type).

    Raises:
        falcon.HTTPBadRequest: no body, malformed JSON, or JSON that is not an object.
    """
    data = req.bounded_stream.read()
    if not data.strip():
        raise bad_request("missing request body")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"invalid JSON in request body: {e}") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, not {json_type(body)}")
    return body


def model_field(body: dict[str, Any]) -> str:
    """`model` (or the legacy `name`); 400 `model is required` when both are missing."""
    name = api.model_of(body)
    if not name:
        raise bad_request("model is required")
    return name


def loggable_model(body: dict[str, Any]) -> str | None:
    value = body.get("model") or body.get("name")
    return value if isinstance(value, str) and value else None


def request_options(raw: Any) -> dict[str, Any]:
    """A request's `options`: typed as `api.parse_options` does; unknown names are logged and
    dropped, as Ollama does for requests (a Modelfile PARAMETER with one is an error)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad_request(f'invalid request: "options" must be an object, not {json_type(raw)}')
    unknown = [k for k in raw if k not in api.OPTION_TYPES and k not in api.DEPRECATED_OPTIONS]
    if unknown:
        log.warning("request.unknown_options", options=unknown)
    return api.parse_options({k: v for k, v in raw.items() if k not in unknown})


# -- streams -------------------------------------------------------------------------------


class ClosingStream:
    """An iterable for `resp.stream` whose `cleanup` runs exactly once: when its lines end,
    when waitress closes it (the client went away: GeneratorExit at the `yield`), or when it
    is closed before its first line was asked for."""

    def __init__(self, lines: Iterator[bytes], cleanup: Callable[[], None]):
        self._lines = lines
        self._cleanup = cleanup
        self._iter: Iterator[bytes] | None = None
        self._cleaned = False

    def __iter__(self) -> Iterator[bytes]:
        self._iter = self._run()
        return self._iter

    def _run(self) -> Iterator[bytes]:
        try:
            yield from self._lines
        finally:
            self._finish()

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()
        self._finish()

    def _finish(self) -> None:
        if not self._cleaned:
            self._cleaned = True
            self._cleanup()


def error_line(exc: BaseException) -> tuple[bytes, str]:
    """The final NDJSON line for an error after streaming began, and its message."""
    status, message = status_of(exc)
    log_failure(exc, status, message)
    return error_body(message) + b"\n", message


def progress_answer(
    req: falcon.Request,
    resp: falcon.Response,
    progress: Iterator[dict[str, Any]],
    stream: bool,
    finish: Callable[[], str | None],
    left_early: str | None = None,
) -> None:
    """Ollama's answer for a long job's progress (create, pull, push).

    The first object is read before any header, so an early error gets its status. With
    `stream` false the answer is the last object; else NDJSON lines, and an error after the
    first line is a final `{"error": ...}` line. `finish` runs once when the answer is over
    or the client has gone (it may return an error to log); `left_early` is what the log
    says of a client that left before the end.
    """
    try:
        first = next(progress, None)
    except BaseException:
        finish()
        raise
    if not stream:
        try:
            rest = deque(progress, maxlen=1)  # Ollama answers the last progress object
        finally:
            finish()
        resp.media = rest[-1] if rest else first or api.SUCCESS.to_json()
        return
    outcome: dict[str, str | None] = {"error": left_early}

    def lines() -> Iterator[bytes]:
        if first is not None:
            yield orjson.dumps(first) + b"\n"
        try:
            for item in progress:
                yield orjson.dumps(item) + b"\n"
            outcome["error"] = None
        except Exception as exc:
            line, outcome["error"] = error_line(exc)
            yield line

    def cleanup() -> None:
        error = finish()
        req.context.log_end(200, None, outcome["error"] or error)

    req.context.streaming = True
    resp.content_type = NDJSON
    resp.stream = ClosingStream(lines(), cleanup)


def _never() -> bool:
    return False


def disconnect_check(req: falcon.Request) -> Callable[[], bool]:
    return req.env.get("waitress.client_disconnected", _never)


def client_gone(req: falcon.Request, resp: falcon.Response) -> None:
    """Nothing can be sent: the client left before the answer began."""
    req.context.error = "client disconnected"
    resp.status = CLIENT_CLOSED
    resp.data = error_body("request canceled")


# -- generate and chat ---------------------------------------------------------------------


class Output(Protocol):
    """How an inference answer is written: the stream's bytes for each chunk and for an error
    after streaming began, or one object when not streaming. One per request (it may keep
    state, such as whether the first chunk went out)."""

    headers: Mapping[str, str]
    streams_empty: bool  # stream a load/unload answer too (native: one object)

    def chunk(self, chunk: api.Chunk) -> bytes: ...

    def error(self, exc: BaseException) -> tuple[bytes, str]: ...

    def whole(self, final: api.Chunk) -> dict[str, Any]: ...


class Ndjson:
    """Ollama's native answers: one JSON object per line."""

    headers: ClassVar[Mapping[str, str]] = {"Content-Type": NDJSON}
    streams_empty = False

    def __init__(self, render: Callable[[api.Chunk], dict[str, Any]]):
        self.render = render

    def chunk(self, chunk: api.Chunk) -> bytes:
        return orjson.dumps(self.render(chunk)) + b"\n"

    def error(self, exc: BaseException) -> tuple[bytes, str]:
        return error_line(exc)

    def whole(self, final: api.Chunk) -> dict[str, Any]:
        return self.render(final)


class Inference:
    """What Generate and Chat share: validation, submit, first chunk, stream or collect."""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        raise NotImplementedError

    def render(self, model: str, chunk: api.Chunk) -> dict[str, Any]:
        raise NotImplementedError

    def output(self, request: api.InferenceRequest, body: dict[str, Any]) -> Output:
        """How the answer is written: NDJSON here; `/v1` overrides it with SSE."""
        return Ndjson(lambda chunk: self.render(request.model, chunk))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        request, stream = self.parse(body, req.context.request_id)
        validate(request)  # schemas, tools, ranges: a 400 before any model loads
        if request.kind != "embed":
            stored = self.runtime.store.get(request.model)
            check(request, str(stored.name), capabilities(self.runtime.store, stored))
        out = self.output(request, body)
        session = self.runtime.submit(request, req.env.get(RESERVATION))
        disconnected = disconnect_check(req)
        first = first_chunk(session, disconnected)
        if first is None:
            client_gone(req, resp)
            return
        # a native load/unload answer is one object, as in Ollama
        if stream and (out.streams_empty or not request.empty):
            req.context.streaming = True
            outcome = _Outcome()

            def cleanup() -> None:
                if not session.finished:
                    session.cancel()
                    outcome.error = outcome.error or "client disconnected"
                req.context.log_end(200, outcome.final, outcome.error)

            resp.set_headers(out.headers)
            resp.stream = ClosingStream(_lines(session, first, out, disconnected, outcome), cleanup)
            return
        final = _collect(session, first, disconnected)
        if final is None:
            client_gone(req, resp)
            return
        req.context.stats = final
        resp.media = out.whole(final)

    # -- validation shared by both --

    def common(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """What generate and chat share: options, keep_alive, format, think, logprobs."""
        think = body.get("think")
        if think is not None and not isinstance(think, (bool, str)):
            raise bad_request(
                f'invalid request: "think" must be a boolean or a string, not {json_type(think)}'
            )
        if isinstance(think, str) and think not in THINK_LEVELS:
            raise bad_request(
                f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)'
            )
        field(body, "truncate", bool)
        field(body, "shift", bool)
        return {
            "options": request_options(body.get("options")),
            "keep_alive": api.parse_keep_alive(body.get("keep_alive")),
            "format": schema_of(body.get("format")),
            "think": think,
            "logprobs": field(body, "logprobs", bool, False),
            "top_logprobs": field(body, "top_logprobs", int, 0),
        }

    def require_model(self, model: str) -> None:
        """Ollama looks the model up (404) before it checks capabilities (400)."""
        self.runtime.store.get(model)

    def unsupported(self, model: str, capability: str) -> falcon.HTTPBadRequest:
        """Ollama's capability error: `<full name> does not support <capability>`. Clients
        match on "does not support tools" to retry without tools, so the wording is kept."""
        self.require_model(model)
        return bad_request(f"{parse_name(model)} does not support {capability}")


class Generate(Inference):
    """POST /api/generate"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        wire = api.GenerateRequest.from_json(body)
        suffix = field(body, "suffix", str, "")
        context = field(body, "context", list, [])
        images = field(body, "images", list, [])
        if wire.raw and (wire.template or wire.system or context):
            raise bad_request("raw mode does not support template, system, or context")
        model = model_field(body)
        common = self.common(body, model)
        if context:
            raise bad_request(
                '"context" is not supported: mlxollama does not return context token ids; '
                "send the conversation with /api/chat instead"
            )
        if images:
            raise self.unsupported(model, "vision")
        request = api.InferenceRequest(
            model=model,
            kind="generate",
            prompt=wire.prompt,
            suffix=suffix,
            system=wire.system,
            template=wire.template,
            raw=bool(wire.raw),
            request_id=request_id,
            **common,
        )
        return request, wire.stream is not False

    def render(self, model: str, chunk: api.Chunk) -> dict[str, Any]:
        return api.GenerateResponse.from_chunk(model, chunk).to_json()


class Chat(Inference):
    """POST /api/chat"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        wire = api.ChatRequest.from_json(body)
        tools = field(body, "tools", list, [])
        model = model_field(body)
        messages = [api.Message.from_dict(m) for m in wire.messages]
        common = self.common(body, model)
        if any(m.images for m in messages):
            raise self.unsupported(model, "vision")
        request = api.InferenceRequest(
            model=model,
            kind="chat",
            messages=messages,
            tools=tools,
            request_id=request_id,
            **common,
        )
        return request, wire.stream is not False

    def render(self, model: str, chunk: api.Chunk) -> dict[str, Any]:
        return api.ChatResponse.from_chunk(model, chunk).to_json()


class _Outcome:
    final: api.Chunk | None = None
    error: str | None = None


def first_chunk(session: Session, disconnected: Callable[[], bool]) -> api.Chunk | None:
    """Wait for the session's first chunk (its error is raised); None if the client left."""
    try:
        while True:
            try:
                chunk = session.get(POLL)
            except StopIteration:
                raise RuntimeError("the generation ended without an answer") from None
            if chunk is not None:
                return chunk
            if disconnected():
                session.cancel()
                return None
    except BaseException:
        session.cancel()
        raise


def _collect(
    session: Session, first: api.Chunk, disconnected: Callable[[], bool]
) -> api.Chunk | None:
    """The final chunk with every piece's text joined; None if the client left."""
    parts: list[api.Chunk] = []
    chunk: api.Chunk | None = first
    try:
        while True:
            if chunk is not None:
                parts.append(chunk)
                if chunk.done:
                    return api.join_chunks(parts)
            elif disconnected():
                session.cancel()
                return None
            try:
                chunk = session.get(POLL)
            except StopIteration:
                raise RuntimeError("the generation ended without a final chunk") from None
    except BaseException:
        session.cancel()
        raise


def _lines(
    session: Session,
    first: api.Chunk,
    out: Output,
    disconnected: Callable[[], bool],
    outcome: _Outcome,
) -> Iterator[bytes]:
    chunk: api.Chunk | None = first
    while True:
        if chunk is not None:
            yield out.chunk(chunk)
            if chunk.done:
                outcome.final = chunk
                return
        elif disconnected():
            outcome.error = "client disconnected"
            return
        try:
            chunk = session.get(POLL)
        except Exception as exc:  # StopIteration too: the session ended without a final chunk
            if isinstance(exc, StopIteration):
                exc = RuntimeError("the generation ended without a final chunk")
            line, outcome.error = out.error(exc)
            yield line
            return


# -- the model list, details, residency, copy and delete -----------------------------------


class Tags:
    """GET/HEAD /api/tags"""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        store = self.runtime.store
        models = []
        for model in store.list():
            try:
                models.append(catalog.list_entry(store, model))
            except (BlobNotFound, OSError, ValueError) as e:
                log.warning("tags.skipped", model=model.name.display(), error=str(e))
        resp.media = api.ListResponse(models).to_json()

    on_head = on_get


class Show:
    """POST /api/show"""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        name = model_field(body)
        wire = api.ShowRequest.from_json(body)
        store = self.runtime.store
        resp.media = catalog.show(store, store.get(name), bool(wire.verbose)).to_json()


def ps_entry(m: RunningModel) -> api.ProcessModel:
    return api.ProcessModel(
        name=m.name,
        model=m.name,
        size=m.size,
        digest=m.digest,
        details=api.ModelDetails.from_json(m.details),
        expires_at=api.expires_at(m.expires_at),
        size_vram=m.size if getattr(m, "on_gpu", True) else 0,
        context_length=m.context_length,
        prompt_cache_size=getattr(m, "prompt_cache", 0) or None,
        weights=getattr(m, "weights", "") or None,
        kv_cache_type=getattr(m, "kv_cache_type", None),
    )


class Ps:
    """GET /api/ps"""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        running = sorted(self.runtime.ps(), key=lambda m: m.expires_at, reverse=True)
        resp.media = api.ProcessResponse([ps_entry(m) for m in running]).to_json()


class Copy:
    """POST /api/copy"""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        source = field(body, "source", str, "")
        destination = field(body, "destination", str, "")
        req.context.log_start(source or None)
        if not source or not destination:
            raise bad_request("source and destination are required")
        for label, value in (("source", source), ("destination", destination)):
            try:
                parse_name(value)
            except InvalidName:
                raise bad_request(f'{label} "{value}" is invalid') from None
        try:
            self.runtime.copy(source, destination)
        except ModelNotFound:
            raise falcon.HTTPNotFound(description=f'model "{source}" not found') from None


class Delete:
    """DELETE /api/delete"""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        self.runtime.delete(model_field(body))
