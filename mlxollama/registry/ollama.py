"""Ollama's models, wherever their layers lie: an Ollama-style registry (pulled into our
store first) or an Ollama store on disk (`registry/ollama_store.py`, read in place).

Ollama's manifest is a Docker v2 manifest whose layers have Ollama's media types
(`application/vnd.ollama.image.<kind>`): a GGUF (`model`), or Ollama's MLX safetensors
(`tensor` and `json` layers, `registry/ollama_mlx.py`), plus text layers (`template`,
`system`, `params`, `messages`, `license`). `convert_layers` turns such a layer list into a
BuildSpec and runs the foundation's `create` on it, so the result is an ordinary MLX model in
the store with its template, parameters and provenance (where it came from, and the digest of
the manifest it was converted from, which `already_converted` compares).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from mlxollama import api
from mlxollama.errors import UnsupportedModel
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.registry import Progress
from mlxollama.registry.ollama_mlx import write_folder
from mlxollama.store.manifests import Descriptor, check_title
from mlxollama.store.names import ModelName, parse_digest
from mlxollama.store.store import Store, StoredModel

log = structlog.get_logger("mlxollama.registry")

PREFIX = "application/vnd.ollama.image."
UNSUPPORTED = {"adapter": "LoRA adapters", "projector": "vision projectors"}
# The kinds a model may hold. `prompt` is the template's old name; `embed` is long deprecated
# and ignored (as Ollama ignores it).
TEXT_KINDS = ("template", "prompt", "system", "params", "messages", "license")
# `tensor` and `json` are Ollama's MLX models (`registry/ollama_mlx.py`).
KINDS = ("model", "tensor", "json", *TEXT_KINDS, "embed")

BlobPath = Callable[[str], Path]  # a layer digest -> the file holding its bytes


def ollama_layers(doc: dict[str, Any]) -> list[Descriptor]:
    """The layers of an Ollama manifest, with Ollama's own `name` field (set on tensor and
    config-file layers) as the descriptor's name, checked like any layer title.

    Raises:
        ValueError: a layer without mediaType/digest/size, a bad digest, a negative size or a
            name that is not a relative path inside the model.
    """
    layers = []
    for d in doc.get("layers") or []:
        if not isinstance(d, dict):
            raise ValueError(f"layer {d!r} is not an object")
        name = d.get("name")
        if name is not None:
            check_title(name)
        layer = Descriptor(str(d["mediaType"]), str(d["digest"]), int(d["size"]), name)
        parse_digest(layer.digest)
        if layer.size < 0:
            raise ValueError(f"negative size for {layer.digest}")
        layers.append(layer)
    return layers


def already_converted(store: Store, name: ModelName, manifest_digest: str) -> StoredModel | None:
    """The stored `name`, if it was converted from this very manifest (a re-pull or re-import
    of an unchanged Ollama model then reads and converts nothing)."""
    found = store.find(name)
    if found is None:
        return None
    stored = store.get(found)
    sources = store.config(stored).get("provenance", {}).get("sources") or [{}]
    return stored if sources[0].get("manifest") == manifest_digest else None


def check_kinds(name: ModelName, layers: list[Descriptor]) -> dict[str, list[Descriptor]]:
    """Group the layers by Ollama kind, refusing what cannot be converted.

    Raises:
        UnsupportedModel: adapters or projectors, an unknown media type (named, with the
            supported list), or not exactly one GGUF layer.
    """
    kinds: dict[str, list[Descriptor]] = {}
    for d in layers:
        kind = d.media_type[len(PREFIX) :] if d.media_type.startswith(PREFIX) else None
        if kind in UNSUPPORTED:
            what = UNSUPPORTED[kind]
            raise UnsupportedModel(f"{name.display()} has {what}, which mlxollama cannot run yet")
        if kind not in KINDS:
            supported = ", ".join(PREFIX + k for k in KINDS)
            raise UnsupportedModel(
                f"{name.display()} has a layer of unknown media type '{d.media_type}' "
                f"({d.digest}); supported are {supported}"
            )
        kinds.setdefault(kind, []).append(d)
    models = kinds.get("model", [])
    if "tensor" in kinds:
        if models:
            raise UnsupportedModel(f"{name.display()} has both GGUF and tensor layers")
    elif len(models) != 1:
        raise UnsupportedModel(
            f"{name.display()} has {len(models)} GGUF layers and no tensor layers: "
            "expected one GGUF, or safetensors tensors"
        )
    return kinds


def convert_layers(
    store: Store,
    name: ModelName,
    layers: list[Descriptor],
    blob_path: BlobPath,
    origin: dict[str, Any],
    progress: Progress,
) -> StoredModel:
    """Build `name` from an Ollama manifest's layers, whose bytes `blob_path` finds (our
    store's blobs after a pull, Ollama's own blobs folder for an import).

    Raises:
        UnsupportedModel: see `check_kinds`; text layers that are not UTF-8, params or
            messages that are not JSON; a GGUF the converter refuses.
    """
    kinds = check_kinds(name, layers)

    def text(kind: str) -> str | None:
        found = kinds.get(kind) or []
        return _text(name, kind, blob_path(found[-1].digest)) if found else None

    params = _json(name, "params", text("params") or "{}")
    if not isinstance(params, dict):
        raise UnsupportedModel(f"{name.display()}: its params layer is not a JSON object")
    known = {k: v for k, v in params.items() if k in api.OPTION_TYPES}
    if len(known) != len(params):
        log.warning(
            "ollama.params_dropped", model=name.display(), params=sorted(set(params) - set(known))
        )
    licenses = [_text(name, "license", blob_path(d.digest)) for d in kinds.get("license", [])]
    messages = _json(name, "messages", text("messages")) if text("messages") else None
    spec = BuildSpec(
        source="",
        template=text("template") or text("prompt"),
        system=text("system"),
        parameters=api.parse_options(known),
        messages=messages,
        license=licenses,
    )
    progress({"status": "converting model"})
    if "tensor" in kinds:
        # beside the store: the folder holds a copy of the tensors while create reads them
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".ollama-mlx-", dir=store.root) as tmp:
            count = write_folder(name, kinds["tensor"], kinds.get("json", []), blob_path, Path(tmp))
            spec.source = tmp
            size = sum(d.size for d in kinds["tensor"])
            spec.origin = {**origin, "tensors": count, "size": size}
            return create(store, name.display(), spec, progress)
    gguf = kinds["model"][0]
    with tempfile.TemporaryDirectory(prefix="mlxollama-ollama-") as tmp:
        link = Path(tmp) / f"{gguf.digest.split(':', 1)[1][:12]}.gguf"
        link.symlink_to(blob_path(gguf.digest))
        spec.source = str(link)
        spec.origin = {**origin, "gguf": gguf.digest, "size": gguf.size}
        return create(store, name.display(), spec, progress)


def convert(store: Store, name: ModelName, remote, origin: dict, progress: Progress) -> StoredModel:
    """Build `name` from the pulled layers of an Ollama manifest (all already in the store),
    then drop the GGUF and Ollama's config, which are no part of the MLX model.

    Raises:
        UnsupportedModel: see `convert_layers`.
    """
    layers = ollama_layers(remote.doc)
    stored = convert_layers(store, name, layers, store.blobs.path, origin, progress)
    with store.lock():
        store.remove_unreferenced({remote.config.digest, *(d.digest for d in layers)})
    return stored


def _text(name: ModelName, kind: str, path: Path) -> str:
    try:
        return path.read_bytes().decode()
    except UnicodeDecodeError:
        raise UnsupportedModel(f"{name.display()}: its {kind} layer is not UTF-8 text") from None


def _json(name: ModelName, kind: str, text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise UnsupportedModel(f"{name.display()}: its {kind} layer is not JSON: {e}") from None
