"""ModelSpec: the YAML build recipe of the specification (§9.1), parsed into a BuildSpec.

```yaml
name: smollm2-chat            # with version, the default name is "smollm2-chat:1.0"
version: "1.0"
base:                         # exactly one of hf_repo, path, model
  hf_repo: HuggingFaceTB/SmolLM2-135M-Instruct
  revision: 12fd25f77366fa6b3b4b768ec3050bf629380bac   # pinned, kept in provenance
format: mlx                   # mlx, gguf or safetensors (informational)
quantization: int4            # none, int8, int4, fp16, bf16 (or Ollama's q4_0, q8_0, ...)
tokenizer: ./tokenizer        # a folder with tokenizer files, overriding the base's
prompt_template: chatml       # a name from PROMPT_TEMPLATES, "auto", or an inline Go template
defaults:                     # any Ollama option, plus max_tokens, context and stops
  temperature: 0.7
  max_tokens: 256
  stop: ["<|im_end|>"]
system_prompt: You are a concise assistant.
license: Apache-2.0           # a text or a list of texts
messages:                     # few-shot history, as Modelfile MESSAGE lines
  - {role: user, content: Hi}
  - {role: assistant, content: Hello!}
```

Paths are relative to the recipe's folder. `base.hf_repo` becomes the source
`hf.co/<repo>`, which the store resolves (there is no network access while parsing).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import structlog
import yaml

from mlxollama.api import DEPRECATED_OPTIONS, OPTION_TYPES, coerce_option
from mlxollama.errors import InvalidModelfile, InvalidOption
from mlxollama.gotemplate import parse
from mlxollama.recipes.buildspec import MESSAGE_ROLES, QUANTIZATION_ALIASES, BuildSpec

log = structlog.get_logger()

FIELDS = (
    "name",
    "version",
    "base",
    "format",
    "quantization",
    "tokenizer",
    "prompt_template",
    "defaults",
    "system_prompt",
    "license",
    "messages",
)
BASE_FIELDS = ("hf_repo", "revision", "path", "model")
FORMATS = ("mlx", "gguf", "safetensors")

# Friendlier names for options in `defaults`, mapped onto Ollama's.
DEFAULT_ALIASES = {
    "max_tokens": "num_predict",
    "context": "num_ctx",
    "context_length": "num_ctx",
    "stops": "stop",
}

# Prompt formats by name, as Go templates over `.Messages`, with the stop strings that end
# a turn in each (used when `defaults` gives none).
PROMPT_TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
        ["<|im_start|>", "<|im_end|>"],
    ),
    "llama3": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "gemma": (
        "{{- range .Messages }}<start_of_turn>"
        '{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ["<start_of_turn>", "<end_of_turn>"],
    ),
    "phi3": (
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        ["<|end|>", "<|user|>", "<|assistant|>"],
    ),
    "zephyr": (
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n",
        ["<|system|>", "<|user|>", "<|assistant|>", "</s>"],
    ),
}

_HF_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_modelspec(text: str, base_dir: Path) -> BuildSpec:
    """Parse a ModelSpec YAML recipe into a BuildSpec.

    Args:
        text: the YAML text.
        base_dir: the folder relative paths (`base.path`, `tokenizer`) are resolved against.

    Raises:
        InvalidModelfile: bad YAML, an unknown or misspelled key, a missing or ambiguous
            `base`, a missing path, an unknown quantization, template or option.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidModelfile(f"invalid ModelSpec YAML{where}: {problem}") from None
    if doc is None:
        raise InvalidModelfile("the ModelSpec is empty: it needs at least a `base`")
    if not isinstance(doc, dict):
        raise InvalidModelfile("a ModelSpec must be a YAML mapping of " + ", ".join(FIELDS))
    unknown = [str(k) for k in doc if k not in FIELDS]
    if unknown:
        raise InvalidModelfile(
            f"unknown ModelSpec key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"use {', '.join(FIELDS)}"
        )
    base_dir = Path(base_dir)
    if "base" not in doc:
        raise InvalidModelfile("ModelSpec needs a `base` (hf_repo + revision, path, or model)")
    source, revision = _base(doc["base"], base_dir)
    spec = BuildSpec(source=source, revision=revision, recipe=text)
    spec.name = _name(doc.get("name"), doc.get("version"))

    fmt = doc.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt.lower() not in FORMATS):
        raise InvalidModelfile(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")

    quant = doc.get("quantization")
    if quant is not None:
        key = str(quant).strip().lower()
        if isinstance(quant, bool) or key not in QUANTIZATION_ALIASES:
            raise InvalidModelfile(
                f"quantization: {quant!r} is not supported: use none, int8, int4, fp16 or bf16"
            )
        spec.quantize = QUANTIZATION_ALIASES[key]

    if doc.get("tokenizer") is not None:
        spec.tokenizer = _existing_path(doc["tokenizer"], base_dir, "tokenizer")

    default_stop = None
    template = doc.get("prompt_template")
    if template is not None:
        spec.template, default_stop = _template(template)

    spec.parameters = _defaults(doc.get("defaults"))
    if default_stop and "stop" not in spec.parameters:
        spec.parameters["stop"] = list(default_stop)

    system = doc.get("system_prompt")
    if system is not None:
        spec.system = _text(system, "system_prompt")

    lic = doc.get("license")
    if lic is not None:
        items = lic if isinstance(lic, list) else [lic]
        spec.license = [_text(x, "license") for x in items]

    if doc.get("messages") is not None:
        spec.messages = _messages(doc["messages"])
    return spec


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidModelfile(f"{key}: expected text, got {type(value).__name__} {value!r}")
    return value


def _name(name: Any, version: Any) -> str | None:
    if name is None:
        if version is not None:
            raise InvalidModelfile("version: given without a name")
        return None
    name = _text(name, "name").strip()
    if not name:
        raise InvalidModelfile("name: must not be empty")
    if version is None:
        return name
    if isinstance(version, float):
        raise InvalidModelfile(
            f'version: {version!r} reads as a number; quote it (version: "{version}")'
        )
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise InvalidModelfile(f"version: expected text, got {version!r}")
    if ":" in name:
        raise InvalidModelfile(f"name: {name!r} already has a tag; drop it or drop `version`")
    version = str(version).strip()
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", version):
        raise InvalidModelfile(
            f"version: {version!r} is not a valid tag (letters, digits, _ . -, at most 128)"
        )
    return f"{name}:{version}"


def _base(base: Any, base_dir: Path) -> tuple[str, str | None]:
    if isinstance(base, str):  # shorthand, read like a Modelfile's FROM
        ref = base.strip()
        path = Path(os.path.expanduser(ref))
        if ref.startswith("hf.co/"):
            base = {"hf_repo": ref}
        elif ref and (path if path.is_absolute() else base_dir / path).exists():
            base = {"path": ref}
        else:
            base = {"model": ref}
    if not isinstance(base, dict):
        raise InvalidModelfile("base: expected a mapping with hf_repo + revision, path, or model")
    unknown = [str(k) for k in base if k not in BASE_FIELDS]
    if unknown:
        raise InvalidModelfile(
            f"base: unknown key {', '.join(map(repr, unknown))}: use {', '.join(BASE_FIELDS)}"
        )
    given = [k for k in ("hf_repo", "path", "model") if base.get(k) is not None]
    if len(given) != 1:
        raise InvalidModelfile(
            "base: give exactly one of hf_repo (with revision), path, or model"
            + (f"; got {' and '.join(given)}" if given else "")
        )
    kind = given[0]
    revision = base.get("revision")
    if revision is not None and kind != "hf_repo":
        raise InvalidModelfile("base.revision: only applies to base.hf_repo")
    if kind == "hf_repo":
        repo = _text(base["hf_repo"], "base.hf_repo").strip().removeprefix("hf.co/")
        repo = repo.removeprefix("https://huggingface.co/").strip("/")
        if not _HF_REPO.fullmatch(repo):
            raise InvalidModelfile(f"base.hf_repo: {repo!r} is not an <org>/<repo> name")
        if revision is not None:
            revision = str(revision).strip()
            if not revision:
                raise InvalidModelfile("base.revision: must not be empty")
        return f"hf.co/{repo}", revision
    if kind == "path":
        return _existing_path(base["path"], base_dir, "base.path"), None
    model = _text(base["model"], "base.model").strip()
    if not model:
        raise InvalidModelfile("base.model: must not be empty")
    return model, None


def _existing_path(value: Any, base_dir: Path, key: str) -> str:
    text = _text(value, key).strip()
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = base_dir / path
    try:
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    if not exists:
        raise InvalidModelfile(f"{key}: {os.path.abspath(path)} does not exist")
    return os.path.abspath(path)


def _template(value: Any) -> tuple[str | None, list[str] | None]:
    text = _text(value, "prompt_template")
    key = text.strip().lower()
    if key == "auto":
        return None, None
    if key in PROMPT_TEMPLATES:
        template, stop = PROMPT_TEMPLATES[key]
        return template, stop
    if "{{" not in text:
        raise InvalidModelfile(
            f"prompt_template: {text!r} is neither a known format "
            f"({', '.join([*PROMPT_TEMPLATES, 'auto'])}) nor a Go template"
        )
    try:
        parse(text)
    except InvalidModelfile as e:
        raise InvalidModelfile(f"prompt_template: {e}") from None
    return text, None


def _defaults(defaults: Any) -> dict[str, Any]:
    if defaults is None:
        return {}
    if not isinstance(defaults, dict):
        raise InvalidModelfile("defaults: expected a mapping of option names to values")
    params: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in defaults.items():
        key = str(key)
        name = DEFAULT_ALIASES.get(key, key)
        if name in origin:
            raise InvalidModelfile(f"defaults: {origin[name]} and {key} both set {name}")
        origin[name] = key
        if name in DEPRECATED_OPTIONS:
            log.warning("modelspec.deprecated_parameter", parameter=name)
            continue
        if name not in OPTION_TYPES:
            raise InvalidModelfile(
                f"defaults: unknown parameter '{key}': use an Ollama option "
                f"({', '.join(OPTION_TYPES)}) or {', '.join(DEFAULT_ALIASES)}"
            )
        if OPTION_TYPES[name] is not list and isinstance(value, (list, dict)):
            raise InvalidModelfile(f"defaults: {key} takes one value, got {value!r}")
        try:
            params[name] = coerce_option(name, value)
        except InvalidOption as e:
            raise InvalidModelfile(f"defaults: {e}") from None
    return params


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise InvalidModelfile("messages: expected a list of {role, content} mappings")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
            raise InvalidModelfile(f"messages: item {i} must be a mapping with role and content")
        role = str(m["role"]).lower()
        if role not in MESSAGE_ROLES:
            raise InvalidModelfile(
                f'messages: item {i}: role must be one of "system", "user", or "assistant"'
            )
        out.append(
            {"role": role, "content": _text(m.get("content") or "", f"messages: item {i} content")}
        )
    return out
