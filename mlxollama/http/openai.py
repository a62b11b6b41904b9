"""OpenAI's `/v1` API (chat completions, completions, embeddings, models), translated onto the
native path.

As in Ollama's `openai` package and middleware, an OpenAI body becomes an
`api.InferenceRequest` (`from_chat_request`, `from_completion_request`) and the session's
chunks become OpenAI objects (`ChatOutput`, `CompletionOutput`). The resources are native
`Inference` resources with another `Output`, so submitting, queue limits, the wait for the
first chunk, cancellation on disconnect and the request log are the native path's own.
Streams are server-sent events (`data: <json>` then `data: [DONE]`); errors have OpenAI's
shape (`http/errors.py`).

On purpose unlike Ollama: an absent `temperature` or `top_p` leaves the model's own value
(its Modelfile PARAMETER, else Ollama's default) instead of forcing 1.0; and the extra body
fields `num_ctx`, `keep_alive` and `options` (an Ollama options object) are honoured.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import falcon
import orjson
import structlog

from mlxollama import api
from mlxollama.api import field, json_type
from mlxollama.engine.grammar import schema_of
from mlxollama.engine.output import call_id
from mlxollama.errors import InvalidName, ModelNotFound
from mlxollama.http import embed
from mlxollama.http.errors import bad_request, log_failure, openai_error, status_of
from mlxollama.http.native import Inference, loggable_model, read_json, request_options
from mlxollama.store.store import StoredModel

log = structlog.get_logger("mlxollama.http")

SSE = "text/event-stream"
DONE_EVENT = b"data: [DONE]\n\n"
FINGERPRINT = "fp_mlxollama"

# OpenAI sampling fields that are Ollama options of the same name (all JSON numbers), with
# the ranges OpenAI accepts (a value outside is a 400 there, and here).
NUMBERS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}


# -- request bodies ------------------------------------------------------------------------


def number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """`body[key]`: a JSON number in [low, high] (OpenAI's wording when it is not)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f'invalid request: "{key}" must be a number, not {json_type(value)}')
    if value > high:
        raise bad_request(
            f"Invalid '{key}': decimal above maximum value. "
            f"Expected a value <= {high:g}, but got {value} instead."
        )
    if not value >= low:  # NaN too
        raise bad_request(
            f"Invalid '{key}': decimal below minimum value. "
            f"Expected a value >= {low:g}, but got {value} instead."
        )
    return value


def token_limit(body: dict[str, Any], key: str) -> int | None:
    """`max_tokens` / `max_completion_tokens`: an integer of at least 1, as OpenAI requires."""
    value = field(body, key, int)
    if value is not None and value < 1:
        raise bad_request(
            f"Invalid '{key}': integer below minimum value. "
            f"Expected a value >= 1, but got {value} instead."
        )
    return value


def stop_field(body: dict[str, Any], key: str = "stop") -> list[str] | None:
    """`stop` (Anthropic: `stop_sequences`): a string or an array of strings."""
    stop = body.get(key)
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise bad_request(f'invalid request: "{key}" must be a string or an array of strings')


def include_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: send a last chunk with the token counts."""
    stream_options = field(body, "stream_options", dict, {})
    return field(stream_options, "include_usage", bool, False)


def common(body: dict[str, Any], limits: tuple[str, ...]) -> dict[str, Any]:
    """What chat and completions share: the model's options and `keep_alive`, and refusals of
    what no model here can do. Explicit fields win over the extra `options` object; the first
    of the `limits` fields present (`max_completion_tokens`, `max_tokens`) is `num_predict`.
    The explicit fields keep OpenAI's ranges (temperature in [0, 2], top_p in [0, 1],
    penalties in [-2, 2], token limits >= 1, `n` the integer 1); the `options` object keeps
    Ollama's.

    Raises:
        falcon.HTTPBadRequest: a wrongly typed field, or one that cannot be honoured.
    """
    n = field(body, "n", int)  # `true` is not 1
    if n is not None and n != 1:
        raise bad_request(f"n: only 1 choice is supported, not {n}")
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported")
    include_usage(body)  # validated now, read when the answer is written
    options = request_options(body.get("options"))
    explicit: dict[str, Any] = {key: number(body, key, *NUMBERS[key]) for key in NUMBERS}
    explicit["seed"] = field(body, "seed", int)
    explicit["stop"] = stop_field(body)
    explicit["num_ctx"] = field(body, "num_ctx", int)
    given = [token_limit(body, key) for key in limits]
    explicit["num_predict"] = next((n for n in given if n is not None), None)
    # typed and range-checked as the native options are (a seed beyond int64, ...)
    options.update(api.parse_options(explicit))
    return {"options": options, "keep_alive": api.parse_keep_alive(body.get("keep_alive"))}


def model_of(body: dict[str, Any]) -> str:
    model = field(body, "model", str, "")
    if not model:
        raise bad_request("model is required")
    return model


CHAT_TEXT = ("text",)
CHAT_IMAGES = ("image_url",)


def content_text(
    content: Any, texts: tuple[str, ...] = CHAT_TEXT, images: tuple[str, ...] = CHAT_IMAGES
) -> Any:
    """A message's content: a string, or text parts joined by newlines (as vLLM does). The
    part types that hold text (`texts`) and images (a 400: no vision) differ by API."""
    if not isinstance(content, list):
        return content or ""
    joined = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else json_type(part)
        if kind in images:
            raise bad_request("images are not supported: no model here has vision")
        if kind not in texts:
            raise bad_request(f"content part of type {kind!r} is not supported: send text parts")
        if not isinstance(part.get("text"), str):
            raise bad_request('invalid request: a text content part needs "text", a string')
        joined.append(part["text"])
    return "\n".join(joined)


def chat_messages(raw: Any) -> list[api.Message]:
    """OpenAI's messages as the native ones: `developer` is `system`; an assistant's
    `tool_calls` (arguments as JSON strings, content possibly null) and a `tool` message's
    `tool_call_id` are kept, so the template renders the conversation's tool history (a
    tool message without `name` gets the name of the call it answers, as Ollama does)."""
    if raw is None:
        raise bad_request("'messages' is a required property")
    if not isinstance(raw, list):
        raise bad_request(f'invalid request: "messages" must be an array, not {json_type(raw)}')
    if not raw:
        raise bad_request("[] is too short - 'messages'")
    messages = []
    names: dict[str, str] = {}  # tool call id -> function name
    for m in raw:
        if not isinstance(m, dict):
            raise bad_request("each message must be an object")
        role = "system" if m.get("role") == "developer" else m.get("role")
        message = {"role": role, "content": content_text(m.get("content"))}
        if isinstance(m.get("reasoning"), str) and m["reasoning"]:  # Ollama's name for it
            message["thinking"] = m["reasoning"]
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = m["tool_calls"]
        elif role == "tool":
            call = m.get("tool_call_id")
            message["tool_call_id"] = call
            name = m.get("name")
            message["tool_name"] = name if name is not None else names.get(call or "")
        msg = api.Message.from_dict(message)
        for tc in msg.tool_calls or ():
            if tc.get("id"):
                names[tc["id"]] = tc["function"]["name"]
        messages.append(msg)
    return messages


def from_chat_request(body: dict[str, Any], request_id: str) -> api.InferenceRequest:
    """A `/v1/chat/completions` body as a chat request (tools are checked by the resource)."""
    model = model_of(body)
    messages = chat_messages(body.get("messages"))
    return api.InferenceRequest(
        model=model,
        kind="chat",
        messages=messages,
        request_id=request_id,
        format=response_schema(field(body, "response_format", dict, {"type": "text"})),
        tools=field(body, "tools", list, []),
        tool_choice=tool_choice(body.get("tool_choice")),
        think=reasoning(body),
        **chat_logprobs(body),
        **common(body, ("max_completion_tokens", "max_tokens")),
    )


def response_schema(
    response_format: dict[str, Any], param: str = "response_format", nested: bool = True
) -> dict[str, Any] | None:
    """OpenAI's `response_format` as the JSON schema the answer must match: none for
    `text`, any object for `json_object`, `json_schema.schema` for `json_schema`. The
    Responses API's `text.format` (`param`) holds `schema` itself (`nested` false)."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_of("json")
    if kind == "json_schema":
        spec = field(response_format, "json_schema", dict, None) if nested else response_format
        if spec is None:
            raise bad_request(f"Missing required parameter: '{param}.json_schema'.")
        return field(spec, "schema", dict, {"type": "object"})
    raise bad_request(
        f"Invalid value for '{param}.type' = {kind!r}. "
        "Supported values: 'text', 'json_object', 'json_schema'."
    )


