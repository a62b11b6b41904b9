"""Ollama-style models on an OCI registry (issue 5): a manifest holding SmolLM2's GGUF with
Ollama's layer media types, pushed to the real local registry, pulls into a working MLX model
that keeps its template, parameters, system prompt, license and provenance."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import orjson
import pytest

from mlxollama import registry as reg
from mlxollama.errors import UnsupportedModel
from mlxollama.registry.oci import DOCKER_MANIFEST, Client
from mlxollama.sdk import Embedded
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store
from tests.registry_server import registry  # noqa: F401  (the session's registry fixture)

pytestmark = pytest.mark.model

# Shaped like ollama.com's ChatML templates: the system prompt comes from `.System` (Ollama
# also keeps system messages in `.Messages`, so the loop skips them).
TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
SYSTEM = "You are a helpful assistant who answers in one short sentence."
PARAMS = {"stop": ["<|im_end|>"], "temperature": 0, "num_ctx": 2048, "mirostat": 0}
LICENSE = "Apache License 2.0 (SmolLM2)"


def blob(data: bytes, media_type: str, name: str | None = None) -> dict:
    d = {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    return {**d, "name": name} if name else d


def push_ollama_model(
    name: str, layers: list[tuple[bytes, str] | tuple[bytes, str, str]], config: dict | None = None
) -> bytes:
    """Upload blobs and a Docker v2 manifest shaped like ollama.com's; a layer's optional third
    item is Ollama's `name` field (set on tensor and JSON-file layers)."""
    config = orjson.dumps(
        config or {"model_format": "gguf", "model_family": "llama", "file_type": "Q4_1"}
    )
    target = parse_name(name)
    client = Client(target, insecure=True)
    try:
        blobs = [(config, "application/vnd.docker.container.image.v1+json"), *layers]
        descriptors = [blob(*layer) for layer in blobs]
        with tempfile.TemporaryDirectory() as tmp:
            for (data, *_), d in zip(blobs, descriptors, strict=True):
                path = Path(tmp) / d["digest"][7:]
                path.write_bytes(data)
                if not client.has_blob(d["digest"]):
                    client.upload_blob(path, d["digest"], lambda n: None)
        manifest = orjson.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": descriptors[0],
                "layers": descriptors[1:],
            }
        )
        client.put_manifest(target.tag, manifest, DOCKER_MANIFEST)
        return manifest
    finally:
        client.close()


def test_an_ollama_style_model_converts_on_pull(registry, smollm2_gguf, tmp_path):  # noqa: F811
    name = registry.name("library/smollm2-gguf:q4_1")
    gguf = smollm2_gguf.read_bytes()
    push_ollama_model(
        name,
        [
            (gguf, "application/vnd.ollama.image.model"),
            (TEMPLATE.encode(), "application/vnd.ollama.image.template"),
            (SYSTEM.encode(), "application/vnd.ollama.image.system"),
            (orjson.dumps(PARAMS), "application/vnd.ollama.image.params"),
            (LICENSE.encode(), "application/vnd.ollama.image.license"),
        ],
    )
    store = Store(tmp_path / "store")
    events: list[dict] = []
    stored = reg.pull(store, name, progress=events.append, insecure=True)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert "converting model" in statuses and statuses[-1] == "success"
    gguf_digest = "sha256:" + hashlib.sha256(gguf).hexdigest()
    assert {"status": f"pulling {gguf_digest[7:19]}", "digest": gguf_digest,
            "total": len(gguf), "completed": len(gguf)} in events  # fmt: skip
    assert not store.blobs.exists(gguf_digest)  # converted, then dropped: MLX tensors stay
    assert stored.manifest.config.media_type == "application/vnd.mlxollama.model.config.v1+json"

    local = Embedded(store.root)
    shown = local.show(name)
    assert shown["template"] == TEMPLATE
    assert shown["system"] == SYSTEM
    assert shown["license"] == LICENSE
    assert "temperature                    0" in shown["parameters"]
    assert "mirostat" not in shown["parameters"]  # Ollama's deprecated option, dropped
    origin = shown["provenance"]["sources"][0]
    assert origin["type"] == "registry" and origin["reference"] == parse_name(name).display()
    assert origin["gguf"] == gguf_digest
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = local.chat(name, question, options={"num_predict": 32})
    assert "Paris" in answer["message"]["content"]
    assert store.verify(name) == []


def test_an_ollama_model_with_an_adapter_is_refused_and_leaves_no_tag(
    registry,  # noqa: F811
    tmp_path,
):
    name = registry.name("library/with-adapter:latest")
    push_ollama_model(
        name,
        [
            (b"GGUF-not-really", "application/vnd.ollama.image.model"),
            (b"lora", "application/vnd.ollama.image.adapter"),
        ],
    )
    store = Store(tmp_path / "store")
    with pytest.raises(UnsupportedModel, match="LoRA adapters"):
        reg.pull(store, name, insecure=True)
    assert store.find(name) is None


def test_pulling_an_unchanged_ollama_model_again_converts_nothing(registry, smollm2_gguf, tmp_path):  # noqa: F811
    name = registry.name("library/smollm2-again:q4_1")
    layers = [(smollm2_gguf.read_bytes(), "application/vnd.ollama.image.model")]
    push_ollama_model(name, [*layers, (TEMPLATE.encode(), "application/vnd.ollama.image.template")])
    store = Store(tmp_path / "store")
    first = reg.pull(store, name, insecure=True)
    events: list[dict] = []
    again = reg.pull(store, name, progress=events.append, insecure=True)
    assert again.digest == first.digest
    assert events == [{"status": "pulling manifest"}, {"status": "success"}]
    # a changed template is a new manifest: converted again, with the new template
    push_ollama_model(name, [*layers, (b"{{ .Prompt }}", "application/vnd.ollama.image.template")])
    changed = reg.pull(store, name, insecure=True)
    assert changed.digest != first.digest
    assert Embedded(store.root).show(name)["template"] == "{{ .Prompt }}"
