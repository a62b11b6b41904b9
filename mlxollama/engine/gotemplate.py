"""Ollama prompt templates: a Go `text/template` subset, and Ollama's chat-to-prompt rules.

Modelfile TEMPLATEs are Go templates. This module parses and runs the parts of the language
that prompt templates use:

- text, `{{ pipeline }}`, `{{- ` / ` -}}` whitespace trimming, `{{/* comments */}}`;
- `.`, `.Field.Chain`, `$`, `$.Field`, `$var`, `$var := pipeline`, `$var = pipeline`;
- `if` / `else if` / `else` / `end`, `range` (with `$i, $e :=`, `else`, `break`,
  `continue`), `with` / `else with`;
- `"interpreted"` and `` `raw` `` strings, numbers, `true`, `false`, `nil`, `(pipelines)`,
  `a | f b` pipes;
- the functions `and or not eq ne lt le gt ge len index slice print printf println html
  urlquery json currentDate yesterdayDate toTypeScriptType`.

`{{ define }}`, `{{ template }}` and `{{ block }}` are rejected with a clear error.

Values are plain Python data: dicts (looked up by key, a missing key is nil as with Ollama's
`missingkey=zero`), lists, str, int, float, bool and None. Printing follows Go's `fmt`
(`true`, `1e+06`, `[a b]`, nil prints `<no value>`).

`render_messages` turns a chat into a prompt the way Ollama's `template.Execute` does: a
template that mentions `.Messages` gets the whole (collated) conversation at once; an older
template written with `.System`/`.Prompt`/`.Response` is run once per turn and the last run
stops right after `{{ .Response }}`, so the model writes the answer.
"""

from __future__ import annotations

import bisect
import datetime
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from mlxollama.errors import InvalidModelfile


class TemplateError(InvalidModelfile):
    """A template that does not parse, or that fails while rendering."""


def _fail(msg: str, line: int | None = None) -> TemplateError:
    where = f"line {line}: " if line else ""
    return TemplateError(f"template error: {where}{msg}")


# ---------------------------------------------------------------------------------------
# Go formatting helpers (also used for `show --parameters` and `show --modelfile`)


def go_float(x: float) -> str:
    """Format a float as Go's `%v` does: shortest digits, exponent below 1e-4 or from 1e6."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if str(x).startswith("-") else "0"
    sign, digits, exp = Decimal(repr(x)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + exp  # decimal point position relative to the digit string
    e = point - 1
    neg = "-" if sign else ""
    if e < -4 or e >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{ds}"
    if point >= len(ds):
        return f"{neg}{ds}{'0' * (point - len(ds))}"
    return f"{neg}{ds[:point]}.{ds[point:]}"


_GO_ESCAPES = {
    "\a": r"\a",
    "\b": r"\b",
    "\f": r"\f",
    "\n": r"\n",
    "\r": r"\r",
    "\t": r"\t",
    "\v": r"\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(s: str) -> str:
    """A double-quoted Go string literal for `s`, as `strconv.Quote` writes it."""
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def go_value(v: Any) -> str:
    """Format a value as Go's `fmt.Sprint` (`%v`) does."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, _JSONText):
        return v.json_text()
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_value(e) for e in v) + "]"
    if isinstance(v, Mapping):
        items = sorted(v.items(), key=lambda kv: _sort_key(kv[0]))
        return "map[" + " ".join(f"{go_value(k)}:{go_value(x)}" for k, x in items) + "]"
    return str(v)


def _sort_key(k: Any) -> tuple:
    return (0, k, "") if isinstance(k, (int, float)) and not isinstance(k, bool) else (1, 0, str(k))


# ---------------------------------------------------------------------------------------
# Values that print as JSON (Ollama's tool and tool-call types have a String() method).


class _JSONText:
    def json_text(self) -> str:
        return _go_json(getattr(self, "raw", self))


class _JSONMap(dict, _JSONText):
    """A map (tool-call arguments, tool properties) that prints as JSON."""


class _Struct(dict, _JSONText):
    """A Go struct: fields by Go name, always true, printed as the JSON it came from."""

    def __init__(self, fields: dict[str, Any], raw: Any):
        super().__init__(fields)
        self.raw = raw


class _JSONList(list, _JSONText):
    def __init__(self, items: Iterable[Any], raw: Any):
        super().__init__(items)
        self.raw = raw


def _plain(v: Any) -> Any:
    if isinstance(v, _Struct):
        return _plain(v.raw)
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)  # Go's encoding/json writes 1, not 1.0
    return v


