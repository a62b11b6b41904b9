"""What `list`/`show` report about a stored model, in Ollama's shapes (`/api/tags`,
`/api/show`), shared by the embedded SDK, the CLI and the HTTP layer. The `/api/show` body
itself is `models.show` (it writes a Modelfile, which the store knows nothing of)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from mlxollama.store import manifests as mt
from mlxollama.store.store import Store, StoredModel


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def details(info: dict[str, Any]) -> dict[str, Any]:
    family = info.get("model_family") or ""
    return {
        "parent_model": info.get("parent_model", ""),
        "format": info.get("model_format", "mlx"),
        "family": family,
        "families": info.get("model_families") or ([family] if family else None),
        "parameter_size": info.get("model_type", ""),
        "quantization_level": info.get("file_type", ""),
    }


def tag_entry(store: Store, model: StoredModel) -> dict[str, Any]:
    """One `/api/tags` entry."""
    info = store.config(model)
    name = model.name.display()
    return {
        "name": name,
        "model": name,
        "modified_at": rfc3339(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": details(info),
        "capabilities": info.get("capabilities", ["completion"]),
    }


def texts(store: Store, model: StoredModel, media_type: str) -> list[str]:
    return [store.blobs.read_bytes(d.digest).decode() for d in model.manifest.layers_of(media_type)]


def text_layers(store: Store, model: StoredModel) -> dict[str, Any]:
    """The Modelfile-level layers: TEMPLATE and SYSTEM (None when absent), PARAMETERs,
    MESSAGEs and the LICENSE texts."""
    template, system = (
        texts(store, model, mt.TEMPLATE_MEDIA_TYPE),
        texts(store, model, mt.SYSTEM_MEDIA_TYPE),
    )
    params, messages = (
        texts(store, model, mt.PARAMS_MEDIA_TYPE),
        texts(store, model, mt.MESSAGES_MEDIA_TYPE),
    )
    return {
        "template": template[-1] if template else None,
        "system": system[-1] if system else None,
        "parameters": orjson.loads(params[-1]) if params else {},
        "messages": orjson.loads(messages[-1]) if messages else [],
        "license": texts(store, model, mt.LICENSE_MEDIA_TYPE),
    }


def model_template(store: Store, model: StoredModel) -> str:
    """The Modelfile TEMPLATE if one was given, else the model's own Jinja chat template."""
    go = texts(store, model, mt.TEMPLATE_MEDIA_TYPE)
    if go:
        return go[-1]
    for layer in model.manifest.layers_of(mt.FILE_MEDIA_TYPE):
        if layer.name == "chat_template.jinja":
            return store.blobs.read_bytes(layer.digest).decode()
        if layer.name == "tokenizer_config.json":
            template = orjson.loads(store.blobs.read_bytes(layer.digest)).get("chat_template")
            if isinstance(template, str):
                return template
    return ""
