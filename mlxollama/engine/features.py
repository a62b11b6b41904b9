"""What a request may ask of a model, checked before any model loads: the model's
capabilities as its template gives them (`tools`, `thinking`, `insert`), and the request's
own fields (schema, tools, tool_choice, top_logprobs, think). No MLX here: `show`, `list`
and the HTTP layer call it on every request.
"""

from __future__ import annotations

from mlxollama import api
from mlxollama.engine import grammar, thinking, tools
from mlxollama.errors import InvalidOption, UnsupportedModel


def capabilities(base: list[str], template: str | None, go: bool) -> list[str]:
    """A model's capabilities: those it was created with (`completion`, `embedding`) and what
    its template renders (`tools`, `thinking`, `insert`)."""
    caps = list(base)
    if "completion" not in caps:
        return caps
    extra = []
    if tools.tool_format(template) is not None:
        extra.append("tools")
    if thinking.think_format(template, go) is not None:
        extra.append("thinking")
    if go and template and ".Suffix" in template:
        extra.append("insert")
    return caps + [c for c in extra if c not in caps]


def check(request: api.InferenceRequest, name: str, caps: list[str]) -> None:
    """Raises UnsupportedModel (Ollama's wording, which clients match on: `name` is the full
    name) when the request asks for what the model cannot do: tools, thinking,
    fill-in-the-middle."""
    if request.tools and "tools" not in caps:
        raise UnsupportedModel(f"{name} does not support tools")
    if request.think not in (None, False) and "thinking" not in caps:
        raise UnsupportedModel(f'"{request.model}" does not support thinking')
    if request.suffix and "insert" not in caps:
        raise UnsupportedModel(f"{name} does not support insert")


TOOL_CHOICES = ("auto", "none", "required")
MAX_TOP_LOGPROBS = 20


def validate(request: api.InferenceRequest) -> None:
    """Check what a request asks for before any model loads, so a bad one costs a 400 and
    nothing else: the format's schema compiles, tools are functions with names,
    `tool_choice` is one of Ollama's/OpenAI's, `top_logprobs` is in 0-20, `think` is a
    boolean or a level.

    Raises:
        InvalidOption: the first problem found, named.
    """
    if request.format is not None:
        grammar.json_grammar(request.format)
    names = []
    for tool in request.tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidOption('invalid tool: each tool needs "function" with a "name"')
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidOption(f"invalid tool {fn['name']!r}: parameters must be an object")
        names.append(fn["name"])
    choice = request.tool_choice
    if isinstance(choice, dict):
        if choice.get("name") not in names:
            raise InvalidOption(f"tool_choice names {choice.get('name')!r}, which is not in tools")
    elif choice not in TOOL_CHOICES:
        raise InvalidOption(f"invalid tool_choice {choice!r}: use one of {', '.join(TOOL_CHOICES)}")
    elif choice == "required" and not names:
        raise InvalidOption('tool_choice "required" needs tools')
    if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidOption(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if request.think is not None and not isinstance(request.think, (bool, str)):
        raise InvalidOption('invalid request: "think" must be a boolean or a string')