def _go_json(v: Any) -> str:
    text = json.dumps(_plain(v), ensure_ascii=False, separators=(",", ":"))
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(a, b)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# ---------------------------------------------------------------------------------------
# Syntax tree


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _Field:  # .A.B on dot
    idents: tuple[str, ...]


@dataclass(slots=True)
class _Var:  # $x.A.B
    name: str
    idents: tuple[str, ...]


@dataclass(slots=True)
class _Dot:
    pass


@dataclass(slots=True)
class _Lit:
    value: Any


@dataclass(slots=True)
class _Nil:
    pass


@dataclass(slots=True)
class _Func:
    name: str


@dataclass(slots=True)
class _Pipe:
    decl: list[str]
    assign: bool
    cmds: list[list[Any]]
    line: int


@dataclass(slots=True)
class _Chain:  # (pipeline).A.B
    node: _Pipe
    idents: tuple[str, ...]


@dataclass(slots=True)
class _Action:
    pipe: _Pipe
    line: int


@dataclass(slots=True)
class _Branch:
    kind: str  # "if", "with" or "range"
    pipe: _Pipe
    body: list[Any]
    else_body: list[Any] | None
    line: int


@dataclass(slots=True)
class _Jump:
    kind: str  # "break" or "continue"
    line: int


# ---------------------------------------------------------------------------------------
# Lexer: text and actions, with trim markers and comments resolved here.

_SPACE = " \t\r\n"
_KEYWORDS = frozenset(
    ("if", "else", "end", "range", "with", "define", "template", "block", "break", "continue")
)
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VARIABLE = re.compile(r"\$[A-Za-z0-9_]*")
_CHAR = re.compile(r"'(\\.[^']*|[^'\\])'")


@dataclass(slots=True)
class _Tok:
    kind: str  # field var ident string number char dot ( ) | := = ,
    value: Any
    line: int
    space: bool  # whitespace right before it


@dataclass(slots=True)
class _Segment:
    tokens: list[_Tok] | None  # None for text
    text: str
    line: int


class _Lexer:
    def __init__(self, src: str):
        self.src = src
        self.newlines = [i for i, c in enumerate(src) if c == "\n"]

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def segments(self) -> list[_Segment]:
        src, out, pos, trim_left = self.src, [], 0, False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if trim_left:
                text = text.lstrip(_SPACE)
            if start < 0:
                if text:
                    out.append(_Segment(None, text, self.line(pos)))
                return out
            i = start + 2
            if src.startswith("-", i) and i + 1 < len(src) and src[i + 1] in _SPACE:
                text = text.rstrip(_SPACE)
                i += 2
            if text:
                out.append(_Segment(None, text, self.line(pos)))
            line = self.line(start)
            if src.startswith("/*", i):
                end = src.find("*/", i + 2)
                if end < 0:
                    raise _fail("unclosed comment", line)
                j = end + 2
                if src.startswith("}}", j):
                    pos, trim_left = j + 2, False
                elif j < len(src) and src[j] in _SPACE and src.startswith("-}}", j + 1):
                    pos, trim_left = j + 4, True
                else:
                    raise _fail("comment ends before closing delimiter", line)
                continue
            tokens, pos, trim_left = self.action(i, line)
            out.append(_Segment(tokens, "", line))

    def action(self, pos: int, line: int) -> tuple[list[_Tok], int, bool]:
        src, toks, depth, space = self.src, [], 0, False
        n = len(src)
        while True:
            if pos >= n:
                raise _fail("unclosed action", line)
            c = src[pos]
            if c in _SPACE:
                while pos < n and src[pos] in _SPACE:
                    pos += 1
                if src.startswith("-}}", pos):
                    if depth:
                        raise _fail("unclosed left paren", line)
                    return toks, pos + 3, True
                space = True
                continue
            if src.startswith("}}", pos):
                if depth:
                    raise _fail("unclosed left paren", line)
                return toks, pos + 2, False
            here = self.line(pos)

            def tok(kind: str, value: Any, here: int = here) -> None:
                nonlocal space
                toks.append(_Tok(kind, value, here, space))
                space = False

            if c == '"':
                value, pos = self.quoted(pos, here)
                tok("string", value)
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    raise _fail("unterminated raw quoted string", here)
                tok("string", src[pos + 1 : end])
                pos = end + 1
            elif c == "'":
                m = _CHAR.match(src, pos)
                if not m:
                    raise _fail("unterminated character constant", here)
                value = _unescape(m.group(1), here)
                if len(value) != 1:
                    raise _fail(f"malformed character constant: {m.group(0)}", here)
                tok("number", ord(value))
                pos = m.end()
            elif c == "." and not (pos + 1 < n and src[pos + 1].isdigit()):
                m = _IDENT.match(src, pos + 1)
                if m:
                    tok("field", m.group(0))
                    pos = m.end()
                else:
                    tok("dot", ".")
                    pos += 1
            elif c == "$":
                m = _VARIABLE.match(src, pos)
                tok("var", m.group(0))
                pos = m.end()
            elif (
                c.isdigit()
                or c == "."
                or (c in "+-" and pos + 1 < n and src[pos + 1] in "0123456789.")
            ):
                m = _NUMBER.match(src, pos)
                if not m or (m.end() < n and (src[m.end()].isalnum() or src[m.end()] == ".")):
                    raise _fail(f"bad number syntax: {src[pos : pos + 10].split()[0]!r}", here)
                tok("number", _number(m.group(0), here))
                pos = m.end()
            elif c.isalpha() or c == "_":
                m = _IDENT.match(src, pos)
                tok("ident", m.group(0))
                pos = m.end()
            elif src.startswith(":=", pos):
                tok(":=", ":=")
                pos += 2
            elif c in "()|=,":
                depth += {"(": 1, ")": -1}.get(c, 0)
                if depth < 0:
                    raise _fail("unexpected right paren", here)
                tok(c, c)
                pos += 1
            else:
                raise _fail(f"unrecognized character in action: {c!r}", here)

    def quoted(self, pos: int, line: int) -> tuple[str, int]:
        src, i = self.src, pos + 1
        while i < len(src):
            c = src[i]
            if c == "\\":
                i += 2
                continue
            if c == "\n":
                break
            if c == '"':
                return _unescape(src[pos + 1 : i], line), i + 1
            i += 1
        raise _fail("unterminated quoted string", line)


