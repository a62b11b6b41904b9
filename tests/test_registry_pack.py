"""`pack` (registry/pack.py, registry/layout.py): OCI image layouts out of the store and back."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile

import orjson
import pytest

from mlxollama.errors import DigestMismatch, InvalidName, ModelNotFound, UnsupportedModel
from mlxollama.registry.pack import export_layout, import_layout
from mlxollama.sdk import Embedded
from mlxollama.store import manifests as mt
from mlxollama.store.store import Store

pytestmark = pytest.mark.model  # SmolLM2 (its session store)

# an independent OCI tool reads what we write (CI installs it: .ci/run)
SKOPEO = shutil.which("skopeo") or "skopeo"
PROMPT = "The capital of France is"


def skopeo(*args: str) -> bytes:
    return subprocess.run([SKOPEO, *args], check=True, capture_output=True, timeout=120).stdout


@pytest.fixture(scope="module")
def smollm2(smollm2_store):
    store = Store(smollm2_store)
    return store, store.get("smollm2")


@pytest.fixture(scope="module")
def reference_text(smollm2_store) -> str:
    options = {"temperature": 0, "num_predict": 8}
    return Embedded(smollm2_store).generate("smollm2", PROMPT, options=options)["response"]


def generate(root) -> str:
    options = {"temperature": 0, "num_predict": 8}
    return Embedded(root).generate("smollm2", PROMPT, options=options)["response"]


def test_export_a_folder_that_skopeo_reads(smollm2, tmp_path):
    store, model = smollm2
    dest = export_layout(store, "smollm2", tmp_path / "layout")

    assert orjson.loads((dest / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = orjson.loads((dest / "index.json").read_bytes())["manifests"]
    assert entry["digest"] == f"sha256:{model.digest}"
    assert entry["mediaType"] == mt.MANIFEST_MEDIA_TYPE
    assert entry["artifactType"] == mt.ARTIFACT_TYPE
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    blobs = {p.name for p in (dest / "blobs" / "sha256").iterdir()}
    assert blobs == {d.split(":")[1] for d in model.manifest.digests()} | {model.digest}
    # `skopeo inspect` without --raw refuses artifacts that are not container images
    raw = skopeo("inspect", "--raw", f"oci:{dest}:latest")
    assert hashlib.sha256(raw).hexdigest() == model.digest
    layers = [layer["digest"] for layer in orjson.loads(raw)["layers"]]
    assert layers == [layer.digest for layer in model.manifest.layers]
    config = skopeo("inspect", "--config", "--raw", f"oci:{dest}:latest")
    assert orjson.loads(config) == store.config(model)


def test_import_into_an_empty_store_gives_the_same_model(smollm2, reference_text, tmp_path):
    store, model = smollm2
    layout = export_layout(store, "smollm2", tmp_path / "layout")
    root = tmp_path / "empty"
    events = []

    imported = import_layout(Store(root), layout, progress=events.append)

    assert imported.name.display() == "smollm2:latest"  # the name recorded at export
    assert imported.digest == model.digest
    assert events[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert Store(root).verify("smollm2") == []
    assert reference_text and generate(root) == reference_text


def test_a_tar_round_trip(smollm2, tmp_path):
    store, model = smollm2
    tar = export_layout(store, "smollm2", tmp_path / "smollm2.tar")

    with tarfile.open(tar) as t:
        names = t.getnames()
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    assert len(names) == 2 + len(set(model.manifest.digests())) + 1
    raw = skopeo("inspect", "--raw", f"oci-archive:{tar}:latest")
    assert hashlib.sha256(raw).hexdigest() == model.digest
    imported = import_layout(Store(tmp_path / "empty"), tar, "copies/smollm2:v1")
    assert imported.digest == model.digest
    assert imported.name.display() == "copies/smollm2:v1"


def test_skopeo_copy_round_trip(tiny_store, tmp_path):
    """skopeo copies our artifact between layouts unchanged (a tiny model: skopeo spends
    ~20 ms per blob, 14 s on SmolLM2's 700)."""
    store = Store(tiny_store)
    model = store.get("tiny-a")
    export_layout(store, "tiny-a", tmp_path / "a")
    skopeo("copy", "-q", f"oci:{tmp_path / 'a'}:latest", f"oci:{tmp_path / 'b'}:latest")

    with pytest.raises(InvalidName, match="give one"):  # skopeo keeps only the ref name
        import_layout(Store(tmp_path / "empty"), tmp_path / "b")
    imported = import_layout(Store(tmp_path / "empty"), tmp_path / "b", "tiny-a")
    assert imported.digest == model.digest
    out = Embedded(tmp_path / "empty").generate("tiny-a", "Hi", options={"num_predict": 2})
    assert out["done"]


def test_a_tampered_blob_fails_and_leaves_nothing(smollm2, tmp_path):
    store, model = smollm2
    layout = export_layout(store, "smollm2", tmp_path / "layout")
    victim = model.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)[-1].digest
    path = layout / "blobs" / "sha256" / victim.split(":")[1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    empty = Store(tmp_path / "empty")

    with pytest.raises(DigestMismatch, match=victim.split(":")[1]):
        import_layout(empty, layout)

    with pytest.raises(ModelNotFound):
        empty.get("smollm2")
    assert empty.list() == []
    assert empty.blobs.digests() == set()  # the blobs imported before the bad one are gone


def test_a_tampered_manifest_or_a_foreign_image_is_refused(smollm2, tmp_path):
    store, model = smollm2
    layout = export_layout(store, "smollm2", tmp_path / "layout")
    manifest = layout / "blobs" / "sha256" / model.digest
    manifest.write_bytes(manifest.read_bytes().replace(b'"size":', b'"size": ', 1))
    with pytest.raises(DigestMismatch):
        import_layout(Store(tmp_path / "s1"), layout)

    doc = orjson.loads(model.manifest.to_bytes())
    doc["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json"
    data = orjson.dumps(doc)
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index = orjson.loads((layout / "index.json").read_bytes())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_bytes(orjson.dumps(index))
    with pytest.raises(UnsupportedModel, match="not an mlxollama model"):
        import_layout(Store(tmp_path / "s2"), layout)
    assert Store(tmp_path / "s2").list() == []


def test_export_adds_to_an_existing_layout_and_import_picks_by_tag(tiny_store, tmp_path):
    src = Store(tmp_path / "src")
    shutil.copytree(tiny_store, src.root)
    src.copy("tiny-b", "tiny-b:v2")
    dest = tmp_path / "layout"
    export_layout(src, "tiny-a", dest)
    export_layout(src, "tiny-b:v2", dest)
    refs = [
        e["annotations"]["org.opencontainers.image.ref.name"]
        for e in orjson.loads((dest / "index.json").read_bytes())["manifests"]
    ]
    assert refs == ["latest", "v2"]

    with pytest.raises(InvalidName, match="2 matching images"):
        import_layout(Store(tmp_path / "dst"), dest)
    imported = import_layout(Store(tmp_path / "dst"), dest, "mine:v2")
    assert imported.digest == src.get("tiny-b:v2").digest
    with pytest.raises(FileExistsError):
        export_layout(src, "tiny-a", tmp_path / "src")
