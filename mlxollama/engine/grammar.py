"""Constrained decoding: a grammar (a JSON schema, or a Lark grammar for tool calls) masks the
logits of one sequence, so its answer always parses.

The grammar engine is llguidance, chosen over the others for what this project needs: it has
no Python dependencies (a Rust core; numpy is all it asks), it compiles a schema lazily (no
upfront automaton: about a millisecond per request), it computes a 49k-token mask in a
tenth of a millisecond or so on SmolLM2 (`benchmarks/bench_structured.py`), it names the
schema features it lacks, and it embeds JSON schemas inside Lark grammars, which tool calls
need. `docs/structured-output.md` compares it with outlines, xgrammar (its wheel requires
torch) and lm-format-enforcer.

MLX and numpy are imported where a mask is made: `features` checks schemas through this
module on every request, MLX-free. The mask is applied with plain MLX operations (no Metal-
or CUDA-only kernel), so it runs on every backend; each sequence has its own matcher, so
constrained and free sequences share a batch.
"""

from __future__ import annotations

import threading
from typing import Any

from mlxollama.errors import InvalidOption

# How the model writes JSON under a schema: one space after separators (what models trained
# on JSON write), no free whitespace, which otherwise lets a small model emit newlines
# until num_predict runs out.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}  # Ollama's `format: "json"`: a JSON object


def schema_of(format: Any) -> dict[str, Any] | None:
    """A request's `format` (Ollama) as a JSON schema: None for no format, `{"type":
    "object"}` for "json", the schema itself for an object.

    Raises:
        InvalidOption: another value.
    """
    if format in (None, ""):
        return None
    if format == "json":
        return dict(ANY_OBJECT)
    if isinstance(format, dict):
        return format
    raise InvalidOption(
        f'invalid format: {format!r}: use "json" or a JSON schema object'
        if isinstance(format, str)
        else 'invalid request: "format" must be "json" or a JSON schema object'
    )


def json_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar for a JSON schema, checked now.

    Raises:
        InvalidOption: the schema uses a feature llguidance does not implement (the message
            names it), or is not a valid schema.
    """
    import llguidance

    schema = closed(schema)
    styled = {**schema, "x-guidance": {**JSON_STYLE, **(schema.get("x-guidance") or {})}}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(styled)
    except Exception as e:  # a schema llguidance cannot even read
        raise InvalidOption(f"invalid JSON schema in format: {e}") from None
    return check(grammar, "JSON schema in format")


# Where a schema holds other schemas: by name, in a list, or one.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def closed(schema: Any, *, close: bool = True) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists
    `properties` and says nothing of other keys, as Ollama's grammar (llama.cpp's schema
    converter) reads it: the answer has the keys the schema names and no others. Without
    this a small model invents keys until `num_predict` runs out. An explicit
    `additionalProperties` or `patternProperties` is kept; the branches of an `allOf` are
    left open (each would refuse the keys the others add). The caller's dict is untouched.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(sub) for sub in out[key]]
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [closed(sub, close=False) for sub in out["allOf"]]
    for key in _SCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    opened = "additionalProperties" in out or "patternProperties" in out
    if close and isinstance(out.get("properties"), dict) and not opened:
        out["additionalProperties"] = False
    return out


def lark_grammar(lark: str, what: str) -> str:
    """The llguidance grammar for a Lark grammar text (tool calls), checked now."""
    import llguidance

    return check(llguidance.LLMatcher.grammar_from_lark(lark), what)


def check(grammar: str, what: str) -> str:
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(grammar, None)
    if error:
        raise InvalidOption(f"unsupported {what}: {error}")
    return grammar


_tokenizers: dict[int, Any] = {}
_tokenizers_lock = threading.Lock()


def tokenizer_for(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of an mlx-lm tokenizer (built once per tokenizer: ~0.4 s)."""
    import llguidance.hf

    key = id(tokenizer)
    with _tokenizers_lock:
        cached = _tokenizers.get(key)
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
        eos = sorted(tokenizer.eos_token_ids)
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        llt = llguidance.hf.from_tokenizer(hf, n_vocab=vocab_size, eos_token=eos or None)
        _tokenizers[key] = (tokenizer, llt)
        return llt


