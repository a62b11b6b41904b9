"""Models from Ollama-style registries: a GGUF layer plus text layers
(`application/vnd.ollama.image.{template,system,params,messages,license}`), converted on pull
through the foundation's `create` path, so the result is an ordinary MLX model in the store
with its template, parameters and provenance (the registry reference and the GGUF digest).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
import structlog

from mlxollama import api
from mlxollama.errors import UnsupportedModel
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.registry import Progress
from mlxollama.store.names import ModelName
from mlxollama.store.store import Store, StoredModel

log = structlog.get_logger("mlxollama.registry")

PREFIX = "application/vnd.ollama.image."
UNSUPPORTED = {"adapter": "LoRA adapters", "projector": "vision projectors"}


def already_converted(store: Store, name: ModelName, remote) -> StoredModel | None:
    """The stored `name`, if it was converted from this very manifest (a re-pull of an
    unchanged Ollama model then fetches and converts nothing)."""
    found = store.find(name)
    if found is None:
        return None
    stored = store.get(found)
    sources = store.config(stored).get("provenance", {}).get("sources") or [{}]
    return stored if sources[0].get("manifest") == remote.digest else None


def convert(store: Store, name: ModelName, remote, origin: dict, progress: Progress) -> StoredModel:
    """Build `name` from the pulled layers of an Ollama manifest (all already in the store).

    Raises:
        UnsupportedModel: no GGUF layer, several, adapters or projectors, or a GGUF the
            converter refuses (architecture, K-quant tensors).
    """
    kinds: dict[str, list] = {}
    for d in remote.layers:
        if d.media_type.startswith(PREFIX):
            kinds.setdefault(d.media_type[len(PREFIX) :], []).append(d)
    for kind, what in UNSUPPORTED.items():
        if kind in kinds:
            raise UnsupportedModel(f"{name.display()} has {what}, which mlxollama cannot run yet")
    models = kinds.get("model", [])
    if len(models) != 1:
        raise UnsupportedModel(f"{name.display()} has {len(models)} GGUF layers: expected one")

    def text(kind: str) -> str | None:
        layers = kinds.get(kind) or []
        return store.blobs.read_bytes(layers[-1].digest).decode() if layers else None

    params = orjson.loads(text("params") or "{}")
    known = {k: v for k, v in params.items() if k in api.OPTION_TYPES}
    if len(known) != len(params):
        log.warning(
            "pull.params_dropped", model=name.display(), params=sorted(set(params) - set(known))
        )
    licenses = [store.blobs.read_bytes(d.digest).decode() for d in kinds.get("license", [])]
    messages = orjson.loads(text("messages")) if text("messages") else None
    gguf = models[0]
    progress({"status": "converting model"})
    with tempfile.TemporaryDirectory(prefix="mlxollama-pull-") as tmp:
        link = Path(tmp) / f"{gguf.digest.split(':', 1)[1][:12]}.gguf"
        link.symlink_to(store.blobs.path(gguf.digest))
        spec = BuildSpec(
            source=str(link),
            template=text("template") or text("prompt"),
            system=text("system"),
            parameters=api.parse_options(known),
            messages=messages,
            license=licenses,
            origin={**origin, "gguf": gguf.digest, "size": gguf.size},
        )
        stored = create(store, name.display(), spec, progress)
    with store.lock():  # the GGUF and Ollama's config are not part of the MLX model
        store.remove_unreferenced({remote.config.digest, gguf.digest})
    return stored
