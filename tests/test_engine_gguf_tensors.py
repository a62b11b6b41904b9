"""GGUF tensor types: a tiny random qwen3 model whose every matrix has one GGUF type, written
with gguf.GGUFWriter, imported with `read_gguf` (the product's path) and compared with the
same model built from gguf's own float32 decoding of those tensors (`gguf.quants.dequantize`).

gguf can quantize only some types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ*, MXFP4); for the rest
the blocks are random bytes with their float16 scale fields set to sensible values, which
is what a quantized matrix looks like to a decoder: codes spread over their whole range.
"""

from __future__ import annotations

import re
import struct

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3

from mlxollama.cli.format import show_text
from mlxollama.engine import gguf_tensors
from mlxollama.engine.gguf import STORED, SUPPORTED_TYPES, read_gguf
from mlxollama.engine.loader import instantiate
from mlxollama.errors import UnsupportedModel
from mlxollama.models import catalog
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.store.store import Store

# Float16 scale fields (byte offsets in a block) of the types gguf cannot quantize.
F16_FIELDS = {
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ1_S: [0],
    T.IQ2_XXS: [0],
    T.IQ2_XS: [0],
    T.IQ2_S: [0],
    T.IQ3_XXS: [0],
    T.IQ3_S: [0],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}
QUANTIZED = [T[name] for name in SUPPORTED_TYPES if STORED[name].bits is not None]
TOKENS = mx.array(np.random.default_rng(1).integers(0, 300, (1, 64)))


def make_weights(seed: int = 0) -> tuple[qwen3.ModelArgs, dict[str, np.ndarray]]:
    """A 2-layer qwen3 whose every matrix row is a multiple of 256 (the K-quant block)."""
    args = qwen3.ModelArgs.from_dict(
        {
            "model_type": "qwen3",
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "intermediate_size": 512,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "rms_norm_eps": 1e-5,
            "vocab_size": 300,
            "max_position_embeddings": 512,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
        }
    )
    rng = np.random.default_rng(seed)
    weights = {}
    for name, p in tree_flatten(qwen3.Model(args).parameters()):
        x = rng.standard_normal(p.shape)
        if p.ndim == 2:
            x /= np.sqrt(p.shape[1])
        else:
            x = 1 + 0.3 * x
        weights[name] = x.astype(np.float32)
    return args, weights


def random_blocks(x: np.ndarray, qtype: T, rng) -> np.ndarray:
    """`x`'s GGUF bytes: gguf's quantization where it has one, else random blocks whose
    scales give values of `x`'s spread."""
    try:
        return quantize(x, qtype)
    except (NotImplementedError, gguf.QuantError):
        pass
    block, size = GGML_QUANT_SIZES[qtype]
    rows, n = x.shape[0], x.shape[1] // block
    blocks = rng.integers(0, 256, (rows, n, size), dtype=np.uint8)
    if qtype == T.NVFP4:  # e4m3 block scales between 1/16 and 1/8
        blocks[..., :4] = rng.integers(0x18, 0x20, (rows, n, 4), dtype=np.uint8)
        return blocks.reshape(rows, -1)

    def set_scale(d: np.ndarray) -> None:
        bits = d.astype(np.float16).view(np.uint16)
        if qtype == T.IQ1_M:  # its scale is the top nibbles of the last four uint16
            for i in range(4):
                hi = 48 + 2 * i + 1
                nibble = ((bits >> (4 * i)) & 0xF).astype(np.uint8)
                blocks[..., hi] = (blocks[..., hi] & 0x0F) | (nibble << 4)
            return
        for offset in F16_FIELDS[qtype]:
            blocks[..., offset : offset + 2] = bits[..., None].view(np.uint8).reshape(rows, n, 2)

    set_scale(np.ones((rows, n)))
    spread = dequantize(blocks.reshape(rows, -1), qtype).std()
    set_scale(x.std() / spread * rng.uniform(0.5, 1.5, (rows, n)))
    return blocks.reshape(rows, -1)


