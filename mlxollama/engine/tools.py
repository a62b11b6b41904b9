"""Tool calls: which format a model's template writes them in, how its answer is parsed back
into calls (mlx-lm's parsers where one fits), and the grammar that forces a call when the
request says `tool_choice: "required"` or names a function.

A format is picked from the template text (the Modelfile's Go TEMPLATE or the model's Jinja
chat template), as Ollama and mlx-lm pick theirs: the markers the template writes are the
markers the model was trained to emit. A template that never mentions tools renders none, so
the model has no `tools` capability whatever markers it holds.

The formats (docs/tools.md has examples):
- hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2/2.5/3, Hermes,
  SmolLM3 and most fine-tunes);
- qwen3_coder: `<tool_call><function=NAME><parameter=KEY>value</parameter></function>`;
- llama3: the answer is the call, `{"name": ..., "parameters": {...}}`, optionally after
  `<|python_tag|>` (Llama 3.1/3.2/3.3);
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`, or `[TOOL_CALLS]NAME[ARGS]{...}`
  in the newer templates;
- harmony: gpt-oss's `to=functions.NAME<|constrain|>json<|message|>{...}<|call|>`;
- function_gemma: `<start_function_call>call:NAME{key:value}<end_function_call>`;
- gemma4: `<|tool_call>call:NAME{...}<tool_call|>`;
- pythonic: `<|tool_call_start|>[name(key=value)]<|tool_call_end|>` (LFM2).

A forced call (`required` / a named function) is a grammar in llguidance's Lark syntax: the
format's markers around the function's JSON arguments, so the arguments always match the
function's schema. The formats whose arguments are not JSON (qwen3_coder, the gemmas,
pythonic) have no such grammar; a forced choice on them is a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxollama.errors import InvalidOption

Tools = list[dict[str, Any]]
Marker = Callable[[str], str]
"""How a grammar writes a marker: a quoted literal, or the model's own special token."""


def quoted(text: str) -> str:
    """A Lark string literal for `text`."""
    return json.dumps(text)


@dataclass(frozen=True)
class ToolFormat:
    """How one family writes tool calls.

    start/end: the markers around a call (`end` "" runs to the end of the answer).
    parse: the text between the markers (and the request's tools) → Ollama tool calls;
        raises ValueError when it is not a call.
    call_lark: the Lark expression for one call to the function named, whose arguments
        follow the JSON schema given; None: calls cannot be forced.
    leading: the answer itself is the call, with no start marker (`start` is what it
        begins with); text before it makes the whole answer content.
    """

    name: str
    start: str
    end: str
    parse: Callable[[str, Tools], list[dict[str, Any]]]
    call_lark: Callable[[str, dict[str, Any], Marker], str] | None = None
    leading: bool = False

    def parser(self, tools: Tools):
        """A fresh output parser (`engine.output`) for one answer."""
        from mlxollama.engine.output import LeadingCallParser, ToolCallParser

        def parse(text: str) -> list[dict[str, Any]]:
            return self.parse(text, tools)

        if self.leading:
            return LeadingCallParser(self.start, parse)
        return ToolCallParser(self.start, self.end, parse)


def ollama_calls(items: Any, args_key: str = "arguments") -> list[dict[str, Any]]:
    """Calls as parsers return them (`{"name", "arguments"}`, one or a list) in Ollama's shape
    `{"function": {"name", "arguments": {...}}}`.

    Raises:
        ValueError: an item is not a call (no name, arguments not an object).
    """
    calls = []
    for item in items if isinstance(items, list) else [items]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ValueError("not a tool call")
        arguments = item.get(args_key, item.get("arguments", {}))
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ValueError("tool call arguments must be an object")
        calls.append({"function": {"name": item["name"], "arguments": arguments}})
    return calls


def _mlx_parser(module: str) -> Callable[[str, Tools], list[dict[str, Any]]]:
    """mlx-lm's parser `mlx_lm.tool_parsers.<module>`; its errors become ValueError."""

    def parse(text: str, tools: Tools) -> list[dict[str, Any]]:
        import importlib

        parser = importlib.import_module(f"mlx_lm.tool_parsers.{module}")
        try:
            value = parser.parse_tool_call(text, tools or None)
        except (KeyError, IndexError, TypeError, AttributeError, SyntaxError) as e:
            raise ValueError(f"not a {module} tool call: {e}") from None
        return ollama_calls(value)

    return parse