_ESC = re.compile(
    r"\\(?:([abfnrtv\\'\"])|x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))"
)
_SIMPLE = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}


def _unescape(body: str, line: int) -> str:
    out = bytearray()
    i = 0
    while i < len(body):
        if body[i] != "\\":
            out += body[i].encode("utf-8", "surrogatepass")
            i += 1
            continue
        m = _ESC.match(body, i)
        if not m:
            raise _fail(f"invalid escape sequence in {body!r}", line)
        simple, hx, octal, u4, u8 = m.groups()
        if simple:
            out.append(_SIMPLE[simple])
        elif hx or octal:
            out.append(int(hx, 16) if hx else int(octal, 8) & 0xFF)
        else:
            out += chr(int(u4 or u8, 16)).encode("utf-8", "surrogatepass")
        i = m.end()
    return out.decode("utf-8", "replace")


def _number(text: str, line: int) -> int | float:
    t = text.replace("_", "")
    body = t.lstrip("+-")
    try:
        if body[:2].lower() in ("0x", "0b", "0o"):
            return int(t, 0)
        if re.fullmatch(r"0[0-7]+", body):
            return int(t, 8)
        if re.fullmatch(r"\d+", body):
            return int(t)
        return float(t)
    except ValueError:
        raise _fail(f"bad number syntax: {text!r}", line) from None


