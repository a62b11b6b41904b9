"""The store's rules on small hand-made blobs: atomic writes, digests checked, tags last,
shared blobs kept, corrupted ones reported, names validated before any path is built."""

import hashlib
import os

import pytest

from mlxollama.errors import BlobNotFound, DigestMismatch, InvalidDigest, InvalidName, ModelNotFound
from mlxollama.store import manifests as mt
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_model(store: Store, name: str, payloads: list[bytes]) -> Manifest:
    with store.lock():
        config = store.blobs.put_bytes(b'{"model_config": {}}')
        layers = tuple(
            Descriptor(mt.TENSOR_MEDIA_TYPE, store.blobs.put_bytes(p), len(p), f"t{i}")
            for i, p in enumerate(payloads)
        )
        manifest = Manifest(Descriptor(mt.CONFIG_MEDIA_TYPE, config, 20), layers)
        store.put_manifest(parse_name(name), manifest)
    return manifest


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "s")


def test_blob_is_stored_under_its_digest(store):
    d = store.blobs.put_bytes(b"hello")
    assert d == digest_of(b"hello")
    assert store.blobs.path(d).read_bytes() == b"hello"
    assert oct(store.blobs.path(d).stat().st_mode & 0o777) == "0o644"


def test_mismatched_expected_digest_stores_nothing(store):
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        store.blobs.put_stream([b"abc"], expected=digest_of(b"abd"))
    assert store.blobs.digests() == set()
    assert not any(store.blobs.dir.iterdir())


def test_failed_write_leaves_no_blob_and_no_temp(store):
    with pytest.raises(RuntimeError), store.blobs.writer() as w:
        w.write(b"partial")
        raise RuntimeError("disk gone")
    assert list(store.blobs.dir.iterdir()) == []