def tool_choice(value: Any) -> str | dict[str, Any]:
    """`tool_choice`: "auto", "none", "required", or `{"type": "function", "function":
    {"name": ...}}` (the Responses API's `{"type": "function", "name": ...}` too), kept as
    `{"name": ...}`."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        fn = value.get("function", value)
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"name": fn["name"]}
    raise bad_request(
        'invalid tool_choice: use "auto", "none", "required" or '
        '{"type": "function", "function": {"name": ...}}'
    )


# OpenAI's reasoning_effort values as Ollama's think (Ollama's mapping)
EFFORTS = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def reasoning(body: dict[str, Any]) -> bool | str | None:
    """`reasoning.effort` (or `reasoning_effort`) as `think`; None when absent (the model's
    default: a thinking model thinks). A model that does not think refuses any effort but
    "none" with Ollama's 400 (`"<model>" does not support thinking`, from features.check)."""
    effort = field(field(body, "reasoning", dict, {}), "effort", str)
    if effort is None:
        effort = field(body, "reasoning_effort", str)
    if not effort:
        return None
    if effort not in EFFORTS:
        raise bad_request(
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")'
        )
    return EFFORTS[effort]


MAX_TOP_LOGPROBS = 20


def chat_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """`logprobs` (a boolean) and `top_logprobs` (0-20, only with `logprobs`), with OpenAI's
    400s."""
    logprobs = field(body, "logprobs", bool, False)
    top = field(body, "top_logprobs", int)
    if top is not None:
        _top_range("top_logprobs", top)
        if top > 0 and not logprobs:
            raise bad_request(
                "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled."
            )
    return {"logprobs": logprobs, "top_logprobs": top or 0}