def write(
    path, args, weights, qtype: T, types=None, seed: int = 0, file_type=None
) -> dict[str, np.ndarray]:
    """Write the model with every matrix in `qtype` (or `types[name]`) and the vectors in
    F32; return what the file holds as gguf decodes it, under the HF names."""
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_context_length(args.max_position_embeddings)
    w.add_embedding_length(args.hidden_size)
    w.add_block_count(args.num_hidden_layers)
    w.add_feed_forward_length(args.intermediate_size)
    w.add_head_count(args.num_attention_heads)
    w.add_head_count_kv(args.num_key_value_heads)
    w.add_key_length(args.head_dim)
    w.add_value_length(args.head_dim)
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.rms_norm_eps)
    if file_type is not None:
        w.add_file_type(file_type)
    tokens = ["a", "b", "ab"] + [f"t{i}" for i in range(args.vocab_size - 4)] + ["<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(["a b"])
    w.add_eos_token_id(len(tokens) - 1)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, args.num_hidden_layers)
    rng = np.random.default_rng(seed)
    held = {}
    for name, x in weights.items():
        t = T.F32 if x.ndim == 1 else (types or {}).get(name, qtype)
        data = random_blocks(x, t, rng)
        w.add_tensor(names.get_name(name, (".weight", ".bias")), data, raw_dtype=t)
        held[name] = dequantize(data, t).astype(np.float32).reshape(x.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def logits(model) -> np.ndarray:
    model.set_dtype(mx.float32)  # float16 scales widen exactly
    return np.array(model(TOKENS)[0])


def reference(args, held) -> np.ndarray:
    model = qwen3.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in held.items()], strict=True)
    return logits(model)