class Constraint:
    """One sequence's grammar as an mlx-lm logits processor: `(tokens, logits) -> logits`.

    `tokens` is the sequence so far (prompt and answer); the first call sees the prompt,
    each later one the token sampled under the previous mask, which the matcher consumes
    first. A call at a position already seen (a sequence moved from solo into the batch is
    fed its last token again) reuses the mask. Once the grammar is complete only an end
    token is allowed.

    mlx-lm builds step n+1's forward pass before step n's token is known, and samples it
    without waiting; the matcher needs that token. A call queues the token first, then the
    forward pass (which does not depend on the mask), and only then waits for the token:
    where evaluation is asynchronous (GPUs) the mask is computed on the CPU while the model
    runs; on MLX's CPU backend, which throttles queued work, it costs what the matcher
    costs (`benchmarks/bench_structured.py`). The mask is unpacked from
    llguidance's bitmask in numpy and uploaded once per token: plain arrays, no Metal- or
    CUDA-only kernel, so it runs on every MLX backend.

    Raises (at sampling time, caught by the sequence's `sampling.Guard`): the sampled token
    was not allowed, which cannot happen unless a later processor undid the mask.
    """

    def __init__(self, llg_tokenizer: Any, grammar: str, vocab_size: int):
        import llguidance
        import numpy as np

        self.matcher = llguidance.LLMatcher(llg_tokenizer, grammar)
        if self.matcher.is_error():
            raise InvalidOption(f"grammar error: {self.matcher.get_error()}")
        self.vocab_size = vocab_size
        self.bits = np.full(((vocab_size + 31) // 32,), -1, dtype=np.int32)
        self.seen: int | None = None
        self.mask: Any = None  # an mx.array of bools as wide as the logits: the allowed ids

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        n = tokens.shape[-1]
        if self.seen is None or n > self.seen:
            last = None
            if self.seen is not None:
                last = tokens[-1]
                mx.async_eval(last)  # queued ahead of the forward pass, so not behind it
            mx.async_eval(logits)  # the model runs while the matcher waits and masks
            if last is not None:
                token = int(last.item())
                if not self.matcher.consume_token(token):
                    raise RuntimeError(
                        f"constrained decoding: token {token} is not allowed by the grammar "
                        f"({self.matcher.get_error()})"
                    )
            self.seen = n
            self.mask = None
        width = logits.shape[-1]
        if self.mask is None or self.mask.shape[0] != width:
            self.mask = self._compute_mask(width)
        return mx.where(self.mask, logits, mx.array(-mx.inf, dtype=logits.dtype))

    def _compute_mask(self, width: int) -> Any:
        """The allowed ids as `width` bools (ids past the tokenizer's vocabulary, where the
        logits are padded, stay off)."""
        import mlx.core as mx
        import numpy as np

        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        if self.matcher.is_error():
            raise RuntimeError(f"constrained decoding: {self.matcher.get_error()}")
        # bit i of word w allows id 32w+i: little-endian words, so little bit order per byte
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.vocab_size]
        if width != allowed.shape[0]:
            allowed = np.concatenate(
                [allowed, np.zeros(max(width - allowed.shape[0], 0), np.uint8)]
            )
            allowed = allowed[:width]
        return mx.array(allowed.view(np.bool_))


def constraint(lm: Any, grammar: str) -> Constraint:
    """A fresh Constraint for one sequence of loaded model `lm`."""
    vocab = int(lm.model_config.get("vocab_size") or len(lm.tokenizer.get_vocab()))
    return Constraint(tokenizer_for(lm.tokenizer, vocab), grammar, vocab)
