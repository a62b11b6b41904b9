"""Docs that cannot drift: every setting is documented, docs/cli.md is current, and every
module docs/architecture.md names exists."""

import re
import subprocess
import sys
from pathlib import Path

from mlxollama.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented():
    text = (ROOT / "docs" / "settings.md").read_text()
    for s in SETTINGS:
        assert f"`{s.name}`" in text, f"{s.name} is missing from docs/settings.md"


def test_cli_reference_is_current():
    out = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "docs/cli.md"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, "docs/cli.md is stale: run `cog -r docs/cli.md`\n" + out.stderr


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert script in readme and (ROOT / script).exists()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_module_the_architecture_page_names_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*\.py)", text))  # `engine/batch.py`, `sdk.py`
    named |= {m + "/" for m in re.findall(r"^\s*(?:[├└│─ ]*)?([a-z_]+)/\s", text, re.M)}
    assert len(named) > 30, named
    package = ROOT / "mlxollama"
    tests = ROOT / "tests"
    missing = [
        n
        for n in sorted(named)
        if not (package / n).exists() and not (tests / n.removeprefix("tests/")).exists()
    ]
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
