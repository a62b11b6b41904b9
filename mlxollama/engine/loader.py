"""Load a stored model into mlx-lm: weights from tensor blobs, tokenizer from file blobs.

A stored model keeps the mlx-lm `config.json` in its config blob and one safetensors blob per
parameter, already named as mlx-lm's modules expect, so loading is: build the module from the
config, quantize the layers the config says, and load the tensors. The tokenizer files are
linked into a temporary folder for transformers, which reads them once.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import tokenizer_utils
from mlx_lm.utils import _get_classes, dequantize_model, infer_quant_config, quantize_model

from mlxollama.errors import BlobNotFound, DigestMismatch, UnsupportedModel
from mlxollama.store import manifests as mt
from mlxollama.store.info import text_layers
from mlxollama.store.store import Store, StoredModel


def instantiate(config: dict[str, Any], weights: dict[str, mx.array]) -> nn.Module:
    """Build an mlx-lm model (or one of our BERT encoders) from its config and weights (what
    `mlx_lm.utils.load_model` does after reading files), quantizing the layers the config or
    the weights say.

    Raises:
        UnsupportedModel: mlx-lm has no architecture for `config["model_type"]`.
        ValueError: the weights do not match the architecture.
    """
    from mlxollama.engine import bert

    if config.get("model_type") in bert.ENCODER_TYPES:
        model_class, args_class = bert.Model, bert.ModelArgs
    else:
        try:
            model_class, args_class = _get_classes(config)
        except ValueError as e:
            raise UnsupportedModel(
                f"unsupported architecture '{config.get('model_type')}': mlx-lm has no model for it"
            ) from e
    model = model_class(args_class.from_dict(config))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    quantization = config.get("quantization")
    if quantization:

        def predicate(path: str, module: nn.Module):
            if path in quantization:
                return quantization[path]
            if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
                return False
            return infer_quant_config(path, module, weights)

        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            mode=quantization.get("mode", "affine"),
            class_predicate=predicate,
        )
    model.eval()
    model.load_weights(list(weights.items()), strict=True)
    return model


def convert(model: nn.Module, config: dict[str, Any], target: str) -> tuple[nn.Module, dict]:
    """Re-encode weights: `int4`/`int8` (MLX affine, group size 64), `fp16`, `bf16` or
    `fp32`. Quantized sources are dequantized first.
    """
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    model = dequantize_model(model)
    if target in ("int4", "int8"):
        with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints bits/weight
            model, config = quantize_model(model, config, 64, 4 if target == "int4" else 8)
        config.pop("quantization_config", None)
    elif target in ("fp16", "bf16", "fp32"):
        model.set_dtype({"fp16": mx.float16, "bf16": mx.bfloat16, "fp32": mx.float32}[target])
    else:
        raise ValueError(f"unknown quantization '{target}': use int4, int8, fp16 or bf16")
    return model, config


def _fits_as_float32(model: nn.Module) -> bool:
    from mlx_lm.utils import get_total_parameters

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return False
    return get_total_parameters(model) * 4 < total // 4


@dataclass
class LoadedModel:
    """A model ready to generate (or embed), with its Modelfile-level defaults.

    For an embedding model `tokenizer` is a `tokenizers.Tokenizer` and `pooling` names how
    token states become one vector (`engine.embed`)."""

    name: str
    digest: str
    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    model_config: dict[str, Any]
    details: dict[str, Any]
    template: str | None = None  # a Modelfile TEMPLATE (Go syntax); None: the Jinja one
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    context_length: int = 4096
    load_duration: float = 0.0
    size: int = 0
    pooling: str | None = None

    @property
    def capabilities(self) -> list[str]:
        return self.details.get("capabilities", ["completion"])


def load(store: Store, name: str, *, float32_on_cpu: bool = True) -> LoadedModel:
    """Load a model from the store.

    Every blob is checked against its digest first (re-hashed unless its size and mtime
    match the last successful check), so a corrupted store is refused, not half-loaded.

    Args:
        store: the store to read.
        name: the model name.
        float32_on_cpu: on MLX's CPU backend, dequantize to float32, the only dtype with a
            fast (BLAS) path there. Default: ``True``.

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
    weights: dict[str, mx.array] = {}
    for layer in stored.manifest.layers_of(mt.TENSOR_MEDIA_TYPE):
        weights.update(mx.load(str(store.blobs.path(layer.digest)), format="safetensors"))
    model = instantiate(model_config, weights)
    if float32_on_cpu and mx.default_device() == mx.cpu and _fits_as_float32(model):
        model, _ = convert(model, model_config, "fp32")
    mx.eval(model.parameters())
    pooling = None
    if "embedding" in info.get("capabilities", ()):
        tokenizer = _load_encoder_tokenizer(store, stored)
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
        context_length=int(info.get("context_length") or 4096),
        load_duration=time.perf_counter() - tic,
        size=stored.size,
        pooling=pooling,
        **layers,
    )


def _tokenizer_json(stored: StoredModel) -> mt.Descriptor:
    for f in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE):
        if f.name == "tokenizer.json":
            return f
    raise UnsupportedModel(f"model '{stored.name.display()}' has no tokenizer.json")


def _load_encoder_tokenizer(store: Store, stored: StoredModel):
    from mlxollama.engine.embed import load_tokenizer

    return load_tokenizer(str(store.blobs.path(_tokenizer_json(stored).digest)))


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
        return tokenizer_utils.load(Path(tmp), eos_token_ids=model_config.get("eos_token_id"))
