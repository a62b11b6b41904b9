"""Every GGUF architecture we claim, proved by a round trip: a tiny random model built with
mlx-lm's own class, written with gguf's `GGUFWriter` the way llama.cpp's convert_hf_to_gguf.py
writes that architecture (its tensor names from gguf's TensorNameMap, its metadata keys, its
tensor rewrites: the llama family's Q/K permutation, gemma's `1 + w` norms, stacked experts),
imported with `read_gguf`, loaded as the store loads it, and compared logit for logit with
the original. F32 and F16 tensors only, so any difference is the mapping's."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from mlx.utils import tree_flatten
from mlx_lm.gguf import permute_weights  # llama.cpp's LlamaModel.permute
from mlx_lm.utils import load_model

from mlxollama.engine.gguf import read_gguf
from mlxollama.engine.gguf_arch import ARCHITECTURES
from mlxollama.errors import UnsupportedModel
from tests.test_engine_gguf import gpt2_vocab

TOKENS = mx.array([[1, 17, 42, 299, 256, 3, 100, 7, 64, 5]])  # longer than gemma's window
BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 300,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
GGUF_ARCH = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}

DEEPSEEK_V3 = {  # DeepSeek-V3's HF config, shrunk: MLA, one dense layer, grouped experts
    "num_key_value_heads": 4,
    "kv_lora_rank": 32,
    "q_lora_rank": 48,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "moe_intermediate_size": 32,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "n_group": 2,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "topk_method": "noaux_tc",
    "rope_scaling": {
        "type": "yarn",  # mlx-lm reads `type` or `rope_type`
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
}
DEEPSEEK2_KV = {  # what DeepseekV2Model.set_gguf_parameters writes for it
    "head_count_kv": (1, V.UINT32),  # MLA written as MQA
    "leading_dense_block_count": (1, V.UINT32),
    "vocab_size": (300, V.UINT32),
    "attention.q_lora_rank": (48, V.UINT32),
    "attention.kv_lora_rank": (32, V.UINT32),
    "attention.key_length": (40, V.UINT32),  # kv_lora_rank + qk_rope_head_dim
    "attention.value_length": (32, V.UINT32),  # kv_lora_rank
    "attention.key_length_mla": (24, V.UINT32),
    "attention.value_length_mla": (16, V.UINT32),
    "expert_feed_forward_length": (32, V.UINT32),
    "expert_count": (4, V.UINT32),
    "expert_used_count": (2, V.UINT32),
    "expert_shared_count": (1, V.UINT32),
    "expert_weights_scale": (2.5, V.FLOAT32),
    "expert_weights_norm": (True, V.BOOL),
    "expert_gating_func": (2, V.UINT32),  # sigmoid
    "expert_group_count": (2, V.UINT32),
    "expert_group_used_count": (1, V.UINT32),
    "rope.dimension_count": (8, V.UINT32),
    "rope.scaling.type": ("yarn", V.STRING),
    "rope.scaling.factor": (4.0, V.FLOAT32),
    "rope.scaling.original_context_length": (64, V.UINT32),
    "rope.scaling.yarn_beta_fast": (32.0, V.FLOAT32),
    "rope.scaling.yarn_beta_slow": (1.0, V.FLOAT32),
    "rope.scaling.yarn_log_multiplier": (0.1, V.FLOAT32),  # 0.1 * mscale_all_dim
}

# GGUF architecture -> (mlx-lm module, HF config on top of BASE, extra GGUF metadata the
# converter writes for it: key suffix -> (value, type)).
CASES = {
    "llama": ("llama", {}, {}),
    "qwen2": ("qwen2", {"rope_theta": 1e6}, {}),
    "qwen3": ("qwen3", {"rope_theta": 1e6, "head_dim": 32}, {}),
    "gemma3": (
        "gemma3_text",
        {
            "num_hidden_layers": 6,  # one global layer after five sliding ones
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 4,
            "sliding_window_pattern": 6,
            "rope_theta": 1e6,
            "rope_local_base_freq": 10000.0,
            "rms_norm_eps": 1e-6,
        },
        {"attention.sliding_window": (4, V.UINT32)},
    ),
    "gemma2": (
        "gemma2",
        {
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
        {
            "attention.sliding_window": (4096, V.UINT32),
            "attn_logit_softcapping": (50.0, V.FLOAT32),
            "final_logit_softcapping": (30.0, V.FLOAT32),
        },
    ),
    "qwen2moe": (
        "qwen2_moe",
        {**MOE, "shared_expert_intermediate_size": 48, "rope_theta": 1e6},
        {
            "expert_count": (4, V.UINT32),
            "expert_used_count": (2, V.UINT32),
            "expert_feed_forward_length": (32, V.UINT32),
            "expert_shared_feed_forward_length": (48, V.UINT32),
        },
    ),
    "qwen3moe": (
        "qwen3_moe",
        {
            **MOE,
            "head_dim": 32,
            "rope_theta": 1e6,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        },
        {
            "expert_count": (4, V.UINT32),
            "expert_used_count": (2, V.UINT32),
            "expert_feed_forward_length": (32, V.UINT32),
        },
    ),
    "olmo2": ("olmo2", {"rope_theta": 500000.0}, {}),
    "granite": (
        "granite",
        {
            "logits_scaling": 8.0,
            "attention_multiplier": 0.05,
            "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22,
            "attention_bias": False,
            "mlp_bias": False,
        },
        {
            "logit_scale": (8.0, V.FLOAT32),
            "attention.scale": (0.05, V.FLOAT32),
            "embedding_scale": (12.0, V.FLOAT32),
            "residual_scale": (0.22, V.FLOAT32),
        },
    ),
    "command-r": (
        "cohere",
        {"layer_norm_eps": 1e-5, "logit_scale": 0.0625, "use_qk_norm": False},
        {"logit_scale": (0.0625, V.FLOAT32)},
    ),
    "phi3": (
        "phi3",
        {"partial_rotary_factor": 0.5, "original_max_position_embeddings": 256},
        {
            "rope.dimension_count": (8, V.UINT32),
            "rope.scaling.original_context_length": (256, V.UINT32),
        },
    ),
    "mistral3": (
        "ministral3",
        {
            "head_dim": 16,
            "rope_theta": 1e6,
            "rope_parameters": {
                "type": "yarn",  # mlx-lm reads `type` or `rope_type`
                "rope_theta": 1e6,
                "factor": 16.0,
                "original_max_position_embeddings": 4,  # the query temperature rises at 4
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "llama_4_scaling_beta": 0.1,
            },
        },
        {
            "rope.scaling.type": ("yarn", V.STRING),
            "rope.scaling.factor": (16.0, V.FLOAT32),
            "rope.scaling.original_context_length": (4, V.UINT32),
            "rope.scaling.yarn_beta_fast": (32.0, V.FLOAT32),
            "rope.scaling.yarn_beta_slow": (1.0, V.FLOAT32),
            "rope.scaling.yarn_log_multiplier": (1.0, V.FLOAT32),
            "attention.temperature_scale": (0.1, V.FLOAT32),
        },
    ),
    "deepseek2": ("deepseek_v3", DEEPSEEK_V3, DEEPSEEK2_KV),
    "gpt-oss": (
        "gpt_oss",
        {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "intermediate_size": 32,
            "head_dim": 16,
            "sliding_window": 4,
            "num_hidden_layers": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "rope_theta": 150000.0,
            "rope_scaling": {
                "type": "yarn",  # mlx-lm reads `type` or `rope_type`
                "factor": 32.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
            },
        },
        {
            "expert_count": (4, V.UINT32),
            "expert_used_count": (2, V.UINT32),
            "expert_feed_forward_length": (32, V.UINT32),
            "attention.sliding_window": (4, V.UINT32),
            "rope.scaling.type": ("yarn", V.STRING),
            "rope.scaling.factor": (32.0, V.FLOAT32),
            "rope.scaling.original_context_length": (64, V.UINT32),
            "rope.scaling.yarn_beta_fast": (32.0, V.FLOAT32),
            "rope.scaling.yarn_beta_slow": (1.0, V.FLOAT32),
        },
    ),
}
# Other files of a claimed architecture, labelled "<gguf arch>/<variant>".
VARIANTS = {
    # Mistral Small 3.1/3.2 text: the same converter class, without yarn or temperature.
    "mistral3/small": ("llama", {}, {}),
    # deepseek2 files from before llama.cpp split kv_b into k_b / v_b.
    "deepseek2/kv_b": (
        "deepseek_v3",
        DEEPSEEK_V3,
        {
            **DEEPSEEK2_KV,
            "attention.key_length": (24, V.UINT32),
            "attention.value_length": (16, V.UINT32),
        },
    ),
}
VARIANTS["deepseek2/kv_b"][2].pop("attention.key_length_mla")
VARIANTS["deepseek2/kv_b"][2].pop("attention.value_length_mla")
ALL = {**CASES, **VARIANTS}
PERMUTED = {"llama", "granite", "mistral3"}  # llama.cpp's LlamaModel permutes their Q/K
NORM_SHIFT = {"gemma2": 1.0, "gemma3": 1.0}  # Gemma(2|3)Model add 1 to every norm weight
LAYER_NORM = {"command-r"}  # LayerNorm models: `layer_norm_eps`, no RMS epsilon key


def module(case: str):
    return importlib.import_module(f"mlx_lm.models.{ALL[case][0]}")


def gguf_arch(case: str) -> str:
    return case.split("/")[0]


def make_model(case: str, seed: int = 0, **overrides):
    """A tiny model of `case` with every parameter random, as mlx-lm-named numpy."""
    model_type, config, _ = ALL[case]
    arch = gguf_arch(case)
    args = module(case).ModelArgs.from_dict(
        {"model_type": model_type, **BASE, **config, **overrides}
    )
    rng = np.random.default_rng(seed)
    weights = {}
    for name, p in tree_flatten(module(case).Model(args).parameters()):
        x = rng.standard_normal(p.shape)
        if p.ndim >= 2:
            x /= np.sqrt(p.shape[-1])
        elif name.endswith("norm.weight"):
            x = 1 + 0.3 * x - NORM_SHIFT.get(arch, 0.0)  # gemma's norms hold w - 1
        else:
            x *= 0.3
        weights[name] = x.astype(np.float32)
    return args, weights


def hf_name(name: str) -> str:
    """mlx-lm's stacked experts under the name llama.cpp's converter gives them after
    stacking HF's per-expert tensors (`mlp.experts.gate_proj`)."""
    return name.replace(".switch_mlp.", ".experts.")


