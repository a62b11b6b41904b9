"""The stored models as Ollama lists and shows them: `/api/tags` entries and `/api/show`
bodies as the contract's types (`api.ListModel`, `api.ShowResponse`), built from the store.
The HTTP layer and the embedded SDK answer with them, so both send the same bodies."""

from __future__ import annotations

from mlxollama import api
from mlxollama.engine import features
from mlxollama.recipes.modelfile import format_parameters, to_modelfile
from mlxollama.store import manifests as mt
from mlxollama.store.info import model_template, text_layers, texts
from mlxollama.store.store import Store, StoredModel


def list_entry(store: Store, model: StoredModel) -> api.ListModel:
    """One `/api/tags` entry."""
    info = store.config(model)
    name = model.name.display()
    return api.ListModel(
        name=name,
        model=name,
        modified_at=api.rfc3339(model.modified_at),
        size=model.size,
        digest=model.digest,
        details=api.ModelDetails.from_config(info),
        capabilities=capabilities(store, model),
    )


def show(store: Store, model: StoredModel, verbose: bool = False) -> api.ShowResponse:
    """The `/api/show` body; `verbose` adds the tensor layers."""
    info = store.config(model)
    layers = text_layers(store, model)
    params, messages, licenses = layers["parameters"], layers["messages"], layers["license"]
    name = model.name.display()
    tensors = None
    if verbose:
        tensors = [
            {"name": d.name, "digest": d.digest, "size": d.size}
            for d in model.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)
        ]
    return api.ShowResponse(
        license="\n".join(licenses),
        modelfile=to_modelfile(
            name=name,
            from_ref=name,
            template=layers["template"],
            system=layers["system"],
            parameters=params,
            messages=messages,
            license=licenses,
        ),
        parameters=format_parameters(params),
        template=model_template(store, model),
        system=layers["system"] or "",
        details=api.ModelDetails.from_config(info),
        messages=messages,
        model_info=_model_info(info),
        capabilities=capabilities(store, model),
        modified_at=api.rfc3339(model.modified_at),
        provenance=info.get("provenance", {}),
        tensors=tensors,
    )


def capabilities(store: Store, model: StoredModel) -> list[str]:
    """What the model can do: what it was created as (`completion`, `embedding`) and what
    its template renders (`tools`, `thinking`, `insert`)."""
    base = store.config(model).get("capabilities", ["completion"])
    go = bool(texts(store, model, mt.TEMPLATE_MEDIA_TYPE))
    return features.capabilities(base, model_template(store, model) or None, go)


def _model_info(info: dict) -> dict:
    """Ollama's model_info, plus how a converted GGUF was quantized at the source (its
    tensor types and their counts) and how it is stored in MLX (`mlxollama.quantization.*`;
    `details.quantization_level` carries the source's llama.cpp name, e.g. Q4_K_M)."""
    model_info = dict(info.get("model_info") or {})
    quantization = info.get("quantization") or {}
    for key in ("source", "source_tensors", "stored"):
        if key in quantization:
            model_info[f"mlxollama.quantization.{key}"] = quantization[key]
    return model_info