def completion_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """The legacy `logprobs`: null (none), or how many alternatives to list per token (0-20;
    0 is the chosen token's alone)."""
    top = field(body, "logprobs", int)
    if top is None:
        return {"logprobs": False, "top_logprobs": 0}
    _top_range("logprobs", top)
    return {"logprobs": True, "top_logprobs": top}


def _top_range(key: str, value: int) -> None:
    if value < 0:
        raise bad_request(
            f"Invalid '{key}': integer below minimum value. "
            f"Expected a value >= 0, but got {value} instead."
        )
    if value > MAX_TOP_LOGPROBS:
        raise bad_request(
            f"Invalid '{key}': integer above maximum value. "
            f"Expected a value <= {MAX_TOP_LOGPROBS}, but got {value} instead."
        )


def from_completion_request(body: dict[str, Any], request_id: str) -> api.InferenceRequest:
    """A `/v1/completions` body as a generate request: the model's template is applied. An
    empty prompt loads the model (or unloads it with `keep_alive` 0), as on the native API.
    """
    model = model_of(body)
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    elif isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request('invalid request: "prompt" must be a string (or an array of one)')
    if field(body, "echo", bool, False):
        raise bad_request("echo is not supported")
    if body.get("best_of") not in (None, 1):
        raise bad_request("best_of: only 1 is supported")
    return api.InferenceRequest(
        model=model,
        kind="generate",
        prompt=prompt,
        request_id=request_id,
        **completion_logprobs(body),
        **common(body, ("max_tokens",)),
    )


