"""Lexer: a template's text and actions, with trim markers and comments resolved here."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from mlxollama.gotemplate.errors import fail

_SPACE = " \t\r\n"
KEYWORDS = frozenset(
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
class Tok:
    kind: str  # field var ident string number char dot ( ) | := = ,
    value: Any
    line: int
    space: bool  # whitespace right before it


@dataclass(slots=True)
class Segment:
    tokens: list[Tok] | None  # None for text
    text: str
    line: int


class Lexer:
    def __init__(self, src: str):
        self.src = src
        self.newlines = [i for i, c in enumerate(src) if c == "\n"]

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def segments(self) -> list[Segment]:
        src, out, pos, trim_left = self.src, [], 0, False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if trim_left:
                text = text.lstrip(_SPACE)
            if start < 0:
                if text:
                    out.append(Segment(None, text, self.line(pos)))
                return out
            i = start + 2
            if src.startswith("-", i) and i + 1 < len(src) and src[i + 1] in _SPACE:
                text = text.rstrip(_SPACE)
                i += 2
            if text:
                out.append(Segment(None, text, self.line(pos)))
            line = self.line(start)
            if src.startswith("/*", i):
                end = src.find("*/", i + 2)
                if end < 0:
                    raise fail("unclosed comment", line)
                j = end + 2
                if src.startswith("}}", j):
                    pos, trim_left = j + 2, False
                elif j < len(src) and src[j] in _SPACE and src.startswith("-}}", j + 1):
                    pos, trim_left = j + 4, True
                else:
                    raise fail("comment ends before closing delimiter", line)
                continue
            tokens, pos, trim_left = self.action(i, line)
            out.append(Segment(tokens, "", line))

    def action(self, pos: int, line: int) -> tuple[list[Tok], int, bool]:
        src, toks, depth, space = self.src, [], 0, False
        n = len(src)
        while True:
            if pos >= n:
                raise fail("unclosed action", line)
            c = src[pos]
            if c in _SPACE:
                while pos < n and src[pos] in _SPACE:
                    pos += 1
                if src.startswith("-}}", pos):
                    if depth:
                        raise fail("unclosed left paren", line)
                    return toks, pos + 3, True
                space = True
                continue
            if src.startswith("}}", pos):
                if depth:
                    raise fail("unclosed left paren", line)
                return toks, pos + 2, False
            here = self.line(pos)

            def tok(kind: str, value: Any, here: int = here) -> None:
                nonlocal space
                toks.append(Tok(kind, value, here, space))
                space = False

            if c == '"':
                value, pos = self.quoted(pos, here)
                tok("string", value)
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    raise fail("unterminated raw quoted string", here)
                tok("string", src[pos + 1 : end])
                pos = end + 1
            elif c == "'":
                m = _CHAR.match(src, pos)
                if not m:
                    raise fail("unterminated character constant", here)
                value = _unescape(m.group(1), here)
                if len(value) != 1:
                    raise fail(f"malformed character constant: {m.group(0)}", here)
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
                    raise fail(f"bad number syntax: {src[pos : pos + 10].split()[0]!r}", here)
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
                    raise fail("unexpected right paren", here)
                tok(c, c)
                pos += 1
            else:
                raise fail(f"unrecognized character in action: {c!r}", here)

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
        raise fail("unterminated quoted string", line)


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
            raise fail(f"invalid escape sequence in {body!r}", line)
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
        raise fail(f"bad number syntax: {text!r}", line) from None
