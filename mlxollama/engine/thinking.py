"""Thinking: which models reason before they answer, and the markers around the reasoning.

A model thinks when its template does something with reasoning:
- a Go TEMPLATE (Modelfile) shows a message's `.Thinking` inside `range .Messages`; as in
  Ollama, the markers are the text that opens and closes the block around it
  (`{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}` gives `<think>`, `</think>`).
  A template that only reads `.Think` and writes `<think>` counts too (the markers are then
  `<think>`/`</think>`);
- a Jinja chat template writes `<think>` (Qwen3, DeepSeek-R1, SmolLM3), splits the content at
  `</think>`, or reads `enable_thinking`;
- gpt-oss's harmony format: the reasoning is the `analysis` channel
  (`<|channel|>analysis<|message|>` ... `<|end|>`) and the answer the `final` channel
  (`<|start|>assistant<|channel|>final<|message|>` ...).

The markers are matched in the answer's text. mlx-lm's detokenizers (BPE, SPM and the
naive one) write special tokens as their text, so `<think>` or `<|channel|>` arrive as text
whether they are one special token or several plain ones; only the end-of-generation tokens
never reach the text (the decoder stops on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ThinkFormat:
    """Reasoning sits between `start` and `end`. `answer` is the header the model writes
    before its answer (harmony's final channel, after `<|start|>assistant` when it follows
    the reasoning), dropped from the content; empty for `<think>`-style models.
    `max_level` is the highest level the template knows ("high" for harmony, no "max")."""

    start: str
    end: str
    answer: str = ""
    max_level: str = "max"


THINK_TAGS = ThinkFormat("<think>", "</think>")
HARMONY = ThinkFormat(
    "<|channel|>analysis<|message|>",
    "<|end|>",
    answer="<|channel|>final<|message|>",
    max_level="high",
)


def think_format(template: str | None, go: bool | None = None) -> ThinkFormat | None:
    """The reasoning markers of a template; None when the model does not think.

    Args:
        template: the template text (Go or Jinja).
        go: whether it is a Go template. Default: guessed (`{{ .` or `{{- .` is Go).
    """
    if not template:
        return None
    if "<|channel|>" in template and "analysis" in template:
        return HARMONY
    if go is None:
        go = "{%" not in template
    if go:
        return _go_format(template)
    if "<think>" in template or "enable_thinking" in template:
        return THINK_TAGS
    if "split('</think>')" in template or 'split("</think>")' in template:
        return THINK_TAGS
    return None


def _go_format(template: str) -> ThinkFormat | None:
    from mlxollama import gotemplate
    from mlxollama.errors import MlxOllamaError

    try:
        parsed = gotemplate.parse(template)
    except MlxOllamaError:
        return None
    start, end = infer_tags(parsed.nodes)
    if start and end:
        return ThinkFormat(start, end)
    if "think" in parsed.vars and "<think>" in template:
        return THINK_TAGS
    return None


def infer_tags(nodes: list[Any]) -> tuple[str, str]:
    """Ollama's heuristic for a Go template's reasoning markers: for each `.Thinking` inside a
    `range` over `.Messages`, the nearest enclosing block whose first and last parts are text
    gives the opening and closing marker (stripped); the last such `.Thinking` wins."""
    from mlxollama.gotemplate.nodes import Action, Branch, Chain, Field, Pipe

    found = ["", ""]

    def mentions(pipe: Pipe, name: str) -> bool:
        for cmd in pipe.cmds:
            for a in cmd:
                if isinstance(a, Field) and a.idents and a.idents[0] == name:
                    return True
                if isinstance(a, Pipe) and mentions(a, name):
                    return True
                if isinstance(a, Chain) and mentions(a.node, name):
                    return True
        return False

    def tag(block: list[Any]) -> None:
        from mlxollama.gotemplate.nodes import Text

        if not block:
            return
        if isinstance(block[0], Text):
            found[0] = block[0].text.strip()
        if isinstance(block[-1], Text):
            found[1] = block[-1].text.strip()

    def walk(block: list[Any], in_messages: bool) -> None:
        for n in block:
            if isinstance(n, Action):
                if in_messages and mentions(n.pipe, "Thinking"):
                    tag(block)
            elif isinstance(n, Branch):
                inner = in_messages
                if n.kind == "range":
                    inner = mentions(n.pipe, "Messages")
                if in_messages and mentions(n.pipe, "Thinking"):
                    tag(block)
                walk(n.body, inner)
                walk(n.else_body or [], inner)

    walk(nodes, False)
    return found[0], found[1]


def effective_think(
    think: bool | str | None, fmt: ThinkFormat | None, constrained: bool = False
) -> bool | str | None:
    """The `think` a request is rendered and parsed with: a thinking model thinks when the
    request does not say (Ollama's default since thinking became a capability), unless a
    grammar binds the answer from its first token (`constrained`: a `format`, a forced tool
    call); a level above the template's highest becomes that one (harmony has no "max")."""
    if fmt is None:
        return think
    if think is None:
        return not constrained
    if think == "max" and fmt.max_level != "max":
        return fmt.max_level
    return think
