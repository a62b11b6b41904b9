"""The CLI's offline verbs through click's runner, on a store holding SmolLM2."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from mlxollama.cli.main import cli


def mlxctl(*args, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.mark.model
def test_list_prints_ollama_table(store_root):
    out = mlxctl("list")
    assert out.exit_code == 0
    header, row = out.output.splitlines()
    assert re.fullmatch(r"NAME\s{4,}ID\s{4,}SIZE\s{4,}MODIFIED", header)
    assert re.fullmatch(r"smollm2:latest\s{4,}[0-9a-f]{12}\s{4,}\d+ MB\s{4,}.+ ago", row)
    assert mlxctl("ls", "nomatch").output.splitlines() == ["NAME    ID    SIZE    MODIFIED"]


@pytest.mark.model
def test_show_sections_and_parts(store_root):
    out = mlxctl("show", "smollm2").output
    assert "  Model\n" in out and "architecture" in out and "llama" in out
    assert re.search(r"parameters\s+134\.52M", out)
    assert re.search(r"context length\s+8192", out)
    assert re.search(r"quantization\s+Q4_1", out)
    assert "  Capabilities\n    completion" in out
    assert '    stop    "<|im_end|>"' in out
    assert mlxctl("show", "smollm2", "--parameters").output.startswith("stop ")
    assert "<|im_start|>" in mlxctl("show", "smollm2", "--template").output
    modelfile = mlxctl("show", "smollm2", "--modelfile").output
    assert "# FROM smollm2:latest" in modelfile and "PARAMETER stop <|im_end|>" in modelfile


@pytest.mark.model
def test_cp_rm_verify_gc(store_root):
    assert mlxctl("cp", "smollm2", "me/copy:v1").output == "copied 'smollm2' to 'me/copy:v1'\n"
    assert "me/copy:v1" in mlxctl("list").output
    assert "every blob matches" in mlxctl("verify", "me/copy:v1").output
    assert mlxctl("rm", "smollm2").output == "deleted 'smollm2'\n"
    assert "every blob matches" in mlxctl("verify", "me/copy:v1").output
    assert mlxctl("gc").output.startswith("removed 0 unreferenced blob(s)")


def test_errors_are_one_line_and_exit_1(tmp_path):
    out = CliRunner().invoke(cli, ["show", "ghost"])
    assert out.exit_code == 1 and out.output == "Error: model 'ghost' not found\n"
    out = CliRunner().invoke(cli, ["cp", "a", "../b"])
    assert out.exit_code == 1 and "invalid model name" in out.output
    out = CliRunner().invoke(cli, ["create", "m", "-f", str(tmp_path / "nope")])
    assert out.exit_code == 1 and "Modelfile" in out.output


def test_create_reports_bad_modelfile_line(tmp_path):
    (tmp_path / "Modelfile").write_text("FROM x\nPARAMETER temperature hot\n")
    out = CliRunner().invoke(cli, ["create", "m", "-f", str(tmp_path / "Modelfile")])
    assert out.exit_code == 1
    assert "line 2" in out.output and "temperature" in out.output


@pytest.mark.model
def test_create_from_modelfile_and_run_one_shot(tmp_path, smollm2_gguf):
    (tmp_path / "Modelfile").write_text(f"FROM {smollm2_gguf}\nPARAMETER stop <|im_end|>\n")
    out = mlxctl("create", "smol", "-f", str(tmp_path / "Modelfile"))
    assert out.exit_code == 0 and out.output.rstrip().endswith("success")
    out = mlxctl(
        "run",
        "smol",
        "What is the capital of France? Answer in one sentence.",
        "-p",
        "temperature=0",
        "--verbose",
        input="",
    )
    assert out.exit_code == 0 and "Paris" in out.output
    assert re.search(r"eval rate:\s+[\d.]+ tokens/s", out.output)


@pytest.mark.model
def test_run_reads_stdin(store_root):
    out = mlxctl(
        "run",
        "smollm2",
        "-p",
        "temperature=0",
        "-p",
        "num_predict=20",
        input="What is the capital of France? Answer in one sentence.",
    )
    assert "Paris" in out.output


def test_bad_parameter_flag(tmp_path):
    out = CliRunner().invoke(cli, ["run", "m", "hi", "-p", "temperature"], input="")
    assert out.exit_code == 2 and "NAME=VALUE" in out.output
    out = CliRunner().invoke(cli, ["run", "m", "hi", "-p", "nope=1"], input="")
    assert out.exit_code == 1 and "unknown parameter 'nope'" in out.output
