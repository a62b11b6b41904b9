"""The syntax tree a parsed template is: plain slotted dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Field:  # .A.B on dot
    idents: tuple[str, ...]


@dataclass(slots=True)
class Var:  # $x.A.B
    name: str
    idents: tuple[str, ...]


@dataclass(slots=True)
class Dot:
    pass


@dataclass(slots=True)
class Lit:
    value: Any


@dataclass(slots=True)
class Nil:
    pass


@dataclass(slots=True)
class Func:
    name: str


@dataclass(slots=True)
class Pipe:
    decl: list[str]
    assign: bool
    cmds: list[list[Any]]
    line: int


@dataclass(slots=True)
class Chain:  # (pipeline).A.B
    node: Pipe
    idents: tuple[str, ...]


@dataclass(slots=True)
class Action:
    pipe: Pipe
    line: int


@dataclass(slots=True)
class Branch:
    kind: str  # "if", "with" or "range"
    pipe: Pipe
    body: list[Any]
    else_body: list[Any] | None
    line: int


@dataclass(slots=True)
class Jump:
    kind: str  # "break" or "continue"
    line: int
