"""The store under hostile names, killed writers and racing clients (issue 9: defects 8, 10,
11 and two of 13), tested through a real daemon: names that cannot fit a path or that carry
whitespace are a 400 naming no path; a create leaves no unreferenced upload behind; a killed
create's blobs and temp files go at start-up and by gc, while a live writer's stay; an upload
of a blob already there refreshes it against gc; plain HTTP to a registry needs `insecure`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pykka
import pytest

from mlxollama.http.server import shutdown
from mlxollama.store.manifests import CONFIG_MEDIA_TYPE, Descriptor, Manifest
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store
from tests.daemons import Daemon, actor_classes, start_daemon, wait_until

pytestmark = pytest.mark.model

HOUR = 3600.0


@pytest.fixture
def tiny(tmp_path, tiny_store):
    """A daemon on a private copy of the tiny store; `tiny(**settings)` starts it."""
    started: list[Daemon] = []

    def start(root: Path | None = None, **env) -> Daemon:
        assert not pykka.ActorRegistry.get_all(), actor_classes()
        if root is None:
            root = tmp_path / "store"
            shutil.copytree(tiny_store, root)
        started.append(start_daemon(root, **env))
        return started[-1]

    yield start
    for d in started:
        shutdown(d.srv, d.runtime)


def unreferenced(root: Path) -> set[str]:
    store = Store(root)
    return store.blobs.digests() - store.referenced()


def temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


# -- defect 8: long names ----------------------------------------------------------------------

LONG = "h" * 300 + "/ns/m:t"


def long_name_requests(name: str) -> list[tuple[str, str, dict]]:
    return [
        ("POST", "/api/show", {"model": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/copy", {"source": "tiny-a", "destination": name}),
        ("POST", "/api/copy", {"source": name, "destination": "x"}),
        ("POST", "/api/create", {"model": name, "from": "tiny-a", "stream": False}),
        ("POST", "/api/create", {"model": "x", "from": name, "stream": False}),
        ("POST", "/api/pull", {"model": name, "stream": False}),
        ("POST", "/api/push", {"model": name, "stream": False}),
        ("POST", "/api/generate", {"model": name, "prompt": "hi", "stream": False}),
        ("POST", "/api/chat", {"model": name, "messages": [], "stream": False}),
        ("POST", "/api/embed", {"model": name, "input": "hi"}),
        ("POST", "/api/embeddings", {"model": name, "prompt": "hi"}),
        ("POST", "/v1/chat/completions", {"model": name, "messages": [{"role": "user"}]}),
        ("POST", "/v1/embeddings", {"model": name, "input": "hi"}),
    ]


def test_a_name_too_long_for_a_path_is_a_400_naming_no_path(tiny):
    d = tiny()
    for method, path, body in long_name_requests(LONG):
        status, _, data = d.call(method, path, body)
        assert status == 400, (path, status, data)
        assert str(d.root) not in data.decode() and "Errno" not in data.decode(), (path, data)
        if path != "/api/copy":  # (copy says `destination "..." is invalid`, as Ollama does)
            assert b"255" in data, (path, data)  # says what the limit is
    assert {m.model for m in d.client().list().models} == {"tiny-a:latest", "tiny-b:latest"}


def test_the_longest_host_that_fits_works_end_to_end(tiny):
    d = tiny()
    name = "h" * 255 + "/ns/m:t"
    status, _, data = d.call("POST", "/api/copy", {"source": "tiny-a", "destination": name})
    assert status == 200, data
    status, _, data = d.call("POST", "/api/show", {"model": name})
    assert status == 200, data
    status, _, data = d.call("DELETE", "/api/delete", {"model": name})
    assert status == 200, data


def test_store_errors_carry_no_store_path(tmp_path):
    """An OSError inside the store (here: a manifest folder that is a file) reaches the user
    without the store's absolute path."""
    root = tmp_path / "deep-store-root"
    store = Store(root)
    blocker = root / "manifests" / "registry.ollama.ai"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    digest = store.blobs.put_bytes(b"{}")
    manifest = Manifest(config=Descriptor(CONFIG_MEDIA_TYPE, digest, 2), layers=())
    with store.lock(), pytest.raises(OSError) as caught:
        store.put_manifest(parse_name("m"), manifest)
    assert str(root) not in str(caught.value) and str(tmp_path) not in str(caught.value)


