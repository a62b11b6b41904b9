"""Ollama's own MLX models (issue 11, item 4): a manifest of safetensors tensor layers, built
here as Ollama's x/create writes them (one blob per weight, `<w>.scale`/`<w>.bias`
companions, quant_type metadata; int4, int8, nvfp4 and mxfp8 mixed) from a tiny random llama,
pushed to the real local registry, pulls into a model whose logits are the original's."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import orjson
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from mlxollama import registry as reg
from mlxollama.errors import UnsupportedModel
from mlxollama.models.load import load
from mlxollama.registry.ollama_mlx import QUANT_TYPES
from mlxollama.registry.ollama_store import OllamaStore, import_model
from mlxollama.sdk import Embedded
from mlxollama.store import manifests as mt
from mlxollama.store.store import Store
from tests.conftest import TINY_LLAMA
from tests.registry_server import registry  # noqa: F401  (the session's registry fixture)
from tests.test_registry_ollama import TEMPLATE, push_ollama_model
from tests.test_registry_ollama_store import write_ollama_model

OLLAMA = "application/vnd.ollama.image."
CONFIG = TINY_LLAMA


def kind_of(path: str) -> str | None:
    """How Ollama would have quantized each module here: a mix of every kind it writes."""
    if ".self_attn." in path:
        return "int4"
    if ".layers.0.mlp." in path:
        return "nvfp4"
    if ".layers.1.mlp." in path:
        return "int8" if path.endswith("up_proj") else "mxfp8"
    return None


def reference_model() -> nn.Module:
    mx.random.seed(3)
    model = llama.Model(llama.ModelArgs.from_dict(CONFIG))

    def predicate(path: str, module: nn.Module):
        kind = kind_of(path) if hasattr(module, "to_quantized") else None
        if kind is None:
            return False
        group, bits, mode = QUANT_TYPES[kind]
        return {"group_size": group, "bits": bits, "mode": mode}

    nn.quantize(model, class_predicate=predicate)
    mx.eval(model.parameters())
    return model


def ollama_tensor_layers(model: nn.Module, tmp: Path) -> list[tuple[bytes, str, str]]:
    """The model's tensors as x/create's blobs: one per weight, with its companions and
    quant_type/group_size metadata; layer 1's MLP packed into one blob with per-tensor
    metadata (a blob that mixes kinds)."""
    params = dict(tree_flatten(model.parameters()))
    blobs: dict[str, tuple[dict, dict]] = {}
    for key in sorted(params):
        if key.endswith((".scales", ".biases")):
            continue
        base = key.removesuffix(".weight")
        kind = kind_of(base) if f"{base}.scales" in params else None
        packed = ".layers.1.mlp." in key
        arrays, meta = blobs.setdefault("layers.1.mlp" if packed else key, ({}, {}))
        arrays[key] = params[key]
        if kind:
            arrays[key + ".scale"] = params[f"{base}.scales"]
            if f"{base}.biases" in params:
                arrays[key + ".bias"] = params[f"{base}.biases"]
            prefix = f"{key}." if packed else ""
            meta[prefix + "quant_type"] = kind
            meta[prefix + "group_size"] = str(QUANT_TYPES[kind][0])
    layers = []
    for i, (name, (arrays, meta)) in enumerate(sorted(blobs.items())):
        path = tmp / f"{i}.safetensors"
        mx.save_safetensors(str(path), arrays, metadata=meta)
        layers.append((path.read_bytes(), OLLAMA + "tensor", name))
    return layers


def json_layers(tokenizer_store: Store) -> list[tuple[bytes, str, str]]:
    stored = tokenizer_store.get("smollm2")
    files = [
        (tokenizer_store.blobs.read_bytes(f.digest), OLLAMA + "json", f.name)
        for f in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE)
        if f.name.endswith(".json")
    ]
    return [(json.dumps(CONFIG).encode(), OLLAMA + "json", "config.json"), *files]


@pytest.mark.model
def test_an_ollama_mlx_manifest_pulls_into_the_same_model(registry, smollm2_store, tmp_path):  # noqa: F811
    model = reference_model()
    name = registry.name("library/tiny-mlx:nvfp4")
    layers = ollama_tensor_layers(model, tmp_path)
    push_ollama_model(
        name,
        [*layers, *json_layers(Store(smollm2_store)), (TEMPLATE.encode(), OLLAMA + "template")],
        config={"model_format": "safetensors", "file_type": "nvfp4"},
    )
    store = Store(tmp_path / "store")
    events: list[dict] = []
    stored = reg.pull(store, name, progress=events.append, insecure=True)
    assert "converting model" in [e["status"] for e in events]
    assert stored.manifest.config.media_type == mt.CONFIG_MEDIA_TYPE
    # Ollama's blobs are dropped once converted; none of the store's blobs is one of them
    assert not {blob(data) for data, *_ in layers} & store.blobs.digests()
    assert not list(store.root.glob(".ollama-mlx-*"))  # the conversion folder is gone

    config = store.config(stored)
    quantization = config["model_config"]["quantization"]
    assert quantization["mode"] == "affine" and quantization["bits"] == 4
    assert quantization["model.layers.0.mlp.gate_proj"] == {"group_size": 16, "bits": 4, "mode": "nvfp4"}  # fmt: skip
    assert quantization["model.layers.1.mlp.up_proj"]["bits"] == 8
    assert quantization["model.layers.1.mlp.down_proj"]["mode"] == "mxfp8"
    assert config["provenance"]["sources"][0]["tensors"] == len(
        dict(tree_flatten(model.parameters()))
    )

    pulled = load(store, name, weights="stored").model
    tokens = mx.array([[1, 17, 400, 9000, 23, 5]])
    assert mx.array_equal(pulled(tokens), model(tokens)).item()

    local = Embedded(store.root)
    assert local.show(name)["template"] == TEMPLATE
    answer = local.generate(name, "Hello", options={"num_predict": 4, "temperature": 0})
    assert answer["eval_count"] == 4


def blob(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tensor_blob(arrays: dict, meta: dict) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.safetensors"
        mx.save_safetensors(str(path), arrays, metadata=meta)
        return path.read_bytes()


@pytest.mark.parametrize(
    ("layers", "error"),
    [
        ([], "no config.json layer"),
        ([(b"not safetensors", OLLAMA + "tensor")], "is not a safetensors file"),
        (
            [(_tensor_blob({"w.weight": mx.zeros((4, 2), mx.uint32), "w.weight.scale":
              mx.zeros((4, 1))}, {"quant_type": "q3"}), OLLAMA + "tensor")],
            r"quantized as 'q3'; supported are int4, int8, nvfp4, mxfp4, mxfp8",
        ),
        (
            [(_tensor_blob({"w.weight": mx.zeros((4, 2)), "w.weight.global_scale":
              mx.zeros((1,))}, {}), OLLAMA + "tensor")],
            "global scale",
        ),
    ],
)  # fmt: skip
def test_bad_mlx_manifests_are_refused_and_leave_nothing(tmp_path, layers, error):
    files = [(orjson.dumps(CONFIG), OLLAMA + "json")] if layers else []
    tensors = layers or [(_tensor_blob({"w": mx.zeros((2,))}, {}), OLLAMA + "tensor")]
    write_ollama_model(tmp_path / "ollama", "bad:latest", [*tensors, *files])
    ollama, store = OllamaStore(tmp_path / "ollama"), Store(tmp_path / "store")
    if files:  # the config layer's name, which write_ollama_model does not set
        path = ollama.find("bad").path
        doc = orjson.loads(path.read_bytes())
        doc["layers"][-1]["name"] = "config.json"
        path.write_bytes(orjson.dumps(doc))
    with pytest.raises(UnsupportedModel, match=error):
        import_model(store, ollama, ollama.find("bad"))
    assert store.find("bad") is None and store.blobs.digests() == set()
    assert not list(store.root.glob(".ollama-mlx-*"))
