"""The Falcon app: every route in one place, JSON through orjson, Ollama's error bodies, a
request ID per request, and one `request.start` / `request.end` log line per request.

`request.end` is written by `RequestLog.process_response` for ordinary answers. A streamed
answer sets `req.context.streaming`, and its iterator writes `request.end` when it ends,
because Falcon runs `process_response` before the stream is iterated.
"""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

import falcon
import falcon.media
import orjson
import structlog

from mlxollama import __version__
from mlxollama.api import Chunk, Embeddings
from mlxollama.config import Config
from mlxollama.http import (
    anthropic,
    blobs,
    create,
    embed,
    errors,
    guards,
    native,
    openai,
    ops,
    responses,
    transfer,
)
from mlxollama.http.admission import Admission
from mlxollama.metrics import Metrics

log = structlog.get_logger("mlxollama.http")


class RequestLog:
    """Binds a fresh `request_id` (also sent as `X-Request-Id`) and logs start and end; the
    end also counts the request in `metrics` (by route template, never the raw path)."""

    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        structlog.contextvars.clear_contextvars()  # waitress reuses its worker threads
        request_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        resp.set_header("X-Request-Id", request_id)
        ctx = req.context
        ctx.request_id = request_id
        ctx.started_at = time.perf_counter()
        ctx.started = ctx.ended = ctx.streaming = False
        ctx.model = ctx.error = ctx.stats = None
        ctx.metrics = self.metrics
        ctx.log_start = partial(_log_start, req)
        ctx.log_end = partial(_log_end, req)

    def process_resource(self, req, resp, resource, params) -> None:
        # Resources that read a model name from the body log the start themselves, with it.
        if not getattr(resource, "reads_model", False):
            req.context.log_start()

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        if getattr(req.context, "streaming", False):
            return
        req.context.log_start()
        req.context.log_end(resp.status_code, req.context.stats)


def _log_start(req: falcon.Request, model: Any = None) -> None:
    ctx = req.context
    if ctx.started:
        return
    ctx.started = True
    fields: dict[str, Any] = {"method": req.method, "path": req.path}
    if model is not None:
        ctx.model = model
        fields["model"] = model
    log.info("request.start", **fields)


def _log_end(
    req: falcon.Request,
    status: int,
    chunk: Chunk | Embeddings | None = None,
    error: str | None = None,
) -> None:
    ctx = req.context
    if ctx.ended:
        return
    ctx.ended = True
    seconds = time.perf_counter() - ctx.started_at
    if ctx.metrics is not None:
        ctx.metrics.request(req.uri_template, req.method, status, seconds)
    fields: dict[str, Any] = {
        "status": status,
        "request_id": ctx.request_id,
        "duration_ms": round(seconds * 1000, 1),
    }
    if ctx.model is not None:
        fields["model"] = ctx.model
    if chunk is not None:  # a final Chunk, or an Embeddings answer (no eval counts)
        fields["done_reason"] = chunk.done_reason
        for name in ("prompt_eval_count", "prompt_cached_count", "eval_count"):
            if hasattr(chunk, name):
                fields[name] = getattr(chunk, name)
        for name in ("total", "load", "prompt_eval", "eval"):
            if hasattr(chunk, f"{name}_duration"):
                fields[f"{name}_ms"] = round(getattr(chunk, f"{name}_duration") / 1e6, 1)
    if error or ctx.error:
        fields["error"] = error or ctx.error
    log.info("request.end", **fields)


class BodyLimit:
    """Answers 413 (as JSON) when a request body is larger than `limit` bytes.

    The same limit is enforced earlier by the waitress layer (`mlxollama.http.channel`, which
    finds this middleware on the `DaemonApp`): on `Content-Length` before the body is read, and on a
    chunked body as it arrives. This check stays for servers without that layer (Falcon's
    test client). Paths under `exempt` (blob uploads: model files) are not limited here.
    """

    def __init__(self, limit: int, exempt: tuple[str, ...] = ("/api/blobs/",)):
        self.limit = limit
        self.exempt = exempt

    def limit_for(self, path: str) -> int | None:
        """The body limit for `path`; None for exempt paths (only the server's outer cap)."""
        return None if path.startswith(self.exempt) else self.limit

    @staticmethod
    def message(size: int | None, limit: int) -> str:
        """The 413's text; `size` None: a chunked body, cut off when it passed the limit."""
        got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return f"request body too large: {got}, the limit is {limit} bytes (MLXOLLAMA_MAX_BODY)"

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        size = req.content_length
        limit = self.limit_for(req.path)
        if size is not None and limit is not None and size > limit:
            raise falcon.HTTPContentTooLarge(
                title="413 Content Too Large", description=self.message(size, limit)
            )


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Ollama is running"

    on_head = on_get


