"""Modelfiles: parse them into a BuildSpec, and write them back for `show --modelfile`.

The syntax is Ollama's. One instruction per line, `INSTRUCTION value`; instruction names
are case-insensitive; a line whose first non-blank character is `#` is a comment. A value
runs to the end of its line, or is `"quoted"` or `\"\"\"triple quoted\"\"\"`; a quoted
value that is not closed on its line goes on over the next lines, and the value ends at
the first line end where it is closed. There are no escapes. Errors name the line:
`(line 3): unknown parameter 'temprature'`.

| instruction | becomes |
|---|---|
| `FROM ref` | `source`: an existing file or folder (absolute, `~`, or relative to the Modelfile) as an absolute path, otherwise the text as a model name |
| `PARAMETER name value` | `parameters[name]`, typed by `api.coerce_option`; `stop` and other list options accumulate |
| `TEMPLATE`, `SYSTEM` | `template`, `system` (a bad Go template fails here) |
| `LICENSE` | appended to `license` |
| `MESSAGE role text` | appended to `messages`; role is system, user or assistant |
| `REQUIRES semver` | checked, then ignored (it names a minimum Ollama version) |
| `ADAPTER`, `DRAFT`, `RENDERER`, `PARSER` | an error saying they are not supported yet |
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from mlxollama.api import DEPRECATED_OPTIONS, OPTION_TYPES, coerce_option
from mlxollama.errors import InvalidModelfile, InvalidOption
from mlxollama.gotemplate import go_float, go_quote, parse
from mlxollama.recipes.buildspec import MESSAGE_ROLES, BuildSpec

log = structlog.get_logger()

COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
INVALID_COMMAND = (
    "command must be one of "
    + ", ".join(f'"{c}"' for c in COMMANDS[:-1])
    + f', or "{COMMANDS[-1]}"'
)

_NOT_SUPPORTED = {
    "adapter": (
        "ADAPTER is not supported yet: LoRA adapters cannot be applied at load time. Fuse the "
        "adapter into the base model first (for example `mlx_lm.fuse --model <base> "
        "--adapter-path <adapter> --save-path <dir>`) and use FROM <dir>"
    ),
    "draft": (
        "DRAFT is not supported yet: speculative decoding with a draft model is not "
        "available; remove the DRAFT line"
    ),
    "renderer": (
        "RENDERER is not supported yet: built-in prompt renderers are not available; "
        "give the prompt format as a Go TEMPLATE instead"
    ),
    "parser": (
        "PARSER is not supported yet: built-in output parsers are not available; "
        "remove the PARSER line"
    ),
}

# Go's semver (golang.org/x/mod/semver), which Ollama checks REQUIRES with: vMAJOR[.MINOR
# [.PATCH[-prerelease][+build]]], no leading zeros; the "v" is optional in a Modelfile.
_NUM = r"(?:0|[1-9]\d*)"
_IDENT = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"v?{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_IDENT}(?:\.{_IDENT})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)


def parse_modelfile(text: str, base_dir: Path) -> BuildSpec:
    """Parse a Modelfile into a BuildSpec.

    Args:
        text: the Modelfile (a leading BOM and CRLF line ends are fine).
        base_dir: the folder relative FROM paths are resolved against, normally the
            Modelfile's own folder.

    Raises:
        InvalidModelfile: a syntax error, an unknown instruction or parameter, a value of the
            wrong type, a bad TEMPLATE, or no FROM line; the message names the line.
    """
    spec = BuildSpec(source="", recipe=text)
    messages: list[dict[str, str]] = []
    from_line = 0
    for line, name, args in _instructions(text):
        if name == "from":
            if from_line:
                raise _error(
                    line, f"only one FROM line is supported (the first is on line {from_line})"
                )
            from_line = line
            spec.source = _resolve_from(args, base_dir)
        elif name == "parameter":
            key, value = args
            _set_parameter(spec.parameters, key, value, line)
        elif name == "template":
            try:
                parse(args)
            except InvalidModelfile as e:
                raise _error(line, str(e)) from None
            spec.template = args
        elif name == "system":
            spec.system = args
        elif name == "license":
            spec.license.append(args)
        elif name == "message":
            role, content = args
            messages.append({"role": role, "content": content})
        elif name == "requires":
            if not _SEMVER.fullmatch(args):
                raise _error(line, "requires must be a valid semver (e.g. 0.14.0)")
        else:
            raise _error(line, _NOT_SUPPORTED[name])
    if not from_line:
        raise InvalidModelfile("no FROM line")
    if messages:
        spec.messages = messages
    return spec


def _error(line: int, msg: str) -> InvalidModelfile:
    return InvalidModelfile(f"(line {line}): {msg}")


def _instructions(text: str) -> Iterable[tuple[int, str, Any]]:
    """Yield (line number, instruction, value) with values unquoted; PARAMETER and MESSAGE
    values are (name, value) pairs."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    while i < len(lines):
        line_no = i + 1
        body = lines[i].lstrip(" \t")
        i += 1
        if not body or body.startswith("#"):
            continue
        m = re.match(r"[A-Za-z]+", body)
        word = m.group(0) if m else ""
        name = word.lower()
        rest = body[len(word) :]
        if name not in COMMANDS or (rest and rest[0] not in " \t"):
            raise _error(line_no, INVALID_COMMAND)
        rest = rest.lstrip(" \t")
        sub = None
        if name in ("parameter", "message"):
            pattern = r"[A-Za-z0-9_]+" if name == "parameter" else r"[A-Za-z]+"
            m = re.match(pattern + r"(?=[ \t]|$)", rest)
            if not m:
                if rest:
                    kind = "parameter name" if name == "parameter" else "message role"
                    raise _error(line_no, f"invalid {kind} {rest.split()[0]!r}")
                what = (
                    "a parameter name and a value" if name == "parameter" else "a role and a text"
                )
                raise _error(line_no, f"{word.upper()} needs {what}")
            sub = m.group(0)
            rest = rest[m.end() :].lstrip(" \t")
            if name == "message":
                sub = sub.lower()
                if sub not in MESSAGE_ROLES:
                    raise _error(
                        line_no, 'message role must be one of "system", "user", or "assistant"'
                    )
        raw = rest
        while not _closed(raw.strip()):
            if i >= len(lines):
                mark = '"""' if raw.strip().startswith('"""') else '"'
                raise _error(line_no, f"unterminated {mark} quoted value")
            raw += "\n" + lines[i]
            i += 1
        value = _unquote(raw.strip())
        if name in ("from", "requires") and not value:
            raise _error(line_no, f"{word.upper()} needs a value")
        yield line_no, name, (sub, value) if sub is not None else value