def json_lark(schema: dict[str, Any]) -> str:
    """`%json` of `schema`, written as the model writes JSON under a format (`JSON_STYLE`)."""
    from mlxollama.engine.grammar import JSON_STYLE

    styled = {**schema, "x-guidance": {**JSON_STYLE, **(schema.get("x-guidance") or {})}}
    return "%json " + json.dumps(styled)


def _call_object(name: str, params: dict[str, Any], args_key: str) -> dict[str, Any]:
    """`{"name": NAME, "<args_key>": {...}}` (the key order is the schema's)."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, args_key: params},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _hermes_lark(name: str, params: dict[str, Any], marker: Marker) -> str:
    call = json_lark(_call_object(name, params, "arguments"))
    return f'{marker("<tool_call>")} "\\n" {call} "\\n" {marker("</tool_call>")}'


def _llama3_lark(name: str, params: dict[str, Any], marker: Marker) -> str:
    return json_lark(_call_object(name, params, "parameters"))


def _mistral_lark(name: str, params: dict[str, Any], marker: Marker) -> str:
    one = {"items": _call_object(name, params, "arguments"), "minItems": 1, "maxItems": 1}
    return f"{marker('[TOOL_CALLS]')} {json_lark({'type': 'array', **one})}"


def _mistral_args_lark(name: str, params: dict[str, Any], marker: Marker) -> str:
    return f"{marker('[TOOL_CALLS]')} {quoted(name)} {marker('[ARGS]')} {json_lark(params)}"


def _harmony_lark(name: str, params: dict[str, Any], marker: Marker) -> str:
    head = f"{marker('<|channel|>')} {quoted('commentary to=functions.' + name + ' ')}"
    return f'{head} {marker("<|constrain|>")} "json" {marker("<|message|>")} {json_lark(params)}'


def _json_calls(args_key: str) -> Callable[[str, Tools], list[dict[str, Any]]]:
    """JSON calls `{"name": ..., "<args_key>": {...}}` (or `arguments`), one, a list, or
    several separated by `;` or new lines, optionally after `<|python_tag|>`: what
    mlx-lm's `json_tools` reads (one `json.loads`), and what models write besides."""

    def parse(text: str, tools: Tools) -> list[dict[str, Any]]:
        text = text.strip().removeprefix("<|python_tag|>").strip()
        decoder = json.JSONDecoder()
        calls, pos = [], 0
        while pos < len(text):
            value, pos = decoder.raw_decode(text, pos)
            calls += ollama_calls(value, args_key)
            while pos < len(text) and text[pos] in " \t\r\n;":
                pos += 1
        if not calls:
            raise ValueError("no tool call")
        return calls

    return parse


_HARMONY_CALL = re.compile(r"^\s*([\w.\-]+).*?<\|message\|>(.*)$", re.S)


def _parse_harmony(text: str, tools: Tools) -> list[dict[str, Any]]:
    """The text after `to=functions.`: the name, the (JSON) constraint, then the arguments
    after `<|message|>` (`<|call|>` ends it, when the decoder shows it)."""
    match = _HARMONY_CALL.match(text)
    if match is None:
        raise ValueError("not a harmony tool call")
    body = match.group(2).strip().removesuffix("<|call|>").strip()
    return ollama_calls({"name": match.group(1), "arguments": json.loads(body) if body else {}})


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>", _json_calls("arguments"), _hermes_lark)
QWEN3_CODER = ToolFormat("qwen3_coder", "<tool_call>", "</tool_call>", _mlx_parser("qwen3_coder"))
LLAMA3 = ToolFormat("llama3", "{", "", _json_calls("parameters"), _llama3_lark, leading=True)
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "", _mlx_parser("mistral"), _mistral_lark)
MISTRAL_ARGS = ToolFormat("mistral", "[TOOL_CALLS]", "", _mlx_parser("mistral"), _mistral_args_lark)
HARMONY = ToolFormat(
    "harmony", "<|channel|>commentary to=functions.", "<|call|>", _parse_harmony, _harmony_lark
)
FUNCTION_GEMMA = ToolFormat(
    "function_gemma",
    "<start_function_call>",
    "<end_function_call>",
    _mlx_parser("function_gemma"),
)
GEMMA4 = ToolFormat("gemma4", "<|tool_call>", "<tool_call|>", _mlx_parser("gemma4"))
PYTHONIC = ToolFormat(
    "pythonic", "<|tool_call_start|>", "<|tool_call_end|>", _mlx_parser("pythonic")
)

