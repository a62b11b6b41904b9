"""The template functions Go's text/template and Ollama define, by name."""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from mlxollama.gotemplate.errors import fail
from mlxollama.gotemplate.values import go_json, go_quote, go_value, truth, type_name


def _arity(name: str, args: tuple, n: int) -> None:
    if len(args) != n:
        raise fail(f"wrong number of args for {name}: want {n} got {len(args)}")


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
        raise fail("incompatible types for comparison")
    if ka == "other" and any(isinstance(x, (list, tuple, Mapping)) for x in (a, b)):
        raise fail("non-comparable type")
    return a == b


def _eq(*args: Any) -> bool:
    if len(args) < 2:
        raise fail("missing argument for comparison")
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
            raise fail(
                "incompatible types for comparison" if ka != kb else "invalid type for comparison"
            )
        return op(a, b)

    return compare


def _not(*args: Any) -> bool:
    _arity("not", args, 1)
    return not truth(args[0])


def _len(*args: Any) -> int:
    _arity("len", args, 1)
    v = args[0]
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go strings are bytes
    if isinstance(v, (list, tuple, Mapping, bytes)):
        return len(v)
    if v is None:
        raise fail("len of nil pointer")
    raise fail(f"len of type {type_name(v)}")


def _as_index(v: Any, size: int, cap: int | None = None) -> int:
    if not _is_num(v) or not float(v).is_integer():
        raise fail(f"cannot index slice/array with type {type_name(v)}")
    i = int(v)
    if i < 0 or i > (size if cap is None else cap):
        raise fail(f"index out of range: {i}")
    return i


def _index(*args: Any) -> Any:
    if not args:
        raise fail("wrong number of args for index: want at least 1 got 0")
    v = args[0]
    for key in args[1:]:
        if isinstance(v, Mapping):
            v = v.get(key)
        elif isinstance(v, (list, tuple, str)):
            seq = v.encode("utf-8") if isinstance(v, str) else v
            i = _as_index(key, len(seq))
            if i >= len(seq):
                raise fail(f"index out of range: {i}")
            v = seq[i]
        elif v is None:
            raise fail("index of untyped nil")
        else:
            raise fail(f"can't index item of type {type_name(v)}")
    return v


def _slice(*args: Any) -> Any:
    if not args:
        raise fail("wrong number of args for slice: want at least 1 got 0")
    v, idx = args[0], args[1:]
    if len(idx) > 3:
        raise fail(f"too many slice indexes: {len(idx)}")
    if isinstance(v, str):
        if len(idx) == 3:
            raise fail("cannot 3-index slice a string")
        seq: Any = v.encode("utf-8")
    elif isinstance(v, (list, tuple)):
        seq = v
    elif v is None:
        raise fail("slice of untyped nil")
    else:
        raise fail(f"can't slice item of type {type_name(v)}")
    bounds = [_as_index(i, len(seq)) for i in idx]
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(seq)
    if lo > hi:
        raise fail(f"invalid slice index: {lo} > {hi}")
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
        raise fail("wrong number of args for printf: want at least 1 got 0")
    fmt, rest = args[0], list(args[1:])
    if not isinstance(fmt, str):
        raise fail("printf format must be a string")
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
        extra = ", ".join(f"{type_name(v)}={go_value(v)}" for v in rest[used:])
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
    return go_json(args[0])


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


FUNCS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: None,  # evaluated lazily in Executor.call
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
