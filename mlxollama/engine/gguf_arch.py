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


def _yarn(get: Getter, mscale_all_dim: float | None = None) -> dict:
    """HF's yarn `rope_scaling` from llama.cpp's `rope.scaling.*` keys. llama.cpp scales the
    attention by `mscale_all_dim` alone and cancels yarn's own rope magnitude, which is HF's
    `mscale == mscale_all_dim`; so both are set to it when the file carries one."""
    out = {
        "type": "yarn",
        "factor": get("rope.scaling.factor"),
        "original_max_position_embeddings": get("rope.scaling.original_context_length"),
    }
    for beta in ("beta_fast", "beta_slow"):  # mlx-lm's defaults (32, 1) are HF's
        if (value := get(f"rope.scaling.yarn_{beta}", None)) is not None:
            out[beta] = value
    if mscale_all_dim:
        out["mscale"] = out["mscale_all_dim"] = mscale_all_dim
    return out


def _mistral3_config(get: Getter, c: dict, shapes: dict) -> dict:
    """llama.cpp's `mistral3`: Ministral 3 (yarn rope plus Llama 4's position-dependent query
    temperature, `attention.temperature_scale`) as mlx-lm's `ministral3`; Mistral Small 3.1/3.2
    text, which the same converter class writes without those keys, as `llama`."""
    if (beta := get("attention.temperature_scale", None)) is None:
        return {"model_type": "llama"}
    if get("rope.scaling.type", "none") != "yarn":
        raise UnsupportedModel("mistral3 with a temperature scale but no yarn rope")
    rope = {
        **_yarn(get),
        "rope_theta": c["rope_theta"],
        "llama_4_scaling_beta": beta,
        "mscale_all_dim": get("rope.scaling.yarn_log_multiplier", 1.0),
    }
    rope["mscale"] = rope["mscale_all_dim"]  # only their ratio reaches the rope
    temperature = get("attention.temperature_length", rope["original_max_position_embeddings"])
    if temperature != rope["original_max_position_embeddings"]:
        raise UnsupportedModel(
            "mistral3 with a temperature length other than the yarn original context"
        )
    return {"rope_parameters": rope, "rope_scaling": rope}


def _deepseek2_config(get: Getter, c: dict, shapes: dict) -> dict:
    """DeepSeek V3 / R1 / Kimi K2 (MLA attention, sigmoid-gated experts with a score bias) as
    mlx-lm's `deepseek_v3`. Newer llama.cpp writes the MLA head sizes as `key_length_mla` /
    `value_length_mla` (its `key_length` is then the latent MQA head) and `head_count_kv` 1."""
    if get("expert_gating_func", 1) != 2:  # llama.cpp: 1 softmax (DeepSeek V2), 2 sigmoid
        raise UnsupportedModel(
            "deepseek2 with softmax expert gating (DeepSeek-V2) is not supported: "
            "only sigmoid gating (DeepSeek-V3, R1, Kimi K2)"
        )
    rope = get("rope.dimension_count")
    kv_rank = get("attention.kv_lora_rank")
    if (key := get("attention.key_length_mla", None)) is not None:
        value = get("attention.value_length_mla")
    else:  # older files: the decompressed head sizes themselves
        key, value = get("attention.key_length"), get("attention.value_length")
    out = {
        "model_type": "deepseek_v3",
        "num_key_value_heads": c["num_attention_heads"],
        "kv_lora_rank": kv_rank,
        "q_lora_rank": get("attention.q_lora_rank", None),
        "qk_rope_head_dim": rope,
        "qk_nope_head_dim": key - rope,
        "v_head_dim": value,
        "moe_intermediate_size": get("expert_feed_forward_length"),
        "n_routed_experts": get("expert_count"),
        "num_experts_per_tok": get("expert_used_count"),
        "n_shared_experts": get("expert_shared_count", 0) or None,
        "routed_scaling_factor": get("expert_weights_scale", 1.0),
        "norm_topk_prob": bool(get("expert_weights_norm", False)),
        "n_group": get("expert_group_count", 1),
        "topk_group": get("expert_group_used_count", 1),
        "first_k_dense_replace": get("leading_dense_block_count", 0),
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
    }
    if get("rope.scaling.type", "none") == "yarn":
        # for deepseek2 alone llama.cpp's converter stores 0.1 * mscale_all_dim
        log_mul = get("rope.scaling.yarn_log_multiplier", 0.0)
        out["rope_scaling"] = _yarn(get, log_mul / 0.1 if log_mul else None)
    return out


