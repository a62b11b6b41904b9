"""The first run from a fresh clone: the README's commands on a machine that lacks things.

The scripts run for real, in a subprocess, with a PATH that is this machine's tools minus
skopeo, the registry and apt-get, plus stand-ins for `id` (which user we are) and, where a
test wants one, `apt-get` (which records what it was asked to install instead of touching
the system).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from mlxollama import __version__
from tests.daemons import start_daemon

ROOT = Path(__file__).resolve().parents[1]


HIDDEN = {"skopeo", "docker-registry", "registry", "apt-get", "apt", "id", "sudo", "brew"}


def _bin(tmp: Path, uid: int, apt: bool = False) -> Path:
    """A folder for PATH: every tool of /usr/bin and /bin but the HIDDEN ones, an `id` that
    answers `uid`, and optionally an apt-get that logs its arguments and then provides
    skopeo and docker-registry."""
    folder = tmp / "bin"
    folder.mkdir()
    for system in (Path("/usr/bin"), Path("/bin")):
        for tool in system.iterdir():
            target = folder / tool.name
            if tool.name not in HIDDEN and not target.exists() and not target.is_symlink():
                target.symlink_to(tool)
    _script(folder / "id", f'[ "$1" = -u ] && echo {uid}\n')
    if apt:
        _script(
            folder / "apt-get",
            f'echo "apt-get $*" >> {tmp}/apt.log\n'
            f'if [ "$1" = install ]; then\n'
            f'  for t in skopeo docker-registry; do printf "#!/bin/sh\\n" > {folder}/$t;'
            f" chmod +x {folder}/$t; done\nfi\n",
        )
    return folder


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def _run(script: str, path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {"PATH": str(path), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    tic = time.monotonic()
    out = subprocess.run(
        ["/bin/bash", str(ROOT / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out, time.monotonic() - tic


def test_test_command_without_skopeo_and_registry_stops_at_once_with_one_line(tmp_path):
    out, took = _run("scripts/test.sh", _bin(tmp_path, uid=1000))
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "skopeo" in lines[0] and "docker-registry" in lines[0]
    assert "apt-get install" in lines[0]
    assert "pip" not in out.stdout + out.stderr  # stopped before setup.sh installs anything
    assert took < 10


def test_prereqs_as_root_install_what_is_missing_with_apt(tmp_path):
    path = _bin(tmp_path, uid=0, apt=True)
    out, _ = _run("scripts/prereqs.sh", path, "test")
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "apt-get update -q"
    assert calls[1].startswith("apt-get install -y -q ")
    assert {"skopeo", "docker-registry"} <= set(calls[1].split()[4:])


def test_prereqs_as_root_without_apt_names_the_packages(tmp_path):
    out, _ = _run("scripts/prereqs.sh", _bin(tmp_path, uid=0), "test")
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1
    assert "skopeo" in out.stderr and "sudo" not in out.stderr


def test_demo_needs_neither_skopeo_nor_registry(tmp_path):
    out, _ = _run("scripts/prereqs.sh", _bin(tmp_path, uid=1000), "demo")
    assert out.returncode == 0, out.stderr
    assert "skopeo" not in out.stderr


# -- mlxctl from a shell: start-up, busy ports, signals, BLAS -------------------------------

MLXCTL = str(Path(sys.executable).parent / "mlxctl")
HEAVY = ("mlx", "mlx_lm", "transformers", "falcon", "waitress", "pykka", "huggingface_hub")


def _env(**more: str) -> dict[str, str]:
    return {**os.environ, **{k: str(v) for k, v in more.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("verb", ["--help", "list", "ps"])
def test_quick_verbs_import_neither_mlx_nor_the_server_stack(verb, tmp_path):
    code = (
        "import sys\n"
        "from mlxollama.cli.main import cli\n"
        f"try: cli([{verb!r}], prog_name='mlxctl')\n"
        "except SystemExit: pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = _env(MLXOLLAMA_HOST=f"127.0.0.1:{_free_port()}", MLXOLLAMA_MODELS=tmp_path / "s")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


@contextlib.contextmanager
def _listener(kind: str):
    """Something else on a port: a socket that accepts and says nothing, or http.server."""
    if kind == "socket":
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        try:
            yield srv.getsockname()[1]
        finally:
            srv.close()
        return
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _serve(tmp_path: Path, port: int, timeout: float = 60, **env) -> tuple[object, float]:
    env = _env(MLXOLLAMA_HOST=f"127.0.0.1:{port}", MLXOLLAMA_MODELS=tmp_path / "s", **env)
    tic = time.monotonic()
    out = subprocess.run(
        [MLXCTL, "serve"], env=env, capture_output=True, text=True, timeout=timeout
    )
    return out, time.monotonic() - tic


@pytest.mark.parametrize("kind", ["socket", "http"])
def test_serve_on_a_busy_port_says_what_holds_it_at_once(kind, tmp_path):
    with _listener(kind) as port:
        out, took = _serve(tmp_path, port)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"Error: 127.0.0.1:{port} is in use by ")
    assert "not mlxollama" in lines[0] and "MLXOLLAMA_HOST=" in lines[0]
    assert took < 2 * 4  # 2 s asked; generous on a loaded 2-core box (it was 19 s)


@pytest.mark.model
def test_serve_next_to_a_running_daemon_names_it(tmp_path, store_root):
    d = start_daemon(store_root)
    try:
        out, _ = _serve(tmp_path, d.port)
    finally:
        d.srv.close()
        d.runtime.stop()
    assert out.returncode == 1
    line = out.stderr.strip()
    assert line.startswith(f"Error: 127.0.0.1:{d.port} is in use by another mlxollama daemon")
    assert f"(version {__version__})" in line and "\n" not in line


def test_the_demo_stops_when_its_port_is_taken(tmp_path):
    with _listener("http") as port:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "demo.sh")],
            env=_env(
                MLXOLLAMA_HOST=f"127.0.0.1:{port}", MLXOLLAMA_MODELS=tmp_path / "s", TMPDIR=tmp_path
            ),
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 1
    assert "daemon running" not in out.stdout
    assert f"Error: 127.0.0.1:{port} is in use by a server that is not mlxollama" in out.stderr


def test_a_foreign_web_server_is_not_taken_for_the_daemon(tmp_path, monkeypatch):
    from mlxollama.cli.connect import connect, is_daemon

    with _listener("http") as port:
        monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{port}")
        assert not is_daemon(connect())
        out = subprocess.run(
            [MLXCTL, "ps"], env=_env(MLXOLLAMA_HOST=f"127.0.0.1:{port}"), capture_output=True
        )
    assert out.returncode == 1
    assert b"is not an mlxollama daemon" in out.stderr and b"<html" not in out.stderr.lower()


def test_a_blas_path_that_cannot_load_is_an_error(tmp_path):
    not_a_library = tmp_path / "libblas.so.3"
    not_a_library.write_text("not a shared object")
    for path in (tmp_path / "missing.so", not_a_library):
        out, _ = _serve(tmp_path, _free_port(), MLXOLLAMA_BLAS=path)
        assert out.returncode == 1
        line = out.stderr.strip()
        assert line.startswith(f"Error: MLXOLLAMA_BLAS={path}: cannot load"), out.stderr
        assert "\n" not in line


@pytest.mark.model
def test_serve_and_ps_say_the_backend_and_blas(tmp_path, store_root):
    from mlxollama import engine

    d = start_daemon(store_root)
    try:
        _, _, body = d.call("GET", "/api/version")
        out = subprocess.run(
            [MLXCTL, "ps"], env=_env(MLXOLLAMA_HOST=f"127.0.0.1:{d.port}"), capture_output=True
        )
    finally:
        d.srv.close()
        d.runtime.stop()
    info = orjson.loads(body)["mlxollama"]
    assert info["peak_memory"] >= info["active_memory"] > 0
    assert {k: info[k] for k in engine.describe()} == engine.describe() and info["backend"] in (
        "cpu",
        "metal",
        "cuda",
    )
    blas = info["blas"]
    assert blas == engine.BLAS if engine.BLAS else blas.startswith(("none", "Accelerate"))
    assert out.returncode == 0
    assert f"on {info['backend']}, BLAS {blas}" in out.stderr.decode()
    assert out.stdout.decode().startswith("NAME ")


def _generating(store: Path, *args: str) -> subprocess.Popen:
    """`mlxctl run` in-process on the real SmolLM2, once its first tokens are out."""
    env = _env(MLXOLLAMA_HOST=f"127.0.0.1:{_free_port()}", MLXOLLAMA_MODELS=store)
    prompt = "Write a very long story about a dragon and a knight."
    proc = subprocess.Popen(
        [MLXCTL, "run", "smollm2", "-p", "num_predict=4000", *args, prompt],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.read(8), proc.stderr.read()
    return proc


@pytest.mark.model
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_an_in_process_answer_with_its_exit_status(sig, code, store_root):
    proc = _generating(store_root)
    tic = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert time.monotonic() - tic < 20  # one step, on a loaded box; it was ~30 s
    assert b"Traceback" not in err


@pytest.mark.model
def test_serve_stops_on_sigterm_with_143(tmp_path, store_root):
    port = _free_port()
    env = _env(MLXOLLAMA_HOST=f"127.0.0.1:{port}", MLXOLLAMA_MODELS=store_root)
    proc = subprocess.Popen([MLXCTL, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "server.stopped" in err


def test_serve_checks_the_address_the_server_will_bind():
    """One parser of MLXOLLAMA_HOST for `mlxctl serve`'s check, the server and the client
    (its table of forms: tests/test_http_native.py::test_parse_host)."""
    from mlxollama import client, config
    from mlxollama.cli import connect
    from mlxollama.http import server

    assert connect.parse_host is server.parse_host is client.parse_host is config.parse_host