def accuracy(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Cosine of the logits (all positions together) and next-token agreement."""
    cos = float(got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want))
    return cos, float((got.argmax(-1) == want.argmax(-1)).mean())


# The least each mapping reaches on this model: the measured figures (docs/engine.md) less
# a margin. Exact forms differ from gguf's decoding only by float16 rounding of their scales.
# The re-quantized ones suffer on a random model, whose logits amplify every weight error
# (real weights are far kinder), so their floors mainly catch a regression.
EXACT = (0.99999, 1.0)
FLOOR = {
    "Q2_K": (0.99, 0.95),
    "Q3_K": (0.85, 0.45),
    "Q6_K": (0.995, 0.8),
    "IQ1_S": (0.45, 0.1),
    "IQ1_M": (0.15, 0.05),
    "IQ2_XXS": (0.05, 0.0),
    "IQ2_XS": (0.15, 0.0),
    "IQ2_S": (0.15, 0.0),
    "IQ3_XXS": (0.75, 0.25),
    "IQ3_S": (0.75, 0.25),
    "IQ4_NL": (0.995, 0.7),
    "IQ4_XS": (0.95, 0.55),
    "TQ1_0": (0.0, 0.0),
}


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
def test_type_round_trip(tmp_path, qtype):
    args, weights = make_weights()
    held = write(tmp_path / "m.gguf", args, weights, qtype)
    g = read_gguf(tmp_path / "m.gguf")
    form = STORED[qtype.name]
    assert g.config["quantization"] == form.quantization()
    assert g.tensor_types == {"F32": 9, qtype.name: 16}
    assert g.stored == form.label()  # of the matrices; the norm vectors are float anyway
    cos, top1 = accuracy(logits(instantiate(g.config, g.weights)), reference(args, held))
    print(f"{qtype.name}: {form.label()} cosine {cos:.6f} top-1 {top1:.3f}")
    floor = EXACT if form.exact else FLOOR[qtype.name]
    assert cos >= floor[0] and top1 >= floor[1], (cos, top1)


@pytest.mark.parametrize("qtype", [t for t in QUANTIZED if STORED[t.name].exact], ids=str)
def test_exact_forms_decode_as_gguf(tmp_path, qtype):
    """The exact forms hold gguf's decoding up to float16 rounding of each group's scale
    and bias, tensor by tensor (not just in the logits)."""
    args, weights = make_weights()
    held = write(tmp_path / "m.gguf", args, weights, qtype)
    g = read_gguf(tmp_path / "m.gguf")
    form = STORED[qtype.name]
    for name in ("model.embed_tokens", "model.layers.1.mlp.down_proj"):
        w, scales = g.weights[f"{name}.weight"], g.weights[f"{name}.scales"]
        biases = g.weights.get(f"{name}.biases")
        got = mx.dequantize(
            w, scales, biases, form.group_size, form.bits, mode=form.mode, dtype=mx.float32
        )
        want = held[f"{name}.weight"]
        np.testing.assert_allclose(np.array(got), want, rtol=0, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q8_0], ids=str)
def test_mx_load_types_decode_the_same_in_a_mixed_file(tmp_path, qtype):
    """In a file mx.load cannot read (a K-quant beside them), Q4_0/Q4_1/Q8_0 decode to the
    very bytes mx.load gives for them on its own."""
    args, weights = make_weights()
    write(tmp_path / "plain.gguf", args, weights, qtype)
    write(tmp_path / "mixed.gguf", args, weights, qtype, {"lm_head.weight": T.Q6_K})
    plain = gguf_tensors.load_tensors(tmp_path / "plain.gguf", read_infos(tmp_path / "plain.gguf"))
    mixed = gguf_tensors.load_tensors(tmp_path / "mixed.gguf", read_infos(tmp_path / "mixed.gguf"))
    for key, value in plain.items():
        if not key.startswith("output."):
            assert mixed[key].dtype == value.dtype and mx.array_equal(mixed[key], value), key


def read_infos(path):
    return gguf_tensors.read_header(path)[1]


def test_mixed_file_layout(tmp_path):
    """A Q4_K_M-like file: Q4_K mostly, Q6_K for the output and one down projection, Q8_0
    embedding; the config records each module's form and `stored` counts them."""
    args, weights = make_weights()
    types = {
        "lm_head.weight": T.Q6_K,
        "model.layers.1.mlp.down_proj.weight": T.Q6_K,
        "model.embed_tokens.weight": T.Q8_0,
    }
    held = write(tmp_path / "m.gguf", args, weights, T.Q4_K, types)
    g = read_gguf(tmp_path / "m.gguf")
    six = {"group_size": 32, "bits": 6}
    assert g.config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "lm_head": six,
        "model.layers.1.mlp.down_proj": six,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    assert g.tensor_types == {"Q4_K": 13, "F32": 9, "Q6_K": 2, "Q8_0": 1}
    assert g.stored == "mixed: 4-bit affine g32 (13), 6-bit affine g32 (2), 8-bit affine g32 (1)"
    cos, top1 = accuracy(logits(instantiate(g.config, g.weights)), reference(args, held))
    assert cos > 0.999 and top1 > 0.9


def test_file_type_from_metadata(tmp_path):
    """The source quantization is llama.cpp's `general.file_type` name when the file has one
    (what Ollama shows), else the type holding the most elements."""
    args, weights = make_weights()
    write(tmp_path / "a.gguf", args, weights, T.Q4_K)
    assert read_gguf(tmp_path / "a.gguf").file_type == "Q4_K"
    write(tmp_path / "b.gguf", args, weights, T.Q4_K, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert read_gguf(tmp_path / "b.gguf").file_type == "Q4_K_M"


def test_unknown_tensor_type(tmp_path):
    """A type gguf cannot decode (Q8_1, an intermediate llama.cpp never stores) and a type
    id no GGUF names each say what they are and what is supported."""
    args, weights = make_weights()
    path = tmp_path / "m.gguf"
    write(path, args, weights, T.Q8_0)
    data = bytearray(path.read_bytes())
    infos = read_infos(path)
    # The type id sits just before the offset at the end of each tensor's header entry.
    name = b"blk.1.ffn_down.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 8 * 2
    assert struct.unpack_from("<I", data, at)[0] == T.Q8_0
    for kind, label in ((T.Q8_1.value, "Q8_1"), (99, "unknown type 99")):
        struct.pack_into("<I", data, at, kind)
        path.write_bytes(data)
        with pytest.raises(UnsupportedModel) as e:
            read_gguf(path)
        assert str(e.value) == (
            f"tensor 'blk.1.ffn_down.weight' in {path} has type {label}, which cannot be "
            f"decoded; supported types are {', '.join(SUPPORTED_TYPES)}"
        )
    assert infos["blk.1.ffn_down.weight"].type == "Q8_0"


def test_corrupt_scales(tmp_path):
    """A K-quant block whose scale is NaN is a corrupt file, not a model that answers NaN."""
    args, weights = make_weights()
    path = tmp_path / "m.gguf"
    write(path, args, weights, T.Q4_K)
    info = read_infos(path)["blk.0.attn_v.weight"]
    data = bytearray(path.read_bytes())
    data[info.offset : info.offset + 2] = np.array([np.nan], np.float16).tobytes()
    path.write_bytes(data)
    with pytest.raises(UnsupportedModel, match=r"is corrupt: tensor 'blk\.0\.attn_v\.weight'"):
        read_gguf(path)


@pytest.mark.parametrize("keep", [0.6, 0.3, 0.001], ids=["data", "header-tensors", "magic"])
def test_truncated_k_quant_file(tmp_path, keep):
    args, weights = make_weights()
    write(tmp_path / "m.gguf", args, weights, T.Q4_K)
    data = (tmp_path / "m.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    cut = int(len(data) * keep) if keep > 0.01 else 3
    path.write_bytes(data[:cut])
    with pytest.raises(UnsupportedModel, match=r"truncated|not a GGUF file"):
        read_gguf(path)


def test_header_count_past_the_end(tmp_path):
    """A corrupt array length is refused, not looped over."""
    args, weights = make_weights()
    path = tmp_path / "m.gguf"
    write(path, args, weights, T.Q8_0)
    data = bytearray(path.read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4 + 4
    struct.pack_into("<Q", data, at, 2**60)
    path.write_bytes(data)
    with pytest.raises(UnsupportedModel, match="truncated or corrupt: an array of"):
        read_gguf(path)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_matches_mlx(bits):
    w = mx.array(np.random.default_rng(bits).standard_normal((4, 64)).astype(np.float32))
    q, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    deq = np.array(mx.dequantize(q, scales, biases, group_size=32, bits=bits))
    codes = np.rint((deq - np.repeat(np.array(biases), 32, 1)) / np.repeat(np.array(scales), 32, 1))
    assert np.array_equal(gguf_tensors.pack(codes.astype(np.uint8), bits), np.array(q))


# -- through models.create: what show reports, and what a failed create leaves -------------


def blob_files(store: Store) -> set[str]:
    return {p.name for p in store.blobs.dir.iterdir()} if store.blobs.dir.exists() else set()


def test_create_and_show_report_both_quantizations(tmp_path):
    args, weights = make_weights()
    types = {"lm_head.weight": T.Q6_K, "model.embed_tokens.weight": T.Q8_0}
    path = tmp_path / "m.gguf"
    write(path, args, weights, T.Q4_K, types, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    store = Store(tmp_path / "s")
    create(store, "kq", BuildSpec(source=str(path)))
    body = catalog.show(store, store.get("kq")).to_json()
    assert body["details"]["quantization_level"] == "Q4_K_M"
    info = body["model_info"]
    assert info["mlxollama.quantization.source"] == "Q4_K_M"
    assert info["mlxollama.quantization.source_tensors"] == {
        "Q4_K": 14,
        "F32": 9,
        "Q6_K": 1,
        "Q8_0": 1,
    }
    stored = "mixed: 4-bit affine g32 (14), 6-bit affine g32 (1), 8-bit affine g32 (1)"
    assert info["mlxollama.quantization.stored"] == stored
    assert f"stored as           {stored}" in show_text(body)

    # -q re-encodes what is stored; the source stays what it was.
    create(store, "kq8", BuildSpec(source=str(path), quantize="int8"))
    info = catalog.show(store, store.get("kq8")).to_json()["model_info"]
    assert info["mlxollama.quantization.source"] == "Q4_K_M"
    assert info["mlxollama.quantization.stored"] == "8-bit affine g64"


def _unknown_type(path):
    args, weights = make_weights()
    write(path, args, weights, T.Q4_K)
    data = bytearray(path.read_bytes())
    name = b"blk.1.ffn_down.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 8 * 2
    struct.pack_into("<I", data, at, 99)
    path.write_bytes(data)


def _nan_scale(path):
    args, weights = make_weights()
    write(path, args, weights, T.Q4_K)
    info = read_infos(path)["blk.1.ffn_down.weight"]
    data = bytearray(path.read_bytes())
    data[info.offset : info.offset + 2] = np.array([np.inf], np.float16).tobytes()
    path.write_bytes(data)


def _truncated(path):
    args, weights = make_weights()
    write(path, args, weights, T.Q6_K)
    path.write_bytes(path.read_bytes()[:-1000])


@pytest.mark.parametrize(
    "make, words",
    [
        (_unknown_type, "has type unknown type 99, which cannot be decoded; supported types"),
        (_nan_scale, "is corrupt: tensor 'blk.1.ffn_down.weight' decodes to NaN or infinity"),
        (_truncated, "is truncated: tensor 'output.weight' ends at byte"),
    ],
    ids=["unknown-type", "corrupt", "truncated"],
)
def test_failed_create_leaves_no_tag_and_no_blob(tmp_path, make, words):
    store = Store(tmp_path / "s")
    make(tmp_path / "m.gguf")
    with pytest.raises(UnsupportedModel, match=re.escape(words)):
        create(store, "broken", BuildSpec(source=str(tmp_path / "m.gguf")))
    assert store.list() == []
    assert blob_files(store) == set()
