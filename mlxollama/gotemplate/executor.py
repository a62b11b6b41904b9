"""Executor: walk a parsed tree over plain Python data and print what it says."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from mlxollama.gotemplate.errors import TemplateError, fail
from mlxollama.gotemplate.functions import FUNCS
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
from mlxollama.gotemplate.values import go_quote, go_value, sort_key, truth, type_name

_NO_VALUE = object()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _field(receiver: Any, name: str, line: int) -> Any:
    if isinstance(receiver, Mapping):
        return receiver.get(name)
    if receiver is None:
        raise fail(f"nil pointer evaluating .{name}", line)
    if hasattr(receiver, name) and not callable(getattr(receiver, name)):
        return getattr(receiver, name)
    raise fail(f"can't evaluate field {name} in type {type_name(receiver)}", line)


class Executor:
    def __init__(self, root: Any):
        self.vars: list[list[Any]] = [["$", root]]
        self.out: list[str] = []

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.out.append(node.text)
            elif isinstance(node, Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append("<no value>" if value is None else go_value(value))
            elif isinstance(node, Branch):
                mark = len(self.vars)
                if node.kind == "range":
                    self.range(node, dot)
                else:
                    value = self.pipe(node.pipe, dot)
                    if truth(value):
                        self.walk(node.body, value if node.kind == "with" else dot)
                    elif node.else_body is not None:
                        self.walk(node.else_body, dot)
                del self.vars[mark:]
            elif isinstance(node, Jump):
                raise _Break() if node.kind == "break" else _Continue()

    def range(self, node: Branch, dot: Any) -> None:
        pipe = node.pipe
        value = self.pipe(replace(pipe, decl=[]), dot)
        if value is None:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, Mapping):
            items = [(k, value[k]) for k in sorted(value, key=sort_key)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(pipe.decl) > 1:
                raise fail("can't use two variables when ranging over an integer", node.line)
            items = [(i, i) for i in range(value)]
        else:
            raise fail(f"range can't iterate over {go_value(value)}", node.line)
        if not pipe.assign:
            for name in pipe.decl:
                self.vars.append([name, None])
        mark = len(self.vars)
        for key, elem in items:
            if pipe.decl:
                names = pipe.decl
                self.set_var(names[-1], elem)
                if len(names) == 2:
                    self.set_var(names[0], key)
            try:
                self.walk(node.body, elem)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]
        if not items and node.else_body is not None:
            self.walk(node.else_body, dot)

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise fail(f'undefined variable "{name}"')

    def get_var(self, name: str, line: int) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise fail(f'undefined variable "{name}"', line)

    def pipe(self, pipe: Pipe, dot: Any) -> Any:
        value: Any = _NO_VALUE
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value, pipe.line)
        for name in pipe.decl:
            if pipe.assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def command(self, args: list[Any], dot: Any, final: Any, line: int) -> Any:
        first = args[0]
        if isinstance(first, Func):
            return self.call(first.name, args[1:], dot, final, line)
        if len(args) > 1 or final is not _NO_VALUE:
            if isinstance(first, (Field, Chain)) or (isinstance(first, Var) and first.idents):
                name = (first.idents or ("",))[-1]
                raise fail(f"{name} is not a method but has arguments", line)
            raise fail(f"can't give argument to non-function {_describe(first)}", line)
        return self.arg(first, dot, line)

    def arg(self, node: Any, dot: Any, line: int) -> Any:
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Field):
            return self.fields(dot, node.idents, line)
        if isinstance(node, Var):
            return self.fields(self.get_var(node.name, line), node.idents, line)
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Nil):
            return None
        if isinstance(node, Pipe):
            return self.pipe(node, dot)
        if isinstance(node, Chain):
            return self.fields(self.pipe(node.node, dot), node.idents, line)
        if isinstance(node, Func):
            return self.call(node.name, [], dot, _NO_VALUE, line)
        raise fail(f"can't evaluate {node!r}", line)

    def fields(self, value: Any, idents: tuple[str, ...], line: int) -> Any:
        for name in idents:
            value = _field(value, name, line)
        return value

    def call(self, name: str, arg_nodes: list[Any], dot: Any, final: Any, line: int) -> Any:
        if name in ("and", "or"):
            thunks: list[Callable[[], Any]] = [
                lambda n=n: self.arg(n, dot, line) for n in arg_nodes
            ]
            if final is not _NO_VALUE:
                thunks.append(lambda: final)
            if not thunks:
                raise fail(f"wrong number of args for {name}: want at least 1 got 0", line)
            value = None
            for thunk in thunks:
                value = thunk()
                if truth(value) != (name == "and"):
                    return value
            return value
        args = [self.arg(n, dot, line) for n in arg_nodes]
        if final is not _NO_VALUE:
            args.append(final)
        try:
            return FUNCS[name](*args)
        except TemplateError as e:
            raise fail(
                f"error calling {name}: {str(e).removeprefix('template error: ')}", line
            ) from None


def _describe(node: Any) -> str:
    if isinstance(node, Lit):
        return go_quote(node.value) if isinstance(node.value, str) else go_value(node.value)
    if isinstance(node, Dot):
        return "."
    if isinstance(node, Var):
        return node.name
    return "pipeline"


def run(nodes: list[Any], values: Any) -> str:
    ex = Executor(values)
    try:
        ex.walk(nodes, values)
    except RecursionError:
        raise fail("template nests too deeply") from None
    return "".join(ex.out)
