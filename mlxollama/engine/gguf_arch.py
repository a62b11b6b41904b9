"""The architectures of GGUF files we import: llama.cpp's metadata and tensor names mapped onto
mlx-lm's configs and parameter names.

llama.cpp's converter (convert_hf_to_gguf.py) renames every tensor to its own scheme
(`blk.3.attn_q`), writes the HF config as `<arch>.<key>` metadata, and for some families
rewrites tensors (the llama family's Q/K rows are permuted for its rope). This module undoes
that per architecture; `engine.gguf` reads the file and the tensor types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.rope_utils import Llama3RoPE

from mlxollama.errors import UnsupportedModel

Getter = Callable[..., Any]  # get("key", *default): the `<arch>.key` metadata value


@dataclass(frozen=True)
class Arch:
    """What differs between the GGUF architectures we import."""

    name: str  # llama.cpp's `general.architecture`
    model_type: str  # mlx-lm's models/<model_type>.py
    permuted_qk: bool = False  # llama.cpp permuted the rows of Q and K (see `_unpermute`)
    norm_shift: float = 0.0  # llama.cpp added this to every `*norm.weight` (gemma's 1 + w)
    tensors: dict[str, str] = field(default_factory=dict)  # blk.N.<key> overrides
    config: Callable[[Getter, dict, dict], dict] | None = None  # (get, config, shapes) -> more


def _gemma_config(
    default_pattern: int, big_layers: int, local_base: float | None = None
) -> Callable[[Getter, dict, dict], dict]:
    """Gemma 2/3: llama.cpp writes no sliding-window pattern, no `query_pre_attn_scalar` and
    no local rope base; it assumes every `default_pattern`-th layer global, scales queries by
    the head size except in the 27B models (`big_layers` blocks, hidden / heads there), and
    gives gemma3's sliding layers a rope base of 10000 (`local_base`)."""

    def config(get: Getter, c: dict, shapes: dict) -> dict:
        pattern = get("attention.sliding_window_pattern", default_pattern)
        if not isinstance(pattern, int):
            raise UnsupportedModel("per-layer sliding-window patterns are not supported")
        scalar = c["head_dim"]
        if c["num_hidden_layers"] == big_layers:
            scalar = c["hidden_size"] // c["num_attention_heads"]
        out = {
            "query_pre_attn_scalar": scalar,
            "sliding_window": get("attention.sliding_window"),
            "sliding_window_pattern": pattern,
            "tie_word_embeddings": True,
        }
        if local_base is not None:
            out["rope_local_base_freq"] = local_base
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if (cap := get(key, None)) is not None:
                out[key] = cap
        return out

    return config


def _moe_config(get: Getter, c: dict, shapes: dict) -> dict:
    """Qwen2-MoE / Qwen3-MoE: expert counts and sizes. llama.cpp always renormalises the
    chosen experts' weights for qwen3moe and never for qwen2moe (it has no key for it)."""
    out = {
        "num_experts": get("expert_count"),
        "num_experts_per_tok": get("expert_used_count"),
        "moe_intermediate_size": get("expert_feed_forward_length"),
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
    if (shared := get("expert_shared_feed_forward_length", None)) is not None:
        out["shared_expert_intermediate_size"] = shared
    return out


def _granite_config(get: Getter, c: dict, shapes: dict) -> dict:
    """Granite's four multipliers, which llama.cpp stores under its own key names."""
    return {
        "logits_scaling": get("logit_scale"),
        "attention_multiplier": get("attention.scale"),
        "embedding_multiplier": get("embedding_scale"),
        "residual_multiplier": get("residual_scale"),
    }


def _cohere_config(get: Getter, c: dict, shapes: dict) -> dict:
    """Command-R: LayerNorm (not RMS) with its epsilon, a logit scale, tied embeddings."""
    return {
        "layer_norm_eps": get("attention.layer_norm_epsilon"),
        "logit_scale": get("logit_scale"),
        "use_qk_norm": "blk.0.attn_q_norm.weight" in shapes,
        "tie_word_embeddings": True,
    }


def _phi3_config(get: Getter, c: dict, shapes: dict) -> dict:
    """Phi-3: a partial rotary dimension, and the original context of its rope scaling."""
    rope = get("rope.dimension_count", c["head_dim"])
    out = {"partial_rotary_factor": rope / c["head_dim"]}
    if (original := get("rope.scaling.original_context_length", None)) is not None:
        out["original_max_position_embeddings"] = original
    if "rope_factors_long.weight" in shapes:
        raise UnsupportedModel("phi3 with LongRoPE factors (rope_factors_long) is not supported")
    return out


_GEMMA_NORMS = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_EXPERTS = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.switch_mlp.gate_proj",
    "ffn_up_exps": "mlp.switch_mlp.up_proj",
    "ffn_down_exps": "mlp.switch_mlp.down_proj",
}
_SHARED_EXPERT = {
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}