def hf_tensors(case: str, weights: dict) -> dict:
    """mlx-lm's parameters as the HF checkpoint names them, where they differ: DeepSeek's
    `kv_b_proj` (which mlx-lm splits per head into `embed_q` and `unembed_out`)."""
    if gguf_arch(case) != "deepseek2":
        return dict(weights)
    out = {}
    for name, x in weights.items():
        if name.endswith("self_attn.embed_q.weight"):  # [heads, rank, nope]
            v = weights[name.replace("embed_q", "unembed_out")]  # [heads, v_head_dim, rank]
            kv_b = np.concatenate([x.swapaxes(1, 2), v], axis=1)  # [heads, nope + v, rank]
            out[name.replace("embed_q", "kv_b_proj")] = kv_b.reshape(-1, kv_b.shape[-1])
        elif not name.endswith("self_attn.unembed_out.weight"):
            out[name] = x
    return out


def converted(case: str, name: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What convert_hf_to_gguf.py's `modify_tensors` makes of HF tensor `name` for `case`,
    still under HF-style names for gguf's TensorNameMap."""
    arch = gguf_arch(case)
    c = {**BASE, **ALL[case][1]}
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    if arch in PERMUTED and name.endswith("q_proj.weight"):
        x = permute_weights(x, heads, heads)
    if arch in PERMUTED and name.endswith("k_proj.weight"):
        x = permute_weights(x, heads, kv_heads)
    if name.endswith("norm.weight"):
        x = x + NORM_SHIFT.get(arch, 0.0)
    if name.endswith("e_score_correction_bias"):
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
    if name.endswith("self_attn.sinks"):
        name += ".weight"
    if name.endswith("kv_b_proj.weight") and not case.endswith("/kv_b"):
        nope, v = c["qk_nope_head_dim"], c["v_head_dim"]
        kv_b = x.reshape(heads, nope + v, x.shape[-1])
        return [
            (name.replace("kv_b_proj", "k_b_proj"), kv_b[:, :nope].swapaxes(1, 2)),
            (name.replace("kv_b_proj", "v_b_proj"), kv_b[:, nope:]),
        ]
    return [(name, x)]


def mlx_named(case: str, gguf_tensors: dict) -> dict:
    """The reference model's weights: the inverse of `hf_tensors` on what was written."""
    if gguf_arch(case) != "deepseek2":
        return gguf_tensors
    c = {**BASE, **ALL[case][1]}
    heads, nope = c["num_attention_heads"], c["qk_nope_head_dim"]
    out = {}
    for name, x in gguf_tensors.items():
        if name.endswith("kv_b_proj.weight"):
            kv_b = x.reshape(heads, -1, x.shape[-1])
            out[name.replace("kv_b_proj", "embed_q")] = kv_b[:, :nope].swapaxes(1, 2)
            out[name.replace("kv_b_proj", "unembed_out")] = kv_b[:, nope:]
        else:
            out[name] = x
    return out


def write_gguf(
    path: Path, case: str, weights: dict, qtype: T, expert_qtype: T | None = None
) -> dict:
    """Write `weights` as convert_hf_to_gguf.py writes `case`; return what the file holds
    (decoded, so float16- or MXFP4-rounded) under the mlx-lm names, for the reference model.
    `expert_qtype` quantizes the stacked expert matrices (gpt-oss ships them as MXFP4)."""
    arch = gguf_arch(case)
    _, config, kv = ALL[case]
    hp = {**BASE, **config}  # the HF config the converter reads
    meta = {
        "context_length": (hp["max_position_embeddings"], V.UINT32),
        "embedding_length": (hp["hidden_size"], V.UINT32),
        "block_count": (hp["num_hidden_layers"], V.UINT32),
        "feed_forward_length": (hp["intermediate_size"], V.UINT32),
        "attention.head_count": (hp["num_attention_heads"], V.UINT32),
        "attention.head_count_kv": (hp["num_key_value_heads"], V.UINT32),
        "rope.freq_base": (hp["rope_theta"], V.FLOAT32),
    }
    if arch in LAYER_NORM:
        meta["attention.layer_norm_epsilon"] = (hp["layer_norm_eps"], V.FLOAT32)
    else:
        meta["attention.layer_norm_rms_epsilon"] = (hp["rms_norm_eps"], V.FLOAT32)
    if head_dim := config.get("head_dim"):
        meta["attention.key_length"] = (head_dim, V.UINT32)
        meta["attention.value_length"] = (head_dim, V.UINT32)
    if "head_count_kv" in kv:  # the converter's own head_count_kv replaces HF's
        meta["attention.head_count_kv"] = kv["head_count_kv"]
    meta.update({k: v for k, v in kv.items() if k != "head_count_kv"})

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    for key, (value, vtype) in meta.items():
        w.add_key_value(f"{arch}.{key}", value, vtype)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == T.F32 else gguf.LlamaFileType.MOSTLY_F16)
    tokens, token_types, merges = gpt2_vocab(hp["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_eos_token_id(len(tokens) - 1)

    names = gguf.get_tensor_name_map(GGUF_ARCH[arch], hp["num_hidden_layers"])
    held = {}
    for hf, x in hf_tensors(case, weights).items():
        t = T.F32 if x.ndim == 1 else qtype
        if expert_qtype and x.ndim == 3 and hf.endswith("_proj.weight"):
            t = expert_qtype
        for name, data in converted(case, hf_name(hf), x):
            gguf_name = names.get_name(name, (".weight", ".bias"))
            assert gguf_name, f"gguf has no name for {name} in {arch}"
            if t in (T.F32, T.F16):
                data = data.astype(np.float16 if t == T.F16 else np.float32)
                w.add_tensor(gguf_name, data, raw_dtype=t)
            else:
                w.add_tensor(gguf_name, gguf.quants.quantize(data, t), raw_dtype=t)
        held[hf] = decoded(x, t)  # what the file holds (rewrites are exact), HF-named
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return mlx_named(case, held)


def decoded(x: np.ndarray, t: T) -> np.ndarray:
    """`x` as a GGUF tensor of type `t` reads back (permutations and splits are exact)."""
    if t == T.F32:
        return x
    if t == T.F16:
        return x.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(x, t), t)


def load(model, tmp_path: Path):
    """Save as the store does (config.json + safetensors) and load with mlx-lm."""
    folder = tmp_path / "mlx"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config))
    mx.save_safetensors(str(folder / "model.safetensors"), model.weights)
    return load_model(folder)[0]