# -- answers -------------------------------------------------------------------------------


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def finish_reason(final: api.Chunk, called: bool = False) -> str:
    """`length`, `tool_calls` when the answer called a tool (as Ollama: it replaces `stop`),
    else `stop` (load/unload too)."""
    if final.done_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's tool calls in OpenAI's shape: `id`, `index`, `type`, and `function` with the
    arguments as a JSON string (what the `openai` client hands to `json.loads`)."""
    out = []
    for i, call in enumerate(calls):
        fn = call["function"]
        out.append(
            {
                "id": call.get("id") or call_id(),
                "index": fn.get("index", i),
                "type": "function",
                "function": {
                    "name": fn["name"],
                    "arguments": orjson.dumps(fn.get("arguments") or {}).decode(),
                },
            }
        )
    return out


def usage(final: api.Chunk) -> dict[str, Any]:
    """OpenAI's usage: `prompt_tokens` counts the whole prompt, the part the prompt cache
    held too (`prompt_tokens_details.cached_tokens`), unlike `prompt_eval_count`."""
    prompt = final.prompt_eval_count + final.prompt_cached_count
    completion = final.eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": final.prompt_cached_count},
    }


class _Output:
    """One answer's id, creation time and model, shared by its chunks; SSE when streamed."""

    headers: ClassVar[Mapping[str, str]] = {"Content-Type": SSE, "Cache-Control": "no-cache"}
    streams_empty = True  # a stream always ends with a finish chunk and [DONE]
    prefix = ""
    object = ""

    def __init__(self, request: api.InferenceRequest, include_usage: bool):
        self.id = f"{self.prefix}-{request.request_id}"  # the X-Request-Id: logs line up
        self.created = int(time.time())
        self.model = request.model
        self.include_usage = include_usage
        self.logprobs = request.logprobs

    def envelope(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None  # OpenAI: null on every chunk but the usage chunk
        body.update(extra)
        return body

    def ending(self, final: api.Chunk) -> bytes:
        """After the finish chunk: the usage chunk if asked for, then [DONE]."""
        tail = event(self.envelope([], usage=usage(final))) if self.include_usage else b""
        return tail + DONE_EVENT

    def error(self, exc: BaseException) -> tuple[bytes, str]:
        """An error after the stream began: one `data: {"error": ...}` event, and the end
        (the OpenAI SDK raises `APIError` on it)."""
        status, message = status_of(exc)
        log_failure(exc, status, message)
        return event(openai_error(status, message)), message


def openai_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's logprob entries (`engine.decoder.logprob_entry`) in OpenAI's shape, where
    `bytes` is always there (null when the token has none) and `top_logprobs` is a list
    (empty when no alternatives were asked for)."""

    def one(e: dict[str, Any]) -> dict[str, Any]:
        return {"token": e["token"], "logprob": e["logprob"], "bytes": e.get("bytes")}

    return [
        {**one(e), "top_logprobs": [one(t) for t in e.get("top_logprobs", ())]} for e in entries
    ]


def legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> tuple[dict[str, Any], int]:
    """`/v1/completions` logprobs, OpenAI's legacy shape: `tokens`, `token_logprobs`,
    `top_logprobs` (one `{token: logprob}` object per token) and `text_offset` (where each
    token starts in the completion's text, from `offset`); plus `content`, the chat shape
    Ollama's own /v1/completions sends. Returns them and the offset after the last token."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    body = {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs", ())} for e in entries
        ],
        "text_offset": offsets,
        "content": openai_logprobs(entries),
    }
    return body, offset


class ChatOutput(_Output):
    """`chat.completion`, or `chat.completion.chunk` events: a first delta with the role, then
    content deltas, then a finish chunk with an empty delta (Ollama's v0.32.6 wire format).
    Reasoning is `reasoning` (Ollama's name; in `message` and in deltas, a piece with both
    reasoning and content becomes two deltas, as Ollama splits them); the logprobs of a
    piece ride on its first delta (`choices[0].logprobs.content`)."""

    prefix = "chatcmpl"
    object = "chat.completion.chunk"

    def __init__(self, request: api.InferenceRequest, include_usage: bool):
        super().__init__(request, include_usage)
        self.started = False
        self.called = False  # a tool call went out: the finish reason is `tool_calls`

    def chunk(self, chunk: api.Chunk) -> bytes:
        data = b""
        for i, delta in enumerate(self.deltas(chunk)):
            if not self.started:
                delta = {"role": "assistant", **delta}
                self.started = True
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            if i == 0 and chunk.logprobs:
                choice["logprobs"] = {"content": openai_logprobs(chunk.logprobs)}
            data += event(self.envelope([choice]))
        if chunk.tool_calls:  # tools: each call whole in one delta, with its index and id
            self.called = True
            delta = {"tool_calls": tool_calls(chunk.tool_calls)}
            if not self.started:
                delta = {"role": "assistant", **delta}
                self.started = True
            data += event(self.envelope([{"index": 0, "delta": delta, "finish_reason": None}]))
        if chunk.done:
            reason = finish_reason(chunk, self.called)
            choice = {"index": 0, "delta": {}, "finish_reason": reason}
            data += event(self.envelope([choice])) + self.ending(chunk)
        return data

    def deltas(self, chunk: api.Chunk) -> list[dict[str, Any]]:
        """The deltas one chunk makes: its reasoning, then its content (the first delta of
        the stream always goes out, to carry the role; so does a piece's logprobs)."""
        out: list[dict[str, Any]] = []
        if chunk.thinking:
            out.append({"reasoning": chunk.thinking})
        if chunk.text or not (out or self.started) or (chunk.logprobs and not out):
            out.append({"content": chunk.text})
        return out

    def whole(self, final: api.Chunk) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": final.text}
        if final.thinking:
            message["reasoning"] = final.thinking
        if final.tool_calls:  # tools
            message["tool_calls"] = tool_calls(final.tool_calls)
        reason = finish_reason(final, bool(final.tool_calls))
        choice = {"index": 0, "message": message, "finish_reason": reason}
        if self.logprobs:
            choice["logprobs"] = {"content": openai_logprobs(final.logprobs or [])}
        return self.envelope([choice], object="chat.completion", usage=usage(final))


