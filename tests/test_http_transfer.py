"""`/api/pull` and `/api/push` on a real daemon (waitress on the real actor Runtime, a
PullerActor per transfer), driven by the official `ollama` client, raw sockets and `mlxctl`.

The first half injects a scripted `registry.pull`/`push` (no network), to pin down the daemon's
side exactly: the progress stream, errors before and after the first object and their
statuses, a client that hangs up (the transfer goes on), two pulls of one model sharing one
transfer, a shutdown that stops a transfer, and the CLI's plain output over the daemon and
in-process. The second half runs the real transfer core against a real OCI registry
(tests/registry_server.py: Debian's docker-registry on 127.0.0.1): push from one daemon, pull
into another, diff pulls, unknown models, an unreachable registry, credentials, and a pulled
SmolLM2 that answers.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import ollama
import orjson
import pykka
import pytest
from click.testing import CliRunner

from mlxollama.actors.puller import TransferCancelled
from mlxollama.cli.main import cli
from mlxollama.errors import RegistryUnreachable, RemoteNotFound, Unauthorized
from mlxollama.http.server import shutdown
from mlxollama.store import manifests as mt
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import parse_name
from mlxollama.store.store import Store
from tests import registry_server
from tests.daemons import Daemon, actor_classes, start_daemon, wait_until

registry = registry_server.registry
auth_registry = registry_server.auth_registry
proxy = registry_server.proxy


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def add_model(store: Store, name: str, tensors: int = 3, seed: str = "") -> None:
    """A stored model written by hand (no MLX): a config blob, `tensors` tensor layers, a
    template and parameters."""
    config = {
        "model_format": "mlx",
        "model_family": "llama",
        "capabilities": ["completion"],
        "model_info": {"general.architecture": "llama", "llama.context_length": 2048},
    }

    def layer(media_type: str, data: bytes, title: str | None = None) -> Descriptor:
        return Descriptor(media_type, store.blobs.put_bytes(data), len(data), title)

    with store.lock():
        manifest = Manifest(
            config=layer(mt.CONFIG_MEDIA_TYPE, orjson.dumps(config)),
            layers=(
                *(
                    layer(mt.TENSOR_MEDIA_TYPE, f"tensor {i}{seed} ".encode() * (i + 1), f"w{i}")
                    for i in range(tensors)
                ),
                layer(mt.TEMPLATE_MEDIA_TYPE, b"{{ .Prompt }}"),
                layer(mt.PARAMS_MEDIA_TYPE, orjson.dumps({"stop": ["<|im_end|>"]})),
            ),
        )
        store.put_manifest(parse_name(name), manifest)


LAYERS = [b"first layer", b"second layer " * 1000]


class FakeRegistry:
    """`registry.pull` / `registry.push` scripted by the model's name: `ghost` is unknown,
    `locked` refuses the credentials, `far` is unreachable, `endless` reports progress until
    it is cancelled; any other model arrives as two layers. With `gate` set, a pull stops
    after its first layer's first object (`reached` is set) until the gate opens."""

    def __init__(self):
        self.pulls: list[SimpleNamespace] = []
        self.pushes: list[SimpleNamespace] = []
        self.gate: threading.Event | None = None
        self.reached = threading.Event()
        self.stopped_by: BaseException | None = None

    def _fail(self, target) -> None:
        if target.model == "ghost":
            raise RemoteNotFound(
                f"pull model manifest: file does not exist: {target.namespace}/"
                f"{target.model}:{target.tag} is not on {target.host}"
            )
        if target.model == "locked":
            raise Unauthorized(f"{target.host} refused the credentials (401)")
        if target.model == "far":
            raise RegistryUnreachable(f"could not reach the registry {target.host}: refused")

    def pull(self, store, name, *, insecure=False, credentials=None, progress, hf_endpoint=None):
        self.pulls.append(SimpleNamespace(name=name, insecure=insecure, credentials=credentials))
        target = parse_name(name)
        progress({"status": "pulling manifest"})
        self._fail(target)
        if target.model == "endless":
            try:
                while True:
                    progress(layer_event("pulling", LAYERS[1], 5))
                    time.sleep(0.01)
            except BaseException as e:
                self.stopped_by = e
                raise
        for i, data in enumerate(LAYERS):
            progress(layer_event("pulling", data, None))
            if i == 0 and self.gate is not None:
                self.reached.set()
                assert self.gate.wait(30)
            progress(layer_event("pulling", data, len(data)))
        progress({"status": "verifying sha256 digest"})
        progress({"status": "writing manifest"})
        add_model(store, name)
        progress({"status": "success"})
        return store.get(name)

    def push(self, store, name, *, insecure=False, credentials=None, progress):
        self.pushes.append(SimpleNamespace(name=name, insecure=insecure, credentials=credentials))
        store.get(name)
        progress({"status": "retrieving manifest"})
        self._fail(parse_name(name))
        for data in LAYERS:
            progress(layer_event("pushing", data, 0))
            progress(layer_event("pushing", data, len(data)))
        progress({"status": "pushing manifest"})
        progress({"status": "success"})