# ---------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, segments: list[_Segment]):
        self.segs = segments
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def parse(self) -> list[Any]:
        return self.list_until(())[0]

    def list_until(self, stops: tuple[str, ...]) -> tuple[list[Any], _Segment | None]:
        """Parse nodes until an action whose keyword is in `stops` (returned) or the end."""
        nodes: list[Any] = []
        while self.i < len(self.segs):
            seg = self.segs[self.i]
            self.i += 1
            if seg.tokens is None:
                nodes.append(_Text(seg.text))
                continue
            toks = seg.tokens
            if not toks:
                raise _fail("missing value for command", seg.line)
            head = toks[0].value if toks[0].kind == "ident" else None
            if head in ("end", "else"):
                if head in stops:
                    return nodes, seg
                raise _fail(f"unexpected {{{{{head}}}}}", seg.line)
            if head in ("if", "with", "range"):
                nodes.append(self.control(head, toks[1:], seg.line))
            elif head in ("break", "continue"):
                if len(toks) > 1:
                    raise _fail(f"unexpected {toks[1].value!r} in {{{{{head}}}}}", seg.line)
                if not self.range_depth:
                    raise _fail(f"{{{{{head}}}}} outside {{{{range}}}}", seg.line)
                nodes.append(_Jump(head, seg.line))
            elif head in ("define", "template", "block"):
                raise _fail(f"{{{{{head}}}}} is not supported in prompt templates", seg.line)
            else:
                pipe = self.pipeline(toks, seg.line, "command")
                nodes.append(_Action(pipe, seg.line))
        if stops:
            raise _fail("unexpected EOF: missing {{end}}", self.segs[-1].line if self.segs else 1)
        return nodes, None

    def control(self, kind: str, toks: list[_Tok], line: int) -> _Branch:
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
                    raise _fail(f"{{{{else {rest[0].value}}}}} inside {{{{{kind}}}}}", stop.line)
                # {{ else if x }} ... {{ end }} is {{ else }}{{ if x }} ... {{ end }}{{ end }}
                else_body = [self.control(kind, rest[1:], stop.line)]
            else:
                if rest:
                    raise _fail(f"unexpected {rest[0].value!r} in {{{{else}}}}", stop.line)
                else_body, stop = self.list_until(("end", "else"))
                if stop.tokens[0].value == "else":
                    raise _fail("expected {{end}}; found {{else}}", stop.line)
        if stop is not None and stop.tokens[0].value == "end" and len(stop.tokens) > 1:
            raise _fail(f"unexpected {stop.tokens[1].value!r} in {{{{end}}}}", stop.line)
        del self.vars[mark:]
        return _Branch(kind, pipe, body, else_body, line)

    def pipeline(self, toks: list[_Tok], line: int, context: str) -> _Pipe:
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
                    raise _fail(f'undefined variable "{name}"', line)
            else:
                self.vars.append(name)
        if not toks:
            raise _fail(f"missing value for {context}", line)
        cmds: list[list[Any]] = []
        i = 0
        while True:
            args: list[Any] = []
            while i < len(toks) and toks[i].kind != "|":
                node, i = self.operand(toks, i, line)
                args.append(node)
            if not args:
                raise _fail("missing value for command", line)
            if isinstance(args[0], _Nil):
                raise _fail("nil is not a command", line)
            cmds.append(args)
            if i >= len(toks):
                break
            i += 1  # the |
        return _Pipe(decl, assign, cmds, line)

    def operand(self, toks: list[_Tok], i: int, line: int) -> tuple[Any, int]:
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
            return _Field((t.value, *more)), i
        if t.kind == "var":
            if t.value not in self.vars:
                raise _fail(f'undefined variable "{t.value}"', t.line)
            more, i = fields(i)
            return _Var(t.value, more), i
        if t.kind == "dot":
            return _Dot(), i
        if t.kind in ("string", "number"):
            return _Lit(t.value), i
        if t.kind == "ident":
            if t.value in ("true", "false"):
                return _Lit(t.value == "true"), i
            if t.value == "nil":
                return _Nil(), i
            if t.value in _KEYWORDS:
                raise _fail(f"unexpected {{{{{t.value}}}}} in operand", t.line)
            if t.value not in _FUNCS:
                raise _fail(f'function "{t.value}" not defined', t.line)
            return _Func(t.value), i
        if t.kind == "(":
            depth, j = 1, i
            while j < len(toks):
                depth += {"(": 1, ")": -1}.get(toks[j].kind, 0)
                if depth == 0:
                    break
                j += 1
            inner = self.pipeline(toks[i:j], t.line, "paren")
            more, k = fields(j + 1)
            return (_Chain(inner, more) if more else inner), k
        raise _fail(f"unexpected {t.value!r} in operand", t.line)


# ---------------------------------------------------------------------------------------
# Execution

_NO_VALUE = object()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, _Struct):
        return True
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, bytes, list, tuple, Mapping)):
        return len(v) > 0
    return True


def _field(receiver: Any, name: str, line: int) -> Any:
    if isinstance(receiver, Mapping):
        return receiver.get(name)
    if receiver is None:
        raise _fail(f"nil pointer evaluating .{name}", line)
    if hasattr(receiver, name) and not callable(getattr(receiver, name)):
        return getattr(receiver, name)
    raise _fail(f"can't evaluate field {name} in type {_type_name(receiver)}", line)


