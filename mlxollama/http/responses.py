"""OpenAI's Responses API (`POST /v1/responses`), stateless as Ollama serves it.

A Responses body becomes a chat `api.InferenceRequest` (`from_responses_request`): `input`
(a string, or items: messages, `function_call`, `function_call_output`, `reasoning`) turns
into chat messages in OpenAI's chat shape and goes through `openai.chat_messages`, so tool
history is rendered as on `/v1/chat/completions`; `instructions` is the system message. The
session's chunks become a `response` object, or its typed server-sent events
(`ResponsesOutput`), on the native `Inference` path (queue limits, the first-chunk wait,
cancellation on disconnect and the request log are its own).

Nothing is stored: `previous_response_id`, `conversation` and `background` are 400s (send
the whole conversation as `input`); `store` is accepted and ignored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from mlxollama import api
from mlxollama.api import field, json_type
from mlxollama.http.errors import bad_request, log_failure, status_of
from mlxollama.http.native import Inference
from mlxollama.http.openai import (
    SSE,
    chat_messages,
    common,
    content_text,
    model_of,
    reasoning,
    response_schema,
    tool_choice,
    usage,
)

# the content part types of a Responses message that hold text, and those that hold images
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
IMAGE_PARTS = ("input_image", "image_url")
ROLES = ("user", "assistant", "system", "developer")
STATELESS = ("previous_response_id", "conversation")


# -- request bodies ------------------------------------------------------------------------


def item_text(content: Any, where: str) -> str:
    """A message's or a tool output's content: a string or a list of text parts."""
    if content is None:
        return ""
    if not isinstance(content, (str, list)):
        raise bad_request(
            f'invalid request: "{where}" must be a string or an array, not {json_type(content)}'
        )
    return content_text(content, TEXT_PARTS, IMAGE_PARTS)


def input_messages(raw: Any, instructions: str | None) -> list[dict[str, Any]]:
    """`input` as OpenAI chat messages: a string is one user message; items are messages
    (with or without `"type": "message"`), `function_call`s (folded into the assistant
    message before them, as an assistant's `tool_calls`), `function_call_output`s (`tool`
    messages) and `reasoning` items (the next assistant message's thinking)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if raw is None:
        raise bad_request("Missing required parameter: 'input'.")
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise bad_request(
            f'invalid request: "input" must be a string or an array, not {json_type(raw)}'
        )
    if not raw:
        raise bad_request("Invalid 'input': empty array. Expected an array with at least 1 item.")
    thinking = ""  # from a reasoning item, for the assistant message that follows it
    for item in raw:
        if not isinstance(item, dict):
            raise bad_request(f"invalid input item: each must be an object, not {json_type(item)}")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise bad_request(
                    f"invalid input item: role {role!r} (use one of {', '.join(ROLES)})"
                )
            message = {"role": role, "content": item_text(item.get("content"), "content")}
            if role == "assistant" and thinking:
                message["reasoning"], thinking = thinking, ""
            messages.append(message)
        elif kind == "function_call":
            call = function_call(item)
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if thinking:
                last["reasoning"], thinking = thinking, ""
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            call_id = field(item, "call_id", str, "")
            if not call_id:
                raise bad_request('invalid input item: a function_call_output needs "call_id"')
            output = item_text(item.get("output"), "output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            summary = field(item, "summary", list, [])
            thinking += item_text(summary, "summary")
        else:
            raise bad_request(
                f"input item of type {kind!r} is not supported: send messages, "
                "function_call, function_call_output or reasoning items"
            )
    return messages


def function_call(item: dict[str, Any]) -> dict[str, Any]:
    """A `function_call` input item as a chat tool call (arguments stay a JSON string)."""
    name = field(item, "name", str, "")
    call_id = field(item, "call_id", str, "")
    if not name or not call_id:
        raise bad_request('invalid input item: a function_call needs "name" and "call_id"')
    arguments = field(item, "arguments", str, "{}")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def function_tools(raw: Any) -> list[dict[str, Any]]:
    """Responses tools (`{"type": "function", "name", "description", "parameters",
    "strict"}`) in the chat shape the engine renders; built-in tools are a 400."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request(f'invalid request: "tools" must be an array, not {json_type(raw)}')
    out = []
    for tool in raw:
        kind = tool.get("type") if isinstance(tool, dict) else json_type(tool)
        if kind != "function":
            raise bad_request(f"tool of type {kind!r} is not supported: only function tools are")
        fn = {"name": tool.get("name"), "parameters": tool.get("parameters") or {"type": "object"}}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def text_format(body: dict[str, Any]) -> dict[str, Any]:
    """`text.format`, `{"type": "text"}` when absent."""
    text = field(body, "text", dict, {})
    return field(text, "format", dict, {"type": "text"})


def refuse_state(body: dict[str, Any]) -> None:
    """What needs a stored response or a job queue: a 400 that says what to send instead."""
    for key in STATELESS:
        if body.get(key) is not None:
            raise bad_request(
                f"{key} is not supported: responses are not stored; send the whole "
                "conversation as input"
            )
    if field(body, "background", bool, False):
        raise bad_request("background is not supported: responses are not stored")
    field(body, "store", bool)  # accepted and ignored: nothing is stored
    field(body, "parallel_tool_calls", bool)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_request(
            f'invalid request: "metadata" must be an object, not {json_type(metadata)}'
        )


def from_responses_request(body: dict[str, Any], request_id: str) -> api.InferenceRequest:
    """A `/v1/responses` body as a chat request (tools are checked by the resource)."""
    model = model_of(body)
    refuse_state(body)
    instructions = field(body, "instructions", str)
    messages = chat_messages(input_messages(body.get("input"), instructions))
    return api.InferenceRequest(
        model=model,
        kind="chat",
        messages=messages,
        request_id=request_id,
        format=response_schema(text_format(body), "text.format", nested=False),
        tools=function_tools(body.get("tools")),
        tool_choice=tool_choice(body.get("tool_choice")),
        think=reasoning(body),
        **common(body, ("max_output_tokens",)),
    )


# -- answers -------------------------------------------------------------------------------


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def response_usage(final: api.Chunk) -> dict[str, Any]:
    """The Responses usage: the chat usage's counts under this API's names (reasoning is not
    counted apart from the answer: 0)."""
    counts = usage(final)
    return {
        "input_tokens": counts["prompt_tokens"],
        "input_tokens_details": {
            "cached_tokens": final.prompt_cached_count,
            "cache_write_tokens": 0,
        },
        "output_tokens": counts["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts["total_tokens"],
    }


def echoed_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    return {"type": "function", "name": choice["name"]} if isinstance(choice, dict) else choice


class ResponsesOutput:
    """A `response` object, or its events: `response.created`, `response.in_progress`, then
    one output item at a time (`reasoning` with its summary, `message` with one `output_text`
    part, `function_call`), each added, filled by deltas and done, and `response.completed`
    (`response.incomplete` when `max_output_tokens` cut it). Every event has `event:` and a
    `sequence_number`. `whole` runs the same steps on the final chunk, so a stream's final
    response and a non-streamed one are built alike."""

    headers: ClassVar[Mapping[str, str]] = {"Content-Type": SSE, "Cache-Control": "no-cache"}
    streams_empty = True

    def __init__(self, request: api.InferenceRequest, body: dict[str, Any]):
        self.request = request
        self.id = f"resp_{request.request_id}"  # the X-Request-Id: logs line up
        self.created_at = int(time.time())
        self.settings = settings(request, body)
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # finished output items
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.started = False

    # -- events --

    def event(self, kind: str, **data: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def response(self, status: str, final: api.Chunk | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self.request.model,
            "output": self.items if final is not None else [],
            **self.settings,
            "usage": None,
        }
        if final is not None:
            body["completed_at"] = int(time.time())
            body["usage"] = response_usage(final)
            if status == "incomplete":
                body["incomplete_details"] = {"reason": "max_output_tokens"}
        return body

    def chunk(self, chunk: api.Chunk) -> bytes:
        data = b""
        if not self.started:
            self.started = True
            data += self.event("response.created", response=self.response("in_progress"))
            data += self.event("response.in_progress", response=self.response("in_progress"))
        if chunk.thinking:
            data += self.switch("reasoning") + self.reasoning_delta(chunk.thinking)
        if chunk.text:
            data += self.switch("message") + self.text_delta(chunk.text)
        for call in chunk.tool_calls or ():
            data += self.switch(None) + self.function_call(call)
        if chunk.done:
            incomplete = chunk.done_reason == "length"
            if not self.items and self.open is None and not chunk.tool_calls:
                data += self.switch("message")  # an empty answer is still a message
            data += self.switch(None, incomplete)
            status = "incomplete" if incomplete else "completed"
            data += self.event(f"response.{status}", response=self.response(status, chunk))
        return data

    def switch(self, kind: str | None, incomplete: bool = False) -> bytes:
        """Close the open item unless it is of `kind`, then open one of `kind` (None: none)."""
        if self.open is not None and self.open["type"] == kind:
            return b""
        data = self.close(incomplete) if self.open is not None else b""
        if kind is None:
            return data
        index = len(self.items)
        if kind == "reasoning":
            self.open = {"id": item_id("rs"), "type": "reasoning", "summary": []}
            part = {"type": "summary_text", "text": ""}
            return (
                data
                + self.event("response.output_item.added", output_index=index, item=self.open)
                + self.event(
                    "response.reasoning_summary_part.added",
                    item_id=self.open["id"],
                    output_index=index,
                    summary_index=0,
                    part=part,
                )
            )
        self.open = {
            "id": item_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        return (
            data
            + self.event("response.output_item.added", output_index=index, item=self.open)
            + self.event(
                "response.content_part.added",
                item_id=self.open["id"],
                output_index=index,
                content_index=0,
                part=text_part(""),
            )
        )

    def reasoning_delta(self, text: str) -> bytes:
        self.open["text"] = self.open.get("text", "") + text
        return self.event(
            "response.reasoning_summary_text.delta",
            item_id=self.open["id"],
            output_index=len(self.items),
            summary_index=0,
            delta=text,
        )

    def text_delta(self, text: str) -> bytes:
        self.open["text"] = self.open.get("text", "") + text
        return self.event(
            "response.output_text.delta",
            item_id=self.open["id"],
            output_index=len(self.items),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def close(self, incomplete: bool) -> bytes:
        """The open item's `.done` events, and it joins the output."""
        item, self.open = self.open, None
        text = item.pop("text", "")
        where = {"item_id": item["id"], "output_index": len(self.items)}
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            data = self.event(
                "response.reasoning_summary_text.done", **where, summary_index=0, text=text
            ) + self.event(
                "response.reasoning_summary_part.done", **where, summary_index=0, part=part
            )
        else:
            item["status"] = "incomplete" if incomplete else "completed"
            item["content"] = [text_part(text)]
            data = self.event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            ) + self.event(
                "response.content_part.done", **where, content_index=0, part=text_part(text)
            )
        self.items.append(item)
        return data + self.event(
            "response.output_item.done", output_index=where["output_index"], item=item
        )

    def function_call(self, call: dict[str, Any]) -> bytes:
        """A tool call, whole: added, its arguments in one delta, done."""
        fn = call["function"]
        arguments = orjson.dumps(fn.get("arguments") or {}).decode()
        item = {
            "id": item_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.get("id") or item_id("call"),
            "name": fn["name"],
            "arguments": "",
        }
        index = len(self.items)
        where = {"item_id": item["id"], "output_index": index}
        data = self.event("response.output_item.added", output_index=index, item=dict(item))
        data += self.event("response.function_call_arguments.delta", **where, delta=arguments)
        data += self.event(
            "response.function_call_arguments.done", **where, name=fn["name"], arguments=arguments
        )
        item.update(arguments=arguments, status="completed")
        self.items.append(item)
        return data + self.event("response.output_item.done", output_index=index, item=item)

    def error(self, exc: BaseException) -> tuple[bytes, str]:
        """An error after the stream began: one `error` event, and the end."""
        status, message = status_of(exc)
        log_failure(exc, status, message)
        code = "invalid_request_error" if status < 500 else "api_error"
        return self.event("error", code=code, message=message, param=None), message

    def whole(self, final: api.Chunk) -> dict[str, Any]:
        self.chunk(final)
        status = "incomplete" if final.done_reason == "length" else "completed"
        return self.response(status, final)


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def settings(request: api.InferenceRequest, body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as a response echoes them (what the client's model requires:
    `tools`, `tool_choice`, `parallel_tool_calls`; the others as given or null)."""
    options = request.options
    effort = field(field(body, "reasoning", dict, {}), "effort", str)
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": options.get("num_predict"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": field(body, "parallel_tool_calls", bool, True),
        "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": None},
        "store": False,
        "temperature": options.get("temperature"),
        "text": {"format": text_format(body)},
        "tool_choice": echoed_tool_choice(request.tool_choice),
        "tools": body.get("tools") or [],
        "top_p": options.get("top_p"),
        "truncation": "disabled",
    }


# -- the resource --------------------------------------------------------------------------


class Responses(Inference):
    """POST /v1/responses"""

    def parse(self, body: dict[str, Any], request_id: str) -> tuple[api.InferenceRequest, bool]:
        return from_responses_request(body, request_id), field(body, "stream", bool, False)

    def output(self, request: api.InferenceRequest, body: dict[str, Any]) -> ResponsesOutput:
        return ResponsesOutput(request, body)
