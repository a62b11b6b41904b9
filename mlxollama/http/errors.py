"""The one place where errors become HTTP statuses and Ollama's `{"error": "..."}` bodies.

This is Ollama's `handleScheduleError`: domain errors from `mlxollama.errors` (and the
`ValueError`s that request parsing raises) map to 400, 404 and 503, and a registry's failures
(pull, push) to 401, 404 and 502; anything else is a 500 whose message is the exception's
text. Only those unexpected 500s are logged with a traceback (rendered without locals); a
refusal (4xx, a full queue's 503) logs no line of its own (`log_failure`). Falcon's own
errors (no route, wrong method, body too large, the 400s raised while reading a request) get
the same body shape. Under `/v1` the body is OpenAI's error object instead, with the same status, so
that OpenAI SDKs raise their typed errors (`BadRequestError`, `NotFoundError`, ...); under
`/v1/messages` it is Anthropic's (`{"type": "error", "error": {"type", "message"}}`).
"""

from __future__ import annotations

import falcon
import orjson
import structlog

from mlxollama.errors import (
    BlobNotFound,
    Busy,
    DigestMismatch,
    MlxOllamaError,
    ModelNotFound,
    RegistryError,
    RemoteNotFound,
    Unauthorized,
)

log = structlog.get_logger("mlxollama.http")

# Ollama's exact text (two spaces after the full stop); clients match on it.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and the `error` text for an exception."""
    if isinstance(exc, falcon.HTTPError):
        return exc.status_code, message_of(exc)
    if isinstance(exc, Busy):
        return 503, BUSY_MESSAGE
    if isinstance(exc, ModelNotFound):
        return 404, str(exc)
    if isinstance(exc, RegistryError):
        # the registry refused (401/403: credentials), lacks the model, or failed (502: a bad
        # gateway, unreachable included); the message names the registry
        if isinstance(exc, Unauthorized):
            return 401, str(exc)
        if isinstance(exc, RemoteNotFound):
            return 404, str(exc)
        return 502, str(exc)
    if isinstance(exc, BlobNotFound):  # a stored model lost a file: Ollama's 404 and advice
        return 404, f"{exc}: try pulling or creating the model again"
    if isinstance(exc, DigestMismatch):
        # A stored blob that no longer matches its name: the store is damaged, not the request.
        # An upload whose bytes miss the announced digest is a 400, raised by the blob handler.
        return 500, str(exc)
    if isinstance(exc, ValueError):
        # InvalidName, InvalidDigest, InvalidOption, InvalidModelfile, UnsupportedModel, and
        # the ValueErrors of request parsing (`api.parse_keep_alive`, quantization names, ...).
        return 400, str(exc)
    return 500, str(exc) or type(exc).__name__


def message_of(exc: falcon.HTTPError) -> str:
    if isinstance(exc, falcon.HTTPRouteNotFound):
        return "404 page not found"  # gin's text, which Ollama answers for unknown routes
    return exc.description or exc.title


def bad_request(message: str) -> falcon.HTTPBadRequest:
    """A 400 with `message` as the `error` text."""
    return falcon.HTTPBadRequest(title="400 Bad Request", description=message)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


OPENAI_PREFIX = "/v1"
OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def is_openai(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error(status: int, message: str) -> dict:
    """OpenAI's error object (Ollama's `openai.NewError`): the type follows the status."""
    kind = OPENAI_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


ANTHROPIC_PREFIX = "/v1/messages"
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def anthropic_error(status: int, message: str) -> dict:
    """Anthropic's error object (Ollama's `anthropic.NewError`): the type follows the
    status, so that Anthropic SDKs raise their typed errors."""
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def body_at(path: str, status: int, message: str) -> bytes:
    """The error body in the shape of the API under `path`: Anthropic's, OpenAI's or
    Ollama's (the waitress layer's refusals use it too)."""
    if is_anthropic(path):
        return orjson.dumps(anthropic_error(status, message))
    if is_openai(path):
        return orjson.dumps(openai_error(status, message))
    return error_body(message)


def unavailable(body: bytes, *headers: str) -> bytes:
    """A whole 503 answer (JSON `body`, extra `headers` lines) that the waitress layer writes
    to a socket itself, with no worker and no app; the connection closes after it."""
    head = "".join(f"{line}\r\n" for line in headers)
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%sConnection: close\r\n\r\n%s" % (len(body), head.encode(), body)
    )


def body_for(req: falcon.Request, status: int, message: str) -> bytes:
    """The error body in the shape of the API the request was for."""
    return body_at(req.path, status, message)


def expected(exc: BaseException) -> bool:
    """A refusal or a failure we name (a full queue, a bad request, a registry's answer), as
    opposed to a bug: only the unexpected ones deserve a traceback."""
    return isinstance(exc, (falcon.HTTPError, MlxOllamaError, ValueError))


def log_failure(exc: BaseException, status: int, message: str) -> None:
    """Log a failed request: nothing more for a 4xx or a 503 (the `request.end` line has the
    status and message, and the actor that refused logged `queue.reject`), one line for a
    named failure (502, a damaged blob), a traceback (without locals) only for a bug."""
    if status < 500 or isinstance(exc, Busy):
        return
    if expected(exc):
        log.warning("request.failed", status=status, error=message)
    else:
        log.error("request.failed", status=status, error=message, exc_info=exc)


def handle_exception(req: falcon.Request, resp: falcon.Response, exc: Exception, params) -> None:
    """Falcon error handler for every exception, HTTPError included."""
    status, message = status_of(exc)
    log_failure(exc, status, message)
    if isinstance(exc, falcon.HTTPError) and exc.headers:
        resp.set_headers(exc.headers)
    req.context.error = message
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body_for(req, status, message)
    resp.stream = None


def serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's error serializer (used if Falcon serializes an HTTPError itself)."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body_for(req, exc.status_code, message_of(exc))


def register(app: falcon.App) -> None:
    """Install the handlers on `app` (most specific first is Falcon's job: it matches by MRO)."""
    app.set_error_serializer(serialize_http_error)
    app.add_error_handler(Exception, handle_exception)
    app.add_error_handler(falcon.HTTPError, handle_exception)
