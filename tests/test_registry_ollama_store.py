"""Bringing over an Ollama store (issue 11, item 5): a store in Ollama's layout, written here
from SmolLM2's GGUF with template, system, params and license layers, imports through
`mlxctl import-ollama` into a model that generates and keeps its layers; bad stores (a
missing blob, an unknown media type, a corrupt manifest, a damaged blob) fail clearly and
leave no tag and no blob."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from mlxollama.cli.main import cli
from mlxollama.errors import DigestMismatch, ModelNotFound, UnsupportedModel
from mlxollama.registry.ollama_store import OllamaStore, import_model
from mlxollama.sdk import Embedded
from mlxollama.store.store import Store
from tests.test_registry_ollama import LICENSE, PARAMS, SYSTEM, TEMPLATE

OLLAMA = "application/vnd.ollama.image."


def write_ollama_model(root: Path, name: str, layers: list[tuple[bytes, str]]) -> Path:
    """Write blobs and a manifest as `ollama pull` leaves them; returns the manifest path.
    `name` is `model:tag` in the library namespace of registry.ollama.ai."""
    model, tag = name.split(":")
    config = orjson.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_1"})
    descriptors = []
    for data, media_type in [(config, "application/vnd.docker.container.image.v1+json"), *layers]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / digest.replace(":", "-")).write_bytes(data)
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    path = root / "manifests" / "registry.ollama.ai" / "library" / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    path.write_bytes(orjson.dumps(manifest))
    return path


def mlxctl(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.model
def test_an_ollama_store_imports_and_the_model_generates(smollm2_gguf, tmp_path, monkeypatch):
    ollama = tmp_path / "ollama"
    layers = [
        (smollm2_gguf.read_bytes(), OLLAMA + "model"),
        (TEMPLATE.encode(), OLLAMA + "template"),
        (SYSTEM.encode(), OLLAMA + "system"),
        (orjson.dumps(PARAMS), OLLAMA + "params"),
        (LICENSE.encode(), OLLAMA + "license"),
    ]
    manifest = write_ollama_model(ollama, "smollm2:135m", layers)
    write_ollama_model(
        ollama, "llava:7b", [(b"GGUF", OLLAMA + "model"), (b"p", OLLAMA + "projector")]
    )
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))

    listed = mlxctl("import-ollama")
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "STATUS"]
    manifest_digest = "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    smol = next(line for line in lines if line.startswith("smollm2:135m"))
    assert manifest_digest[7:19] in smol and smol.endswith("not imported")

    out = mlxctl("import-ollama", "smollm2:135m")
    assert out.exit_code == 0, out.output
    assert "imported 'smollm2:135m'" in out.output
    assert "converting model" in out.output  # the progress lines (not a terminal: plain)

    store = Store(tmp_path / "store")
    local = Embedded(store.root)
    shown = local.show("smollm2:135m")
    assert shown["template"] == TEMPLATE
    assert shown["system"] == SYSTEM
    assert shown["license"] == LICENSE
    assert "temperature                    0" in shown["parameters"]
    assert "mirostat" not in shown["parameters"]
    origin = shown["provenance"]["sources"][0]
    assert origin["type"] == "ollama-store" and origin["manifest"] == manifest_digest
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = local.chat("smollm2:135m", question, options={"num_predict": 32})
    assert "Paris" in answer["message"]["content"]
    assert store.verify("smollm2:135m") == []
    # Ollama's store is read, never written: the GGUF stays there, and is not in ours
    gguf_digest = "sha256:" + hashlib.sha256(layers[0][0]).hexdigest()
    assert origin["gguf"] == gguf_digest
    assert (ollama / "blobs" / gguf_digest.replace(":", "-")).is_file()
    assert not store.blobs.exists(gguf_digest)

    # --all: the imported one is skipped, the vision model refused, the run exits 1
    blobs_before = store.blobs.digests()
    again = CliRunner().invoke(cli, ["import-ollama", "--all"])
    assert again.exit_code == 1
    assert "already imported 'smollm2:135m'" in again.output
    assert "llava:7b has vision projectors" in again.output
    assert "1 of 2 model(s) could not be imported" in again.output
    assert store.blobs.digests() == blobs_before and store.find("llava:7b") is None
    rows = mlxctl("import-ollama").output.splitlines()[1:]
    assert rows[0].startswith("llava:7b") and rows[0].endswith(" not imported")
    assert rows[1].startswith("smollm2:135m") and rows[1].endswith("MB    imported")


def _bad_store(tmp_path: Path, layers: list[tuple[bytes, str]]) -> tuple[Store, OllamaStore]:
    write_ollama_model(tmp_path / "ollama", "bad:latest", layers)
    return Store(tmp_path / "store"), OllamaStore(tmp_path / "ollama")


def _nothing_left(store: Store) -> None:
    assert store.find("bad") is None
    assert store.blobs.digests() == set()


def test_a_missing_blob_is_named_and_leaves_nothing(tmp_path):
    store, ollama = _bad_store(tmp_path, [(b"GGUF-not-really", OLLAMA + "model")])
    digest = "sha256:" + hashlib.sha256(b"GGUF-not-really").hexdigest()
    ollama.blob_path(digest).unlink()
    with pytest.raises(UnsupportedModel, match=f"blob {digest} is missing.*ollama pull bad"):
        import_model(store, ollama, ollama.find("bad"))
    _nothing_left(store)


def test_an_unknown_media_type_is_named_with_the_supported_ones(tmp_path):
    layers = [(b"GGUF-not-really", OLLAMA + "model"), (b"?", OLLAMA + "hologram")]
    store, ollama = _bad_store(tmp_path, layers)
    with pytest.raises(UnsupportedModel, match=r"unknown media type '.*hologram'.*supported are"):
        import_model(store, ollama, ollama.find("bad:latest"))
    _nothing_left(store)


def test_a_corrupt_manifest_is_a_clear_error(tmp_path):
    store, ollama = _bad_store(tmp_path, [(b"GGUF-not-really", OLLAMA + "model")])
    path = ollama.find("bad").path
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UnsupportedModel, match=r"bad:latest \(.*\): not a usable Ollama manifest"):
        import_model(store, ollama, ollama.find("bad"))
    path.write_bytes(orjson.dumps({"schemaVersion": 2, "layers": [{"mediaType": OLLAMA + "model",
                                   "digest": "sha256:xyz", "size": 1}]}))  # fmt: skip
    with pytest.raises(UnsupportedModel, match="not a usable Ollama manifest"):
        import_model(store, ollama, ollama.find("bad"))
    _nothing_left(store)


def test_a_damaged_blob_fails_its_digest(tmp_path):
    store, ollama = _bad_store(tmp_path, [(b"GGUF-not-really", OLLAMA + "model")])
    digest = "sha256:" + hashlib.sha256(b"GGUF-not-really").hexdigest()
    ollama.blob_path(digest).write_bytes(b"GGUF-not-REALLY")
    with pytest.raises(DigestMismatch, match="does not match its digest"):
        import_model(store, ollama, ollama.find("bad"))
    _nothing_left(store)


def test_a_gguf_the_converter_refuses_leaves_no_tag_and_no_blob(tmp_path):
    layers = [(b"GGUF-not-really", OLLAMA + "model"), (TEMPLATE.encode(), OLLAMA + "template")]
    store, ollama = _bad_store(tmp_path, layers)
    with pytest.raises(UnsupportedModel, match=r"\.gguf is truncated or corrupt"):
        import_model(store, ollama, ollama.find("bad"))
    _nothing_left(store)


def test_names_and_stores_that_are_not_there(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not an Ollama model store.*OLLAMA_MODELS"):
        OllamaStore(tmp_path / "nowhere")
    _, ollama = _bad_store(tmp_path, [(b"x", OLLAMA + "model")])
    with pytest.raises(ModelNotFound, match=r"'llama3' is not in the Ollama store.*bad:latest"):
        ollama.find("llama3")
    out = CliRunner().invoke(cli, ["import-ollama", "--from", str(tmp_path / "nowhere"), "--all"])
    assert out.exit_code == 1 and "not an Ollama model store" in out.output