def layer_event(verb: str, data: bytes, completed: int | None) -> dict:
    digest = sha256(data)
    event = {"status": f"{verb} {digest[7:19]}", "digest": digest, "total": len(data)}
    if completed is not None:
        event["completed"] = completed
    return event


def plain_lines(verb: str) -> list[str]:
    return [f"{verb} {sha256(data)[7:19]} 100%" for data in LAYERS]


@pytest.fixture
def daemons(tmp_path):
    """`daemons(name, pull=..., push=..., **env)` starts a daemon on a store of its own;
    all are shut down after the test, and no actor may outlive them."""
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    started: list[Daemon] = []

    def make(name: str = "a", pull=None, push=None, root: Path | None = None, **env) -> Daemon:
        d = start_daemon(root or tmp_path / name, pull=pull, push=push, **env)
        started.append(d)
        return d

    yield make
    for d in started:
        shutdown(d.srv, d.runtime)
    assert not pykka.ActorRegistry.get_all(), actor_classes()


@pytest.fixture
def fake():
    return FakeRegistry()


@pytest.fixture
def faked(daemons, fake):
    """A daemon on the fake registry, with registry credentials in its environment."""
    d = daemons("faked", pull=fake.pull, push=fake.push, registry_username="u")
    d.fake = fake
    return d


def statuses(parts) -> list[str]:
    return [p.status for p in parts]


def no_transfers() -> bool:
    return "PullerActor" not in actor_classes()


def mlxctl(*args: str):
    return CliRunner().invoke(cli, list(args))


# -- the daemon's side, on a scripted registry ---------------------------------------------------


