"""`mlxctl bench` on the real SmolLM2: through a real daemon and in-process, as a table, JSON
and CSV, with tiny sizes (`-p 16 -n 8 -r 2 -c 1,2`); bad arguments give click errors."""

from __future__ import annotations

import csv
import io
import re

import orjson
import pytest
from click.testing import CliRunner

from mlxollama.bench import percentile, prompt_of
from mlxollama.cli.main import cli
from tests.daemons import start_daemon

TINY = ["-p", "16", "-n", "8", "-r", "2", "-c", "1,2"]


def mlxctl(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, smollm2_store):
    import shutil

    root = tmp_path_factory.mktemp("bench") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    d = start_daemon(root, num_parallel=2)
    yield d
    d.srv.close()
    d.runtime.stop()


@pytest.mark.model
def test_daemon_json_and_table(daemon, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{daemon.port}")
    out = mlxctl("bench", "smollm2", *TINY, "--json")
    assert out.exit_code == 0, out.output
    report = orjson.loads(out.stdout)
    system = report["system"]
    assert system["via"].startswith("daemon at") and system["backend"] in ("cpu", "metal", "cuda")
    assert system["mlx"] and system["mlx_lm"] and system["peak_memory"] > 0
    tests = {t["test"]: t for t in report["tests"]}
    assert set(tests) == {"pp16", "tg8"}
    # the nonce keeps the prompt cache out: every repetition prefilled the whole prompt (its 8
    # hex digits are 2 to 8 tokens, so the count moves a little around 16)
    assert 12 <= tests["pp16"]["n_prompt"] <= 24 and len(tests["pp16"]["samples"]) == 2
    assert all(t["tps_mean"] > 0 and t["weights"] == "Q4_1" for t in tests.values())
    sweeps = report["concurrency"]
    assert [s["streams"] for s in sweeps] == [1, 2]
    assert all(s["tps"] > 0 and s["ttft_ms"] > 0 and s["itl_p99_ms"] >= s["itl_p50_ms"] > 0
               for s in sweeps)  # fmt: skip
    # a daemon's prompt cache held nothing of these prompts: pp ran for real
    table = mlxctl("bench", "smollm2", "-p", "16", "-n", "8", "-r", "2", "-c", "2").output
    assert re.search(r"\| smollm2 \| \w+ +\| Q4_1 +\| pp16 \| +[\d.]+ ± [\d.]+ \|", table)
    assert re.search(r"\| smollm2 \| +2 \| +[\d.]+ \|", table)
    assert "mlxollama" in table and "mlx-lm" in table and "peak memory" in table


@pytest.mark.model
def test_embedded_csv(store_root):
    out = mlxctl("bench", "smollm2", *TINY, "--csv", "--embedded")
    assert out.exit_code == 0, out.output
    assert "one stream at a time" in out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["test"] for r in rows] == ["pp16", "tg8", "c1"]
    assert all(float(r["tps_mean"]) > 0 and r["mlx"] for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "16,x"], "not a comma list of integers"),
        (["-n", "0"], "at least 1"),
        (["-r", "0"], "0 is not in the range"),
        (["--json", "--csv"], "exclude each other"),
        ([], None),
    ],
)
def test_bad_arguments(args, message):
    out = CliRunner().invoke(cli, ["bench", *args] + ([] if message is None else ["m"]))
    assert out.exit_code == 2
    assert (message or "Missing argument 'MODELS...'") in out.output


def test_helpers():
    assert prompt_of(16) != prompt_of(16) and prompt_of(16).count(" the") == 12
    assert percentile([], 50) == 0 and percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
