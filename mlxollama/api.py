"""The contract types shared by the engine, the store, the SDK, the CLI and the HTTP layer.

This module mirrors Ollama's `api/types.go`: the option table with defaults and types, the
split between load-time and sampling options, chat messages, and the chunks a generation
streams. It imports nothing heavier than the standard library, so every layer can use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
    # load time in Ollama; accepted here, only num_ctx has an effect
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
    """One chat message; `role` is lower-cased on input, as Ollama does."""

    role: str
    content: str = ""
    images: list[str] | None = None

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
        return cls(role=role.lower(), content=content, images=d.get("images") or None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.images:
            d["images"] = self.images
        return d


DoneReason = Literal["stop", "length", "load", "unload"]


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
    context: list[int] = field(default_factory=list)
    # the log-probabilities of the tokens this chunk's text came from, when the sampler gives
    # them (engine/decoder.py); not sent yet
    logprobs: list[float] | None = None

    def metrics(self) -> dict[str, int]:
        d = asdict(self)
        return {k: d[k] for k in METRIC_FIELDS}


METRIC_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def now_rfc3339() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def generate_response(model: str, chunk: Chunk) -> dict[str, Any]:
    """One `/api/generate` object (a stream line, or the whole answer when not streaming)."""
    body: dict[str, Any] = {
        "model": model,
        "created_at": now_rfc3339(),
        "response": chunk.text,
        "done": chunk.done,
    }
    if chunk.done:
        body["done_reason"] = chunk.done_reason
        if chunk.context:
            body["context"] = chunk.context
        body.update(chunk.metrics())
    return body


def chat_response(model: str, chunk: Chunk) -> dict[str, Any]:
    """One `/api/chat` object."""
    body: dict[str, Any] = {
        "model": model,
        "created_at": now_rfc3339(),
        "message": {"role": "assistant", "content": chunk.text},
        "done": chunk.done,
    }
    if chunk.done:
        body["done_reason"] = chunk.done_reason
        body.update(chunk.metrics())
    return body


FOREVER = float("inf")


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's `keep_alive`: seconds (a JSON number) or a Go duration string (`"10m"`,
    `"1h30m"`, `"-1m"`, `"0"`); None when unset. Negative means forever (`FOREVER`); zero
    means unload as soon as the model is idle.

    Raises:
        InvalidOption: another type, or a string that is not a duration (as in Ollama, a bare
            number in a string such as `"300"` is refused).
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
        if m.group(1) == "-":
            seconds = -seconds
    else:
        raise InvalidOption(f"keep_alive: Unsupported type {type(value).__name__}")
    return FOREVER if seconds < 0 else seconds


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
    messages: list[Message] = field(default_factory=list)
    system: str | None = None
    template: str | None = None
    raw: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None
    request_id: str = ""
    inputs: list[str] = field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = None
    normalize: bool = True

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