def test_pull_streams_ollamas_progress_through_the_official_client(faked):
    client = faked.client()
    parts = list(client.pull("example.com/team/m:v1", insecure=True, stream=True))
    assert statuses(parts) == [
        "pulling manifest",
        *[f"pulling {sha256(d)[7:19]}" for d in LAYERS for _ in (0, 1)],
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    first, done = parts[1], parts[2]
    assert first.digest == sha256(LAYERS[0]) and first.total == len(LAYERS[0])
    assert not first.completed and done.completed == len(LAYERS[0])
    assert "example.com/team/m:v1" in [m.model for m in client.list().models]
    (call,) = faked.fake.pulls
    assert call.insecure is True
    assert call.credentials.username == "u"  # MLXOLLAMA_REGISTRY_USERNAME of the daemon
    assert wait_until(no_transfers, 5)


def test_pull_not_streamed_answers_the_last_object(faked):
    assert faked.client().pull("m", stream=False).status == "success"
    status, _, data = faked.call("POST", "/api/pull", {"name": "m2", "stream": False})
    assert (status, orjson.loads(data)) == (200, {"status": "success"})
    assert faked.fake.pulls[0].insecure is False


def test_push_streams_and_answers(faked):
    add_model(faked.runtime.store, "example.com/team/m:v1")
    client = faked.client()
    parts = list(client.push("example.com/team/m:v1", insecure=True, stream=True))
    assert statuses(parts) == [
        "retrieving manifest",
        *[f"pushing {sha256(d)[7:19]}" for d in LAYERS for _ in (0, 1)],
        "pushing manifest",
        "success",
    ]
    assert client.push("example.com/team/m:v1", stream=False).status == "success"
    assert faked.fake.pushes[0].insecure is True


@pytest.mark.parametrize(
    ("path", "model", "status", "text"),
    [
        ("/api/pull", "ghost", 404, "pull model manifest: file does not exist: library/ghost"),
        ("/api/pull", "locked", 401, "refused the credentials"),
        ("/api/pull", "far", 502, "could not reach the registry registry.ollama.ai"),
        ("/api/pull", "bad name!", 400, "invalid model name"),
        ("/api/pull", "", 400, "model is required"),
        ("/api/push", "ghost", 404, "model 'ghost' not found"),
        ("/api/push", "a//b", 400, "invalid model name"),
    ],
)
def test_errors_have_their_status_when_not_streamed(faked, path, model, status, text):
    got, _, data = faked.call("POST", path, {"model": model, "stream": False})
    assert got == status and text in orjson.loads(data)["error"]


def test_errors_after_the_first_object_are_a_final_line(faked):
    client = faked.client()
    with pytest.raises(ollama.ResponseError) as e:
        list(client.pull("ghost", stream=True))
    assert "pull model manifest: file does not exist" in str(e.value)
    with pytest.raises(ollama.ResponseError, match="could not reach the registry"):
        list(client.pull("far", stream=True))
    status, _, data = faked.call("POST", "/api/pull", {"model": "far"})
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert status == 200 and lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"error": "could not reach the registry registry.ollama.ai: refused"}
    # an error before the first object still gets its status when streaming
    with pytest.raises(ollama.ResponseError) as e:
        list(client.push("ghost", stream=True))
    assert e.value.status_code == 404
    assert wait_until(no_transfers, 5)