class Version:
    """Ollama's `{"version": ...}`, plus an `mlxollama` object (the engine's backend, BLAS and
    MLX version, MLX's active and peak memory): how `mlxctl` tells this daemon from any other
    server on its port, and what `mlxctl ps` and `mlxctl bench` show of the engine."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from mlxollama import engine  # loaded already in the daemon; cached after the first

        resp.media = {"version": __version__, "mlxollama": {**engine.describe(), **engine.memory()}}

    on_head = on_get


class DaemonApp(falcon.App):
    """Falcon's App, carrying the checks the server runs while it reads a request
    (`mlxollama.http.channel`): `guards` (Host, Origin, API key) and `body_limit` on its
    headers, `admission` on a whole inference request (`http/admission.py`)."""

    def __init__(
        self,
        guards: guards.Guards,
        body_limit: BodyLimit,
        metrics: Metrics | None = None,
        admission: Admission | None = None,
    ):
        super().__init__(middleware=[RequestLog(metrics), guards, body_limit])
        self.guards = guards
        self.body_limit = body_limit
        self.admission = admission


def create_app(runtime, config: Config) -> DaemonApp:
    """The WSGI app serving Ollama's native API, the OpenAI `/v1` API and Anthropic's
    `/v1/messages` on top of `runtime`.

    Args:
        runtime: a started `mlxollama.actors.runtime.Runtime` (or a fake with its methods).
        config: settings (`Config`); reads `max_body`, and `host`, `origins` and `api_key`
            for the guards (`http/guards.py`), which run before anything reads a body.
    """
    app = DaemonApp(
        guards.Guards(config),
        BodyLimit(config.max_body),
        getattr(runtime, "metrics", None),
        Admission(runtime) if hasattr(runtime, "hold") else None,
    )
    json = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json
    errors.register(app)

    app.add_route("/", Health())
    app.add_route("/api/version", Version())
    app.add_route("/api/generate", native.Generate(runtime))
    app.add_route("/api/chat", native.Chat(runtime))
    app.add_route("/api/embed", embed.Embed(runtime))
    app.add_route("/api/embeddings", embed.LegacyEmbeddings(runtime))
    app.add_route("/api/tags", native.Tags(runtime))
    app.add_route("/api/show", native.Show(runtime))
    app.add_route("/api/ps", native.Ps(runtime))
    app.add_route("/api/copy", native.Copy(runtime))
    app.add_route("/api/delete", native.Delete(runtime))
    app.add_route("/api/create", create.Create(runtime))
    app.add_route("/api/blobs/{digest}", blobs.Blob(runtime))
    app.add_route("/api/pull", transfer.Pull(runtime))
    app.add_route("/api/push", transfer.Push(runtime))
    app.add_route("/api/health", ops.Readiness(runtime))
    app.add_route("/api/stop", ops.Stop(runtime))
    app.add_route("/api/requests/{request_id}", ops.RunningRequest(runtime))
    app.add_route("/metrics", ops.MetricsPage(runtime))
    app.add_route("/v1/chat/completions", openai.ChatCompletions(runtime))
    app.add_route("/v1/completions", openai.Completions(runtime))
    app.add_route("/v1/embeddings", openai.Embeddings(runtime))
    app.add_route("/v1/responses", responses.Responses(runtime))
    app.add_route("/v1/models", openai.Models(runtime))
    app.add_route("/v1/models/{model:path}", openai.Model(runtime))
    app.add_route("/v1/messages", anthropic.Messages(runtime))
    app.add_route("/v1/messages/count_tokens", anthropic.CountTokens(runtime))
    return app
