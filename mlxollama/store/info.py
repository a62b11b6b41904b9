"""What a stored model's text layers say: TEMPLATE, SYSTEM, PARAMETERs, MESSAGEs, LICENSE,
and the chat template the model applies. `mlxollama.models.catalog` builds Ollama's `/api/tags` and
`/api/show` bodies from them."""

from __future__ import annotations

from typing import Any

import orjson

from mlxollama.store import manifests as mt
from mlxollama.store.store import Store, StoredModel


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
