"""The contract types shared by the engine, the store, the SDK, the CLI and the HTTP layer.

This module mirrors Ollama's `api/types.go`: the option table with defaults and types, the
split between load-time and sampling options, chat messages, and the chunks a generation
streams. It imports nothing heavier than the standard library, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import orjson

from mlxollama.errors import InvalidOption, UnsupportedModel

# Every option Ollama accepts, with its type and default. `None` means "unset": the engine
# then uses the model's own value (num_ctx: the model's context length; seed: random).
OPTION_TYPES: dict[str, type] = {
    # sampling / runtime
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
    # load time in Ollama; accepted here, only num_ctx and num_batch have an effect
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
}

DEFAULT_OPTIONS: dict[str, Any] = {
    "num_keep": 4,
    "seed": -1,
    "num_predict": -1,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "temperature": 0.8,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "stop": [],
    "num_ctx": None,
    "num_batch": 512,
    "num_gpu": -1,
    "main_gpu": 0,
    "use_mmap": True,
    "num_thread": 0,
}

# Accepted for compatibility and dropped, as Ollama does (the Modelfile parser warns).
DEPRECATED_OPTIONS = frozenset(
    {
        "penalize_newline",
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
    }
)


# The prefill step's cap: its activations grow with it, and past a few thousand tokens a
# larger step gains nothing (docs/engine.md).
MAX_NUM_BATCH = 8192

INT64 = 2**63  # Ollama's ints are Go int64: beyond them a value is not an int
FLOAT32_MAX = 3.4028234663852886e38  # and its floats float32

# Bounds a value must keep (inclusive), so that no option can break the sampler. Options not
# named here take any value of their type; what the engine cannot use it clamps or ignores
# (top_k <= 0 or >= the vocabulary is off, num_ctx <= 0 is the default; docs/engine.md).
OPTION_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, None),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "typical_p": (0.0, 1.0),
    "repeat_last_n": (-1, None),
    "repeat_penalty": (0.0, None),
    "num_batch": (1, MAX_NUM_BATCH),
}


def coerce_option(name: str, value: Any) -> Any:
    """Convert one option value to its declared type and check its range.

    Any JSON number is accepted for int and float options (fractions given to int options are
    truncated, as Ollama does); strings are parsed, which is what Modelfile PARAMETER lines give.
    NaN, infinities, ints beyond int64 and floats beyond float32 are type errors.

    Raises:
        InvalidOption: the name is unknown, the value does not fit the type or its range.
    """
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise InvalidOption(f"unknown parameter '{name}'")
    try:
        typed = _typed(kind, value)
    except (TypeError, ValueError, OverflowError):
        type_name = {int: "int", float: "float32", bool: "bool", list: "[]string"}[kind]
        raise InvalidOption(f'option "{name}" must be of type {type_name}') from None
    _check_range(name, typed)
    return typed


def _typed(kind: type, value: Any) -> Any:
    if kind is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(s, str) for s in items):
            raise TypeError
        return list(items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TypeError
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, str):
        value = float(value.strip())
    if not isinstance(value, (int, float)):
        raise TypeError
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError
    if kind is int:
        number = int(value)
        if not -INT64 <= number < INT64:
            raise OverflowError
        return number
    if abs(value) > FLOAT32_MAX:
        raise OverflowError
    return float(value)


def _check_range(name: str, value: Any) -> None:
    low, high = OPTION_RANGES.get(name, (None, None))
    if low is not None and high is not None and not low <= value <= high:
        raise InvalidOption(f'option "{name}" must be between {low:g} and {high:g}, not {value}')
    if low is not None and value < low:
        raise InvalidOption(f'option "{name}" must be at least {low:g}, not {value}')


def parse_options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a request's or Modelfile's options; deprecated names are dropped, and so
    are null values, as Ollama skips them (LlamaIndex and LangChain send unset options as
    null: `{"temperature": null}`).

    Raises:
        InvalidOption: an unknown option name or a wrongly typed value.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidOption("options must be an object")
    return {
        k: coerce_option(k, v)
        for k, v in raw.items()
        if v is not None and k not in DEPRECATED_OPTIONS
    }


def merge_options(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_OPTIONS < model parameters < request options (later layers win)."""
    merged = dict(DEFAULT_OPTIONS)
    for layer in layers:
        merged.update(layer or {})
    return merged


