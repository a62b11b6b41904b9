"""`create` on real parts: SmolLM2's GGUF, tiny mlx-lm folders, and the store's promises
(no new blob for an unchanged recipe, shared blobs between variants, nothing left behind by
a failed create, corruption caught at verify and at load)."""

from __future__ import annotations

import pytest

from mlxollama.errors import DigestMismatch, InvalidName, ModelNotFound, UnsupportedModel
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.recipes.modelfile import parse_modelfile
from mlxollama.recipes.modelspec import parse_modelspec
from mlxollama.store import manifests as mt
from mlxollama.store.store import Store
from tests.conftest import tiny_llama_folder


def blob_files(store: Store) -> set[str]:
    return {p.name for p in store.blobs.dir.iterdir()} if store.blobs.dir.exists() else set()


@pytest.mark.model
def test_same_modelfile_twice_writes_no_new_blob(store_root, smollm2_gguf, tmp_path):
    store = Store(store_root)
    before_blobs, before = blob_files(store), store.get("smollm2")
    spec = parse_modelfile(f"FROM {smollm2_gguf}\nPARAMETER stop <|im_end|>\n", tmp_path)
    create(store, "smollm2", spec)
    assert blob_files(store) == before_blobs
    assert store.get("smollm2").digest == before.digest


@pytest.mark.model
def test_quantized_variant_shares_unchanged_blobs_and_survives_rm(store_root):
    from mlxollama.models.load import load
    from mlxollama.sdk import Embedded

    store = Store(store_root)
    create(store, "smollm2:q8", BuildSpec(source="smollm2", quantize="int8"))
    base, q8 = store.get("smollm2"), store.get("smollm2:q8")
    base_layers = {d.name or d.media_type: d.digest for d in base.manifest.layers}
    q8_layers = {d.name or d.media_type: d.digest for d in q8.manifest.layers}
    assert base_layers.keys() == q8_layers.keys()
    shared = {k for k in base_layers if base_layers[k] == q8_layers[k]}
    norms = {k for k in base_layers if k.endswith("norm.weight")}
    files = {d.name for d in base.manifest.layers_of(mt.FILE_MEDIA_TYPE)}
    # every tensor that int8 leaves alone (the float norms) and every file is shared...
    assert norms and norms | files | {mt.PARAMS_MEDIA_TYPE} <= shared
    # ...and every quantized tensor was re-encoded
    assert all(k in norms or k in files or k == mt.PARAMS_MEDIA_TYPE for k in shared)
    assert store.config(q8)["file_type"] == "int8"
    assert store.config(q8)["model_config"]["quantization"]["bits"] == 8

    store.remove("smollm2")
    assert store.verify("smollm2:q8") == []
    with pytest.raises(ModelNotFound):
        store.get("smollm2")
    lm = load(store, "smollm2:q8")
    assert lm.model_config["quantization"]["bits"] == 8
    answer = Embedded(store_root).chat(
        "smollm2:q8",
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        options={"temperature": 0, "num_predict": 30},
    )
    assert "Paris" in answer["message"]["content"]


@pytest.mark.model
def test_derived_model_shares_all_weights_and_merges_layers(store_root, tmp_path):
    store = Store(store_root)
    spec = parse_modelfile(
        'FROM smollm2\nSYSTEM """You answer like a pirate."""\nPARAMETER temperature 0.2\n'
        "LICENSE MIT\nMESSAGE user Hi\nMESSAGE assistant Ahoy!\n",
        tmp_path,
    )
    before = blob_files(store)
    create(store, "pirate", spec)
    base, pirate = store.get("smollm2"), store.get("pirate")
    assert base.manifest.layers_of(mt.TENSOR_MEDIA_TYPE) == pirate.manifest.layers_of(
        mt.TENSOR_MEDIA_TYPE
    )
    new = blob_files(store) - before
    assert len(new) == 5  # system, params, messages, license, config: no weights
    from mlxollama.models.catalog import show

    body = show(store, pirate).to_json()
    assert body["system"] == "You answer like a pirate."
    assert "temperature" in body["parameters"] and "stop" in body["parameters"]  # merged
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Ahoy!"},
    ]
    assert body["details"]["parent_model"] == "smollm2:latest"
    assert body["license"] == "MIT"
    prov = store.config(pirate)["provenance"]
    assert prov["sources"][0]["name"] == "smollm2:latest"
    assert prov["parent"]["sources"][0]["type"] == "gguf"


@pytest.mark.model
def test_provenance_records_source_digest_and_tools(smollm2_store, smollm2_gguf):
    import hashlib

    store = Store(smollm2_store)
    prov = store.config(store.get("smollm2"))["provenance"]
    src = prov["sources"][0]
    assert src["type"] == "gguf" and src["size"] == smollm2_gguf.stat().st_size
    assert src["digest"] == "sha256:" + hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert set(prov["tools"]) == {"mlxollama", "mlx", "mlx_lm"}
    assert prov["created_at"] and "FROM" in prov["recipe"]