def test_temp_files_no_writer_holds_are_cleaned_by_gc(store):
    """A killed writer's temp file goes however young; a live writer's (locked) stays."""
    import fcntl

    store.blobs.dir.mkdir(parents=True)
    stale = store.blobs.dir / ".tmp-crashed"
    stale.write_bytes(b"x")
    young = store.blobs.dir / ".tmp-killed-just-now"
    young.write_bytes(b"z")
    fresh = store.blobs.dir / ".tmp-inflight"
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    os.utime(fresh, (0, 0))
    with open(fresh, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        store.gc()
        assert not stale.exists() and not young.exists() and fresh.exists()
    store.gc()
    assert not fresh.exists()


def test_manifest_needs_every_blob(store):
    missing = Descriptor(mt.TENSOR_MEDIA_TYPE, digest_of(b"nope"), 4, "x")
    config = Descriptor(mt.CONFIG_MEDIA_TYPE, store.blobs.put_bytes(b"{}"), 2)
    with pytest.raises(BlobNotFound):
        store.put_manifest(parse_name("m"), Manifest(config, (missing,)))
    assert store.list() == []


def test_list_get_and_case_insensitive_lookup(store):
    make_model(store, "Alpha:v1", [b"a"])
    make_model(store, "ns/beta", [b"b"])
    names = [m.name.display() for m in store.list()]
    assert sorted(names) == ["Alpha:v1", "ns/beta:latest"]
    assert store.get("alpha:V1").name.display() == "Alpha:v1"
    with pytest.raises(ModelNotFound, match="model 'gamma' not found"):
        store.get("gamma")


def test_manifest_digest_is_sha256_of_manifest_bytes(store):
    manifest = make_model(store, "m", [b"a"])
    assert store.get("m").digest == hashlib.sha256(manifest.to_bytes()).hexdigest()


def test_copy_shares_blobs_and_remove_keeps_shared_ones(store):
    make_model(store, "a", [b"shared", b"only-a"])
    store.copy("a", "b")
    make_model(store, "c", [b"shared", b"only-c"])
    before = store.blobs.digests()
    store.remove("a")
    # b still references everything a had
    assert store.blobs.digests() == before
    store.remove("b")
    assert digest_of(b"only-a") not in store.blobs.digests()
    assert digest_of(b"shared") in store.blobs.digests()
    assert store.verify("c") == []
    assert not (store.manifests_dir / "registry.ollama.ai" / "library" / "a").exists()


def test_remove_unknown_model(store):
    with pytest.raises(ModelNotFound):
        store.remove("ghost")


def test_gc_removes_only_unreferenced(store):
    make_model(store, "m", [b"kept"])
    for digest in store.blobs.digests():
        os.utime(store.blobs.path(digest), (0, 0))  # everything old, the model's blobs too
    orphan = store.blobs.put_bytes(b"orphan")
    os.utime(store.blobs.path(orphan), (0, 0))
    fresh = store.blobs.put_bytes(b"just uploaded")  # e.g. for a create that has not run yet
    count, freed = store.gc()
    assert (count, freed) == (1, len(b"orphan"))
    assert not store.blobs.exists(orphan)
    assert store.blobs.exists(fresh)
    assert store.verify("m") == []


def test_verify_reports_corrupted_and_missing_blobs(store):
    make_model(store, "m", [b"one", b"two"])
    bad = store.blobs.path(digest_of(b"one"))
    bad.write_bytes(b"ONE")
    store.blobs.path(digest_of(b"two")).unlink()
    problems = {p.digest: p.error for p in store.verify("m")}
    assert set(problems) == {digest_of(b"one"), digest_of(b"two")}
    assert "corrupted" in problems[digest_of(b"one")]
    assert "missing" in problems[digest_of(b"two")]


def test_check_blobs_rehashes_only_changed_files(store):
    make_model(store, "m", [b"one"])
    model = store.get("m")
    store.check_blobs(model)  # hashes and records
    path = store.blobs.path(digest_of(b"one"))
    path.write_bytes(b"ONE")  # same size, new mtime
    with pytest.raises(DigestMismatch, match=digest_of(b"one")):
        store.check_blobs(model)


@pytest.mark.parametrize("digest", ["../../etc/passwd", "sha256:../../x", "sha256:" + "0" * 63])
def test_bad_digests_never_reach_the_filesystem(store, digest):
    with pytest.raises(InvalidDigest):
        store.blobs.path(digest)


@pytest.mark.parametrize("name", ["../evil", "a/../../b", "ns/..:x", "..:latest"])
def test_bad_names_never_reach_the_filesystem(store, name):
    with pytest.raises(InvalidName):
        store.get(name)
    with pytest.raises(InvalidName):
        store.copy("whatever", name)
    assert not store.manifests_dir.exists()


def test_foreign_files_under_manifests_are_ignored(store):
    make_model(store, "m", [b"a"])
    junk = store.manifests_dir / "h" / "n" / "x" / "t"
    junk.parent.mkdir(parents=True)
    junk.write_text("not json")
    assert [m.name.display() for m in store.list()] == ["m:latest"]


def test_writer_lock_is_exclusive_across_processes(store, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from filelock import FileLock, Timeout\n"
        f"l = FileLock({str(store.root / '.lock')!r})\n"
        "try:\n    l.acquire(timeout=0.2); print('acquired')\n"
        "except Timeout:\n    print('busy')\n"
    )
    with store.lock():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "busy"


def test_retagging_removes_what_only_the_old_manifest_used(store):
    make_model(store, "m", [b"shared", b"old-only"])
    make_model(store, "m", [b"shared", b"new-only"])
    assert digest_of(b"old-only") not in store.blobs.digests()
    assert {digest_of(b"shared"), digest_of(b"new-only")} <= store.blobs.digests()
    assert store.verify("m") == []


def test_a_retag_is_seen_at_once_though_manifests_are_parsed_once(store):
    make_model(store, "m", [b"one"])
    first = store.get("m")
    assert store.get("m") is first  # parsed once while the file is unchanged
    make_model(store, "m", [b"two"])
    second = store.get("m")
    assert second.digest != first.digest
    assert [d.digest for d in second.manifest.layers] != [d.digest for d in first.manifest.layers]
    store.remove("m")
    with pytest.raises(ModelNotFound):
        store.get("m")


def test_gc_keeps_recent_partial_downloads_for_a_resume_and_drops_week_old_ones(store):
    partial = store.root / "blobs" / "partial"
    partial.mkdir(parents=True)
    (partial / "locks").mkdir()
    lock = partial / "locks" / "aa.lock"
    lock.write_bytes(b"")
    fresh, stale = partial / "sha256-aa", partial / "sha256-bb"
    fresh.write_bytes(b"half a blob")
    stale.write_bytes(b"forgotten")
    week = 8 * 24 * 3600
    for old in (stale, lock, partial / "locks"):
        os.utime(old, (old.stat().st_atime - week, old.stat().st_mtime - week))
    store.gc()
    assert fresh.exists() and not stale.exists()
    assert lock.exists()  # a lock file may be held by a pull: never removed
