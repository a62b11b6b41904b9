"""The one build recipe that Modelfiles, ModelSpec YAML files and `/api/create` bodies all
become before `models.create` runs it, and the vocabulary the recipe syntaxes share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Files of an HF folder that a tokenizer (or, later, a sentence-transformers pooling) needs.
MODEL_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)

MESSAGE_ROLES = ("system", "user", "assistant")  # MESSAGE lines, ModelSpec `messages`

# Ollama's quantize names, mapped onto ours (MLX affine quantization, group size 64).
QUANTIZATION_ALIASES = {
    "q4": "int4",
    "q4_0": "int4",
    "q4_1": "int4",
    "q4_k_m": "int4",
    "q4_k_s": "int4",
    "int4": "int4",
    "q8": "int8",
    "q8_0": "int8",
    "int8": "int8",
    "f16": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "none": "",
    "": "",
}


@dataclass
class BuildSpec:
    """What to build.

    `source` is a model name in the store, a GGUF file or a safetensors directory (as the
    Modelfile's FROM gives it; relative paths are already resolved against the recipe's
    folder). Fields left as None inherit from the source model.
    """

    source: str
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, str]] | None = None
    license: list[str] = field(default_factory=list)
    quantize: str | None = None
    tokenizer: str | None = None  # a folder with tokenizer files, overriding the source's
    revision: str | None = None  # a pinned upstream revision, recorded in provenance
    # where the source came from when it was fetched (a registry reference, a Hugging Face
    # repo and commit): recorded first among the provenance sources
    origin: dict[str, Any] | None = None
    name: str | None = None  # ModelSpec's `name[:version]`; the CLI argument wins
    recipe: str | None = None  # the recipe text, kept in provenance
