"""Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`),
translated onto the native path.

As in Ollama's `anthropic` middleware, a Messages body becomes a chat
`api.InferenceRequest` (`from_messages_request`): `system` becomes a system message, content
blocks become Ollama messages (`tool_use` blocks an assistant's `tool_calls`, `tool_result`
blocks `tool` messages, `thinking` blocks an assistant's `thinking`), `tools` become
functions and `thinking` becomes `think`. The resources are native `Inference` resources with
another `Output`, so submitting, queue limits, the wait for the first chunk, cancellation on
disconnect and the request log are the native path's own. Streams are server-sent events
with `event:` lines; errors have Anthropic's shape (`http/errors.py`).

On purpose unlike Ollama: `count_tokens` is exact (the prompt is rendered and tokenized by
the model, with nothing generated) where Ollama estimates a token per 4 bytes; `stop_reason`
is `stop_sequence` (naming it) only when one of the request's `stop_sequences` ended the
answer; usage splits the prompt cache's part out as `cache_read_input_tokens`; an image is a
400 (no model here has vision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import falcon
import orjson

from mlxollama import api
from mlxollama.api import field, json_type
from mlxollama.engine.output import call_id
from mlxollama.http.errors import anthropic_error, bad_request, log_failure, status_of
from mlxollama.http.native import Inference
from mlxollama.http.openai import SSE, model_of, number, stop_field, token_limit

# the `thinking.type` values as `think`; `adaptive` leaves the model's default
THINKING = {"enabled": True, "between_tools": True, "disabled": False, "adaptive": None}
EFFORTS = ("low", "medium", "high", "max")  # output_config.effort, as Ollama's think levels


# -- request bodies ------------------------------------------------------------------------


def blocks_of(content: Any, where: str) -> list[dict[str, Any]]:
    """A `content` (or `system`): a string is one text block; else an array of blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: must be a string or an array of content blocks")
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f'{where}: each content block must be an object with a "type"')
    return content


def block_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad_request(f'{where}: a text block needs "text", a string')
    return text


def refuse_block(kind: str, where: str) -> falcon.HTTPBadRequest:
    if kind in ("image", "document"):
        return bad_request(f"{where}: {kind} blocks are not supported: no model here has vision")
    return bad_request(f"{where}: content block of type {kind!r} is not supported")


def system_text(raw: Any) -> str:
    """`system`: a string, or text blocks (joined by newlines)."""
    if raw is None:
        return ""
    texts = []
    for block in blocks_of(raw, "system"):
        if block["type"] != "text":
            raise refuse_block(block["type"], "system")
        texts.append(block_text(block, "system"))
    return "\n".join(texts)


def tool_result_text(block: dict[str, Any], where: str) -> str:
    """A `tool_result`'s content: a string or text blocks; an error result says so."""
    content = block.get("content")
    if content is None:
        text = ""
    else:
        parts = []
        for part in blocks_of(content, where):
            if part["type"] != "text":
                raise refuse_block(part["type"], where)
            parts.append(block_text(part, where))
        text = "\n".join(parts)
    if field(block, "is_error", bool, False):
        return f"Error: {text}" if text else "Error"
    return text


def turn_messages(m: Any, i: int, names: dict[str, str]) -> list[api.Message]:
    """One Anthropic turn as native messages. A user turn's `tool_result` blocks come first,
    as `tool` messages (the template renders them after the calls they answer), then its
    text; an assistant turn is one message with its text, `thinking` and `tool_calls`.
    `names` maps tool_use ids to tool names, for the results that answer them."""
    where = f"messages.{i}"
    if not isinstance(m, dict):
        raise bad_request(f"{where}: must be an object")
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise bad_request(f'{where}.role: must be "user" or "assistant", not {role!r}')
    if "content" not in m:
        raise bad_request(f"{where}.content: Field required")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[api.Message] = []
    for j, block in enumerate(blocks_of(m["content"], f"{where}.content")):
        kind, at = block["type"], f"{where}.content.{j}"
        if kind == "text":
            texts.append(block_text(block, at))
        elif kind == "thinking" and role == "assistant":
            thinking.append(field(block, "thinking", str, ""))
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # encrypted for Anthropic's models: nothing a local model can read
        elif kind == "tool_use" and role == "assistant":
            calls.append(tool_call(block, at))
            names[calls[-1]["id"]] = calls[-1]["function"]["name"]
        elif kind == "tool_result" and role == "user":
            use_id = field(block, "tool_use_id", str)
            if not use_id:
                raise bad_request(f'{at}: a tool_result block needs "tool_use_id"')
            content = tool_result_text(block, f"{at}.content")
            results.append(
                api.Message(
                    role="tool",
                    content=content,
                    tool_call_id=use_id,
                    tool_name=names.get(use_id),
                )
            )
        else:
            raise refuse_block(kind, at)
    messages = results
    if texts or thinking or calls or not results:
        messages.append(
            api.Message(
                role=role,
                content="".join(texts) if role == "assistant" else "\n".join(texts),
                thinking="".join(thinking) or None,
                tool_calls=calls or None,
            )
        )
    return messages


def tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An assistant's `tool_use` block as Ollama's tool call (its id kept)."""
    use_id, name = field(block, "id", str), field(block, "name", str)
    if not use_id or not name:
        raise bad_request(f'{where}: a tool_use block needs "id" and "name"')
    arguments = field(block, "input", dict, {})
    return {"id": use_id, "function": {"name": name, "arguments": arguments}}


def chat_messages(body: dict[str, Any]) -> list[api.Message]:
    """`system` and `messages` as the native conversation."""
    raw = body.get("messages")
    if raw is None:
        raise bad_request("messages: Field required")
    if not isinstance(raw, list):
        raise bad_request(f"messages: must be an array, not {json_type(raw)}")
    if not raw:
        raise bad_request("messages: at least one message is required")
    system = system_text(body.get("system"))
    messages = [api.Message(role="system", content=system)] if system else []
    names: dict[str, str] = {}
    for i, m in enumerate(raw):
        messages.extend(turn_messages(m, i, names))
    return messages


def tool_functions(raw: Any) -> list[dict[str, Any]]:
    """Anthropic's client tools (`name`, `description`, `input_schema`) as functions;
    Anthropic's server tools (web search, code execution, ...) are refused."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request(f"tools: must be an array, not {json_type(raw)}")
    functions = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise bad_request(f"tools.{i}: must be an object")
        kind = field(tool, "type", str, "custom")
        if kind != "custom":
            raise bad_request(f"tools.{i}: tool type {kind!r} is not supported: define the tool")
        name = field(tool, "name", str)
        if not name:
            raise bad_request(f"tools.{i}.name: Field required")
        schema = field(tool, "input_schema", dict)
        if schema is None:
            raise bad_request(f"tools.{i}.input_schema: Field required")
        fn = {"name": name, "parameters": schema}
        if description := field(tool, "description", str):
            fn["description"] = description
        functions.append({"type": "function", "function": fn})
    return functions


def tool_choice(raw: Any) -> str | dict[str, Any]:
    """`tool_choice` as the engine's: `auto`, `any` (some call: "required"), `tool` (that
    one: `{"name": ...}`) and `none`. `disable_parallel_tool_use` is accepted; the engine
    has no way to cap an answer at one call."""
    if raw is None:
        return "auto"
    if not isinstance(raw, dict):
        raise bad_request(f"tool_choice: must be an object, not {json_type(raw)}")
    field(raw, "disable_parallel_tool_use", bool)
    kind = raw.get("type")
    if kind == "tool":
        name = field(raw, "name", str)
        if not name:
            raise bad_request("tool_choice.name: Field required")
        return {"name": name}
    choices = {"auto": "auto", "any": "required", "none": "none"}
    if kind not in choices:
        raise bad_request(f"tool_choice.type: {kind!r} is not one of 'auto', 'any', 'tool', 'none'")
    return choices[kind]


def think_of(body: dict[str, Any], output: dict[str, Any]) -> bool | str | None:
    """`thinking` as `think` (`enabled` on, `disabled` off, `adaptive` or absent the model's
    default); without it, `output_config.effort` is a think level (as Ollama reads it).
    `budget_tokens` is checked and not enforced: the engine has no thinking budget."""
    thinking = field(body, "thinking", dict)
    if thinking is not None:
        kind = thinking.get("type")
        if kind not in THINKING:
            raise bad_request(f"thinking.type: {kind!r} is not one of {', '.join(THINKING)}")
        budget = field(thinking, "budget_tokens", int)
        if kind == "enabled" and budget is None:
            raise bad_request("thinking.enabled.budget_tokens: Field required")
        if budget is not None and budget < 1:
            raise bad_request("thinking.budget_tokens: must be at least 1")
        if kind != "adaptive":
            return THINKING[kind]
    effort = field(output, "effort", str)
    if effort is None:
        return None
    effort = "high" if effort == "xhigh" else effort
    if effort not in EFFORTS:
        raise bad_request(f"output_config.effort: {effort!r} is not one of {', '.join(EFFORTS)}")
    return effort