def test_a_client_that_hangs_up_leaves_the_pull_running_to_its_end(faked):
    faked.fake.gate = threading.Event()
    sock = socket.create_connection(("127.0.0.1", faked.port), timeout=30)
    body = orjson.dumps({"model": "m"})
    sock.sendall(
        b"POST /api/pull HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    buf = b""
    while b"pulling " + sha256(LAYERS[0])[7:19].encode() not in buf:
        buf += sock.recv(4096)
    assert faked.fake.reached.wait(10)
    sock.close()
    time.sleep(0.2)
    assert faked.runtime.store.find("m") is None  # not done yet
    faked.fake.gate.set()
    assert wait_until(lambda: faked.runtime.store.find("m") is not None, 10)
    assert wait_until(no_transfers, 10)

    def ended() -> list[dict]:
        return [e for e in faked.events() if e["event"] == "request.end"]

    assert wait_until(lambda: ended(), 10)
    assert ended()[-1]["error"] == "client disconnected (the transfer goes on)"
    names = [e["event"] for e in faked.events()]
    assert "pull.start" in names and "pull.end" in names


def test_two_pulls_of_one_model_share_one_transfer(faked):
    faked.fake.gate = threading.Event()
    results: dict[int, list[str]] = {}

    def pull(i: int) -> None:
        results[i] = statuses(faked.client().pull("m", stream=True))

    first = threading.Thread(target=pull, args=(1,))
    first.start()
    assert faked.fake.reached.wait(10)
    second = threading.Thread(target=pull, args=(2,))
    second.start()
    with faked.runtime._transfers_lock:  # the actor may reach the registry before it is noted
        ((transfer, _),) = faked.runtime._transfers.values()
    assert wait_until(lambda: len(transfer._listeners) == 2, 30)
    faked.fake.gate.set()
    first.join(10)
    second.join(10)
    assert len(faked.fake.pulls) == 1
    assert results[1][-1] == results[2][-1] == "success"
    # the one who joined late saw where each layer stood, then the rest
    assert results[2][:2] == ["pulling manifest", f"pulling {sha256(LAYERS[0])[7:19]}"]
    assert wait_until(no_transfers, 5)


def test_a_pull_with_other_settings_does_not_join_a_running_one(faked):
    faked.fake.gate = threading.Event()
    results: dict[bool, list[str]] = {}

    def pull(insecure: bool) -> None:
        results[insecure] = statuses(faked.client().pull("m", insecure=insecure, stream=True))

    first = threading.Thread(target=pull, args=(False,))
    first.start()
    assert faked.fake.reached.wait(10)
    second = threading.Thread(target=pull, args=(True,))
    second.start()
    assert wait_until(lambda: len(faked.fake.pulls) == 2, 30)  # its own transfer
    faked.fake.gate.set()
    first.join(10)
    second.join(10)
    assert [p.insecure for p in faked.fake.pulls] == [False, True]
    assert results[False][-1] == results[True][-1] == "success"
    assert wait_until(no_transfers, 5)


def test_stopping_the_daemon_stops_a_running_transfer(daemons, fake):
    d = daemons("stopping", pull=fake.pull)
    stream = d.client().pull("endless", stream=True)
    assert next(stream).status == "pulling manifest"
    tic = time.monotonic()
    d.runtime.stop()
    assert time.monotonic() - tic < 5
    assert isinstance(fake.stopped_by, TransferCancelled)
    assert no_transfers()
    with pytest.raises(ollama.ResponseError, match="the pull of 'endless:latest' was stopped"):
        list(stream)
    assert d.runtime.store.find("endless") is None


# -- the CLI, over the daemon and in-process -----------------------------------------------


def test_cli_pull_and_push_over_the_daemon_print_plain_lines(faked, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{faked.port}")
    out = mlxctl("pull", "example.com/team/m:v1", "--insecure")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "pulling manifest",
        *plain_lines("pulling"),
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert faked.fake.pulls[-1].insecure is True
    out = mlxctl("push", "example.com/team/m:v1")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "retrieving manifest",
        *plain_lines("pushing"),
        "pushing manifest",
        "success",
    ]
    out = mlxctl("pull", "ghost")
    assert out.exit_code == 1
    assert out.output.splitlines()[-1].startswith(
        "Error: pull model manifest: file does not exist: library/ghost:latest"
    )
    out = mlxctl("push", "nothing-here")
    assert (out.exit_code, out.output) == (1, "Error: model 'nothing-here' not found\n")


def test_cli_pull_and_push_in_process(monkeypatch, tmp_path, fake):
    import mlxollama.registry

    monkeypatch.setattr(mlxollama.registry, "pull", fake.pull)
    monkeypatch.setattr(mlxollama.registry, "push", fake.push)
    monkeypatch.setenv("MLXOLLAMA_REGISTRY_TOKEN", "t0k")
    out = mlxctl("pull", "m")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "pulling manifest",
        *plain_lines("pulling"),
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert fake.pulls[-1].credentials.token == "t0k"
    assert Store(tmp_path / "store").find("m") is not None
    out = mlxctl("push", "m", "--insecure")
    assert out.exit_code == 0 and out.output.splitlines()[-1] == "success"
    assert fake.pushes[-1].insecure is True
    out = mlxctl("pull", "far")
    assert out.exit_code == 1
    assert out.output.splitlines() == [
        "pulling manifest",
        "Error: could not reach the registry registry.ollama.ai: refused",
    ]
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(("pull ", "push "))], 5
    )