def prefill_step(options: dict[str, Any]) -> int:
    """Prompt tokens per prefill step: Ollama's `num_batch` (validated by coerce_option)."""
    n = options.get("num_batch")
    return n if isinstance(n, int) else DEFAULT_OPTIONS["num_batch"]


def context_size(options: dict[str, Any], default: int) -> int:
    """The context window a request asks for: its `num_ctx`, or `default` when unset or not
    positive (Ollama treats those as "use the default" too)."""
    n = options.get("num_ctx")
    return n if isinstance(n, int) and n > 0 else default


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request generation options, in Ollama's names."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    seed: int = -1
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    num_predict: int = -1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SamplingOptions:
        merged = merge_options(options)
        fields = {k: merged[k] for k in cls.__dataclass_fields__}
        fields["stop"] = tuple(s for s in fields["stop"] if s)
        return cls(**fields)


ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat message, in Ollama's shape; `role` is lower-cased on input, as Ollama does.

    `tool_calls` are Ollama's: `{"function": {"name", "arguments": {...}}}` (with `id` and
    `function.index` when known); a `tool` message names the call it answers with
    `tool_name` and/or `tool_call_id`; `thinking` is an assistant's reasoning.
    """

    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        if not isinstance(d, dict):
            raise InvalidOption("each message must be an object")
        role = d.get("role")
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise InvalidOption(f"invalid message role {role!r}: use one of {', '.join(ROLES)}")
        content = d.get("content") or ""
        if not isinstance(content, str):
            raise InvalidOption("message content must be a string")
        texts = {}
        for key in ("thinking", "tool_name", "tool_call_id"):
            value = d.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidOption(f'invalid message: "{key}" must be a string')
            texts[key] = value or None
        return cls(
            role=role.lower(),
            content=content,
            images=d.get("images") or None,
            tool_calls=tool_calls_of(d.get("tool_calls")),
            **texts,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("thinking", "images", "tool_calls", "tool_name", "tool_call_id"):
            value = getattr(self, key)
            if value:
                d[key] = value
        return d


def tool_calls_of(raw: Any) -> list[dict[str, Any]] | None:
    """A message's `tool_calls`, checked: each `{"function": {"name": str, "arguments":
    object}}` (arguments given as a JSON string, as OpenAI sends them, are decoded)."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise InvalidOption('invalid message: "tool_calls" must be an array')
    calls = []
    for call in raw:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidOption('invalid message: each tool call needs "function" with a "name"')
        arguments = fn.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = orjson.loads(arguments) if arguments.strip() else {}
            except orjson.JSONDecodeError:
                raise InvalidOption(
                    f"invalid message: the arguments of tool call {fn['name']!r} are not JSON"
                ) from None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidOption(
                f"invalid message: the arguments of tool call {fn['name']!r} must be an object"
            )
        out: dict[str, Any] = {"function": {**fn, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            out["id"] = call["id"]
        calls.append(out)
    return calls


DoneReason = Literal[
    "stop", "length", "load", "unload", "cancel"
]  # cancel: DELETE /api/requests/{id}


@dataclass
class Chunk:
    """A piece of a streamed answer. The last one has `done=True`, a `done_reason` and
    Ollama's metrics (durations in nanoseconds)."""

    text: str = ""
    done: bool = False
    done_reason: DoneReason | None = None
    prompt_eval_count: int = 0
    eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    context: list[int] = dataclasses.field(default_factory=list)
    # prompt tokens whose KV state came from the prompt cache (not in prompt_eval_count;
    # OpenAI's usage.prompt_tokens_details.cached_tokens)
    prompt_cached_count: int = 0
    thinking: str = ""  # reasoning, apart from the answer's text
    tool_calls: list[dict[str, Any]] | None = None  # Ollama's shape (Message.tool_calls)
    # one entry per token this chunk came from, in Ollama's shape (`token`, `logprob`,
    # `bytes`, `top_logprobs`), when the request asked for them
    logprobs: list[dict[str, Any]] | None = None
    # on the final chunk: the request's stop string that ended the answer (Anthropic's
    # `stop_sequence`); None when an end token, the length or nothing stopped it
    stop_sequence: str | None = None

    def metrics(self) -> dict[str, int]:
        d = asdict(self)
        return {k: d[k] for k in METRIC_FIELDS}


def join_chunks(chunks: Iterable[Chunk]) -> Chunk:
    """A stream folded into its final chunk, as Ollama answers `stream: false`: the texts,
    thinking, tool calls and logprobs of every piece, in order, on the last one."""
    text, thinking, calls, logprobs = [], [], [], []
    last = Chunk(done=True)
    for last in chunks:
        text.append(last.text)
        thinking.append(last.thinking)
        calls.extend(last.tool_calls or ())
        if last.logprobs is not None:
            logprobs.extend(last.logprobs)
    return dataclasses.replace(
        last,
        text="".join(text),
        thinking="".join(thinking),
        tool_calls=calls or None,
        logprobs=logprobs if logprobs or last.logprobs is not None else None,
    )


METRIC_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


FOREVER = float("inf")
# Go's longest duration (max int64 nanoseconds, about 292 years) in whole seconds: a longer
# keep_alive is forever, which is also what keeps it within what a timer can wait
# (`threading.TIMEOUT_MAX`) and a deadline within what a date can hold.
MAX_KEEP_ALIVE = (2**63 - 1) // 10**9


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's `keep_alive`: seconds (a JSON number) or a Go duration string (`"10m"`,
    `"1h30m"`, `"-1m"`, `"0"`); None when unset. Negative means forever (`FOREVER`), and so
    does a number of seconds beyond Go's longest duration; zero means unload as soon as the
    model is idle.

    Raises:
        InvalidOption: another type, or a string that is not a duration (as in Ollama, a bare
            number in a string such as `"300"` is refused, and so is one beyond 292 years).
    """
    import re

    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOption("keep_alive: Unsupported type bool")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in ("0", "-0"):
            return 0.0
        m = re.fullmatch(r"([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+", text)
        if not m:
            raise InvalidOption(f'time: invalid duration "{value}"')
        units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", text)
        seconds = sum(float(n) * units[u] for n, u in parts)
        if seconds >= MAX_KEEP_ALIVE:  # Go's ParseDuration refuses what overflows
            raise InvalidOption(f'time: invalid duration "{value}"')
        if m.group(1) == "-":
            seconds = -seconds
    else:
        raise InvalidOption(f"keep_alive: Unsupported type {type(value).__name__}")
    return FOREVER if seconds < 0 or seconds >= MAX_KEEP_ALIVE else seconds


# What one embedding request may carry (400 beyond): the model actor works through a
# request in sub-batches, and these bound how long one request can hold the model.
MAX_EMBED_INPUTS = 2048
MAX_EMBED_CHARS = 8 * 2**20  # characters over all inputs (8 MiB of ASCII)


def check_embed_inputs(inputs: list[str]) -> None:
    """Raises InvalidOption (HTTP 400) for a request over MAX_EMBED_INPUTS inputs or
    MAX_EMBED_CHARS characters in all."""
    if len(inputs) > MAX_EMBED_INPUTS:
        raise InvalidOption(
            f"too many inputs: a request may carry at most {MAX_EMBED_INPUTS} inputs, "
            f"not {len(inputs)}; split it into several requests"
        )
    chars = sum(len(text) for text in inputs)
    if chars > MAX_EMBED_CHARS:
        raise InvalidOption(
            f"input too large: a request may carry at most {MAX_EMBED_CHARS} characters "
            f"in all, not {chars}; split it into several requests"
        )


@dataclass
class Embeddings:
    """An embedding request's answer: one float32 row per input (a numpy array; L2-normalized
    unless the request asked for raw vectors), and Ollama's metrics (nanoseconds)."""

    vectors: Any  # numpy.ndarray (inputs, dimensions), float32
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0
    done: bool = True  # a session's last item, like the final Chunk
    done_reason: DoneReason | None = "stop"


@dataclass
class InferenceRequest:
    """A generate, chat or embed request, validated and ready for the runtime.

    `options` are the request's own (already through `parse_options`); the model's
    PARAMETERs are merged in by the runtime. `keep_alive` is in seconds (None: keep the
    model's current setting; `FOREVER`; 0: unload when idle). Embed requests carry `inputs`
    (run as one batch), `truncate` (cut inputs longer than the context instead of failing),
    `dimensions` (keep that many leading components) and `normalize`.
    """

    model: str
    kind: Literal["generate", "chat", "embed"]
    prompt: str = ""
    messages: list[Message] = dataclasses.field(default_factory=list)
    system: str | None = None
    template: str | None = None
    raw: bool = False
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    keep_alive: float | None = None
    request_id: str = ""
    inputs: list[str] = dataclasses.field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = None
    normalize: bool = True
    format: dict[str, Any] | None = None  # a JSON schema the answer must match
    tools: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"  # "auto", "none", "required", {"name": ...}
    think: bool | str | None = None  # None: the model's default
    logprobs: bool = False
    top_logprobs: int = 0
    suffix: str = ""  # fill-in-the-middle: the text after the insertion

    @property
    def empty(self) -> bool:
        """No prompt / messages / inputs: Ollama's "load (or unload) the model" request."""
        if self.kind == "embed":
            return not self.inputs
        return not self.prompt if self.kind == "generate" else not self.messages

    def require(self, name: str, capabilities: list[str]) -> None:
        """Raises UnsupportedModel when model `name` (with `capabilities`) cannot do this
        request: chat on an embedding model, embeddings from a generative one."""
        needed = "embedding" if self.kind == "embed" else "completion"
        if needed not in capabilities:
            what = "embeddings" if self.kind == "embed" else self.kind
            raise UnsupportedModel(f'"{name}" does not support {what}')


# -- the wire: Ollama's request and response bodies as types -------------------------------
#
# Each type is one JSON object of Ollama's API (`api/types.go`), fields in Ollama's order.
# `to_json()` is the one way to write it (the HTTP layer, the SDK and the client all answer
# with it) and `from_json()` the one way to read it back. Request types read a body as the
# daemon does: each field's JSON type is checked (InvalidOption, a 400), nothing more (an
# absent field stays None: `stream` then means true, `truncate` true); what a value means is
# checked where the request becomes an `InferenceRequest`.

OnProgress = Callable[[dict[str, Any]], None]
"""Where create, pull and push report their progress objects (`Progress.to_json()`)."""

_KINDS = {
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    int: "an integer",
}


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


def field(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """`body[key]`, checked against `kind`; `default` when absent or null.

    Raises:
        InvalidOption: the value has another JSON type (the message names the field).
    """
    value = body.get(key)
    if value is None:
        return default
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise InvalidOption(
            f'invalid request: "{key}" must be {_KINDS[kind]}, not {json_type(value)}'
        )
    return value


def model_of(body: dict[str, Any]) -> str:
    """`model`, or the legacy `name` ("" when both are missing)."""
    return field(body, "model", str, "") or field(body, "name", str, "")


def rfc3339(ts: float) -> str:
    """Epoch seconds as Ollama writes times (`2024-05-01T12:00:00.123456Z`)."""
    return _zulu(dt.datetime.fromtimestamp(ts, dt.UTC))


def now_rfc3339() -> str:
    return _zulu(dt.datetime.now(dt.UTC))


def _zulu(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class Wire:
    """A JSON body: `to_json()` writes the fields in order (those in `_omit` left out while
    None; those in `_nested` through their own type), `from_json()` reads one back (keys that
    are not fields are ignored)."""

    _omit: ClassVar[frozenset[str]] = frozenset()
    _nested: ClassVar[dict[str, type[Wire]]] = {}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self._omit:
                continue
            if f.name in self._nested and value is not None:
                value = [v.to_json() for v in value] if isinstance(value, list) else value.to_json()
            body[f.name] = value
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in body.items() if k in names}
        for name, kind in cls._nested.items():
            value = values.get(name)
            if isinstance(value, list):
                values[name] = [kind.from_json(v) for v in value]
            elif isinstance(value, dict):
                values[name] = kind.from_json(value)
        return cls(**values)


_OPTIONAL = frozenset(
    {
        "suffix",
        "system",
        "template",
        "raw",
        "tools",
        "format",
        "options",
        "think",
        "logprobs",
        "top_logprobs",
        "keep_alive",
        "stream",
    }
)


@dataclass
class GenerateRequest(Wire):
    """`POST /api/generate` (the fields both clients send; the daemon refuses the others)."""

    model: str
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool | None = None
    format: str | dict | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    keep_alive: float | str | None = None
    stream: bool | None = None
    _omit = _OPTIONAL

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GenerateRequest:
        return cls(
            stream=field(body, "stream", bool),
            prompt=field(body, "prompt", str, ""),
            system=field(body, "system", str, "") or None,
            template=field(body, "template", str, "") or None,
            raw=field(body, "raw", bool),
            model=model_of(body),
            format=body.get("format"),
            options=body.get("options"),
            keep_alive=body.get("keep_alive"),
        )


@dataclass
class ChatRequest(Wire):
    """`POST /api/chat`; `messages` as sent (`Message.from_dict` validates each)."""

    model: str
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    keep_alive: float | str | None = None
    stream: bool | None = None
    _omit = _OPTIONAL

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ChatRequest:
        return cls(
            stream=field(body, "stream", bool),
            messages=field(body, "messages", list, []),
            model=model_of(body),
            format=body.get("format"),
            options=body.get("options"),
            keep_alive=body.get("keep_alive"),
        )


@dataclass
class EmbedRequest(Wire):
    """`POST /api/embed`: `input` is a string or a list of strings (a bare "" just loads)."""

    model: str
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    _omit = frozenset({"input", "truncate", "dimensions", "options", "keep_alive"})

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> EmbedRequest:
        """Also reads the fields `/api/embeddings` and `/v1/embeddings` share with it."""
        return cls(
            input=body.get("input"),
            dimensions=field(body, "dimensions", int),
            model=model_of(body),
            truncate=field(body, "truncate", bool),
            options=body.get("options"),
            keep_alive=body.get("keep_alive"),
        )


@dataclass
class ShowRequest(Wire):
    """`POST /api/show`."""

    model: str
    verbose: bool | None = None
    _omit = frozenset({"verbose"})

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ShowRequest:
        return cls(model=model_of(body), verbose=field(body, "verbose", bool))


@dataclass
class GenerateResponse(Wire):
    """One `/api/generate` object: a stream line, or the whole answer. Only the last one
    (`done`) carries `done_reason`, `context` (when there is one) and the metrics."""

    model: str
    created_at: str
    response: str
    thinking: str | None = None
    done: bool = False
    done_reason: str | None = None
    context: list[int] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[dict[str, Any]] | None = None
    _omit = frozenset({"thinking", "done_reason", "context", "logprobs", *METRIC_FIELDS})

    @classmethod
    def from_chunk(cls, model: str, chunk: Chunk) -> GenerateResponse:
        common = {"thinking": chunk.thinking or None, "logprobs": chunk.logprobs}
        if not chunk.done:
            return cls(model, now_rfc3339(), chunk.text, done=False, **common)
        return cls(
            model,
            now_rfc3339(),
            chunk.text,
            done=True,
            done_reason=chunk.done_reason,
            context=chunk.context or None,
            **common,
            **chunk.metrics(),
        )


@dataclass
class ChatResponse(Wire):
    """One `/api/chat` object; `message` is the assistant's (a piece of it while streaming)."""

    model: str
    created_at: str
    message: Message
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[dict[str, Any]] | None = None
    _omit = frozenset({"done_reason", "logprobs", *METRIC_FIELDS})

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "message": self.message.to_dict()}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ChatResponse:
        answer = super().from_json(body)
        answer.message = Message.from_dict(answer.message)
        return answer

    @classmethod
    def from_chunk(cls, model: str, chunk: Chunk) -> ChatResponse:
        message = Message(
            "assistant", chunk.text, thinking=chunk.thinking or None, tool_calls=chunk.tool_calls
        )
        if not chunk.done:
            return cls(model, now_rfc3339(), message, False, logprobs=chunk.logprobs)
        return cls(
            model,
            now_rfc3339(),
            message,
            True,
            done_reason=chunk.done_reason,
            logprobs=chunk.logprobs,
            **chunk.metrics(),
        )


@dataclass
class EmbedResponse(Wire):
    """The `/api/embed` answer; `embeddings` is a float32 array (the daemon writes it with
    orjson as is) or lists of floats (the SDK)."""

    model: str
    embeddings: Any
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


@dataclass
class EmbeddingResponse(Wire):
    """The legacy `/api/embeddings` answer: one vector, not normalized."""

    embedding: Any


@dataclass
class ModelDetails(Wire):
    """A model's `details` in tags, show and ps."""

    parent_model: str = ""
    format: str = "mlx"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""

    @classmethod
    def from_config(cls, info: dict[str, Any]) -> ModelDetails:
        """From a stored model's config blob."""
        family = info.get("model_family") or ""
        return cls(
            parent_model=info.get("parent_model", ""),
            format=info.get("model_format", "mlx"),
            family=family,
            families=info.get("model_families") or ([family] if family else None),
            parameter_size=info.get("model_type", ""),
            quantization_level=info.get("file_type", ""),
        )


@dataclass
class ListModel(Wire):
    """One `/api/tags` entry."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str]
    _nested: ClassVar[dict[str, type[Wire]]] = {"details": ModelDetails}


@dataclass
class ListResponse(Wire):
    """`GET /api/tags`."""

    models: list[ListModel]
    _nested: ClassVar[dict[str, type[Wire]]] = {"models": ListModel}


@dataclass
class ShowResponse(Wire):
    """`POST /api/show`; `tensors` only when `verbose` was asked for."""

    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    details: ModelDetails
    messages: list[dict[str, Any]]
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    provenance: dict[str, Any]
    tensors: list[dict[str, Any]] | None = None
    _omit = frozenset({"tensors"})
    _nested: ClassVar[dict[str, type[Wire]]] = {"details": ModelDetails}


# Go's maximum duration (max int64 nanoseconds, about 292 years): Ollama's "forever".
GO_FOREVER = dt.timedelta(microseconds=(2**63 - 1) // 1000)


def expires_at(epoch: float) -> str:
    """A keep-alive deadline as `/api/ps` writes it (forever: now + Go's longest duration)."""
    if math.isinf(epoch):
        when = dt.datetime.now(dt.UTC) + GO_FOREVER
    else:
        when = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return _zulu(when)


@dataclass
class ProcessModel(Wire):
    """One `/api/ps` entry. Unified memory: on Metal (and CUDA) all of it is "on the GPU"
    (`size_vram` = `size`); on the CPU backend none."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    # mlxollama's: bytes of KV cache the model's prompt cache holds (absent when none)
    prompt_cache_size: int | None = None
    # mlxollama's: the form the weights are held in, e.g. "Q4_0 (stored)", "bf16 (dense)"
    weights: str | None = None
    # mlxollama's: the KV cache type (MLXOLLAMA_KV_CACHE_TYPE: f16, q8_0, q4_0); absent for an
    # embedding model (it keeps none)
    kv_cache_type: str | None = None
    _nested: ClassVar[dict[str, type[Wire]]] = {"details": ModelDetails}
    _omit = frozenset({"prompt_cache_size", "weights", "kv_cache_type"})


@dataclass
class ProcessResponse(Wire):
    """`GET /api/ps`."""

    models: list[ProcessModel]
    _nested: ClassVar[dict[str, type[Wire]]] = {"models": ProcessModel}


@dataclass(frozen=True)
class Progress(Wire):
    """One progress object of create, pull or push (`{"status": "success"}` last)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    _omit = frozenset({"digest", "total", "completed"})


SUCCESS = Progress("success")