@pytest.mark.model
def test_corrupted_blob_is_reported_by_verify_and_refused_at_load(store_root):
    from mlxollama.models.load import load

    store = Store(store_root)
    model = store.get("smollm2")
    layer = model.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)[3]
    path = store.blobs.path(layer.digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = store.verify("smollm2")
    assert [p.digest for p in problems] == [layer.digest]
    with pytest.raises(DigestMismatch) as e:
        load(store, "smollm2")
    assert "smollm2:latest" in str(e.value) and layer.digest in str(e.value)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _bad_gguf(path, arch="llama", truncate=False):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate:
        path.write_bytes(path.read_bytes()[:-40])
    return path


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda p: _write(p, b"not a gguf at all" * 10), UnsupportedModel, "GGUF"),
        (lambda p: _bad_gguf(p, arch="falcon"), UnsupportedModel, "falcon"),
        (lambda p: _bad_gguf(p, truncate=True), UnsupportedModel, "model.gguf"),
        (lambda p: p, FileNotFoundError, "no such file"),
    ],
    ids=["garbage", "unsupported-arch", "truncated", "missing"],
)
def test_failed_create_leaves_nothing_behind(tmp_path, make, error, words):
    store = Store(tmp_path / "s")
    source = make(tmp_path / "model.gguf")
    with pytest.raises(error) as e:
        create(store, "broken", BuildSpec(source=str(source)))
    assert words.lower() in str(e.value).lower()
    assert store.list() == []
    assert blob_files(store) == set()


@pytest.mark.model
def test_disk_error_halfway_removes_the_blobs_it_wrote(store_root, smollm2_gguf, monkeypatch):
    import errno

    from mlxollama.store.blobs import BlobStore

    store = Store(store_root)
    store.remove("smollm2")
    assert blob_files(store) == set()
    real, calls = BlobStore.put_bytes, []

    def failing(self, data, sync=True):
        calls.append(1)
        if len(calls) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, sync)

    monkeypatch.setattr(BlobStore, "put_bytes", failing)
    with pytest.raises(OSError, match="No space"):
        create(store, "smollm2", BuildSpec(source=str(smollm2_gguf)))
    assert len(calls) > 100
    assert store.list() == []
    assert blob_files(store) == set()


def test_invalid_name_is_rejected_before_anything_is_read(tmp_path):
    store = Store(tmp_path / "s")
    for name in ["../escape", "a/b/c/d", "m:", "x/../../y"]:
        with pytest.raises(InvalidName):
            create(store, name, BuildSpec(source=str(tmp_path / "does-not-matter.gguf")))
    assert not (tmp_path / "s").exists()


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="int4, int8"):
        create(Store(tmp_path / "s"), "m", BuildSpec(source="x", quantize="q3_k_xs"))


def test_unknown_source_model(tmp_path):
    with pytest.raises(ModelNotFound):
        create(Store(tmp_path / "s"), "m", BuildSpec(source="nosuchmodel"))


@pytest.mark.model
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "mlx-4bit"])
def test_create_from_safetensors_folder(tmp_path, smollm2_store, quantized):
    from mlxollama.sdk import Embedded

    folder = tiny_llama_folder(tmp_path / "tiny", Store(smollm2_store), quantize=quantized)
    client = Embedded(tmp_path / "s")
    client.create("tiny", str(folder))
    stored = client.store.get("tiny")
    info = client.store.config(stored)
    assert info["file_type"] == ("int4" if quantized else "F32")
    names = {d.name for d in stored.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)}
    assert ("model.layers.0.self_attn.q_proj.scales" in names) == quantized
    out = client.generate("tiny", "hello", options={"num_predict": 4, "temperature": 0})
    assert out["done"] and out["eval_count"] == 4


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsupportedModel, match=r"config\.json"):
        create(Store(tmp_path / "s"), "m", BuildSpec(source=str(tmp_path / "folder")))


@pytest.mark.model
def test_create_from_modelspec_yaml(store_root, smollm2_gguf, tmp_path):
    store = Store(store_root)
    spec = parse_modelspec(
        f"""
name: smol-spec
version: "1.0"
base:
  path: {smollm2_gguf}
quantization: int8
prompt_template: auto
defaults:
  temperature: 0.1
  max_tokens: 64
  stop: ["<|im_end|>"]
system_prompt: Be brief.
license: Apache-2.0
""",
        tmp_path,
    )
    create(store, spec.name, spec)
    stored = store.get("smol-spec:1.0")
    info = store.config(stored)
    assert info["file_type"] == "int8"
    from mlxollama.models.catalog import show

    body = show(store, stored).to_json()
    assert body["system"] == "Be brief." and "num_predict" in body["parameters"]
    assert "spec" in info["provenance"]["recipe"]


@pytest.mark.model
@pytest.mark.parametrize(
    ("quantize", "file_type", "dtype"),
    [
        ("fp16", "F16", "float16"),
        ("bf16", "BF16", "bfloat16"),
        ("int4", "int4", "uint32"),
        ("q8_0", "int8", "uint32"),
    ],
)
def test_quantize_at_build(tmp_path, smollm2_store, quantize, file_type, dtype):
    import mlx.core as mx

    from mlxollama.models.load import load

    folder = tiny_llama_folder(tmp_path / "tiny", Store(smollm2_store))
    store = Store(tmp_path / "s")
    create(store, "tiny", BuildSpec(source=str(folder), quantize=quantize))
    stored = store.get("tiny")
    assert store.config(stored)["file_type"] == file_type
    q = next(
        d for d in stored.manifest.layers if d.name == "model.layers.0.self_attn.q_proj.weight"
    )
    arr = mx.load(str(store.blobs.path(q.digest)), format="safetensors")[q.name]
    assert str(arr.dtype).endswith(dtype)
    lm = load(store, "tiny", weights="stored")
    assert lm.model.layers[0].self_attn.q_proj.weight.dtype == arr.dtype