def _type_name(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(
        type(v), type(v).__name__
    )


class _Exec:
    def __init__(self, root: Any):
        self.vars: list[list[Any]] = [["$", root]]
        self.out: list[str] = []

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append("<no value>" if value is None else go_value(value))
            elif isinstance(node, _Branch):
                mark = len(self.vars)
                if node.kind == "range":
                    self.range(node, dot)
                else:
                    value = self.pipe(node.pipe, dot)
                    if _truth(value):
                        self.walk(node.body, value if node.kind == "with" else dot)
                    elif node.else_body is not None:
                        self.walk(node.else_body, dot)
                del self.vars[mark:]
            elif isinstance(node, _Jump):
                raise _Break() if node.kind == "break" else _Continue()

    def range(self, node: _Branch, dot: Any) -> None:
        pipe = node.pipe
        value = self.pipe(replace(pipe, decl=[]), dot)
        if value is None:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, Mapping):
            items = [(k, value[k]) for k in sorted(value, key=_sort_key)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(pipe.decl) > 1:
                raise _fail("can't use two variables when ranging over an integer", node.line)
            items = [(i, i) for i in range(value)]
        else:
            raise _fail(f"range can't iterate over {go_value(value)}", node.line)
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
        raise _fail(f'undefined variable "{name}"')

    def get_var(self, name: str, line: int) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise _fail(f'undefined variable "{name}"', line)

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
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
        if isinstance(first, _Func):
            return self.call(first.name, args[1:], dot, final, line)
        if len(args) > 1 or final is not _NO_VALUE:
            if isinstance(first, (_Field, _Chain)) or (isinstance(first, _Var) and first.idents):
                name = (first.idents or ("",))[-1]
                raise _fail(f"{name} is not a method but has arguments", line)
            raise _fail(f"can't give argument to non-function {_describe(first)}", line)
        return self.arg(first, dot, line)

    def arg(self, node: Any, dot: Any, line: int) -> Any:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Field):
            return self.fields(dot, node.idents, line)
        if isinstance(node, _Var):
            return self.fields(self.get_var(node.name, line), node.idents, line)
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Nil):
            return None
        if isinstance(node, _Pipe):
            return self.pipe(node, dot)
        if isinstance(node, _Chain):
            return self.fields(self.pipe(node.node, dot), node.idents, line)
        if isinstance(node, _Func):
            return self.call(node.name, [], dot, _NO_VALUE, line)
        raise _fail(f"can't evaluate {node!r}", line)

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
                raise _fail(f"wrong number of args for {name}: want at least 1 got 0", line)
            value = None
            for thunk in thunks:
                value = thunk()
                if _truth(value) != (name == "and"):
                    return value
            return value
        args = [self.arg(n, dot, line) for n in arg_nodes]
        if final is not _NO_VALUE:
            args.append(final)
        try:
            return _FUNCS[name](*args)
        except TemplateError as e:
            raise _fail(
                f"error calling {name}: {str(e).removeprefix('template error: ')}", line
            ) from None


def _describe(node: Any) -> str:
    if isinstance(node, _Lit):
        return go_quote(node.value) if isinstance(node.value, str) else go_value(node.value)
    if isinstance(node, _Dot):
        return "."
    if isinstance(node, _Var):
        return node.name
    return "pipeline"


# ---------------------------------------------------------------------------------------
# Functions


