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
}
PERMUTED = {"llama", "granite"}  # llama.cpp's LlamaModel.modify_tensors permutes their Q/K
NORM_SHIFT = {"gemma2": 1.0, "gemma3": 1.0}  # Gemma(2|3)Model add 1 to every norm weight
LAYER_NORM = {"command-r"}  # LayerNorm models: `layer_norm_eps`, no RMS epsilon key


def module(arch: str):
    return importlib.import_module(f"mlx_lm.models.{CASES[arch][0]}")


def make_model(arch: str, seed: int = 0, **overrides):
    """A tiny model of `arch` with every parameter random, as mlx-lm-named numpy."""
    model_type, config, _ = CASES[arch]
    args = module(arch).ModelArgs.from_dict(
        {"model_type": model_type, **BASE, **config, **overrides}
    )
    rng = np.random.default_rng(seed)
    weights = {}
    for name, p in tree_flatten(module(arch).Model(args).parameters()):
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


def write_gguf(path: Path, arch: str, weights: dict, qtype: T) -> dict:
    """Write `weights` as convert_hf_to_gguf.py writes `arch`; return what the file holds
    (float16-rounded for F16) under the mlx-lm names, for the reference model."""
    _, config, kv = CASES[arch]
    hp = {**BASE, **config}  # the HF config the converter reads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_block_count(hp["num_hidden_layers"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(hp["rope_theta"])
    if arch in LAYER_NORM:
        w.add_layer_norm_eps(hp["layer_norm_eps"])
    else:
        w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if head_dim := config.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == T.F32 else gguf.LlamaFileType.MOSTLY_F16)
    tokens, token_types, merges = gpt2_vocab(hp["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_eos_token_id(len(tokens) - 1)
    for key, (value, vtype) in kv.items():
        w.add_key_value(f"{arch}.{key}", value, vtype)

    names = gguf.get_tensor_name_map(GGUF_ARCH[arch], hp["num_hidden_layers"])
    heads, kv_heads = hp["num_attention_heads"], hp["num_key_value_heads"]
    held = {}
    for name, x in weights.items():
        data = x
        if arch in PERMUTED and name.endswith("q_proj.weight"):
            data = permute_weights(x, heads, heads)
        if arch in PERMUTED and name.endswith("k_proj.weight"):
            data = permute_weights(x, heads, kv_heads)
        if name.endswith("norm.weight"):
            data = data + NORM_SHIFT.get(arch, 0.0)
        t = T.F32 if x.ndim == 1 else qtype
        data = data.astype(np.float16 if t == T.F16 else np.float32)
        gguf_name = names.get_name(hf_name(name), (".weight", ".bias"))
        assert gguf_name, f"gguf has no name for {name} in {arch}"
        w.add_tensor(gguf_name, data, raw_dtype=t)
        held[name] = x.astype(np.float16).astype(np.float32) if t == T.F16 else x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def load(model, tmp_path: Path):
    """Save as the store does (config.json + safetensors) and load with mlx-lm."""
    folder = tmp_path / "mlx"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config))
    mx.save_safetensors(str(folder / "model.safetensors"), model.weights)
    return load_model(folder)[0]


def reference_logits(arch: str, args, held: dict) -> np.ndarray:
    model = module(arch).Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in held.items()], strict=True)
    return np.array(model(TOKENS))


@pytest.mark.parametrize("qtype", [T.F32, T.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("arch", CASES)
def test_round_trip(tmp_path, arch, qtype):
    args, weights = make_model(arch)
    held = write_gguf(tmp_path / "m.gguf", arch, weights, qtype)
    imported = read_gguf(tmp_path / "m.gguf")
    assert imported.config["model_type"] == CASES[arch][0]
    for key, value in CASES[arch][1].items():  # every setting that sets the family apart
        assert imported.config[key] == pytest.approx(value), key
    want = reference_logits(arch, args, held)
    loaded = load(imported, tmp_path)
    loaded.set_dtype(mx.float32)  # float16 weights widen exactly; compute as the reference
    got = np.array(loaded(TOKENS))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


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