class CompletionOutput(_Output):
    """`text_completion` objects: text pieces with a null finish_reason, the last one with it."""

    prefix = "cmpl"
    object = "text_completion"

    def __init__(self, request: api.InferenceRequest, include_usage: bool):
        super().__init__(request, include_usage)
        self.offset = 0  # `text_offset` of the next token

    def choice(self, chunk: api.Chunk, reason: str | None) -> dict[str, Any]:
        logprobs = None
        if self.logprobs:
            logprobs, self.offset = legacy_logprobs(chunk.logprobs or [], self.offset)
        return {"text": chunk.text, "index": 0, "finish_reason": reason, "logprobs": logprobs}

    def chunk(self, chunk: api.Chunk) -> bytes:
        if not chunk.done:
            if not chunk.text and not chunk.logprobs:
                return b""
            return event(self.envelope([self.choice(chunk, None)]))
        last = event(self.envelope([self.choice(chunk, finish_reason(chunk))]))
        return last + self.ending(chunk)

    def whole(self, final: api.Chunk) -> dict[str, Any]:
        choices = [self.choice(final, finish_reason(final))]
        return self.envelope(choices, usage=usage(final))


# -- resources -----------------------------------------------------------------------------


class ChatCompletions(Inference):
    """POST /v1/chat/completions"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        request = from_chat_request(body, request_id)
        if field(body, "functions", list, []):
            raise bad_request('"functions" is deprecated: send "tools" instead')
        return request, field(body, "stream", bool, False)

    def output(self, request: api.InferenceRequest, body: dict[str, Any]) -> ChatOutput:
        return ChatOutput(request, include_usage(body))


class Completions(Inference):
    """POST /v1/completions"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        request = from_completion_request(body, request_id)
        request.suffix = field(body, "suffix", str, "")
        return request, field(body, "stream", bool, False)

    def output(self, request: api.InferenceRequest, body: dict[str, Any]) -> CompletionOutput:
        return CompletionOutput(request, include_usage(body))


def model_object(model: StoredModel) -> dict[str, Any]:
    """One `/v1/models` entry: `owned_by` is the namespace (`library` for plain names)."""
    return {
        "id": model.name.display(),
        "object": "model",
        "created": int(model.modified_at),
        "owned_by": model.name.namespace,
    }


class Models:
    """GET /v1/models"""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = [model_object(m) for m in self.runtime.store.list()]
        resp.media = {"object": "list", "data": data}


class Model:
    """GET /v1/models/{model}; the name may hold slashes (`hf.co/org/repo:tag`)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        try:
            stored = self.runtime.store.get(model)
        except InvalidName:  # no such model can exist: OpenAI's answer is a 404 too
            raise ModelNotFound(model) from None
        resp.media = model_object(stored)


ENCODINGS = ("float", "base64")


class Embeddings(embed.EmbedResource):
    """POST /v1/embeddings: the native embed path (`http/embed.py`), OpenAI's shapes."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        raw = body.get("input")
        if isinstance(raw, list) and raw and not isinstance(raw[0], str):
            raise bad_request("token arrays are not supported as input: send text")
        inputs = embed.parse_inputs(raw, "invalid input")
        if not inputs:  # unlike /api/embed, nothing to embed is an error here, as in Ollama
            raise bad_request("invalid input")
        encoding = field(body, "encoding_format", str, "float")
        if encoding not in ENCODINGS:
            raise bad_request(
                f"Invalid value for 'encoding_format' = {encoding}. "
                f"Supported values: {list(ENCODINGS)}."
            )
        request = embed.embed_request(body, req.context.request_id, inputs)

        def render(result: api.Embeddings) -> dict[str, Any]:
            if encoding == "base64":  # little-endian float32 bytes, as OpenAI sends them
                rows = [
                    base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors
                ]
            else:
                rows = list(result.vectors)
            return {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": row, "index": i}
                    for i, row in enumerate(rows)
                ],
                "model": request.model,
                "usage": {
                    "prompt_tokens": result.prompt_eval_count,
                    "total_tokens": result.prompt_eval_count,
                },
            }

        self.answer(req, resp, request, render)
