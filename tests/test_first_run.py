"""The first run from a fresh clone: the README's commands on a machine that lacks things.

The scripts run for real, in a subprocess, with a PATH that is this machine's tools minus
skopeo, the registry and apt-get, plus stand-ins for `id` (which user we are) and, where a
test wants one, `apt-get` (which records what it was asked to install instead of touching
the system).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

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
