"""Import a GGUF file (llama.cpp's format, what Ollama stores) as mlx-lm config and weights.

`engine.gguf_tensors` reads the header and decodes each tensor into the MLX form nearest its
type (exactly for Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/Q4_K/Q5_K/MXFP4/NVFP4 and the floats, by
re-quantizing at the source's bit width for the rest). What is left here is bookkeeping:
`engine.gguf_arch` renames llama.cpp's tensors to mlx-lm's, undoes what llama.cpp rewrote
(the llama family's Q/K row permutation, gemma's norms) and writes the HF-style
`config.json` that `mlx_lm.utils.load_model` reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import LlamaFileType

from mlxollama.engine import gguf_arch
from mlxollama.engine.gguf_tensors import (
    STORED,
    SUPPORTED_TYPES,
    TensorInfo,
    check_tensors,
    load_tensors,
    read_header,
)
from mlxollama.errors import UnsupportedModel

__all__ = ["STORED", "SUPPORTED_TYPES", "GGUFModel", "read_gguf"]

# Kept out of `metadata` (Ollama's model_info): tens of thousands of entries each.
TOKENIZER_ARRAYS = {"tokens", "merges", "scores", "token_type"}


@dataclass
class GGUFModel:
    """A GGUF file translated for mlx-lm.

    Attributes:
        config: HF-style config for `mlx_lm.utils.load_model`, with a `quantization` entry
            (default bits plus per-module overrides, `False` for float modules) when any
            tensor is quantized.
        weights: Parameters under mlx-lm's names, Q/K rows back in HF order.
        metadata: The GGUF key/values as JSON-ready Python, minus the big tokenizer arrays
            (Ollama's `model_info`), plus `general.parameter_count` when the file lacks it.
        file_type: The source quantization as llama.cpp names it: `general.file_type`
            (e.g. "Q4_K_M"), else the tensor type holding most elements.
        tokenizer_files: File name -> bytes for a Hugging Face tokenizer folder.
        tensor_types: GGUF tensor type -> how many tensors have it, most first.
        stored: How the weights are held in MLX, e.g. "4-bit affine g32" or
            "mixed: 4-bit affine g32 (120), 6-bit affine g32 (25), float (109)".
    """

    config: dict
    weights: dict[str, mx.array]
    metadata: dict
    file_type: str
    tokenizer_files: dict[str, bytes]
    tensor_types: dict[str, int]
    stored: str


def read_gguf(path: str | Path) -> GGUFModel:
    """Read a GGUF file into an mlx-lm config and weights, one tensor at a time.

    Args:
        path: The .gguf file.

    Returns:
        The translated model; `tokenizer_files` and `metadata` come from the GGUF metadata.

    Raises:
        FileNotFoundError: There is no file at `path`.
        UnsupportedModel: The file is not GGUF, is truncated, or holds an architecture, a
            tensor or a tensor type that we cannot map to mlx-lm, or a tensor decodes to NaN.
    """
    from mlxollama.engine.gguf_tokenizer import end_of_generation_ids, tokenizer_files

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    raw, infos = read_header(path)
    arch = gguf_arch.architecture(raw.get("general.architecture"), path)
    if "token_embd.weight" not in infos:
        raise UnsupportedModel(f"{path} has no token_embd.weight tensor")
    check_tensors(infos, path)
    tensors = load_tensors(path, infos)

    metadata = {
        k: _plain(v)
        for k, v in raw.items()
        if k.removeprefix("tokenizer.ggml.") not in TOKENIZER_ARRAYS
    }
    metadata.setdefault("general.parameter_count", sum(prod(i.shape) for i in infos.values()))
    config = _config(arch, metadata, infos, path)
    if eog := end_of_generation_ids(raw):
        config["eos_token_id"] = eog
    weights = gguf_arch.mlx_weights(arch, tensors, config, path)

    return GGUFModel(
        config=config,
        weights=weights,
        metadata=metadata,
        file_type=_file_type(raw, infos),
        tokenizer_files=tokenizer_files(raw),
        tensor_types=dict(
            sorted(
                Counter(info.type for info in infos.values()).items(),
                key=lambda item: (-item[1], item[0]),
            )
        ),
        stored=stored_label(infos),
    )


def _config(arch: gguf_arch.Arch, metadata: dict, infos: dict, path: Path) -> dict:
    """The HF config.json that mlx-lm's `models/<model_type>.py` expects."""
    shapes = {name: info.shape for name, info in infos.items()}
    config = gguf_arch.mlx_config(arch, metadata, shapes, path)

    # 2-D tensors (3-D: stacked experts) are the Linear and Embedding modules; each keeps the
    # form it was stored in.
    forms, quantized = {}, Counter()
    for name, info in infos.items():
        if len(info.shape) >= 2 and name.endswith(".weight"):
            module = gguf_arch.mlx_name(arch, name.removesuffix(".weight"), path)
            form = forms[module] = info.stored()
            if form.bits is not None:
                quantized[form] += prod(info.shape)
    if quantized:
        default = quantized.most_common(1)[0][0]
        config["quantization"] = dict(default.quantization())
        for module, form in forms.items():
            if form != default:
                config["quantization"][module] = form.quantization() or False
    return config


def _file_type(metadata: dict, infos: dict[str, TensorInfo]) -> str:
    """llama.cpp's name for the file's quantization (`general.file_type`: MOSTLY_Q4_K_M ->
    "Q4_K_M"), else the tensor type holding the most elements."""
    try:
        return LlamaFileType(metadata["general.file_type"]).name.split("_", 1)[1]
    except (KeyError, ValueError, IndexError):
        elements = Counter()
        for info in infos.values():
            elements[info.type] += prod(info.shape)
        return elements.most_common(1)[0][0]


def stored_label(infos: dict[str, TensorInfo]) -> str:
    """How the weights are held in MLX: one form, or "mixed: " each with its tensor count."""
    forms = Counter(info.stored().label() for info in infos.values() if len(info.shape) >= 2)
    if not forms:
        return "float"
    if len(forms) == 1:
        return next(iter(forms))
    ranked = sorted(forms.items(), key=lambda item: (-item[1], item[0]))
    return "mixed: " + ", ".join(f"{label} ({n})" for label, n in ranked)


def _plain(value):
    """A header value as JSON-ready Python. float32 arrays go through their shortest decimal
    form, as scalars already do, so 1e-05 reads 1e-05, not 9.99999974e-06."""
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype != np.float32:
        return value.tolist()
    return [float(str(x)) for x in value]
