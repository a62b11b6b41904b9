"""The dependency rules: the embedded SDK, the engine and the store never import the daemon."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_sdk_imports_no_daemon_code():
    code = (
        "import sys, mlxollama.sdk, mlxollama.models.load, mlxollama.engine.generate, "
        "mlxollama.models.create\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('falcon', 'waitress', 'pykka') "
        "or m.startswith(('mlxollama.actors', 'mlxollama.http', 'mlxollama.cli'))]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_import_linter_contracts_hold():
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "lint-imports"),
            "--config",
            str(ROOT / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_help_does_not_import_mlx():
    code = (
        "import sys, mlxollama.cli.main; print('mlx' in sys.modules or 'mlx.core' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