def _gpt_oss_config(get: Getter, c: dict, shapes: dict) -> dict:
    """gpt-oss: experts, the sliding window on every even layer (llama.cpp's fixed pattern,
    which is also HF's `layer_types`), and its yarn rope."""
    out = {
        "num_local_experts": get("expert_count"),
        "num_experts_per_tok": get("expert_used_count"),
        "intermediate_size": get("expert_feed_forward_length"),
        "sliding_window": get("attention.sliding_window"),
        "layer_types": [
            "sliding_attention" if i % 2 == 0 else "full_attention"
            for i in range(c["num_hidden_layers"])
        ],
    }
    if get("rope.scaling.type", "none") == "yarn":
        out["rope_scaling"] = _yarn(get)
    return out


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
    "mistral3": Arch("mistral3", "ministral3", permuted_qk=True, config=_mistral3_config),
    "deepseek2": Arch(
        "deepseek2",
        "deepseek_v3",
        tensors={
            **_EXPERTS,
            "attn_q_a": "self_attn.q_a_proj",
            "attn_q_a_norm": "self_attn.q_a_layernorm",
            "attn_q_b": "self_attn.q_b_proj",
            "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
            "attn_kv_a_norm": "self_attn.kv_a_layernorm",
            "attn_kv_b": "self_attn.kv_b_proj",  # older files; mlx-lm's sanitize splits it
            "attn_k_b": "self_attn.embed_q",  # [heads, kv_lora_rank, qk_nope_head_dim]
            "attn_v_b": "self_attn.unembed_out",  # [heads, v_head_dim, kv_lora_rank]
            "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
            "ffn_up_shexp": "mlp.shared_experts.up_proj",
            "ffn_down_shexp": "mlp.shared_experts.down_proj",
            "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
        },
        config=_deepseek2_config,
    ),
    "gpt-oss": Arch(
        "gpt-oss",
        "gpt_oss",
        tensors={
            "post_attention_norm": "post_attention_layernorm",
            "attn_sinks.weight": "self_attn.sinks",
            "ffn_gate_inp": "mlp.router",
            "ffn_gate_exps": "mlp.experts.gate_proj",
            "ffn_up_exps": "mlp.experts.up_proj",
            "ffn_down_exps": "mlp.experts.down_proj",
        },
        config=_gpt_oss_config,
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
    scaling = get("rope.scaling.type", "none")
    if scaling != "none" and "rope_scaling" not in config:
        if scaling not in ROPE_SCALING_TYPES:
            raise UnsupportedModel(f"unsupported rope scaling '{scaling}' in {path}")
        if scaling == "yarn":
            config["rope_scaling"] = _yarn(get)
        else:
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
        weights[param_name(arch, stem, suffix, path)] = value
    return weights


def param_name(arch: Arch, stem: str, suffix: str, path: Path) -> str:
    """The mlx-lm parameter for GGUF tensor `stem.suffix`: `mlx_name(stem).suffix`, unless the
    Arch maps `part.suffix` to a bare parameter (gpt-oss's `attn_sinks.weight` is mlx-lm's
    `self_attn.sinks`)."""
    if stem.startswith("blk.") and stem.count(".") >= 2:
        _, layer, part = stem.split(".", 2)
        if bare := arch.tensors.get(f"{part}.{suffix}"):
            return f"model.layers.{layer}.{bare}"
    return f"{mlx_name(arch, stem, path)}.{suffix}"


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
