"""Registry pull and push (issue 5) against a real OCI registry (docker-registry, i.e. CNCF
distribution) behind a fault-injecting, byte-counting proxy (tests/registry_server.py).

The first tests check the harness itself (the registry, and that the proxy passes pushes and
pulls through, counts bytes, cuts, corrupts and fails on demand); the rest check
`mlxollama.registry.pull` / `push`: a round trip of SmolLM2 that answers as before, Ollama's
progress stream, diff pulls, resume, corruption, auth, unreachable and unknown models, and
concurrent pulls.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest

from mlxollama.store.manifests import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store
from tests import registry_server
from tests.registry_server import start_registry, upload_model

# the harness's fixtures, used here by name
registry = registry_server.registry
auth_registry = registry_server.auth_registry
proxy = registry_server.proxy

MiB = 1 << 20


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def push_blob(base: str, repo: str, data: bytes, **kwargs) -> httpx.Response:
    """POST an upload, then PUT the bytes (a `content` generator makes httpx send them
    chunked); returns the PUT's answer."""
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        return c.put(
            httpx.URL(r.headers["Location"]).copy_merge_params({"digest": sha256(data)}),
            content=kwargs.get("content", data),
            headers={"Content-Type": "application/octet-stream"},
        )


# -- the harness -----------------------------------------------------------------------------


def test_registry_answers_v2(registry):
    assert registry.process.poll() is None
    r = httpx.get(f"{registry.url}/v2/")
    assert r.status_code == 200
    assert registry.name("library/m:latest") == f"{registry.address}/library/m:latest"


def test_auth_registry_wants_basic_auth(auth_registry):
    assert auth_registry.username == "docker" and auth_registry.password
    r = httpx.get(f"{auth_registry.url}/v2/")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    r = httpx.get(f"{auth_registry.url}/v2/", auth=(auth_registry.username, auth_registry.password))
    assert r.status_code == 200


def test_start_registry_fails_clearly_without_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_TEST_REGISTRY", str(tmp_path / "none"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match="apt-get install docker-registry"):
        start_registry(tmp_path)


def test_proxy_passes_uploads_through_and_rewrites_location(proxy):
    data = b"layer bytes " * 1000
    assert push_blob(proxy.url, "harness/upload", data).status_code == 201
    # the PUT went to the proxy (Location rewritten), with the whole body
    (put,) = proxy.requests("PUT")
    assert put.received == len(data) and put.status == 201
    # chunked request bodies too
    chunked = b"chunked " * 5000
    r = push_blob(
        proxy.url,
        "harness/upload",
        chunked,
        content=(chunked[i : i + 999] for i in range(0, 40000, 999)),
    )
    assert r.status_code == 201, r.text
    assert proxy.requests("PUT")[-1].headers.get("transfer-encoding") == "chunked"
    r = httpx.get(f"{proxy.url}/v2/harness/upload/blobs/{sha256(chunked)}")
    assert r.content == chunked


def test_proxy_passes_an_oras_push_and_pull(proxy, tmp_path, monkeypatch):
    import oras.provider

    class FastRegistry(oras.provider.Registry):
        do_request = oras.provider.Registry.do_request.__wrapped__  # no 131 s of retries

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (tmp_path / "config.json").write_text("{}")
    reg = FastRegistry(hostname=proxy.address, insecure=True)
    target = f"{proxy.address}/harness/oras:v1"
    r = reg.push(
        target,
        files=["weights.bin:application/vnd.example.weights"],
        manifest_config=f"config.json:{CONFIG_MEDIA_TYPE}",
        do_chunked=True,
    )
    assert r.status_code == 201
    assert proxy.requests("PATCH"), "the chunked upload went through the proxy"
    manifest = reg.get_manifest(target)
    (layer,) = manifest["layers"]
    assert layer["digest"] == sha256((tmp_path / "weights.bin").read_bytes())
    proxy.reset()
    got = reg.get_blob(f"{proxy.address}/harness/oras", layer["digest"], stream=True)
    body = b"".join(got.iter_content(65536))
    assert sha256(body) == layer["digest"]
    assert proxy.blob_bytes(layer["digest"]) == len(body) == layer["size"]


