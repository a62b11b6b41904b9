"""`FROM ./dir` for every family `engine.gguf_arch` imports from GGUF: a tiny random model of
that family, built with mlx-lm's own class (the builders of test_engine_gguf_arch.py), saved
as a Hugging Face folder (config.json with HF's keys, model.safetensors under HF's tensor
names, byte-level BPE tokenizer files in SmolLM2's style), created with `models.create`,
loaded back with `models.load`, and compared logit for logit with the original. Float32
weights throughout, so the stored model must compute what the original computes."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxollama.engine.gguf_arch import ARCHITECTURES
from mlxollama.engine.gguf_tokenizer import tokenizer_files
from mlxollama.models.catalog import show
from mlxollama.models.create import create
from mlxollama.models.load import load
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.store import manifests as mt
from mlxollama.store.store import Store
from tests.test_engine_gguf import gpt2_vocab
from tests.test_engine_gguf_arch import BASE, CASES, TOKENS, make_model, reference_logits

CHAT_TEMPLATE = (  # SmolLM2's ChatML, short
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def smollm_style_tokenizer(vocab_size: int) -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json of a byte-level BPE
    with SmolLM2's pre-tokenizer and ChatML specials, `vocab_size` tokens (no real model)."""
    tokens, types, merges = gpt2_vocab(vocab_size)
    return tokenizer_files(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "smollm",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>"),
            "tokenizer.chat_template": CHAT_TEMPLATE,
        }
    )


def hf_weights(weights: dict[str, np.ndarray], num_experts: int | None) -> dict[str, mx.array]:
    """mlx-lm's parameters under the names a Hugging Face checkpoint gives them: mlx-lm
    stacks the experts of a MoE layer (`mlp.switch_mlp.up_proj`), HF keeps one tensor per
    expert (`mlp.experts.3.up_proj`), which the model's `sanitize` stacks on import."""
    out = {}
    for name, x in weights.items():
        if ".mlp.switch_mlp." in name:
            for e in range(num_experts):
                out[name.replace(".switch_mlp.", f".experts.{e}.")] = mx.array(x[e])
        else:
            out[name] = mx.array(x)
    return out


def hf_folder(path: Path, arch: str) -> tuple[object, dict[str, np.ndarray]]:
    """Write a tiny random `arch` as an HF folder; return its args and mlx-lm weights."""
    model_type, config, _ = CASES[arch]
    args, weights = make_model(arch)
    hf_config = {"model_type": model_type, **BASE, **config, "torch_dtype": "float32"}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    mx.save_safetensors(
        str(path / "model.safetensors"),
        hf_weights(weights, _experts(hf_config)),
        metadata={"format": "pt"},
    )
    for name, content in smollm_style_tokenizer(hf_config["vocab_size"]).items():
        (path / name).write_bytes(content)
    return args, weights


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folder_round_trip(tmp_path, arch):
    args, weights = hf_folder(tmp_path / "hf", arch)
    store = Store(tmp_path / "store")
    stored = create(store, "tiny", BuildSpec(source=str(tmp_path / "hf")))

    info = store.config(stored)
    assert info["model_config"]["model_type"] == CASES[arch][0]
    assert info["file_type"] == "F32"
    names = {d.name for d in stored.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)}
    assert names == set(weights)  # one blob per mlx-lm parameter, experts stacked
    files = {d.name for d in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE)}
    assert {"tokenizer.json", "tokenizer_config.json"} <= files

    loaded = load(store, "tiny")
    want = reference_logits(arch, args, weights)
    got = np.array(loaded.model(TOKENS))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert loaded.tokenizer.encode("<|im_start|>hi")[:1] == [
        loaded.tokenizer.convert_tokens_to_ids("<|im_start|>")
    ]

    details = show(store, stored).to_json()["details"]
    assert details["family"] == arch  # Ollama's (llama.cpp's) name, as a GGUF import says
    assert details["families"] == [arch]
    assert details["quantization_level"] == "F32"


def _experts(config: dict) -> int | None:
    """The expert count, under whichever key the family's HF config uses."""
    for key in ("num_experts", "n_routed_experts", "num_local_experts"):
        if config.get(key):
            return config[key]
    return None
