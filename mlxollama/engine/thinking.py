"""Thinking: which models reason before they answer, and the markers around the reasoning.

A model thinks when its template does something with it: a Go TEMPLATE that reads `.Think`,
a Jinja template that writes `<think>` or reads `enable_thinking`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThinkFormat:
    start: str
    end: str


THINK_TAGS = ThinkFormat("<think>", "</think>")


def think_format(template: str | None) -> ThinkFormat | None:
    """The reasoning markers of a template; None when the model does not think."""
    if not template:
        return None
    if ".Think" in template or "<think>" in template or "enable_thinking" in template:
        return THINK_TAGS
    return None
