"""What already held when the hardening probe ran, kept under test so it keeps holding:
a storm of clients hanging up frees every slot, a killed `create`, `cp` or `rm` never leaves a
half model, hostile names and digests never reach a path outside the store, and a long run
of ordinary requests does not grow the daemon's memory.

The daemons here run on the tiny random llamas (fast); the kills use `mlxctl` subprocesses
on a copy of the SmolLM2 store.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pykka
import pytest

from mlxollama.http.server import shutdown
from mlxollama.store.store import Store
from tests.daemons import Daemon, actor_classes, raw_post, start_daemon, wait_until

pytestmark = pytest.mark.model

GREEDY = {"temperature": 0}


@pytest.fixture
def tiny(tmp_path, tiny_store):
    """A daemon on a private copy of the tiny store; `tiny(**settings)` starts it."""
    started: list[Daemon] = []

    def start(**env) -> Daemon:
        assert not pykka.ActorRegistry.get_all(), actor_classes()
        root = tmp_path / "store"
        shutil.copytree(tiny_store, root)
        started.append(start_daemon(root, **env))
        return started[-1]

    yield start
    for d in started:
        shutdown(d.srv, d.runtime)


def test_a_hundred_clients_hanging_up_at_once_free_every_slot(tiny):
    d = tiny(num_parallel=40, max_queue=100)
    assert d.client().generate("tiny-a", "").done_reason == "load"
    body = {
        "model": "tiny-a",
        "prompt": "hello",
        "options": {**GREEDY, "num_predict": 4000, "num_ctx": 4096},
    }
    socks = [raw_post(d.port, "/api/generate", body) for _ in range(100)]
    assert wait_until(lambda: d.active() == 100, 60), d.runtime.ps()
    assert d.model_stats()["tiny-a:latest"] == {"active": 40, "waiting": 60}

    for sock in socks:
        sock.close()
    t0 = time.monotonic()
    freed = wait_until(
        lambda: d.active() == 0 and d.model_stats()["tiny-a:latest"] == {"active": 0, "waiting": 0},
        10,
    )
    assert freed, (time.monotonic() - t0, d.runtime.ps(), d.model_stats())
    answer = d.client().generate("tiny-a", "hello", options={**GREEDY, "num_predict": 3})
    assert answer.done and answer.eval_count == 3


def _rss_kib() -> int:
    """This process's resident set now (kB), from /proc (Linux) or the peak elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_sequential_requests_do_not_grow_memory(tiny):
    d = tiny()
    client = d.client()

    def burst(n: int) -> None:
        for i in range(n):
            if i % 2:
                client.generate("tiny-a", f"hi {i}", options={**GREEDY, "num_predict": 4})
            else:
                messages = [{"role": "user", "content": f"hello {i}"}]
                client.chat("tiny-a", messages=messages, options={**GREEDY, "num_predict": 4})
            d.call("GET", "/api/ps")

    burst(60)  # warm: the model, MLX's buffer cache, waitress's threads
    before = _rss_kib()
    burst(300)
    grown = _rss_kib() - before
    # A leak of one session (thread, queue, detokenizer) per request shows as megabytes here.
    assert grown < 40 * 1024, f"RSS grew by {grown} kB over 300 requests"
    assert wait_until(lambda: "SessionActor" not in actor_classes(), 5)