def output_format(output: dict[str, Any]) -> dict[str, Any] | None:
    """`output_config.format` (`{"type": "json_schema", "schema": ...}`): the JSON schema
    the answer's text must match."""
    fmt = field(output, "format", dict)
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema":
        raise bad_request("output_config.format.type: only 'json_schema' is supported")
    schema = field(fmt, "schema", dict)
    if schema is None:
        raise bad_request("output_config.format.schema: Field required")
    return schema


def sampling(body: dict[str, Any], counting: bool) -> dict[str, Any]:
    """The request's options. `max_tokens` is required (Anthropic's rule) and is
    `num_predict`; a count generates nothing (`num_predict` 0: the model renders and
    tokenizes the prompt, then answers at once)."""
    max_tokens = token_limit(body, "max_tokens")
    if max_tokens is None and not counting:
        raise bad_request("max_tokens: Field required")
    top_k = field(body, "top_k", int)
    if top_k is not None and top_k < 0:
        raise bad_request(f"top_k: must be at least 0, not {top_k}")
    explicit = {
        "num_predict": 0 if counting else max_tokens,
        "temperature": number(body, "temperature", 0, 1),
        "top_p": number(body, "top_p", 0, 1),
        "top_k": top_k,
        "stop": stop_field(body, "stop_sequences"),
    }
    return api.parse_options(explicit)


def from_messages_request(
    body: dict[str, Any], request_id: str, counting: bool = False
) -> api.InferenceRequest:
    """A `/v1/messages` (or `count_tokens`) body as a chat request; tools and schemas are
    checked by the resource (`features.validate`) before any model loads."""
    model = model_of(body)
    messages = chat_messages(body)
    field(body, "metadata", dict)  # `user_id`: accepted, nothing here uses it
    output = field(body, "output_config", dict, {})
    choice = tool_choice(body.get("tool_choice"))
    if counting and choice != "none":
        choice = "auto"  # the same prompt, without building a grammar nothing will use
    return api.InferenceRequest(
        model=model,
        kind="chat",
        messages=messages,
        request_id=request_id,
        options=sampling(body, counting),
        format=output_format(output),
        tools=tool_functions(body.get("tools")),
        tool_choice=choice,
        think=think_of(body, output),
    )


# -- answers -------------------------------------------------------------------------------


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def tool_use_id(call: dict[str, Any]) -> str:
    """An id in Anthropic's `toolu_` form: the engine's `call_` id, renamed."""
    return "toolu_" + (call.get("id") or call_id()).removeprefix("call_")


def tool_use(call: dict[str, Any], whole: bool) -> dict[str, Any]:
    """A tool call as a `tool_use` block; streamed, its input comes in a delta."""
    fn = call["function"]
    arguments = fn.get("arguments") or {}
    return {
        "type": "tool_use",
        "id": tool_use_id(call),
        "name": fn["name"],
        "input": arguments if whole else {},
    }