def reference_logits(case: str, args, held: dict) -> np.ndarray:
    model = module(case).Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in held.items()], strict=True)
    return np.array(model(TOKENS))


def assert_same_setting(got, want, key: str):
    """HF config values: numbers to float32 precision (GGUF stores float32), the rest equal."""
    if isinstance(want, dict):
        assert set(got) == set(want), key
        for k in want:
            assert_same_setting(got[k], want[k], f"{key}.{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6), key
    else:
        assert got == want, key


def check_round_trip(tmp_path: Path, case: str, qtype: T, expert_qtype: T | None = None):
    args, weights = make_model(case)
    held = write_gguf(tmp_path / "m.gguf", case, weights, qtype, expert_qtype)
    imported = read_gguf(tmp_path / "m.gguf")
    assert imported.config["model_type"] == ALL[case][0]
    for key, value in ALL[case][1].items():  # every setting that sets the family apart
        assert_same_setting(imported.config[key], value, key)
    want = reference_logits(case, args, held)
    loaded = load(imported, tmp_path)
    loaded.set_dtype(mx.float32)  # float16 weights widen exactly; compute as the reference
    got = np.array(loaded(TOKENS))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    return imported


@pytest.mark.parametrize("qtype", [T.F32, T.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("case", ALL)
def test_round_trip(tmp_path, case, qtype):
    check_round_trip(tmp_path, case, qtype)


def test_gpt_oss_mxfp4_experts(tmp_path):
    """gpt-oss as it ships: MXFP4 experts (kept in MLX's own mxfp4 mode), the rest F16."""
    imported = check_round_trip(tmp_path, "gpt-oss", T.F16, expert_qtype=T.MXFP4)
    assert imported.tensor_types["MXFP4"] == 3 * ALL["gpt-oss"][1]["num_hidden_layers"]
    quantization = imported.config["quantization"]  # experts hold most elements: the default
    assert quantization["mode"] == "mxfp4"
    assert quantization["model.layers.0.self_attn.q_proj"] is False


def test_deepseek2_softmax_gating_is_refused(tmp_path):
    """DeepSeek-V2's softmax-gated experts have no mlx-lm class with llama.cpp's k_b/v_b."""
    _, weights = make_model("deepseek2")
    path = tmp_path / "m.gguf"
    ALL["deepseek2"][2]["expert_gating_func"] = (1, V.UINT32)
    try:
        write_gguf(path, "deepseek2", weights, T.F32)
    finally:
        ALL["deepseek2"][2]["expert_gating_func"] = (2, V.UINT32)
    with pytest.raises(UnsupportedModel, match="softmax expert gating"):
        read_gguf(path)


def test_every_architecture_has_a_round_trip():
    """What `ARCHITECTURES` claims (and the unsupported-architecture error lists) is what
    this file proves, and what docs/engine.md lists."""
    assert set(ARCHITECTURES) == set(CASES)
    doc = (Path(__file__).parents[1] / "docs" / "engine.md").read_text()
    for arch in CASES:
        assert f"`{arch}`" in doc, arch


def test_gemma3_window_matters(tmp_path):
    """The sliding window reaches the model: a wrong window gives different logits."""
    args, weights = make_model("gemma3")
    held = write_gguf(tmp_path / "m.gguf", "gemma3", weights, T.F32)
    imported = read_gguf(tmp_path / "m.gguf")
    assert imported.config["sliding_window"] == 4
    wide = module("gemma3").Model(
        module("gemma3").ModelArgs.from_dict({**imported.config, "sliding_window": 512})
    )
    wide.load_weights([(k, mx.array(v)) for k, v in held.items()], strict=True)
    want = reference_logits("gemma3", args, held)
    assert np.abs(np.array(wide(TOKENS)) - want).max() > 1e-3 * np.abs(want).max()


def test_unsupported_architecture_lists_the_supported(tmp_path):
    _, weights = make_model("llama")
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", weights, T.F32)
    data = path.read_bytes().replace(b"llama", b"mamba")  # general.architecture and its keys
    path.write_bytes(data)
    with pytest.raises(UnsupportedModel) as e:
        read_gguf(path)
    assert str(e.value) == (
        f"unsupported architecture 'mamba' in {path}: supported are {', '.join(CASES)}"
    )
