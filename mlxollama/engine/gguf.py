"""Import a GGUF file (llama.cpp's format, what Ollama stores) as mlx-lm config and weights.

MLX reads GGUF itself (`mx.load`): Q4_0, Q4_1 and Q8_0 tensors come back as MLX's affine
quantization (uint32 `.weight`, float16 `.scales` and `.biases`, group size 32) and F16/F32 as
float arrays, so nothing is dequantized. What is left is bookkeeping: check the tensor types
first (`mx.load` turns Q4_K into float16 that disagrees with gguf's reference decoding, and
drops MXFP4 tensors without a word), rename llama.cpp's tensors to mlx-lm's, undo the row
permutation llama.cpp applies to the llama family's Q and K, and write the HF-style
`config.json` that `mlx_lm.utils.load_model` reads.
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
from mlx_lm.models.rope_utils import Llama3RoPE

from mlxollama.errors import UnsupportedModel


@dataclass(frozen=True)
class Arch:
    """What differs between the GGUF architectures we import."""

    model_type: str  # mlx-lm's models/<model_type>.py
    permuted_qk: bool  # llama.cpp permuted the rows of Q and K (see `_unpermute`)


# llama.cpp writes every dense Llama-shaped model as "llama": SmolLM2, Llama 2/3, Mistral 7B,
# Mistral Small 3 (text). It permutes Q/K for them because its "llama" rope rotates adjacent
# pairs while HF rotates halves; qwen2/qwen3 use its NeoX rope and are stored as in HF.
ARCHITECTURES = {
    "llama": Arch("llama", permuted_qk=True),
    "qwen2": Arch("qwen2", permuted_qk=False),
    "qwen3": Arch("qwen3", permuted_qk=False),
}

# GGUF tensor type -> quantized bits (None: float). Everything else is refused.
SUPPORTED_TYPES = {"F32": None, "F16": None, "BF16": None, "Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
GROUP_SIZE = 32  # every supported GGUF quantization has blocks of 32

TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {  # blk.N.<key> -> model.layers.N.<value>
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# Kept out of `metadata` (Ollama's model_info): tens of thousands of entries each.
TOKENIZER_ARRAYS = {"tokens", "merges", "scores", "token_type"}
ROPE_SCALING_TYPES = {"linear", "yarn"}


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
    if (arch := ARCHITECTURES.get(arch_name)) is None:
        raise UnsupportedModel(
            f"unsupported architecture '{arch_name}' in {path}: "
            f"supported are {', '.join(ARCHITECTURES)}"
        )
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
    config = _config(arch_name, arch, metadata, infos, path)
    if eog := end_of_generation_ids(raw):
        config["eos_token_id"] = eog
    if "rope_freqs.weight" in tensors:
        config["rope_scaling"] = _llama3_rope_scaling(
            tensors.pop("rope_freqs.weight"), config, path
        )

    weights = {}
    for key, value in tensors.items():
        stem, suffix = key.rsplit(".", 1)  # suffix: weight, bias, or MLX's scales/biases
        if arch.permuted_qk and stem.endswith((".attn_q", ".attn_k")):
            q = stem.endswith(".attn_q")
            heads = config["num_attention_heads" if q else "num_key_value_heads"]
            value = _unpermute(value, heads)
        weights[f"{_mlx_name(stem, path)}.{suffix}"] = value

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


def _config(arch_name: str, arch: Arch, metadata: dict, infos: dict, path: Path) -> dict:
    """The HF config.json that mlx-lm's `models/<model_type>.py` expects."""

    def get(key, *default):
        key = f"{arch_name}.{key}"
        if key in metadata:
            return metadata[key]
        if default:
            return default[0]
        raise UnsupportedModel(f"{path} lacks the GGUF key '{key}'")

    hidden, heads = get("embedding_length"), get("attention.head_count")
    config = {
        "model_type": arch.model_type,
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": get("attention.key_length", hidden // heads),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "vocab_size": infos["token_embd.weight"].shape[0],
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "output.weight" not in infos,
        "attention_bias": "blk.0.attn_q.bias" in infos,
        "mlp_bias": "blk.0.ffn_up.bias" in infos,
    }
    if (scaling := get("rope.scaling.type", "none")) != "none":
        if scaling not in ROPE_SCALING_TYPES:
            raise UnsupportedModel(f"unsupported rope scaling '{scaling}' in {path}")
        config["rope_scaling"] = {"type": scaling, "factor": get("rope.scaling.factor")}
        if original := get("rope.scaling.original_context_length", None):
            config["rope_scaling"]["original_max_position_embeddings"] = original

    # 2-D tensors are the Linear and Embedding modules; each keeps the type it was stored in.
    bits, quantized = {}, Counter()
    for name, info in infos.items():
        if len(info.shape) == 2 and name.endswith(".weight"):
            b = bits[_mlx_name(name.removesuffix(".weight"), path)] = SUPPORTED_TYPES[info.type]
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


def _mlx_name(stem: str, path: Path) -> str:
    """`blk.3.attn_q` -> `model.layers.3.self_attn.q_proj`, `token_embd` -> `model.embed_tokens`."""
    try:
        if stem.startswith("blk."):
            _, layer, part = stem.split(".", 2)
            return f"model.layers.{layer}.{BLOCK_TENSORS[part]}"
        return TENSORS[stem]
    except (KeyError, ValueError):
        raise UnsupportedModel(f"tensor '{stem}' in {path} has no counterpart in mlx-lm") from None


def _unpermute(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's `LlamaModel.permute`, which reorders each head's output rows from
    HF's (first half, second half) to interleaved pairs for its rope. Rows are independent
    in every supported quantization, so this applies to `.weight`, `.scales`, `.biases` and
    a bias vector alike."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_scaling(factors: mx.array, config: dict, path: Path) -> dict:
    """Llama 3.1+ GGUFs replace HF's llama3 `rope_scaling` with a `rope_freqs` tensor of
    per-frequency divisors. mlx-lm's `Llama3RoPE` recomputes the divisors from the dict, so
    recover the dict (the factor is the largest divisor; every Llama 3.x uses the defaults
    for the rest) and check that it reproduces the tensor rather than trust it."""
    scaling = {
        "rope_type": "llama3",
        "factor": factors.max().item(),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    dims, base = config["head_dim"], config["rope_theta"]
    rope = Llama3RoPE(dims, base=base, scaling_config=scaling)
    if not mx.allclose(rope._freqs / base ** (mx.arange(0, dims, 2) / dims), factors, rtol=1e-3):
        raise UnsupportedModel(f"rope_freqs in {path} do not follow Llama 3's rope scaling")
    return scaling


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