def stop_reason(final: api.Chunk, called: bool, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """`stop_reason` and `stop_sequence`: `tool_use` when the answer called a tool (as
    Ollama), `max_tokens` at the limit, `stop_sequence` when one of the request's stop
    sequences ended it, else `end_turn`."""
    if called:
        return "tool_use", None
    if final.done_reason == "length":
        return "max_tokens", None
    if final.stop_sequence is not None and final.stop_sequence in stops:
        return "stop_sequence", final.stop_sequence
    return "end_turn", None


def usage(final: api.Chunk | None) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` are the prompt tokens evaluated, the prompt cache's
    part apart (`cache_read_input_tokens`); the cache is never written on request."""
    return {
        "input_tokens": final.prompt_eval_count if final else 0,
        "output_tokens": final.eval_count if final else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": final.prompt_cached_count if final else 0,
    }


class MessageOutput:
    """A `message` object, or its stream: `message_start` and a `ping`, then content blocks
    (`content_block_start`, deltas, `content_block_stop`; thinking, text and each tool call
    a block of its own, in the order they came), then `message_delta` (stop reason, usage)
    and `message_stop`. An error after the stream began is an `error` event."""

    headers: ClassVar[Mapping[str, str]] = {"Content-Type": SSE, "Cache-Control": "no-cache"}
    streams_empty = True

    def __init__(self, request: api.InferenceRequest):
        self.id = f"msg_{request.request_id}"  # the X-Request-Id: logs line up
        self.model = request.model
        self.stops = tuple(request.options.get("stop") or ())
        self.started = False
        self.block: str | None = None  # the type of the open content block
        self.index = -1  # the open (or last) block's index
        self.called = False

    def envelope(self, content: list[dict[str, Any]], final: api.Chunk | None) -> dict[str, Any]:
        reason, sequence = (None, None)
        if final is not None:
            reason, sequence = stop_reason(final, self.called, self.stops)
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage(final),
        }

    def chunk(self, chunk: api.Chunk) -> bytes:
        data = b""
        if not self.started:
            self.started = True
            start = {"type": "message_start", "message": self.envelope([], None)}
            data += sse("message_start", start) + sse("ping", {"type": "ping"})
        if chunk.thinking:
            data += self.delta("thinking", {"type": "thinking_delta", "thinking": chunk.thinking})
        if chunk.text:
            data += self.delta("text", {"type": "text_delta", "text": chunk.text})
        for call in chunk.tool_calls or ():
            self.called = True
            block = tool_use(call, whole=False)
            arguments = orjson.dumps(call["function"].get("arguments") or {}).decode()
            data += self.open(block)
            data += self.content_delta({"type": "input_json_delta", "partial_json": arguments})
            data += self.close()
        if chunk.done:
            reason, sequence = stop_reason(chunk, self.called, self.stops)
            delta = {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage(chunk),
            }
            data += self.close() + sse("message_delta", delta)
            data += sse("message_stop", {"type": "message_stop"})
        return data

    def delta(self, kind: str, delta: dict[str, Any]) -> bytes:
        """A delta for a block of `kind`, opening one (and closing another) if needed."""
        data = b""
        if self.block != kind:
            empty = {"type": "text", "text": ""}
            if kind == "thinking":
                empty = {"type": "thinking", "thinking": "", "signature": ""}
            data = self.open(empty)
        return data + self.content_delta(delta)

    def open(self, block: dict[str, Any]) -> bytes:
        data = self.close()
        self.index += 1
        self.block = block["type"]
        event = {"type": "content_block_start", "index": self.index, "content_block": block}
        return data + sse("content_block_start", event)

    def content_delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return sse("content_block_delta", event)

    def close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def error(self, exc: BaseException) -> tuple[bytes, str]:
        """An error after the stream began: an `error` event, and the end (the Anthropic
        SDK raises it as an `APIStatusError`)."""
        status, message = status_of(exc)
        log_failure(exc, status, message)
        return sse("error", anthropic_error(status, message)), message

    def whole(self, final: api.Chunk) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if final.thinking:
            content.append({"type": "thinking", "thinking": final.thinking, "signature": ""})
        if final.text:
            content.append({"type": "text", "text": final.text})
        calls = final.tool_calls or []
        content.extend(tool_use(call, whole=True) for call in calls)
        self.called = bool(calls)
        return self.envelope(content, final)


class TokenCount:
    """`{"input_tokens": N}`: the rendered prompt's length in the model's tokens."""

    headers: ClassVar[Mapping[str, str]] = {}
    streams_empty = False

    def chunk(self, chunk: api.Chunk) -> bytes:
        raise NotImplementedError("a count is never streamed")

    def error(self, exc: BaseException) -> tuple[bytes, str]:
        raise NotImplementedError("a count is never streamed")

    def whole(self, final: api.Chunk) -> dict[str, Any]:
        return {"input_tokens": final.prompt_eval_count + final.prompt_cached_count}


# -- resources -----------------------------------------------------------------------------


class Messages(Inference):
    """POST /v1/messages"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        return from_messages_request(body, request_id), field(body, "stream", bool, False)

    def output(self, request: api.InferenceRequest, body: dict[str, Any]) -> MessageOutput:
        return MessageOutput(request)


class CountTokens(Inference):
    """POST /v1/messages/count_tokens"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        return from_messages_request(body, request_id, counting=True), False

    def output(self, request: api.InferenceRequest, body: dict[str, Any]) -> TokenCount:
        return TokenCount()
