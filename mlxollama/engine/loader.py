"""Turn an mlx-lm config and weights into an MLX model, and re-encode one (`convert`).

Loading is: build the module from the config, quantize the layers the config says, and load
the tensors. This module knows no store: `models.load` reads a stored model and hands its
config, tensor files and tokenizer folder here.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import tokenizer_utils
from mlx_lm.utils import _get_classes, dequantize_model, infer_quant_config, quantize_model

from mlxollama.errors import UnsupportedModel


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
    weights: str = ""  # the form held, as `/api/ps` shows it (`engine.weights.Weights.label`)

    @property
    def capabilities(self) -> list[str]:
        return self.details.get("capabilities", ["completion"])


def model_from_weights(
    config: dict[str, Any], weight_files: Iterable[Path], *, dense: str | None = None
) -> nn.Module:
    """Build the model `config` describes from safetensors files and evaluate its weights.

    Args:
        config: the mlx-lm `config.json`.
        weight_files: safetensors files that together hold every parameter.
        dense: a dtype for `convert` (`bf16`, `fp32`) to dequantize to, chosen by
            `engine.weights.choose`; None keeps the stored form.
    """
    weights: dict[str, mx.array] = {}
    for path in weight_files:
        weights.update(mx.load(str(path), format="safetensors"))
    model = instantiate(config, weights)
    del weights  # the stored arrays go as soon as a dense copy replaces them
    if dense is not None:
        model, _ = convert(model, config, dense)
    mx.eval(model.parameters())
    return model


def text_tokenizer(folder: Path, config: dict[str, Any]):
    """The mlx-lm tokenizer (a TokenizerWrapper) of the tokenizer files in `folder`, which
    transformers reads once; `config` gives the end-of-sequence ids."""
    return tokenizer_utils.load(folder, eos_token_ids=config.get("eos_token_id"))
