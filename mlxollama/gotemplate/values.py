"""Go values as Python data: how Go's `fmt` prints them, which are true, and the
tool and tool-call values that print as JSON (their Go types have a String() method).

`go_float` and `go_quote` also format `show --parameters` and `show --modelfile`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any


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
    if isinstance(v, JSONText):
        return v.json_text()
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_value(e) for e in v) + "]"
    if isinstance(v, Mapping):
        items = sorted(v.items(), key=lambda kv: sort_key(kv[0]))
        return "map[" + " ".join(f"{go_value(k)}:{go_value(x)}" for k, x in items) + "]"
    return str(v)


def sort_key(k: Any) -> tuple:
    return (0, k, "") if isinstance(k, (int, float)) and not isinstance(k, bool) else (1, 0, str(k))


class JSONText:
    """A value that prints as its JSON."""

    def json_text(self) -> str:
        return go_json(getattr(self, "raw", self))


class JSONMap(dict, JSONText):
    """A map (tool-call arguments, tool properties) that prints as JSON."""


class Struct(dict, JSONText):
    """A Go struct: fields by Go name, always true, printed as the JSON it came from."""

    def __init__(self, fields: dict[str, Any], raw: Any):
        super().__init__(fields)
        self.raw = raw


class JSONList(list, JSONText):
    def __init__(self, items: Iterable[Any], raw: Any):
        super().__init__(items)
        self.raw = raw


def _plain(v: Any) -> Any:
    if isinstance(v, Struct):
        return _plain(v.raw)
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)  # Go's encoding/json writes 1, not 1.0
    return v


def go_json(v: Any) -> str:
    """JSON as Go's encoding/json writes it (compact, `<>&` escaped), for `json` and
    the JSON-printing values."""
    text = json.dumps(_plain(v), ensure_ascii=False, separators=(",", ":"))
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(a, b)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def truth(v: Any) -> bool:
    """Go's truth for `if`, `with`, `and`, `or`, `not`: empty and zero values are false."""
    if v is None:
        return False
    if isinstance(v, Struct):
        return True
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, bytes, list, tuple, Mapping)):
        return len(v) > 0
    return True


def type_name(v: Any) -> str:
    """The Go type name error messages use."""
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(
        type(v), type(v).__name__
    )
