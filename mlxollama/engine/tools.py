"""Tool calls: which format a model's template writes them in, how its answer is parsed back
into calls (mlx-lm's parsers where one fits), and the grammar that forces a call when the
request says `tool_choice: "required"` or names a function.

A format is picked from the template text (the Modelfile's Go TEMPLATE or the model's Jinja
chat template), as Ollama and mlx-lm pick theirs: the markers the template writes are the
markers the model was trained to emit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxollama.errors import InvalidOption


@dataclass(frozen=True)
class ToolFormat:
    """How one family writes tool calls.

    start/end: the markers around a call (`end` "" runs to the end of the answer).
    parse: the text between the markers → Ollama tool calls.
    call_lark: the Lark rule for one call whose JSON follows `schema` (for the grammar).
    """

    name: str
    start: str
    end: str
    parse: Callable[[str], list[dict[str, Any]]]
    call_lark: Callable[[str], str]


def _ollama_calls(items: list[dict[str, Any]], args_key: str = "arguments") -> list[dict]:
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("not a tool call")
        arguments = item.get(args_key, item.get("arguments", {}))
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        if not isinstance(arguments, dict):
            raise ValueError("tool call arguments must be an object")
        calls.append({"function": {"name": item["name"], "arguments": arguments}})
    return calls


def _parse_hermes(text: str) -> list[dict[str, Any]]:
    from mlx_lm.tool_parsers import json_tools

    value = json_tools.parse_tool_call(text)
    return _ollama_calls(value if isinstance(value, list) else [value])


HERMES = ToolFormat(
    name="hermes",
    start="<tool_call>",
    end="</tool_call>",
    parse=_parse_hermes,
    call_lark=lambda schema: f'"<tool_call>\\n" %json {schema} "\\n</tool_call>"',
)

FORMATS = (HERMES,)


def tool_format(template: str | None) -> ToolFormat | None:
    """The tool-call format a template writes; None when it renders no tools."""
    if not template:
        return None
    if "<tool_call>" in template and ("tools" in template.lower()):
        return HERMES
    return None


def call_schema(tools: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """The JSON schema of one call `{"name": ..., "arguments": {...}}` to any of `tools` (or
    to the one named)."""
    options = []
    for tool in tools:
        fn = tool.get("function") or {}
        if name is not None and fn.get("name") != name:
            continue
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": fn.get("name")},
                    "arguments": fn.get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not options:
        raise InvalidOption(f"tool_choice names function {name!r}, which is not in tools")
    return options[0] if len(options) == 1 else {"anyOf": options}


def required_lark(fmt: ToolFormat, tools: list[dict[str, Any]], name: str | None) -> str:
    """A Lark grammar forcing one call in `fmt` to one of `tools` (or to `name`)."""
    from mlxollama.engine.grammar import JSON_STYLE

    schema = {**call_schema(tools, name), "x-guidance": JSON_STYLE}
    return "start: " + fmt.call_lark(json.dumps(schema))
