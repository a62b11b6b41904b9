"""The one error a template raises, parsing or rendering: an InvalidModelfile, so a bad
TEMPLATE fails a create with Ollama's `template error: ...` message."""

from __future__ import annotations

from mlxollama.errors import InvalidModelfile


class TemplateError(InvalidModelfile):
    """A template that does not parse, or that fails while rendering."""


def fail(msg: str, line: int | None = None) -> TemplateError:
    where = f"line {line}: " if line else ""
    return TemplateError(f"template error: {where}{msg}")
