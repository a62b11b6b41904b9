"""A parsed template: `parse` and `Template.render`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mlxollama.gotemplate.errors import fail
from mlxollama.gotemplate.executor import run
from mlxollama.gotemplate.lexer import Lexer
from mlxollama.gotemplate.nodes import Action, Branch, Chain, Field, Pipe, Var
from mlxollama.gotemplate.parser import Parser


class Template:
    """A parsed Go template. `source` is the text it was parsed from."""

    def __init__(self, source: str, nodes: list[Any]):
        self.source = source
        self.nodes = nodes
        self.vars = frozenset(_identifiers(nodes))

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, values: Mapping[str, Any]) -> str:
        """Run the template with `values` as dot (and `$`).

        Raises:
            TemplateError: (an InvalidModelfile) a function or field failed while rendering.
        """
        return run(self.nodes, values)


def parse(template: str) -> Template:
    """Parse a Go template.

    Raises:
        InvalidModelfile: `template error: line N: ...` for bad syntax, an unknown function
            or an undefined variable.
    """
    if not isinstance(template, str):
        raise fail(f"template must be a string, not {type(template).__name__}")
    return Template(template, Parser(Lexer(template).segments()).parse())


def _identifiers(nodes: Iterable[Any]) -> set[str]:
    """Every field and variable name the template mentions, lower-cased (Ollama's Vars)."""
    found: set[str] = set()

    def pipe(p: Pipe) -> None:
        for cmd in p.cmds:
            for a in cmd:
                operand(a)

    def operand(a: Any) -> None:
        if isinstance(a, Field):
            found.update(s.lower() for s in a.idents)
        elif isinstance(a, Var):
            found.add(a.name.lower())
            found.update(s.lower() for s in a.idents)
        elif isinstance(a, Pipe):
            pipe(a)
        elif isinstance(a, Chain):
            pipe(a.node)
            found.update(s.lower() for s in a.idents)

    def walk(ns: Iterable[Any]) -> None:
        for n in ns:
            if isinstance(n, Action):
                pipe(n.pipe)
            elif isinstance(n, Branch):
                pipe(n.pipe)
                walk(n.body)
                walk(n.else_body or [])

    walk(nodes)
    return found
