"""Parser: segments from the lexer into a tree of nodes, with variables and function
names checked while parsing (as Go does)."""

from __future__ import annotations

from typing import Any

from mlxollama.gotemplate.errors import fail
from mlxollama.gotemplate.functions import FUNCS
from mlxollama.gotemplate.lexer import KEYWORDS, Segment, Tok
from mlxollama.gotemplate.nodes import (
    Action,
    Branch,
    Chain,
    Dot,
    Field,
    Func,
    Jump,
    Lit,
    Nil,
    Pipe,
    Text,
    Var,
)


class Parser:
    def __init__(self, segments: list[Segment]):
        self.segs = segments
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def parse(self) -> list[Any]:
        return self.list_until(())[0]

    def list_until(self, stops: tuple[str, ...]) -> tuple[list[Any], Segment | None]:
        """Parse nodes until an action whose keyword is in `stops` (returned) or the end."""
        nodes: list[Any] = []
        while self.i < len(self.segs):
            seg = self.segs[self.i]
            self.i += 1
            if seg.tokens is None:
                nodes.append(Text(seg.text))
                continue
            toks = seg.tokens
            if not toks:
                raise fail("missing value for command", seg.line)
            head = toks[0].value if toks[0].kind == "ident" else None
            if head in ("end", "else"):
                if head in stops:
                    return nodes, seg
                raise fail(f"unexpected {{{{{head}}}}}", seg.line)
            if head in ("if", "with", "range"):
                nodes.append(self.control(head, toks[1:], seg.line))
            elif head in ("break", "continue"):
                if len(toks) > 1:
                    raise fail(f"unexpected {toks[1].value!r} in {{{{{head}}}}}", seg.line)
                if not self.range_depth:
                    raise fail(f"{{{{{head}}}}} outside {{{{range}}}}", seg.line)
                nodes.append(Jump(head, seg.line))
            elif head in ("define", "template", "block"):
                raise fail(f"{{{{{head}}}}} is not supported in prompt templates", seg.line)
            else:
                pipe = self.pipeline(toks, seg.line, "command")
                nodes.append(Action(pipe, seg.line))
        if stops:
            raise fail("unexpected EOF: missing {{end}}", self.segs[-1].line if self.segs else 1)
        return nodes, None

    def control(self, kind: str, toks: list[Tok], line: int) -> Branch:
        mark = len(self.vars)
        pipe = self.pipeline(toks, line, kind)
        if kind == "range":
            self.range_depth += 1
        body, stop = self.list_until(("end", "else"))
        if kind == "range":
            self.range_depth -= 1
        else_body = None
        if stop is not None and stop.tokens[0].value == "else":
            rest = stop.tokens[1:]
            if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with"):
                if rest[0].value != kind:
                    raise fail(f"{{{{else {rest[0].value}}}}} inside {{{{{kind}}}}}", stop.line)
                # {{ else if x }} ... {{ end }} is {{ else }}{{ if x }} ... {{ end }}{{ end }}
                else_body = [self.control(kind, rest[1:], stop.line)]
            else:
                if rest:
                    raise fail(f"unexpected {rest[0].value!r} in {{{{else}}}}", stop.line)
                else_body, stop = self.list_until(("end", "else"))
                if stop.tokens[0].value == "else":
                    raise fail("expected {{end}}; found {{else}}", stop.line)
        if stop is not None and stop.tokens[0].value == "end" and len(stop.tokens) > 1:
            raise fail(f"unexpected {stop.tokens[1].value!r} in {{{{end}}}}", stop.line)
        del self.vars[mark:]
        return Branch(kind, pipe, body, else_body, line)

    def pipeline(self, toks: list[Tok], line: int, context: str) -> Pipe:
        decl: list[str] = []
        assign = False
        if context != "paren" and len(toks) >= 2 and toks[0].kind == "var":
            if toks[1].kind in (":=", "="):
                decl, assign, toks = [toks[0].value], toks[1].kind == "=", toks[2:]
            elif (
                context == "range"
                and toks[1].kind == ","
                and len(toks) >= 4
                and toks[2].kind == "var"
                and toks[3].kind in (":=", "=")
            ):
                decl, assign, toks = [toks[0].value, toks[2].value], toks[3].kind == "=", toks[4:]
        for name in decl:
            if assign:
                if name not in self.vars:
                    raise fail(f'undefined variable "{name}"', line)
            else:
                self.vars.append(name)
        if not toks:
            raise fail(f"missing value for {context}", line)
        cmds: list[list[Any]] = []
        i = 0
        while True:
            args: list[Any] = []
            while i < len(toks) and toks[i].kind != "|":
                node, i = self.operand(toks, i, line)
                args.append(node)
            if not args:
                raise fail("missing value for command", line)
            if isinstance(args[0], Nil):
                raise fail("nil is not a command", line)
            cmds.append(args)
            if i >= len(toks):
                break
            i += 1  # the |
        return Pipe(decl, assign, cmds, line)

    def operand(self, toks: list[Tok], i: int, line: int) -> tuple[Any, int]:
        t = toks[i]
        i += 1

        def fields(i: int) -> tuple[tuple[str, ...], int]:
            names = []
            while i < len(toks) and toks[i].kind == "field" and not toks[i].space:
                names.append(toks[i].value)
                i += 1
            return tuple(names), i

        if t.kind == "field":
            more, i = fields(i)
            return Field((t.value, *more)), i
        if t.kind == "var":
            if t.value not in self.vars:
                raise fail(f'undefined variable "{t.value}"', t.line)
            more, i = fields(i)
            return Var(t.value, more), i
        if t.kind == "dot":
            return Dot(), i
        if t.kind in ("string", "number"):
            return Lit(t.value), i
        if t.kind == "ident":
            if t.value in ("true", "false"):
                return Lit(t.value == "true"), i
            if t.value == "nil":
                return Nil(), i
            if t.value in KEYWORDS:
                raise fail(f"unexpected {{{{{t.value}}}}} in operand", t.line)
            if t.value not in FUNCS:
                raise fail(f'function "{t.value}" not defined', t.line)
            return Func(t.value), i
        if t.kind == "(":
            depth, j = 1, i
            while j < len(toks):
                depth += {"(": 1, ")": -1}.get(toks[j].kind, 0)
                if depth == 0:
                    break
                j += 1
            inner = self.pipeline(toks[i:j], t.line, "paren")
            more, k = fields(j + 1)
            return (Chain(inner, more) if more else inner), k
        raise fail(f"unexpected {t.value!r} in operand", t.line)