HOSTILE_NAMES = [
    "../../../../tmp/pwned",
    "..",
    "../x",
    "a/../../b",
    "./a",
    "/etc/passwd",
    "a\\..\\..\\b",
    "%2e%2e/%2e%2e/x",
    "x:../../y",
    "registry.ollama.ai/../../../x",
    "a/b/../../../../c:latest",
    "\x00evil",
    "ok:tag/../..",
    "~root",
    "a" * 5000,
]
HOSTILE_DIGESTS = [
    "sha256:../../../../tmp/pwned",
    "sha256:" + "0" * 63 + "/",
    "../" + "0" * 64,
    "sha256-" + "a" * 64 + "/../../x",
    "sha256:%2e%2e",
]


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_hostile_names_and_digests_never_reach_a_path_outside_the_store(tiny, tmp_path):
    d = tiny()
    outside = tmp_path.parent
    before_outside = {p.name for p in outside.iterdir()}
    before_tmp = {p.name for p in Path("/tmp").iterdir()}
    store_before = _tree(d.root / "manifests")

    statuses: list[tuple[str, object, int]] = []

    def send(method: str, path: str, body) -> None:
        status, _, data = d.call(method, path, body, {"Content-Type": "application/json"})
        statuses.append((path, body, status))
        assert status < 500, (method, path, body, status, data)
        assert str(d.root) not in data.decode("utf-8", "replace"), (path, body, data)

    for name in HOSTILE_NAMES:
        user = [{"role": "user", "content": "x"}]
        send("POST", "/api/show", {"model": name})
        send("POST", "/api/generate", {"model": name, "prompt": "x", "stream": False})
        send("POST", "/api/chat", {"model": name, "messages": user, "stream": False})
        send("POST", "/api/embed", {"model": name, "input": "x"})
        send("DELETE", "/api/delete", {"model": name})
        send("POST", "/api/copy", {"source": "tiny-a", "destination": name})
        send("POST", "/api/copy", {"source": name, "destination": "fine"})
        send("POST", "/api/create", {"model": name, "from": "tiny-a", "stream": False})
        send("POST", "/api/create", {"model": "fine2", "from": name, "stream": False})
        send("POST", "/api/pull", {"model": name, "stream": False})
        send("POST", "/api/push", {"model": name, "stream": False})
    for digest in HOSTILE_DIGESTS:
        for method in ("HEAD", "POST"):
            status, _, _ = d.call(method, f"/api/blobs/{digest}", b"data")
            assert status in (400, 404, 405), (method, digest, status)
        files = {"x.gguf": digest}
        send("POST", "/api/create", {"model": "fine3", "files": files, "stream": False})

    assert all(400 <= s < 500 for _, _, s in statuses), [x for x in statuses if x[2] < 400]
    assert {p.name for p in outside.iterdir()} == before_outside
    assert "pwned" not in {p.name for p in Path("/tmp").iterdir()} - before_tmp
    assert _tree(d.root / "manifests") == store_before
    assert sorted(m.model for m in d.client().list().models) == ["tiny-a:latest", "tiny-b:latest"]


# -- kill -9 in the middle of a store mutation -------------------------------------------


def _mlxctl(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_HOST": "127.0.0.1:9"}
    code = "from mlxollama.cli.main import cli; cli()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _whole_or_absent(root: Path) -> list[str]:
    """Every listed model is complete (all blobs present and hashing right); the names."""
    store = Store(root)
    names = []
    for model in store.list():
        assert store.verify(str(model.name)) == [], model.name
        names.append(model.name.model)
    return names


@pytest.mark.parametrize("delay", [1.5, 3.0, 4.5, 6.0])
def test_a_killed_create_cp_or_rm_never_shows_a_half_model(store_root, smollm2_gguf, delay):
    modelfile = store_root.parent / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf}\nPARAMETER temperature 0\n")

    proc = _mlxctl(store_root, "create", "victim", "-f", str(modelfile), "-q", "int8")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    names = _whole_or_absent(store_root)
    assert "smollm2" in names and set(names) <= {"smollm2", "victim"}, names

    proc = _mlxctl(store_root, "cp", "smollm2", "copy-of")
    time.sleep(delay / 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    names = _whole_or_absent(store_root)
    assert "smollm2" in names and set(names) <= {"smollm2", "victim", "copy-of"}, names

    proc = _mlxctl(store_root, "rm", "smollm2")
    time.sleep(delay / 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    _whole_or_absent(store_root)

    # the store is still usable: a fresh create of the same name completes and verifies
    done = _mlxctl(store_root, "create", "victim", "-f", str(modelfile))
    assert done.wait(300) == 0
    assert "victim" in _whole_or_absent(store_root)
    manifest = orjson.loads((store_root / "manifests").joinpath(*_tag_path("victim")).read_bytes())
    assert manifest["layers"]


def _tag_path(model: str) -> tuple[str, ...]:
    return ("registry.ollama.ai", "library", model, "latest")
