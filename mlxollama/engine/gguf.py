"""Import a GGUF file (llama.cpp's format, what Ollama stores) as mlx-lm config and weights.

`engine.gguf_tensors` reads the header and decodes each tensor into the MLX form nearest its
type (exactly for Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/Q4_K/Q5_K/MXFP4/NVFP4 and the floats, by
re-quantizing at the source's bit width for the rest). What is left here is bookkeeping:
rename llama.cpp's tensors to mlx-lm's, undo the row permutation llama.cpp applies to the
llama family's Q and K, and write the HF-style `config.json` that `mlx_lm.utils.load_model`
reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import LlamaFileType
from mlx_lm.models.rope_utils import Llama3RoPE

from mlxollama.engine.gguf_tensors import (
    STORED,
    SUPPORTED_TYPES,
    TensorInfo,
    check_tensors,
    load_tensors,
    read_header,
)
from mlxollama.errors import UnsupportedModel

__all__ = ["ARCHITECTURES", "STORED", "SUPPORTED_TYPES", "GGUFModel", "read_gguf"]


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
    arch_name = raw.get("general.architecture")
    if (arch := ARCHITECTURES.get(arch_name)) is None:
        raise UnsupportedModel(
            f"unsupported architecture '{arch_name}' in {path}: "
            f"supported are {', '.join(ARCHITECTURES)}"
        )
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

    # 2-D tensors are the Linear and Embedding modules; each keeps the form it was stored in.
    forms, quantized = {}, Counter()
    for name, info in infos.items():
        if len(info.shape) >= 2 and name.endswith(".weight"):
            form = forms[_mlx_name(name.removesuffix(".weight"), path)] = info.stored()
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
    """A header value as JSON-ready Python. float32 arrays go through their shortest decimal
    form, as scalars already do, so 1e-05 reads 1e-05, not 9.99999974e-06."""
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype != np.float32:
        return value.tolist()
    return [float(str(x)) for x in value]
