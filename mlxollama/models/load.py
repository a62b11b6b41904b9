"""`load`: a stored model, read from the store and checked, as an engine model.

A stored model keeps the mlx-lm `config.json` in its config blob and one safetensors blob per
parameter, already named as mlx-lm's modules expect, so the tensor blobs go to the engine as
they are. The tokenizer files are linked into a temporary folder for transformers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlxollama.engine.context import UNKNOWN_LIMIT
from mlxollama.engine.embed import load_tokenizer as encoder_tokenizer
from mlxollama.engine.loader import LoadedModel, model_from_weights, text_tokenizer
from mlxollama.engine.weights import Weights, for_model
from mlxollama.errors import BlobNotFound, DigestMismatch, UnsupportedModel
from mlxollama.store import manifests as mt
from mlxollama.store.info import text_layers
from mlxollama.store.store import Store, StoredModel


def load(store: Store, name: str, weights: Weights | str | None = "auto") -> LoadedModel:
    """Load a model from the store.

    Every blob is checked against its digest first (re-hashed unless its size and mtime
    match the last successful check), so a corrupted store is refused, not half-loaded.

    Args:
        store: the store to read.
        name: the model name.
        weights: the form to hold the weights in, as chosen (`engine.weights.Weights`), or a
            setting (`auto`, `stored`, `dense`) to choose it here for the default budget
            (None: `auto`).

    Raises:
        ModelNotFound: no such model.
        DigestMismatch / BlobNotFound: a blob is corrupted or missing; the message names the
            model and the digest.
    """
    tic = time.perf_counter()
    stored = store.get(name)
    display = stored.name.display()
    try:
        store.check_blobs(stored)
    except (DigestMismatch, BlobNotFound) as e:
        raise type(e)(
            f"model '{display}' cannot be loaded: {e}. Run `mlxctl verify {display}`, then "
            "create or pull the model again"
        ) from None
    info = store.config(stored)
    model_config = info["model_config"]
    tensors = stored.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)
    if not isinstance(weights, Weights):
        weights = for_model(info, stored.size, weights or "auto")
    files = [store.blobs.path(layer.digest) for layer in tensors]
    model = model_from_weights(model_config, files, dense=weights.dense)
    pooling = None
    if "embedding" in info.get("capabilities", ()):
        tokenizer = encoder_tokenizer(str(store.blobs.path(_tokenizer_json(stored).digest)))
        pooling = info.get("pooling") or "mean"
    else:
        tokenizer = _load_tokenizer(store, stored, model_config)
    layers = text_layers(store, stored)
    del layers["license"]
    return LoadedModel(
        name=display,
        digest=stored.digest,
        model=model,
        tokenizer=tokenizer,
        model_config=model_config,
        details=info,
        context_length=int(info.get("context_length") or UNKNOWN_LIMIT),
        load_duration=time.perf_counter() - tic,
        size=stored.size,
        pooling=pooling,
        weights=weights.label,
        **layers,
    )


def _tokenizer_json(stored: StoredModel) -> mt.Descriptor:
    for f in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE):
        if f.name == "tokenizer.json":
            return f
    raise UnsupportedModel(f"model '{stored.name.display()}' has no tokenizer.json")


def _load_tokenizer(store: Store, stored: StoredModel, model_config: dict[str, Any]):
    files = stored.manifest.layers_of(mt.FILE_MEDIA_TYPE)
    _tokenizer_json(stored)
    with tempfile.TemporaryDirectory(prefix="mlxollama-tok-") as tmp:
        for f in files:
            target = Path(tmp) / f.name
            if not target.resolve().is_relative_to(Path(tmp).resolve()):
                raise UnsupportedModel(f"model file name {f.name!r} points outside the model")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(store.blobs.path(f.digest), target)
        return text_tokenizer(Path(tmp), model_config)