def test_cli_pack_writes_and_reads_an_oci_layout(tmp_path):
    store = Store(tmp_path / "store")  # conftest's MLXOLLAMA_MODELS
    add_model(store, "m", tensors=20)
    digest = store.get("m").digest
    for dest in ("m.oci", "m.tar"):
        out = mlxctl("pack", "m", str(tmp_path / dest))
        assert out.exit_code == 0, out.output
        assert out.output.splitlines()[-2:] == ["success", f"packed 'm' into {tmp_path / dest}"]
    assert (tmp_path / "m.oci" / "oci-layout").is_file()
    assert mlxctl("rm", "m").exit_code == 0
    out = mlxctl("pack", "--import", str(tmp_path / "m.tar"))
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "copying 23 layers 100% (2.2 KB)",
        "writing manifest",
        "success",
        f"imported 'm:latest' from {tmp_path / 'm.tar'}",
    ]
    out = mlxctl("pack", "--import", str(tmp_path / "m.oci"), "me/other:v1")
    assert out.output.splitlines()[-1] == f"imported 'me/other:v1' from {tmp_path / 'm.oci'}"
    assert store.get("m").digest == store.get("me/other:v1").digest == digest
    out = mlxctl("pack", "m")
    assert out.exit_code == 2 and "mlxctl pack NAME DEST" in out.output


# -- end to end: the transfer core against a real OCI registry --------------------------------


@pytest.fixture
def source(daemons, registry):
    """A daemon whose store holds a 20-tensor model named for the session's registry."""
    d = daemons("source")
    d.name = registry.name("team/tiny:v1")
    add_model(d.runtime.store, d.name, tensors=20, seed="e2e")
    return d