def _arity(name: str, args: tuple, n: int) -> None:
    if len(args) != n:
        raise _fail(f"wrong number of args for {name}: want {n} got {len(args)}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _basic_kind(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if _is_num(v):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _eq2(a: Any, b: Any) -> bool:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if "nil" in (ka, kb):
        return a is None and b is None
    if ka != kb:
        raise _fail("incompatible types for comparison")
    if ka == "other" and any(isinstance(x, (list, tuple, Mapping)) for x in (a, b)):
        raise _fail("non-comparable type")
    return a == b


def _eq(*args: Any) -> bool:
    if len(args) < 2:
        raise _fail("missing argument for comparison")
    return any(_eq2(args[0], b) for b in args[1:])


def _ne(*args: Any) -> bool:
    _arity("ne", args, 2)
    return not _eq2(*args)


def _order(name: str, op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(*args: Any) -> bool:
        _arity(name, args, 2)
        a, b = args
        ka, kb = _basic_kind(a), _basic_kind(b)
        if ka != kb or ka not in ("number", "string"):
            raise _fail(
                "incompatible types for comparison" if ka != kb else "invalid type for comparison"
            )
        return op(a, b)

    return compare


def _not(*args: Any) -> bool:
    _arity("not", args, 1)
    return not _truth(args[0])


def _len(*args: Any) -> int:
    _arity("len", args, 1)
    v = args[0]
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go strings are bytes
    if isinstance(v, (list, tuple, Mapping, bytes)):
        return len(v)
    if v is None:
        raise _fail("len of nil pointer")
    raise _fail(f"len of type {_type_name(v)}")


def _as_index(v: Any, size: int, cap: int | None = None) -> int:
    if not _is_num(v) or not float(v).is_integer():
        raise _fail(f"cannot index slice/array with type {_type_name(v)}")
    i = int(v)
    if i < 0 or i > (size if cap is None else cap):
        raise _fail(f"index out of range: {i}")
    return i


def _index(*args: Any) -> Any:
    if not args:
        raise _fail("wrong number of args for index: want at least 1 got 0")
    v = args[0]
    for key in args[1:]:
        if isinstance(v, Mapping):
            v = v.get(key)
        elif isinstance(v, (list, tuple, str)):
            seq = v.encode("utf-8") if isinstance(v, str) else v
            i = _as_index(key, len(seq))
            if i >= len(seq):
                raise _fail(f"index out of range: {i}")
            v = seq[i]
        elif v is None:
            raise _fail("index of untyped nil")
        else:
            raise _fail(f"can't index item of type {_type_name(v)}")
    return v


def _slice(*args: Any) -> Any:
    if not args:
        raise _fail("wrong number of args for slice: want at least 1 got 0")
    v, idx = args[0], args[1:]
    if len(idx) > 3:
        raise _fail(f"too many slice indexes: {len(idx)}")
    if isinstance(v, str):
        if len(idx) == 3:
            raise _fail("cannot 3-index slice a string")
        seq: Any = v.encode("utf-8")
    elif isinstance(v, (list, tuple)):
        seq = v
    elif v is None:
        raise _fail("slice of untyped nil")
    else:
        raise _fail(f"can't slice item of type {_type_name(v)}")
    bounds = [_as_index(i, len(seq)) for i in idx]
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(seq)
    if lo > hi:
        raise _fail(f"invalid slice index: {lo} > {hi}")
    out = seq[lo:hi]
    return out.decode("utf-8", "replace") if isinstance(v, str) else list(out)


def _sprint(*args: Any) -> str:
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_value(a))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(go_value(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _sprintf(*args: Any) -> str:
    if not args:
        raise _fail("wrong number of args for printf: want at least 1 got 0")
    fmt, rest = args[0], list(args[1:])
    if not isinstance(fmt, str):
        raise _fail("printf format must be a string")
    used = 0

    def one(m: re.Match) -> str:
        nonlocal used
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if used >= len(rest):
            return f"%!{verb}(MISSING)"
        v = rest[used]
        used += 1
        pyflags = flags.replace("#", "") if verb in "svqtc" else flags
        spec = f"%{pyflags}{width or ''}{'.' + prec if prec is not None else ''}"
        if verb in "dxXo" and _is_num(v) and float(v).is_integer():
            return (spec + verb) % int(v)
        if verb in "feEgG" and _is_num(v) and not (verb == "g" and prec is None):
            return (spec + verb) % float(v)
        if verb == "q":
            s = (
                go_quote(v)
                if isinstance(v, str)
                else go_quote(chr(v))
                if _is_num(v)
                else go_value(v)
            )
        elif verb == "c" and _is_num(v):
            s = chr(int(v))
        elif verb == "x" and isinstance(v, str):
            s = v.encode("utf-8").hex()
        elif verb == "b" and _is_num(v) and float(v).is_integer():
            s = format(int(v), "b")
        else:
            s = go_value(v)
            if prec is not None and verb == "s":
                s = s[: int(prec)]
        if width:
            s = s.ljust(int(width)) if "-" in flags else s.rjust(int(width))
        return s

    text = _VERB.sub(one, fmt)
    if used < len(rest):
        extra = ", ".join(f"{_type_name(v)}={go_value(v)}" for v in rest[used:])
        text += f"%!(EXTRA {extra})"
    return text


def _html(*args: Any) -> str:
    s = _sprint(*args)
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
        .replace("\0", "\ufffd")
    )


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_sprint(*args), safe="")


def _json(*args: Any) -> str:
    _arity("json", args, 1)
    return _go_json(args[0])


def _current_date(*_: Any) -> str:
    return datetime.date.today().isoformat()


def _yesterday_date(*_: Any) -> str:
    return (datetime.date.today() - datetime.timedelta(days=1)).isoformat()


_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def _to_typescript_type(*args: Any) -> str:
    _arity("toTypeScriptType", args, 1)
    prop = args[0]
    if not isinstance(prop, Mapping):
        return "any"
    any_of = prop.get("AnyOf") or prop.get("anyOf")
    if any_of:
        return " | ".join(_to_typescript_type(p) for p in any_of)
    types = prop.get("Type", prop.get("type"))
    if isinstance(types, str):
        types = [types]
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


_FUNCS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: None,  # evaluated lazily in _Exec.call
    "or": lambda *a: None,
    "not": _not,
    "eq": _eq,
    "ne": _ne,
    "lt": _order("lt", lambda a, b: a < b),
    "le": _order("le", lambda a, b: a <= b),
    "gt": _order("gt", lambda a, b: a > b),
    "ge": _order("ge", lambda a, b: a >= b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "println": _sprintln,
    "printf": _sprintf,
    "html": _html,
    "urlquery": _urlquery,
    "json": _json,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _to_typescript_type,
}


# ---------------------------------------------------------------------------------------
# Public API


class Template:
    """A parsed Go template. `source` is the text it was parsed from."""

    def __init__(self, source: str, nodes: list[Any]):
        self.source = source
        self._nodes = nodes
        self.vars = frozenset(_identifiers(nodes))

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, values: Mapping[str, Any]) -> str:
        """Run the template with `values` as dot (and `$`).

        Raises:
            TemplateError: (an InvalidModelfile) a function or field failed while rendering.
        """
        return _run(self._nodes, values)


