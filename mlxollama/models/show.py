"""`show`: the `/api/show` body of a stored model, its Modelfile written back included."""

from __future__ import annotations

from typing import Any

from mlxollama.recipes.modelfile import format_parameters, to_modelfile
from mlxollama.store import manifests as mt
from mlxollama.store.info import details, model_template, rfc3339, text_layers
from mlxollama.store.store import Store, StoredModel


def show(store: Store, model: StoredModel, verbose: bool = False) -> dict[str, Any]:
    """The `/api/show` body."""
    info = store.config(model)
    layers = text_layers(store, model)
    params, messages, licenses = layers["parameters"], layers["messages"], layers["license"]
    name = model.name.display()
    body: dict[str, Any] = {
        "license": "\n".join(licenses),
        "modelfile": to_modelfile(
            name=name,
            from_ref=name,
            template=layers["template"],
            system=layers["system"],
            parameters=params,
            messages=messages,
            license=licenses,
        ),
        "parameters": format_parameters(params),
        "template": model_template(store, model),
        "system": layers["system"] or "",
        "details": details(info),
        "messages": messages,
        "model_info": info.get("model_info") or {},
        "capabilities": info.get("capabilities", ["completion"]),
        "modified_at": rfc3339(model.modified_at),
        "provenance": info.get("provenance", {}),
    }
    if verbose:
        body["tensors"] = [
            {"name": d.name, "digest": d.digest, "size": d.size}
            for d in model.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)
        ]
    return body