def test_push_then_pull_between_two_daemons(source, daemons, proxy):
    parts = list(source.client().push(source.name, insecure=True, stream=True))
    sts = statuses(parts)
    assert sts[0] == "retrieving manifest" and sts[-2:] == ["pushing manifest", "success"]
    pushed = {p.digest for p in parts if p.digest}
    stored = source.runtime.store.get(source.name)
    assert pushed == set(stored.manifest.digests())

    target = daemons("target")
    name = proxy.name("team/tiny:v1")
    parts = list(target.client().pull(name, insecure=True, stream=True))
    sts = statuses(parts)
    assert sts[0] == "pulling manifest"
    assert sts[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert {p.digest for p in parts if p.digest} == pushed
    assert target.runtime.store.get(name).digest == stored.digest
    first = proxy.blob_bytes()
    assert first >= sum(d.size for d in stored.manifest.layers)

    # a second pull fetches nothing: every layer is complete in its first object
    again = list(target.client().pull(name, insecure=True, stream=True))
    assert proxy.blob_bytes() == first
    layers = [p for p in again if p.digest]
    assert len(layers) == len(pushed) and all(p.completed == p.total for p in layers)
    assert wait_until(no_transfers, 5)


def test_a_shutdown_mid_pull_leaves_no_tag_and_the_next_pull_completes(source, daemons, proxy):
    assert source.client().push(source.name, insecure=True).status == "success"
    name = proxy.name("team/tiny:v1")
    proxy.delay_blobs(0.3)
    target = daemons("target")
    stream = target.client().pull(name, insecure=True, stream=True)
    assert next(stream).status == "pulling manifest"
    assert next(stream).digest  # the first blobs are arriving
    tic = time.monotonic()
    target.runtime.stop()
    assert time.monotonic() - tic < 5
    with pytest.raises(ollama.ResponseError, match="was stopped"):
        list(stream)
    assert no_transfers()
    assert Store(target.root).find(name) is None  # no tag, and only verified blobs
    proxy.delay_blobs(0)
    again = daemons("again", root=target.root)
    assert again.client().pull(name, insecure=True).status == "success"
    assert again.runtime.store.get(name).digest == source.runtime.store.get(source.name).digest


def test_real_registry_errors(daemons, registry, monkeypatch):
    d = daemons("errors")
    client = d.client()
    missing = registry.name("team/missing:v1")
    with pytest.raises(ollama.ResponseError) as e:
        list(client.pull(missing, insecure=True, stream=True))
    assert "pull model manifest: file does not exist" in str(e.value)
    status, _, data = d.call(
        "POST", "/api/pull", {"model": missing, "insecure": True, "stream": False}
    )
    assert status == 404 and "file does not exist" in orjson.loads(data)["error"]

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    far = f"127.0.0.1:{closed}/team/m:v1"
    status, _, data = d.call("POST", "/api/pull", {"model": far, "insecure": True, "stream": False})
    assert status == 502
    assert f"127.0.0.1:{closed}" in orjson.loads(data)["error"]
    # the CLI over the daemon says the same
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{d.port}")
    out = mlxctl("pull", far, "--insecure")
    assert out.exit_code == 1
    assert out.output.splitlines()[0] == "pulling manifest"
    assert f"127.0.0.1:{closed}" in out.output.splitlines()[-1]
    assert wait_until(no_transfers, 5)


def test_credentials_come_from_the_daemons_environment(daemons, auth_registry):
    name = auth_registry.name("team/private:v1")
    anonymous = daemons("anonymous")
    add_model(anonymous.runtime.store, name, seed="auth")
    status, _, data = anonymous.call(
        "POST", "/api/push", {"model": name, "insecure": True, "stream": False}
    )
    assert status == 401, data
    assert "MLXOLLAMA_REGISTRY_USERNAME" in orjson.loads(data)["error"]

    member = daemons(
        "member",
        registry_username=auth_registry.username,
        registry_password=auth_registry.password,
    )
    add_model(member.runtime.store, name, seed="auth")
    assert member.client().push(name, insecure=True).status == "success"
    shutil.rmtree(member.root / "blobs")
    shutil.rmtree(member.root / "manifests")
    assert member.client().pull(name, insecure=True).status == "success"
    assert member.runtime.store.get(name).digest == anonymous.runtime.store.get(name).digest


def test_cli_pull_in_process_from_a_real_registry(source, registry, tmp_path):
    assert source.client().push(source.name, insecure=True).status == "success"
    out = mlxctl("pull", source.name, "--insecure")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert "\r" not in out.output
    store = Store(tmp_path / "store")  # the in-process store (conftest's MLXOLLAMA_MODELS)
    assert store.get(source.name).digest == source.runtime.store.get(source.name).digest
    again = mlxctl("pull", source.name, "--insecure")
    assert again.exit_code == 0
    assert re.fullmatch(r"pulling 23 layers 100% \(\d+(\.\d)? KB\)", again.output.splitlines()[1])


@pytest.mark.model
def test_a_pulled_smollm2_answers_like_the_pushed_one(daemons, registry, smollm2_store, tmp_path):
    root = tmp_path / "smol"
    shutil.copytree(smollm2_store, root, symlinks=True)
    name = registry.name("library/smollm2:e2e")
    Store(root).copy("smollm2", name)
    source = daemons(root=root)
    assert source.client().push(name, insecure=True).status == "success"
    target = daemons("smol-target")
    tic = time.monotonic()
    parts = list(target.client().pull(name, insecure=True, stream=True))
    took = time.monotonic() - tic
    assert parts[-1].status == "success"
    layers = {p.digest for p in parts if p.digest}
    assert len(layers) > 600  # a layer per tensor
    ask = {"temperature": 0, "num_predict": 12}
    want = source.client().generate(name, "The capital of France is", options=ask)
    got = target.client().generate(name, "The capital of France is", options=ask)
    assert got.response == want.response and got.response.strip()
    print(f"pulled {len(layers)} layers of SmolLM2 in {took:.2f}s")