FORMATS = (
    HERMES,
    QWEN3_CODER,
    LLAMA3,
    MISTRAL,
    MISTRAL_ARGS,
    HARMONY,
    FUNCTION_GEMMA,
    GEMMA4,
    PYTHONIC,
)

# What shows that a template renders the request's tools: Go templates read `.Tools`,
# Jinja templates the `tools` variable.
_RENDERS_TOOLS = re.compile(r"\.Tools\b|\btools\b")
_LLAMA3_CALL = re.compile(r"""["']?\{\s*\\?"name\\?"\s*:.{0,200}?\\?"parameters\\?"\s*:""", re.S)


def tool_format(template: str | None) -> ToolFormat | None:
    """The tool-call format a template writes; None when it renders no tools.

    The checks go from the most specific markers to the least (qwen3_coder's `<tool_call>`
    holds `<function=`; harmony's header names `functions.`), as mlx-lm's
    `_infer_tool_parser` orders them.
    """
    if not template or not _RENDERS_TOOLS.search(template):
        return None
    if "<|tool_call>" in template and "<tool_call|>" in template:
        return GEMMA4
    if "<start_function_call>" in template:
        return FUNCTION_GEMMA
    if "<|tool_call_start|>" in template or "<|tool_list_start|>" in template:
        return PYTHONIC
    if "<tool_call>\n<function=" in template or "<tool_call>\\n<function=" in template:
        return QWEN3_CODER
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL_ARGS if "[ARGS]" in template else MISTRAL
    if "<|channel|>" in template and "to=functions" in template:
        return HARMONY
    if "<|python_tag|>" in template or _LLAMA3_CALL.search(template):
        return LLAMA3
    return None


def _functions(tools: Tools, name: str | None) -> list[dict[str, Any]]:
    fns = [tool.get("function") or {} for tool in tools]
    fns = [fn for fn in fns if name is None or fn.get("name") == name]
    if not fns:
        raise InvalidOption(f"tool_choice names function {name!r}, which is not in tools")
    return fns


def required_lark(fmt: ToolFormat, tools: Tools, name: str | None, marker: Marker = quoted) -> str:
    """A Lark grammar forcing exactly one call in `fmt` to one of `tools` (or to `name`),
    its arguments under the function's JSON schema.

    One call, not several: OpenAI's `required` asks for at least one, and with one the
    grammar ends the answer right after it (a small model would otherwise go on calling).
    The arguments are the function's own (`closed`): a model that invents more arguments
    until `num_predict` runs out is what a forced call would otherwise get.

    Args:
        marker: writes a marker into the grammar (`quoted`, or the model's special token
            where the marker is one, so the model emits the token it was trained on).

    Raises:
        InvalidOption: the format has no grammar, or `name` is not among the tools.
    """
    if fmt.call_lark is None:
        raise InvalidOption(
            f'tool_choice "required" or a named function is not supported for models that '
            f'write {fmt.name} tool calls: use "auto"'
        )
    rules = []
    for fn in _functions(tools, name):
        params = closed(fn.get("parameters") or {"type": "object"})
        rules.append(fmt.call_lark(fn["name"], params, marker))
    alternatives = "\n".join(f"call_{i}: {rule}" for i, rule in enumerate(rules))
    return "start: " + " | ".join(f"call_{i}" for i in range(len(rules))) + "\n" + alternatives


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on each object that lists its properties
    and says nothing of others (OpenAI's strict mode). What validates against the result
    validates against `schema`."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = (
                {k: closed(v) for k, v in value.items()} if isinstance(value, dict) else value
            )
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not"):
            out[key] = closed(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def special_marker(tokenizer: Any) -> Marker:
    """A `marker` for `required_lark` that writes a marker that is one added token of the
    model's vocabulary as that token (`<[id]>`), else as a literal."""
    added = getattr(tokenizer, "added_tokens_encoder", None)
    if added is None:
        added = getattr(getattr(tokenizer, "_tokenizer", None), "added_tokens_encoder", None) or {}

    def marker(text: str) -> str:
        token = added.get(text)
        return f"<[{token}]>" if isinstance(token, int) else quoted(text)

    return marker