# -- defect 13: whitespace in names ------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["\n", " ", "\t", "\r\n", "\x00"])
def test_a_name_with_whitespace_or_control_characters_deletes_nothing(tiny, suffix):
    d = tiny()
    assert d.call("POST", "/api/copy", {"source": "tiny-a", "destination": "victim"})[0] == 200
    status, _, data = d.call("DELETE", "/api/delete", {"model": "victim" + suffix})
    assert status == 400 and b"invalid model name" in data, (status, data)
    status, _, data = d.call("DELETE", "/api/delete", {"model": " victim"})
    assert status == 400, (status, data)
    assert "victim:latest" in {m.model for m in d.client().list().models}


# -- defect 10: leftovers ------------------------------------------------------------------------


def test_a_create_from_an_uploaded_gguf_leaves_no_unreferenced_blob(tiny, smollm2_gguf):
    d = tiny()
    assert unreferenced(d.root) == set()
    client = d.client()
    digest = client.create_blob(smollm2_gguf)
    assert digest in unreferenced(d.root)  # awaiting its create: kept (gc's grace)
    progress = client.create("uploaded", files={"smol.gguf": digest}, stream=True)
    assert [p.status for p in progress][-1] == "success"
    assert unreferenced(d.root) == set(), "the uploaded GGUF stayed behind"
    answer = client.generate("uploaded", "Hi", options={"temperature": 0, "num_predict": 3})
    assert answer.done and answer.eval_count == 3
    # uploading it again for a second create works as the first did
    again = client.create("uploaded-2", files={"smol.gguf": client.create_blob(smollm2_gguf)})
    assert again.status == "success" and unreferenced(d.root) == set()


def test_a_failed_create_keeps_its_upload_for_a_retry(tiny):
    d = tiny()
    client = d.client()
    junk = d.root.parent / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    digest = client.create_blob(junk)
    status, _, data = d.call(
        "POST", "/api/create", {"model": "bad", "files": {"junk.gguf": digest}, "stream": False}
    )
    assert status >= 400, data
    assert digest in unreferenced(d.root)


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _stale_temp_files(root: Path) -> list[Path]:
    """Temp files as a killed writer leaves them: a blob, a manifest and the verify cache."""
    made = []
    for folder in (
        root / "blobs" / "sha256",
        root / "manifests" / "registry.ollama.ai" / "library" / "tiny-a",
        root / "cache",
    ):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ".tmp-killed"
        path.write_bytes(b"x" * 1000)
        made.append(path)
    _age(made[0], 2 * HOUR)  # old
    for path in made[1:]:
        _age(path, 120)  # a couple of minutes: no live writer holds them
    return made


def test_stale_temp_files_go_at_start_up(tiny, tmp_path, tiny_store):
    root = tmp_path / "store"
    shutil.copytree(tiny_store, root)
    _stale_temp_files(root)
    assert len(temp_files(root)) == 3
    d = tiny(root)
    assert wait_until(lambda: temp_files(root) == [], 30), temp_files(root)
    assert {m.model for m in d.client().list().models} == {"tiny-a:latest", "tiny-b:latest"}


def test_stale_temp_files_go_by_gc_but_a_live_writers_stay(tmp_path, tiny_store):
    root = tmp_path / "store"
    shutil.copytree(tiny_store, root)
    _stale_temp_files(root)
    store = Store(root)
    data = b"being written" * 1000
    with store.blobs.writer() as w:
        w.write(data[:100])
        (live,) = [p for p in (root / "blobs" / "sha256").glob(".tmp-*") if p.name != ".tmp-killed"]
        _age(live, 2 * HOUR)  # even an old-looking temp file is kept while its writer lives
        store.gc()
        assert temp_files(root) == [str(live.relative_to(root))]
        w.write(data[100:])
    assert store.blobs.exists(f"sha256:{hashlib.sha256(data).hexdigest()}")
    assert temp_files(root) == []


def _mlxctl(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_HOST": "127.0.0.1:9"}
    code = "from mlxollama.cli.main import cli; cli()"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env)


