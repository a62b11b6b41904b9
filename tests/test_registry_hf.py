"""Pulls from Hugging Face (`hf.co/ORG/REPO[:REVISION]`) through a stand-in for the Hub on
127.0.0.1: the real `huggingface_hub.snapshot_download` runs; only the host differs."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from mlxollama import registry
from mlxollama.config import Config
from mlxollama.errors import (
    DigestMismatch,
    ModelNotFound,
    RegistryUnreachable,
    RemoteNotFound,
    Unauthorized,
    UnsupportedModel,
)
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.registry import Credentials
from mlxollama.sdk import Embedded
from mlxollama.store import manifests as mt
from mlxollama.store.store import Store
from tests.conftest import tiny_llama_folder
from tests.hub_standin import HubStandin

pytestmark = pytest.mark.model  # SmolLM2 (its session store) and MiniLM

TINY = "hf.co/acme/tiny-llama"
MINILM = "hf.co/sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smollm2_store):
    """Two commits of a tiny random llama (seed 0, then seed 1)."""
    base = tmp_path_factory.mktemp("hf-repos")
    return [tiny_llama_folder(base / f"seed{s}", Store(smollm2_store), seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def hub(folders, minilm_folder, tmp_path_factory):
    hub = HubStandin()
    hub.old = hub.add("acme/tiny-llama", folders[0], refs=("v1",))
    hub.main = hub.add("acme/tiny-llama", folders[1], refs=("main",))
    hub.add("sentence-transformers/all-MiniLM-L6-v2", minilm_folder)
    hub.gated = hub.add("acme/gated", folders[0], token="hf_secret")
    pt = tmp_path_factory.mktemp("pt-only")
    (pt / "config.json").write_text('{"model_type": "llama"}')
    (pt / "pytorch_model.bin").write_bytes(b"\0" * 64)
    (pt / "model.gguf").write_bytes(b"GGUF")
    hub.add("acme/pytorch-only", pt)
    yield hub.start()
    hub.stop()


@pytest.fixture(autouse=True)
def _hub_env(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub reads it (once, at import)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("MLXOLLAMA_HF_ENDPOINT", hub.url)
    hub.corrupt.clear()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def pull(store, name, **kw):
    events = []
    endpoint = Config.from_env().hf_endpoint  # MLXOLLAMA_HF_ENDPOINT, as the callers read it
    model = registry.pull(store, name, progress=events.append, hf_endpoint=endpoint, **kw)
    return model, events


def test_pull_builds_a_pinned_model_that_generates(hub, store):
    model, events = pull(store, TINY)

    assert model.name.display() == "hf.co/acme/tiny-llama:latest"
    shown = Embedded(store.root).show(TINY)
    provenance = shown["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["revision"])
    assert provenance["revision"] == hub.main
    origin = provenance["sources"][0]
    assert origin["type"] == "huggingface"
    assert (origin["repo"], origin["revision"], origin["ref"]) == (
        "acme/tiny-llama",
        hub.main,
        "main",
    )
    assert origin["endpoint"] == hub.url
    assert provenance["sources"][1]["type"] == "safetensors"
    out = Embedded(store.root).generate(TINY, "Hello", options={"num_predict": 4, "temperature": 0})
    assert out["done"] and out["eval_count"] > 0

    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    transfer = [e for e in events if e["status"] == f"pulling {hub.main[:12]}"]
    assert transfer and transfer[-1]["completed"] == transfer[-1]["total"] == hub.bytes_sent
    assert all(a["completed"] <= b["completed"] for a, b in itertools.pairwise(transfer))

    # the same revision again: one revision look-up, no file fetched, the same model
    requests, sent = len(hub.requests), hub.bytes_sent
    again, events = pull(store, TINY)
    assert hub.requests[requests:] == [("GET", "/api/models/acme/tiny-llama/revision/main")]
    assert hub.bytes_sent == sent
    assert again.digest == model.digest
    assert not [e for e in events if "completed" in e and e["status"].startswith("pulling ")]


def test_a_revision_tag_pins_that_commit(hub, store):
    latest, _ = pull(store, TINY)
    by_tag, _ = pull(store, f"{TINY}:v1")
    by_sha, _ = pull(store, f"{TINY}:{hub.old}")

    assert by_tag.name.tag == "v1" and by_sha.name.tag == hub.old
    for model in (by_tag, by_sha):
        provenance = store.config(model)["provenance"]
        assert provenance["revision"] == hub.old
        assert provenance["sources"][0]["revision"] == hub.old
    tensors = [m.manifest.layers_of(mt.TENSOR_MEDIA_TYPE) for m in (latest, by_tag, by_sha)]
    assert tensors[1] == tensors[2] != tensors[0]


def test_pull_a_sentence_transformers_model_that_embeds(hub, store, minilm_folder):
    model, _ = pull(store, MINILM)

    info = store.config(model)
    assert info["capabilities"] == ["embedding"] and info["pooling"] == "mean"
    assert info["provenance"]["sources"][0]["repo"] == "sentence-transformers/all-MiniLM-L6-v2"
    # the same weights and tokenizer as a create from the folder itself
    direct = create(store, "direct", BuildSpec(source=str(minilm_folder)))
    for kind in (mt.TENSOR_MEDIA_TYPE, mt.FILE_MEDIA_TYPE):
        assert model.manifest.layers_of(kind) == direct.manifest.layers_of(kind)
    vectors = Embedded(store.root).embed(MINILM, ["hello world", "bonjour"])["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == 384


def test_an_unknown_repo_or_revision_is_not_found(hub, store):
    with pytest.raises(RemoteNotFound, match=r"hf\.co/acme/nope not found on Hugging Face"):
        pull(store, "hf.co/acme/nope")
    with pytest.raises(RemoteNotFound, match=r"revision 'v9' of hf\.co/acme/tiny-llama not found"):
        pull(store, f"{TINY}:v9")
    assert store.list() == []


def test_a_gated_repo_needs_its_token(hub, store):
    with pytest.raises(Unauthorized, match="gated"):
        pull(store, "hf.co/acme/gated")
    with pytest.raises(Unauthorized):
        pull(store, "hf.co/acme/gated", credentials=Credentials(token="wrong", host="hf.co"))
    model, _ = pull(
        store, "hf.co/acme/gated", credentials=Credentials(token="hf_secret", host="hf.co")
    )
    assert store.config(model)["provenance"]["revision"] == hub.gated


def test_an_unreachable_hub_fails_fast(store, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HF_ENDPOINT", "http://127.0.0.1:9")
    tic = time.monotonic()
    with pytest.raises(
        RegistryUnreachable, match=r"cannot reach Hugging Face at http://127.0.0.1:9"
    ):
        pull(store, TINY)
    assert time.monotonic() - tic < 5


def test_a_repo_without_safetensors_is_refused_before_any_download(hub, store):
    before = hub.downloads()
    with pytest.raises(UnsupportedModel, match="no safetensors weights"):
        pull(store, "hf.co/acme/pytorch-only")
    assert hub.downloads() == before


def test_a_corrupted_download_is_refused_and_fetched_again(hub, store):
    hub.corrupt.add("model.safetensors")
    with pytest.raises(DigestMismatch, match=r"model\.safetensors"):
        pull(store, TINY)
    with pytest.raises(ModelNotFound):
        store.get(TINY)
    hub.corrupt.clear()
    before = hub.downloads()
    model, _ = pull(store, TINY)  # the bad file left the cache: it is fetched again
    assert hub.downloads() == before + 1
    assert store.config(model)["provenance"]["revision"] == hub.main


def test_offline_pulls_build_from_the_cache(hub, store, monkeypatch):
    from huggingface_hub import constants

    first, _ = pull(store, TINY)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    again, _ = pull(store, TINY)
    assert len(hub.requests) == requests
    assert again.digest == first.digest
    with pytest.raises(RegistryUnreachable, match="HF_HUB_OFFLINE"):
        pull(store, MINILM)