def _closed(s: str) -> bool:
    if s.startswith('"""'):
        return len(s) >= 6 and s.endswith('"""')
    if s.startswith('"'):
        return len(s) >= 2 and s.endswith('"')
    return True


def _unquote(s: str) -> str:
    if s.startswith('"""'):
        return s[3:-3]
    if s.startswith('"'):
        return s[1:-1]
    return s


def _resolve_from(ref: str, base_dir: Path) -> str:
    if ref.startswith("~"):
        path = Path(os.path.expanduser(ref))
    else:
        path = Path(ref) if os.path.isabs(ref) else Path(base_dir) / ref
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long to be a path, or with a NUL
        exists = False
    return os.path.abspath(path) if exists else ref


def _set_parameter(params: dict[str, Any], key: str, value: str, line: int) -> None:
    if key in DEPRECATED_OPTIONS:
        log.warning("modelfile.deprecated_parameter", parameter=key, line=line)
        return
    try:
        typed = coerce_option(key, value)
    except InvalidOption as e:
        raise _error(line, str(e)) from None
    if OPTION_TYPES[key] is list:
        params.setdefault(key, []).extend(typed)
    else:
        params[key] = typed


# ---------------------------------------------------------------------------------------
# Writing Modelfiles


def quote(value: str) -> str:
    """Quote a value so that parsing it gives it back: as Ollama does (values with line
    breaks or leading/trailing blanks are quoted, with triple quotes if they hold a `"`),
    plus empty values and values starting with a quote."""
    if value and "\n" not in value and value == value.strip() and not value.startswith('"'):
        return value
    if '"' in value:
        return f'"""{value}"""'
    return f'"{value}"'


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def _param_items(parameters: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for key, value in parameters.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            yield key, item


def to_modelfile(
    name: str,
    from_ref: str,
    template: str | None = None,
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    messages: Iterable[Mapping[str, Any]] | None = None,
    license: Iterable[str] | None = None,
) -> str:
    """The Modelfile `show --modelfile` prints: a header naming the model, then FROM,
    TEMPLATE, SYSTEM, one PARAMETER line per value, LICENSE and MESSAGE lines.

    Args:
        name: the model's name, shown in the header.
        from_ref: what FROM should say (a model name or a path).
        template: the Go template, or None for no TEMPLATE line. Default: None.
        system: the system prompt; empty or None writes no SYSTEM line. Default: None.
        parameters: typed options; list values give one line per item. Default: None.
        messages: dicts with `role` and `content`. Default: None.
        license: license texts, one LICENSE line each. Default: None.
    """
    lines = [
        '# Modelfile generated by "mlxctl show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {from_ref}",
    ]
    if template is not None:
        lines.append(f"TEMPLATE {quote(template)}")
    if system:
        lines.append(f"SYSTEM {quote(system)}")
    for key, item in _param_items(parameters or {}):
        lines.append(f"PARAMETER {key} {quote(_param_text(item))}")
    for text in license or []:
        lines.append(f"LICENSE {quote(text)}")
    for m in messages or []:
        lines.append(f"MESSAGE {m['role']} {quote(m.get('content') or '')}")
    return "\n".join(lines) + "\n"


def format_parameters(parameters: Mapping[str, Any]) -> str:
    """The `show --parameters` text: each name padded to 30 columns, then the value as Go's
    `%#v` prints it (strings quoted); list values give one line per item."""
    out = []
    for key, item in _param_items(parameters):
        shown = go_quote(item) if isinstance(item, str) else _param_text(item)
        out.append(f"{key:<30} {shown}")
    return "\n".join(out)
