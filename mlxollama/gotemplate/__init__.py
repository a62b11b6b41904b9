"""Ollama prompt templates: a Go `text/template` subset, and Ollama's chat-to-prompt rules.

Modelfile TEMPLATEs are Go templates. This package parses and runs the parts of the language
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

The modules, in the order a template passes through them: `lexer`, `parser` (into `nodes`),
`executor` (calling `functions`, printing through `values`); `template` ties them together
and `ollama` holds Ollama's chat rules (`render_messages`). The package imports nothing of
mlxollama but `errors`.
"""

from mlxollama.gotemplate.errors import TemplateError
from mlxollama.gotemplate.ollama import render_messages
from mlxollama.gotemplate.template import Template, parse
from mlxollama.gotemplate.values import go_float, go_quote, go_value

__all__ = [
    "Template",
    "TemplateError",
    "go_float",
    "go_quote",
    "go_value",
    "parse",
    "render_messages",
]