# llama.cpp writes every dense Llama-shaped model as "llama": SmolLM2, Llama 2/3, Mistral 7B,
# Mistral Small 3 (text). It permutes Q/K for them (and granite) because its "llama" rope
# rotates adjacent pairs while HF rotates halves; the others use its NeoX rope and are stored
# as in HF (command-r's HF rope already rotates adjacent pairs).
ARCHITECTURES = {
    "llama": Arch("llama", "llama", permuted_qk=True),
    "qwen2": Arch("qwen2", "qwen2"),
    "qwen3": Arch("qwen3", "qwen3"),
    "gemma3": Arch(
        "gemma3",
        "gemma3_text",
        norm_shift=1.0,
        tensors=_GEMMA_NORMS,
        config=_gemma_config(6, 62, 10000.0),
    ),
    "gemma2": Arch(
        "gemma2", "gemma2", norm_shift=1.0, tensors=_GEMMA_NORMS, config=_gemma_config(2, 46)
    ),
    "qwen2moe": Arch(
        "qwen2moe", "qwen2_moe", tensors={**_EXPERTS, **_SHARED_EXPERT}, config=_moe_config
    ),
    "qwen3moe": Arch("qwen3moe", "qwen3_moe", tensors=_EXPERTS, config=_moe_config),
    "olmo2": Arch(
        "olmo2",
        "olmo2",
        tensors={
            "post_attention_norm": "post_attention_layernorm",
            "post_ffw_norm": "post_feedforward_layernorm",
        },
    ),
    "granite": Arch("granite", "granite", permuted_qk=True, config=_granite_config),
    "command-r": Arch(
        "command-r", "cohere", tensors={"attn_norm": "input_layernorm"}, config=_cohere_config
    ),
    "phi3": Arch(
        "phi3",
        "phi3",
        tensors={"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
        config=_phi3_config,
    ),
}

TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {  # blk.N.<key> -> model.layers.N.<value>, unless the Arch says otherwise
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
ROPE_SCALING_TYPES = {"linear", "yarn"}


def architecture(name: str | None, path: Path) -> Arch:
    """The mapping for `general.architecture` `name`.

    Raises:
        UnsupportedModel: naming the architecture and the supported ones.
    """
    if (arch := ARCHITECTURES.get(name)) is None:
        raise UnsupportedModel(
            f"unsupported architecture '{name}' in {path}: supported are {', '.join(ARCHITECTURES)}"
        )
    return arch


def mlx_config(arch: Arch, metadata: dict, shapes: dict[str, tuple], path: Path) -> dict:
    """The HF config.json that mlx-lm's `models/<model_type>.py` expects, without the
    quantization entry.

    Args:
        arch: the file's architecture.
        metadata: the GGUF key/values.
        shapes: each tensor's (row-major) shape, by GGUF name.
        path: the file, for errors.
    """

    def get(key, *default):
        key = f"{arch.name}.{key}"
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
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", None),
        "rope_theta": get("rope.freq_base", 10000.0),
        "vocab_size": shapes["token_embd.weight"][0],
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "output.weight" not in shapes,
        "attention_bias": "blk.0.attn_q.bias" in shapes,
        "mlp_bias": "blk.0.ffn_up.bias" in shapes,
    }
    if arch.config:
        config.update(arch.config(get, config, shapes))
    if config["rms_norm_eps"] is None:  # a LayerNorm model (command-r) has its own key
        del config["rms_norm_eps"]
    if (scaling := get("rope.scaling.type", "none")) != "none":
        if scaling not in ROPE_SCALING_TYPES:
            raise UnsupportedModel(f"unsupported rope scaling '{scaling}' in {path}")
        config["rope_scaling"] = {"type": scaling, "factor": get("rope.scaling.factor")}
        if original := get("rope.scaling.original_context_length", None):
            config["rope_scaling"]["original_max_position_embeddings"] = original
    return config


def mlx_weights(
    arch: Arch, tensors: dict[str, mx.array], config: dict, path: Path
) -> dict[str, mx.array]:
    """`tensors` (as `mx.load` returns them, GGUF names) under mlx-lm's names, with what
    llama.cpp rewrote undone. Tensors that become config (Llama 3's `rope_freqs`) set it in
    `config` instead."""
    tensors = dict(tensors)
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
        if arch.norm_shift and stem.endswith("norm") and suffix == "weight":
            value = value - arch.norm_shift
        if stem.endswith(".ffn_gate_inp_shexp") and value.ndim == 1:  # [1, hidden] in mlx-lm
            value = value[None]
        weights[f"{mlx_name(arch, stem, path)}.{suffix}"] = value
    return weights


def mlx_name(arch: Arch, stem: str, path: Path) -> str:
    """`blk.3.attn_q` -> `model.layers.3.self_attn.q_proj`, `token_embd` -> `model.embed_tokens`."""
    try:
        if stem.startswith("blk."):
            _, layer, part = stem.split(".", 2)
            return f"model.layers.{layer}.{arch.tensors.get(part) or BLOCK_TENSORS[part]}"
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