def test_a_killed_creates_blobs_go_at_start_up_and_by_gc(tiny, store_root, smollm2_gguf):
    modelfile = store_root.parent / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf}\n")
    for restart in (True, False):
        before = len(Store(store_root).blobs.digests())

        def grown(before: int = before) -> bool:
            return len(Store(store_root).blobs.digests()) > before + 20

        proc = _mlxctl(store_root, "create", "victim", "-f", str(modelfile), "-q", "int8")
        try:
            grew = wait_until(grown, 240, interval=0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert grew, "the create wrote no tensor before the kill"
        assert "victim" not in {m.name.model for m in Store(store_root).list()}
        assert len(unreferenced(store_root)) > 20  # the orphans, as the kill left them
        if restart:
            d = tiny(store_root)
            assert wait_until(lambda: unreferenced(store_root) == set(), 60)
            shutdown(d.srv, d.runtime)
        else:
            Store(store_root).gc()
            assert unreferenced(store_root) == set()
        assert temp_files(store_root) == []


# -- defect 11: an upload of a blob already there refreshes it -------------------------------


def test_uploading_an_existing_blob_again_protects_it_from_gc(tiny):
    d = tiny()
    data = b"weights awaiting their create"
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    status, _, _ = d.call("POST", f"/api/blobs/{digest}", data)
    assert status == 201
    path = Store(d.root).blobs.path(digest)
    _age(path, 2 * HOUR)
    status, _, _ = d.call("POST", f"/api/blobs/{digest}", data)
    assert status == 200
    d.runtime.store.gc()
    assert path.is_file(), "gc deleted a blob the client had just uploaded again"
    assert d.call("HEAD", f"/api/blobs/{digest}")[0] == 200


# -- defect 13: plain HTTP to a registry ---------------------------------------------------------


class Listener:
    """A TCP server on 127.0.0.1 that records the first bytes of each connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.first: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.first.append(conn.recv(64))
                except OSError:
                    self.first.append(b"")

    def plain_http_seen(self) -> bool:
        return any(b.startswith((b"GET ", b"HEAD ", b"POST ")) for b in self.first)

    def close(self) -> None:
        self.sock.close()


def test_a_pull_over_plain_http_needs_insecure(tiny):
    d = tiny()
    server = Listener()
    try:
        host = f"127.0.0.1:{server.port}"
        status, _, data = d.call(
            "POST", "/api/pull", {"model": f"http://{host}/ns/m", "stream": False}
        )
        assert status == 400 and b"insecure" in data, (status, data)
        status, _, data = d.call(
            "POST", "/api/push", {"model": f"http://{host}/ns/m", "stream": False}
        )
        assert status in (400, 404), (status, data)
        status, _, data = d.call("POST", "/api/pull", {"model": f"{host}/ns/m", "stream": False})
        assert status != 200, data
        assert not server.plain_http_seen(), server.first  # TLS, or nothing at all
        body = {"model": f"http://{host}/ns/m", "insecure": True, "stream": False}
        status, _, data = d.call("POST", "/api/pull", body)
        assert status != 200 and server.plain_http_seen(), (status, data, server.first)
    finally:
        server.close()
    answer = orjson.loads(data)
    assert "error" in answer


def test_a_redirect_to_plain_http_is_refused_without_insecure():
    from mlxollama.errors import RegistryError
    from mlxollama.registry.oci import Client

    server = Listener()
    try:
        client = Client(parse_name("box.example/ns/m"))
        assert client.base == "https://box.example"
        with pytest.raises(RegistryError, match="insecure"):
            client.http.get(f"http://127.0.0.1:{server.port}/v2/ns/m/blobs/x")  # a Location
        assert server.first == []  # nothing was sent
    finally:
        server.close()


# -- review of the fixes: claims and journals seen from another process --------------------


def test_a_claimed_upload_survives_another_processs_gc(tmp_path):
    daemon, other = Store(tmp_path / "s"), Store(tmp_path / "s")  # other: `mlxctl gc`
    digest = daemon.blobs.put_bytes(b"an uploaded GGUF being read by a create")
    _age(daemon.blobs.path(digest), 2 * HOUR)
    since = daemon.claim_uploads([digest])
    other.gc()  # before the fix: the claim lived only in the daemon's memory
    assert daemon.blobs.exists(digest)
    assert daemon.release_uploads([digest], since, drop=True) == 1  # the create's own drop
    assert not daemon.blobs.exists(digest)


def test_a_dead_builds_journal_spares_blobs_written_after_it(tmp_path):
    store = Store(tmp_path / "s")
    written, again = (store.blobs.put_bytes(b"tensor %d" % i) for i in range(2))
    journal = tmp_path / "s" / "cache" / "builds" / "build-dead"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(f"{written}\n\n{again}\n\n")  # a killed create wrote both
    for path in (store.blobs.path(written), store.blobs.path(again), journal):
        _age(path, HOUR)
    os.utime(store.blobs.path(again))  # uploaded again since, for the next create
    assert store.recover() == (1, len(b"tensor 0"))
    assert not store.blobs.exists(written) and store.blobs.exists(again)
    assert not journal.exists()