def parse(template: str) -> Template:
    """Parse a Go template.

    Raises:
        InvalidModelfile: `template error: line N: ...` for bad syntax, an unknown function
            or an undefined variable.
    """
    if not isinstance(template, str):
        raise _fail(f"template must be a string, not {type(template).__name__}")
    return Template(template, _Parser(_Lexer(template).segments()).parse())


def render_messages(
    template: str | Template,
    messages: Iterable[Mapping[str, Any] | Any],
    system: str | None = None,
    *,
    tools: list[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
) -> str:
    """Render a chat into a prompt with Ollama's rules.

    The system text, when given and the chat does not start with a system message, becomes
    the first message. Consecutive messages of one role are joined with a blank line (tool
    results excepted). A template that mentions `.Messages` then runs once, with `.System`
    being every system message joined. Otherwise the template runs once per user/assistant
    round with `.System`, `.Prompt` and `.Response` (a template that never mentions
    `.Response` gets `{{ .Response }}` appended); the last round stops right after
    `{{ .Response }}`, so a final assistant message is continued rather than closed.

    Args:
        template: Go template text, or a parsed Template.
        messages: dicts (or objects) with `role` and `content`, and optionally `thinking`,
            `images`, `tool_calls`, `tool_name`, `tool_call_id`.
        system: the model's SYSTEM. Default: None.
        tools: tool definitions in the API's JSON shape, shown as `.Tools`. Default: None.
        think: the request's `think` value (`.Think`, `.ThinkLevel`, `.IsThinkSet`).
            Default: None.

    Raises:
        InvalidModelfile: the template does not parse or fails to render.
    """
    tmpl = template if isinstance(template, Template) else parse(template)
    msgs = [_message_dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    joined_system, collated = _collate(msgs)
    think_values = {
        "Think": bool(think),
        "ThinkLevel": think if isinstance(think, str) else "",
        "IsThinkSet": think is not None,
    }
    if "messages" in tmpl.vars:
        return tmpl.render(
            {
                "System": joined_system,
                "Messages": [_go_message(m) for m in collated],
                "Tools": _go_tools(tools),
                "Response": "",
                **think_values,
            }
        )

    nodes = tmpl._nodes
    if "response" not in tmpl.vars:
        nodes = [*nodes, _Action(_Pipe([], False, [[_Field(("Response",))]], 0), 0)]
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(_run(nodes, {**turn, **think_values}))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m["role"], m["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(_run(_cut_after_response(nodes, [False]), {**turn, **think_values}))
    return "".join(out)


def _run(nodes: list[Any], values: Any) -> str:
    ex = _Exec(values)
    try:
        ex.walk(nodes, values)
    except RecursionError:
        raise _fail("template nests too deeply") from None
    return "".join(ex.out)


def _identifiers(nodes: Iterable[Any]) -> set[str]:
    """Every field and variable name the template mentions, lower-cased (Ollama's Vars)."""
    found: set[str] = set()

    def pipe(p: _Pipe) -> None:
        for cmd in p.cmds:
            for a in cmd:
                operand(a)

    def operand(a: Any) -> None:
        if isinstance(a, _Field):
            found.update(s.lower() for s in a.idents)
        elif isinstance(a, _Var):
            found.add(a.name.lower())
            found.update(s.lower() for s in a.idents)
        elif isinstance(a, _Pipe):
            pipe(a)
        elif isinstance(a, _Chain):
            pipe(a.node)
            found.update(s.lower() for s in a.idents)

    def walk(ns: Iterable[Any]) -> None:
        for n in ns:
            if isinstance(n, _Action):
                pipe(n.pipe)
            elif isinstance(n, _Branch):
                pipe(n.pipe)
                walk(n.body)
                walk(n.else_body or [])

    walk(nodes)
    return found


def _mentions_response(p: _Pipe) -> bool:
    for cmd in p.cmds:
        for a in cmd:
            if isinstance(a, _Field) and "Response" in a.idents:
                return True
            if isinstance(a, _Pipe) and _mentions_response(a):
                return True
    return False


def _cut_after_response(nodes: list[Any], cut: list[bool]) -> list[Any]:
    """Drop everything after the first action that prints `.Response` (Ollama's cut)."""
    kept = []
    for n in nodes:
        if cut[0]:
            continue
        if isinstance(n, _Action):
            cut[0] = _mentions_response(n.pipe)
        elif isinstance(n, _Branch):
            body = _cut_after_response(n.body, cut)
            rest = _cut_after_response(n.else_body, cut) if n.else_body is not None else None
            n = replace(n, body=body, else_body=rest)
        kept.append(n)
    return kept


def _message_dict(m: Any) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        m = m.to_dict() if hasattr(m, "to_dict") else vars(m)
    role = m.get("role")
    if not isinstance(role, str):
        raise _fail(f"message role must be a string, not {role!r}")
    d = dict(m)
    d["role"] = role.lower()
    d["content"] = m.get("content") or ""
    return d


def _collate(msgs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system = [m["content"] for m in msgs if m["role"] == "system"]
    collated: list[dict[str, Any]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {
                **collated[-1],
                "content": collated[-1]["content"] + "\n\n" + m["content"],
            }
        else:
            collated.append(dict(m))
    return "\n\n".join(system), collated


def _go_message(m: Mapping[str, Any]) -> _Struct:
    calls = []
    for tc in m.get("tool_calls") or []:
        fn = tc.get("function") or {}
        calls.append(
            _Struct(
                {
                    "ID": tc.get("id", ""),
                    "Function": _Struct(
                        {
                            "Index": fn.get("index", 0),
                            "Name": fn.get("name", ""),
                            "Arguments": _JSONMap(fn.get("arguments") or {}),
                        },
                        fn,
                    ),
                },
                tc,
            )
        )
    fields = {
        "Role": m["role"],
        "Content": m["content"],
        "Thinking": m.get("thinking") or "",
        "Images": m.get("images") or [],
        "ToolCalls": calls,
        "ToolName": m.get("tool_name") or "",
        "ToolCallID": m.get("tool_call_id") or "",
    }
    return _Struct(fields, fields)


def _go_property(p: Any) -> Any:
    if not isinstance(p, Mapping):
        return p
    types = p.get("type")
    fields = {
        "AnyOf": [_go_property(x) for x in p.get("anyOf") or []],
        "Type": [types] if isinstance(types, str) else list(types or []),
        "Items": p.get("items"),
        "Description": p.get("description", ""),
        "Enum": p.get("enum") or [],
        "Properties": _JSONMap(
            {k: _go_property(v) for k, v in (p.get("properties") or {}).items()}
        ),
    }
    return _Struct(fields, p)


def _go_tools(tools: list[Mapping[str, Any]] | None) -> _JSONList | None:
    if not tools:
        return None
    out = []
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {}
        go_params = _Struct(
            {
                "Type": params.get("type", ""),
                "Defs": params.get("$defs"),
                "Items": params.get("items"),
                "Required": params.get("required") or [],
                "Properties": _JSONMap(
                    {k: _go_property(v) for k, v in (params.get("properties") or {}).items()}
                ),
            },
            params,
        )
        go_fn = _Struct(
            {
                "Name": fn.get("name", ""),
                "Description": fn.get("description", ""),
                "Parameters": go_params,
            },
            fn,
        )
        out.append(
            _Struct(
                {"Type": tool.get("type", ""), "Items": tool.get("items"), "Function": go_fn}, tool
            )
        )
    return _JSONList(out, list(tools))