@pytest.fixture(scope="module")
def harness_blob(registry):
    """A 3 MiB blob in `harness/blob` (random bytes), pushed directly to the registry."""
    data = hashlib.sha256(b"seed").digest() * (3 * MiB // 32)
    assert push_blob(registry.url, "harness/blob", data).status_code == 201
    return data, sha256(data), "/v2/harness/blob/blobs/" + sha256(data)


def test_proxy_counts_and_passes_range(proxy, harness_blob):
    data, digest, path = harness_blob
    assert httpx.get(proxy.url + path).content == data
    r = httpx.get(proxy.url + path, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    assert httpx.head(proxy.url + path).headers["content-length"] == str(len(data))
    assert proxy.blob_bytes(digest) == len(data) + len(data) - 1000
    assert [g.headers.get("range") for g in proxy.blob_gets(digest)] == [None, "bytes=1000-"]
    assert proxy.blob_bytes("sha256:" + "0" * 64) == 0


def test_proxy_cut_after_drops_the_connection_at_that_offset(proxy, harness_blob):
    data, digest, path = harness_blob
    proxy.cut_after(digest, MiB)
    got = bytearray()
    with pytest.raises(httpx.TransportError), httpx.stream("GET", proxy.url + path) as r:
        for chunk in r.iter_bytes():
            got += chunk
    assert bytes(got) == data[:MiB]
    assert proxy.blob_bytes(digest) == MiB and proxy.blob_gets(digest)[0].dropped
    # a resume from the cut offset gets nothing while the cut holds ...
    with pytest.raises(httpx.TransportError):
        httpx.get(proxy.url + path, headers={"Range": f"bytes={MiB}-"})
    # ... and the rest once it is lifted
    proxy.reset()
    r = httpx.get(proxy.url + path, headers={"Range": f"bytes={MiB}-"})
    assert r.status_code == 206 and bytes(got) + r.content == data
    assert proxy.blob_bytes(digest) == len(data) - MiB


def test_proxy_corrupt_flips_a_byte_and_keeps_the_length(proxy, harness_blob):
    data, digest, path = harness_blob
    proxy.corrupt(digest)
    body = httpx.get(proxy.url + path).content
    assert len(body) == len(data) and body != data and body[1:] == data[1:]
    # other blobs and the manifest path are untouched
    proxy.reset()
    assert httpx.get(proxy.url + path).content == data


def test_proxy_fail_with(proxy, harness_blob):
    _, _, path = harness_blob
    proxy.fail_with(503, path="/blobs/", times=1)
    assert httpx.get(proxy.url + path).status_code == 503
    assert httpx.get(proxy.url + path).status_code == 200
    proxy.fail_with(401, method="HEAD")
    assert httpx.head(proxy.url + path).status_code == 401
    assert httpx.get(proxy.url + path).status_code == 200
    assert [r.status for r in proxy.requests()] == [503, 200, 401, 200]


@pytest.mark.model
def test_upload_model_puts_the_store_manifest_as_is(registry, tiny_store):
    store = Store(tiny_store)
    data = upload_model(registry.address, store, "tiny-a", "harness/tiny:a")
    r = httpx.get(
        f"{registry.url}/v2/harness/tiny/manifests/a", headers={"Accept": MANIFEST_MEDIA_TYPE}
    )
    assert r.content == data
    assert r.headers["docker-content-digest"] == f"sha256:{store.get('tiny-a').digest}"
    doc = orjson.loads(r.content)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"]["mediaType"] == CONFIG_MEDIA_TYPE


# -- pull and push ---------------------------------------------------------------------------

model = pytest.mark.model


def unique_size(manifest) -> int:
    """Bytes of the distinct blobs of a manifest (what a pull transfers)."""
    sizes = {d.digest: d.size for d in (manifest.config, *manifest.layers)}
    return sum(sizes.values())


def phases(events: list[dict]) -> list[str]:
    """The statuses with `pulling <hex>` / `pushing <hex>` folded, consecutive ones merged."""
    out: list[str] = []
    for e in events:
        status = e["status"]
        if e.get("digest"):
            status = status.split(" ")[0] + " <layer>"
        if not out or out[-1] != status:
            out.append(status)
    return out


def check_layer_events(events: list[dict], verb: str, manifest) -> None:
    """Every blob of `manifest` has `<verb> <hex12>` events with digest/total/completed,
    completed never above total and ending at total."""
    last: dict[str, dict] = {}
    for e in events:
        if not e.get("digest"):
            continue
        digest = e["digest"]
        assert e["status"] == f"{verb} {digest.split(':')[1][:12]}", e
        assert isinstance(e["total"], int)
        assert 0 <= e.get("completed", 0) <= e["total"], e
        last[digest] = e
    sizes = {d.digest: d.size for d in (manifest.config, *manifest.layers)}
    assert set(last) == set(sizes)
    for digest, e in last.items():
        assert e["total"] == sizes[digest]
        assert e.get("completed", 0) == sizes[digest], e


def check_pull_progress(events: list[dict], manifest) -> None:
    steps = phases(events)
    if "removing unused layers" in steps:
        steps.remove("removing unused layers")
    assert steps == [
        "pulling manifest",
        "pulling <layer>",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ], steps
    check_layer_events(events, "pulling", manifest)


def check_push_progress(events: list[dict], manifest) -> None:
    steps = phases(events)
    assert steps[0] in ("retrieving manifest", "starting upload"), steps
    assert steps[-3:] == ["pushing <layer>", "pushing manifest", "success"], steps
    assert set(steps[1:-2]) <= {"retrieving manifest", "starting upload", "pushing <layer>"}
    check_layer_events(events, "pushing", manifest)


def remote_manifest(registry, repo: str, tag: str) -> bytes:
    """The manifest bytes the registry holds, read by skopeo (an independent OCI client)."""
    out = subprocess.run(
        [
            shutil.which("skopeo") or "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.address}/{repo}:{tag}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.stdout


def greedy(root: Path, name: str) -> str:
    from mlxollama.sdk import Embedded

    out = Embedded(root).generate(
        name, "Name three colours.", options={"temperature": 0, "num_predict": 12, "seed": 0}
    )
    return out["response"]


@model
def test_push_remove_pull_answers_as_before(store_root, registry, proxy):
    """SmolLM2 pushed, deleted (blobs and all) and pulled back generates the same text."""
    from mlxollama.registry import pull, push

    store = Store(store_root)
    before = greedy(store_root, "smollm2")
    assert before.strip()
    name = proxy.name("library/smollm2:latest")
    original = store.copy("smollm2", name)

    pushed: list[dict] = []
    push(store, name, progress=pushed.append, insecure=True)
    check_push_progress(pushed, original.manifest)
    raw = remote_manifest(registry, "library/smollm2", "latest")
    assert sha256(raw) == f"sha256:{original.digest}"
    assert raw == (store.manifests_dir / original.name.path()).read_bytes()

    store.remove("smollm2")
    store.remove(name)
    store.gc(grace=0)
    assert store.blobs.digests() == set()

    proxy.reset()
    pulled: list[dict] = []
    got = pull(store, name, progress=pulled.append, insecure=True)
    assert got.digest == original.digest
    check_pull_progress(pulled, original.manifest)
    assert proxy.blob_bytes() == unique_size(original.manifest)  # every blob once
    assert store.verify(name) == []
    assert greedy(store_root, name) == before


@pytest.fixture(scope="module")
def tiny_remote(registry, tiny_store, tmp_path_factory):
    """`tiny-a` and a variant that differs in one tensor (its largest), uploaded with
    `upload_model` (not our push) as `tiny/llama:a` and `tiny/llama:b`."""
    root = tmp_path_factory.mktemp("tiny-remote") / "store"
    shutil.copytree(tiny_store, root)
    store = Store(root)
    a = store.get("tiny-a")
    big = max(a.manifest.layers, key=lambda d: d.size)
    data = bytearray(store.blobs.read_bytes(big.digest))
    data[-1] ^= 0x01  # one weight changes; the safetensors header stays valid
    with store.lock():
        changed = replace(big, digest=store.blobs.put_bytes(bytes(data)))
        layers = tuple(changed if d == big else d for d in a.manifest.layers)
        store.put_manifest(parse_name("tiny-b2"), replace(a.manifest, layers=layers))
    upload_model(registry.address, store, "tiny-a", "tiny/llama:a")
    upload_model(registry.address, store, "tiny-b2", "tiny/llama:b")
    return store, a, big, changed


@model
def test_pull_progress_and_bytes(tmp_path, proxy, tiny_remote):
    from mlxollama.registry import pull

    _, a, _, _ = tiny_remote
    store = Store(tmp_path / "pulled")
    events: list[dict] = []
    got = pull(store, proxy.name("tiny/llama:a"), progress=events.append, insecure=True)
    assert got.digest == a.digest
    assert got.name == parse_name(proxy.name("tiny/llama:a"))
    check_pull_progress(events, a.manifest)
    assert events[0] == {"status": "pulling manifest"}
    assert events[-1] == {"status": "success"}
    assert proxy.blob_bytes() == unique_size(a.manifest)
    assert store.verify(proxy.name("tiny/llama:a")) == []

    # pulled again: nothing but the manifest crosses the wire
    proxy.reset()
    again: list[dict] = []
    pull(store, proxy.name("tiny/llama:a"), progress=again.append, insecure=True)
    assert proxy.blob_bytes() == 0
    assert again[0] == {"status": "pulling manifest"} and again[-1] == {"status": "success"}
    check_layer_events(again, "pulling", a.manifest)


@model
def test_diff_pull_transfers_only_the_changed_tensor(tmp_path, proxy, tiny_remote):
    from mlxollama.registry import pull

    _, a, big, changed = tiny_remote
    store = Store(tmp_path / "pulled")
    pull(store, proxy.name("tiny/llama:a"), insecure=True)
    proxy.reset()
    got = pull(store, proxy.name("tiny/llama:b"), insecure=True)
    assert {g.digest for g in proxy.blob_gets() if g.sent} == {changed.digest}
    assert proxy.blob_bytes() == changed.size
    assert proxy.requests("GET", "/manifests/b"), "the manifest was fetched"
    assert big.size > 1000 * a.manifest.config.size  # the test means something
    assert store.verify(proxy.name("tiny/llama:b")) == []
    assert got.manifest.layers != a.manifest.layers


@model
def test_interrupted_pull_resumes_with_range(tmp_path, proxy, tiny_remote):
    from mlxollama.errors import RegistryError
    from mlxollama.registry import pull

    _, _, big, _ = tiny_remote
    name = proxy.name("tiny/llama:a")
    cut = (big.size // 2) // MiB * MiB or big.size // 2
    store = Store(tmp_path / "pulled")
    proxy.cut_after(big.digest, cut)
    tic = time.monotonic()
    with pytest.raises(RegistryError) as failed:
        pull(store, name, insecure=True)
    assert big.digest in str(failed.value)  # says which blob stopped
    assert time.monotonic() - tic < 30
    assert store.find(name) is None
    assert proxy.blob_bytes(big.digest) == cut

    proxy.reset()
    pull(store, name, insecure=True)
    first = proxy.blob_gets(big.digest)[0]
    assert first.headers.get("range", "").startswith(f"bytes={cut}-"), first.headers
    assert proxy.blob_bytes(big.digest) == big.size - cut
    assert store.verify(name) == []


@model
def test_corrupted_blob_fails_and_leaves_nothing(tmp_path, proxy, tiny_remote):
    from mlxollama.errors import DigestMismatch
    from mlxollama.registry import pull

    _, _, big, _ = tiny_remote
    name = proxy.name("tiny/llama:a")
    store = Store(tmp_path / "pulled")
    proxy.corrupt(big.digest)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        pull(store, name, insecure=True)
    assert store.find(name) is None
    assert not store.blobs.exists(big.digest)
    store.gc(grace=0)
    hex_ = big.digest.split(":")[1]
    left = [p for p in store.root.rglob("*") if hex_ in p.name and p.suffix != ".lock"]
    assert left == [], "no partial download of the bad bytes is kept"


def fake_model(root: Path, name: str, size: int = 4096, seed: int = 0) -> Store:
    """A store holding `name`: a config blob and one layer of `size` made-up bytes (a model
    to the registry and to pull/push, though not one that loads), for tests where only the
    transfer matters. The htpasswd registry checks bcrypt on every request, so fewer
    requests keep the auth test fast."""
    from mlxollama.store.manifests import TENSOR_MEDIA_TYPE, Descriptor, Manifest

    store = Store(root)
    data = hashlib.sha256(f"{seed}".encode()).digest() * (size // 32)
    config = orjson.dumps({"model_format": "safetensors", "model_family": "fake"})
    with store.lock():
        layer = Descriptor(TENSOR_MEDIA_TYPE, store.blobs.put_bytes(data), len(data), "w")
        cfg = Descriptor(CONFIG_MEDIA_TYPE, store.blobs.put_bytes(config), len(config))
        store.put_manifest(parse_name(name), Manifest(cfg, (layer,)))
    return store


def test_auth(tmp_path, auth_registry):
    from mlxollama.errors import Unauthorized
    from mlxollama.registry import Credentials, pull, push

    name = auth_registry.name("auth/fake:a")
    store = fake_model(tmp_path / "src", name)

    for attempt in (
        lambda: push(store, name, insecure=True),
        lambda: pull(Store(tmp_path / "x"), name, insecure=True),
    ):
        tic = time.monotonic()
        with pytest.raises(Unauthorized):
            attempt()
        assert time.monotonic() - tic < 5
    wrong = Credentials(username="docker", password="wrong")
    with pytest.raises(Unauthorized):
        push(store, name, credentials=wrong, insecure=True)

    good = Credentials(username=auth_registry.username, password=auth_registry.password)
    push(store, name, credentials=good, insecure=True)
    pulled = pull(Store(tmp_path / "dst"), name, credentials=good, insecure=True)
    assert pulled.digest == store.get(name).digest


def test_repush_sends_no_blob_and_transient_errors_are_retried(tmp_path, proxy):
    from mlxollama.registry import pull, push

    name = proxy.name("retry/fake:a")
    store = fake_model(tmp_path / "src", name, size=64 * 1024)
    proxy.fail_with(503, path="/blobs/uploads/", method="POST", times=1)
    proxy.fail_with(503, path="/blobs/uploads/", method="PUT", times=1)  # a refused upload
    push(store, name, insecure=True)
    manifest_bytes = len((store.manifests_dir / store.get(name).name.path()).read_bytes())
    assert [r.status for r in proxy.requests("PUT", "/blobs/uploads/")][:2] == [503, 201]
    # the refused PUT's bytes, once more for its new upload, then the rest
    refused = proxy.requests("PUT", "/blobs/uploads/")[0].received
    assert proxy.received() == store.get(name).size + manifest_bytes + refused
    proxy.reset()
    push(store, name, insecure=True)
    assert {r.method for r in proxy.requests()} == {"HEAD", "PUT"}
    assert proxy.received() < 4096  # the manifest only

    proxy.reset()
    proxy.fail_with(503, path="/manifests/", times=1)
    proxy.fail_with(502, path="/blobs/", method="GET", times=1)
    got = pull(Store(tmp_path / "dst"), name, insecure=True)
    assert got.digest == store.get(name).digest
    assert [r.status for r in proxy.requests("GET", "/manifests/")] == [503, 200]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_registry(tmp_path):
    from mlxollama.errors import RegistryUnreachable
    from mlxollama.registry import pull, push

    name = f"127.0.0.1:{closed_port()}/library/fake:a"
    tic = time.monotonic()
    with pytest.raises(RegistryUnreachable):
        pull(Store(tmp_path / "dst"), name, insecure=True)
    assert time.monotonic() - tic < 5

    store = fake_model(tmp_path / "src", name)
    tic = time.monotonic()
    with pytest.raises(RegistryUnreachable):
        push(store, name, insecure=True)
    assert time.monotonic() - tic < 5


def test_unknown_model(tmp_path, registry):
    from mlxollama.errors import RemoteNotFound
    from mlxollama.registry import pull

    store = Store(tmp_path / "dst")
    with pytest.raises(RemoteNotFound):
        pull(store, registry.name("library/no-such-model:latest"), insecure=True)
    assert store.list() == []


@model
def test_concurrent_pulls_download_each_blob_once(tmp_path, proxy, tiny_remote):
    from mlxollama.registry import pull

    _, a, _, _ = tiny_remote
    name = proxy.name("tiny/llama:a")
    store = Store(tmp_path / "pulled")
    proxy.delay_blobs(0.05)
    start = threading.Barrier(2)
    results: list[object] = [None, None]

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = pull(store, name, insecure=True).digest
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [a.digest, a.digest]
    served = [g.digest for g in proxy.blob_gets() if g.sent]
    assert sorted(served) == sorted(set(a.manifest.digests())), "each blob once"
    assert proxy.blob_bytes() == unique_size(a.manifest)
    assert store.verify(name) == []


def test_bearer_token_auth(tmp_path, proxy):
    """A token registry (Docker Hub's scheme): the 401 challenge names a token service, which
    hands out a token for the Basic credentials; a given token is used as is."""
    from mlxollama.errors import Unauthorized
    from mlxollama.registry import Credentials, pull, push

    proxy.require_bearer("s3cr3t-token", "alice", "wonderland")
    name = proxy.name("bearer/fake:a")
    store = fake_model(tmp_path / "src", name)
    with pytest.raises(Unauthorized, match="MLXOLLAMA_REGISTRY_USERNAME"):
        push(store, name, insecure=True)
    with pytest.raises(Unauthorized):
        push(
            store, name, credentials=Credentials(username="alice", password="wrong"), insecure=True
        )
    push(
        store, name, credentials=Credentials(username="alice", password="wonderland"), insecure=True
    )
    assert proxy.requests("GET", "/token")  # the token came from the challenge's realm
    got = pull(
        Store(tmp_path / "dst"), name, credentials=Credentials(token="s3cr3t-token"), insecure=True
    )
    assert got.digest == store.get(name).digest
    with pytest.raises(Unauthorized):
        pull(Store(tmp_path / "dst2"), name, credentials=Credentials(token="stale"), insecure=True)


def test_remote_manifests_cannot_name_files_outside_the_model():
    from mlxollama.errors import RegistryError
    from mlxollama.registry.oci import parse_remote

    def manifest(title: str) -> bytes:
        layer = {"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1}
        layer["annotations"] = {"org.opencontainers.image.title": title}
        config = {"mediaType": "c", "digest": "sha256:" + "b" * 64, "size": 1}
        return orjson.dumps({"schemaVersion": 2, "config": config, "layers": [layer]})

    assert parse_remote(manifest("1_Pooling/config.json"), "r").layers[0].name
    for bad in ("/etc/passwd", "../../x.pth", "a/../../b", "a\\b", "", "./x"):
        with pytest.raises(RegistryError, match="not a relative path"):
            parse_remote(manifest(bad), "r")
    with pytest.raises(RegistryError, match="schemaVersion"):
        parse_remote(b'{"config": {}}', "r")


def test_credentials_go_only_where_they_belong():
    from mlxollama.registry import Credentials
    from mlxollama.registry.oci import Client
    from mlxollama.store.names import parse_name

    anywhere = Credentials(username="u", password="p")
    assert anywhere.for_host("box.lan:5000") is anywhere
    assert anywhere.for_host("hf.co") is None  # never to Hugging Face unless named
    scoped = Credentials(token="t", host="box.lan:5000")
    assert scoped.for_host("box.lan:5000") is scoped
    assert scoped.for_host("registry.ollama.ai") is None
    client = Client(parse_name("box.lan:5000/team/m:v1"), insecure=True, credentials=scoped)
    assert client._auth_headers("http://box.lan:5000/v2/team/m/blobs/x") == {
        "Authorization": "Bearer t"
    }
    assert client._auth_headers("https://cdn.example/blob?sig=1") == {}  # another origin
    basic = Client(parse_name("box.lan:5000/team/m:v1"), insecure=True, credentials=anywhere)
    assert basic._auth_headers("http://box.lan:5000/v2/") == {}  # Basic waits for a challenge
    client.close()
    basic.close()
