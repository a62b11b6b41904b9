"""Import a GGUF file (llama.cpp's format, what Ollama stores) as mlx-lm config and weights.

MLX reads GGUF itself (`mx.load`): Q4_0, Q4_1 and Q8_0 tensors come back as MLX's affine
quantization (uint32 `.weight`, float16 `.scales` and `.biases`, group size 32) and F16/F32 as
float arrays, so nothing is dequantized. What is left is bookkeeping: check the tensor types
first (`mx.load` turns Q4_K into float16 that disagrees with gguf's reference decoding, and
drops MXFP4 tensors without a word), then let `engine.gguf_arch` rename llama.cpp's tensors
to mlx-lm's, undo what llama.cpp rewrote (the llama family's Q/K row permutation) and write
the HF-style `config.json` that `mlx_lm.utils.load_model` reads.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mlxollama.engine import gguf_arch
from mlxollama.errors import UnsupportedModel

# GGUF tensor type -> quantized bits (None: float). Everything else is refused.
SUPPORTED_TYPES = {"F32": None, "F16": None, "BF16": None, "Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
GROUP_SIZE = 32  # every supported GGUF quantization has blocks of 32

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
        file_type: The tensor type holding most elements, e.g. "Q4_1".
        tokenizer_files: File name -> bytes for a Hugging Face tokenizer folder.
    """

    config: dict
    weights: dict[str, mx.array]
    metadata: dict
    file_type: str
    tokenizer_files: dict[str, bytes]


@dataclass(frozen=True)
class _TensorInfo:
    type: str
    shape: tuple[int, ...]  # row-major, as mx.load returns it
    offset: int  # of its data, from the start of the file

    @property
    def end(self) -> int:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[self.type]]
        return self.offset + prod(self.shape) // block * size


def read_gguf(path: str | Path) -> GGUFModel:
    """Read a GGUF file into an mlx-lm config and weights without dequantizing.

    Args:
        path: The .gguf file.

    Returns:
        The translated model; `tokenizer_files` and `metadata` come from the GGUF metadata.

    Raises:
        FileNotFoundError: There is no file at `path`.
        UnsupportedModel: The file is not GGUF, is truncated, or holds an architecture, a
            tensor or a tensor type that we cannot map to mlx-lm.
    """
    from mlxollama.engine.gguf_tokenizer import end_of_generation_ids, tokenizer_files

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    arch_name, infos = _read_tensor_infos(path)
    arch = gguf_arch.architecture(arch_name, path)
    if "token_embd.weight" not in infos:
        raise UnsupportedModel(f"{path} has no token_embd.weight tensor")
    file_size = path.stat().st_size
    for name, info in infos.items():
        if info.type not in SUPPORTED_TYPES:
            raise UnsupportedModel(
                f"tensor '{name}' in {path} has type {info.type}, which MLX cannot load; "
                f"supported types are {', '.join(SUPPORTED_TYPES)} (import the original "
                "safetensors, or a GGUF quantized to one of those)"
            )
        if info.end > file_size:
            raise UnsupportedModel(
                f"{path} is truncated: tensor '{name}' ends at byte {info.end}, "
                f"the file has {file_size}"
            )
    try:
        tensors, raw = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        reason = str(e).removeprefix("[load_gguf] ")
        raise UnsupportedModel(f"cannot read {path}: {reason}") from e
    for name, info in infos.items():
        if info.type == "BF16":  # mx.load narrows BF16 to float16; keep the exact bits
            data = np.fromfile(path, np.uint16, prod(info.shape), offset=info.offset)
            tensors[name] = mx.array(data.reshape(info.shape)).view(mx.bfloat16)

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

    elements = Counter()
    for info in infos.values():
        elements[info.type] += prod(info.shape)
    return GGUFModel(
        config=config,
        weights=weights,
        metadata=metadata,
        file_type=elements.most_common(1)[0][0],
        tokenizer_files=tokenizer_files(raw),
    )


def _config(arch: gguf_arch.Arch, metadata: dict, infos: dict, path: Path) -> dict:
    """The HF config.json that mlx-lm's `models/<model_type>.py` expects."""
    shapes = {name: info.shape for name, info in infos.items()}
    config = gguf_arch.mlx_config(arch, metadata, shapes, path)

    # 2-D tensors are the Linear and Embedding modules; each keeps the type it was stored in.
    bits, quantized = {}, Counter()
    for name, info in infos.items():
        if len(info.shape) == 2 and name.endswith(".weight"):
            module = gguf_arch.mlx_name(arch, name.removesuffix(".weight"), path)
            b = bits[module] = SUPPORTED_TYPES[info.type]
            if b:
                quantized[b] += prod(info.shape)
    if quantized:
        default = quantized.most_common(1)[0][0]
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": default}
        for module, b in bits.items():
            if b != default:
                config["quantization"][module] = (
                    {"group_size": GROUP_SIZE, "bits": b} if b else False
                )
    return config


def _plain(value):
    """An `mx.load` metadata value as JSON-ready Python. float32 values go through their
    shortest decimal form, so an epsilon stored as 1e-05 reads 1e-05, not 9.99999974e-06."""
    if not isinstance(value, mx.array):
        return value
    if value.dtype != mx.float32:
        return value.tolist()
    a = np.array(value)
    return float(str(a)) if a.ndim == 0 else [float(str(x)) for x in a]


# GGUF value types: 0-7 and 10-12 are fixed-size scalars, 8 a string, 9 an array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_TYPE_NAMES = {t.value: t.name for t in GGMLQuantizationType}


def _read_tensor_infos(path: Path) -> tuple[str | None, dict[str, _TensorInfo]]:
    """The architecture and each tensor's type, shape and offset, from the GGUF header.

    `mx.load` does not report tensor types, and gguf's `GGUFReader` decodes every tokenizer
    string in Python (3 s for SmolLM2's header); this walk skips over them instead.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UnsupportedModel(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _walk_header(buf)
            except (struct.error, ValueError, UnicodeDecodeError) as e:
                raise UnsupportedModel(f"{path} is truncated or corrupt: {e}") from None


def _walk_header(buf) -> tuple[str | None, dict[str, _TensorInfo]]:
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (only 2 and 3)")
    pos, arch, alignment = 24, None, 32
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        if key == "general.architecture":
            arch = _string(buf, pos + 4)[0]
        elif key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", buf, pos + 4)
        pos = _skip(buf, pos + 4, kind)
    found = []
    for _ in range(n_tensors):
        name, pos = _string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 16 + 8 * n_dims
        found.append((name, kind, dims, offset))
    data_start = -(-pos // alignment) * alignment
    return arch, {
        name: _TensorInfo(
            _TYPE_NAMES.get(kind, f"unknown type {kind}"),
            tuple(reversed(dims)),
            data_start + offset,
        )
        for name, kind, dims, offset in found
    }


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8 : pos + 8 + n]).decode(), pos + 8 + n


def _skip(buf, pos: int, kind: int) -> int:
    if kind in _SCALAR_SIZES:
        return pos + _SCALAR_SIZES[kind]
    if kind == 8:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if kind != 9:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in _SCALAR_SIZES:
        return pos + count * _SCALAR_SIZES[item]
    for _ in range(count):
        pos = _skip(buf, pos, item)
    return pos
