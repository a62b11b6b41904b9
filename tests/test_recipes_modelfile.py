"""Modelfile parsing and writing (recipes/modelfile.py), and recipes/load.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mlxollama.errors import InvalidModelfile
from mlxollama.recipes.load import load_recipe
from mlxollama.recipes.modelfile import (
    INVALID_COMMAND,
    format_parameters,
    parse_modelfile,
    quote,
    to_modelfile,
)

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

FULL = f'''# a comment
FROM smollm2:135m

template """{CHATML}"""
SYSTEM You are a pirate.
PARAMETER temperature 0.2
PARAMETER num_ctx 4096
PARAMETER stop <|im_start|>
PARAMETER stop "<|im_end|>"
parameter use_mmap false
LICENSE """Apache License
Version 2.0"""
LICENSE MIT
MESSAGE user Where is the treasure?
MESSAGE assistant "Arr, buried deep."
REQUIRES 0.14.0
'''


def test_full_modelfile(tmp_path):
    spec = parse_modelfile(FULL, tmp_path)
    assert spec.source == "smollm2:135m"
    assert spec.template == CHATML
    assert spec.system == "You are a pirate."
    assert spec.parameters == {
        "temperature": 0.2,
        "num_ctx": 4096,
        "stop": ["<|im_start|>", "<|im_end|>"],
        "use_mmap": False,
    }
    assert isinstance(spec.parameters["num_ctx"], int)
    assert spec.license == ["Apache License\nVersion 2.0", "MIT"]
    assert spec.messages == [
        {"role": "user", "content": "Where is the treasure?"},
        {"role": "assistant", "content": "Arr, buried deep."},
    ]
    assert spec.recipe == FULL
    assert spec.quantize is None


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        # values run to the end of the line; surrounding blanks go, inner ones stay
        ("FROM m\nSYSTEM   two  words  \t", "system", "two  words"),
        # quotes keep blanks; there are no escapes
        ('FROM m\nSYSTEM "  padded \\n "', "system", "  padded \\n "),
        ('FROM m\nSYSTEM ""', "system", ""),
        ('FROM m\nSYSTEM """"""', "system", ""),
        # a quoted value may span lines; triple quotes keep the line breaks verbatim
        ('FROM m\nSYSTEM "one\ntwo"', "system", "one\ntwo"),
        ('FROM m\nTEMPLATE """\n{{ .Prompt }}\n\n"""', "template", "\n{{ .Prompt }}\n\n"),
        ('FROM m\nSYSTEM """say "hi" """', "system", 'say "hi" '),
        # a "#" inside a value is text, not a comment
        ('FROM m\nSYSTEM """a\n# not a comment\nb"""', "system", "a\n# not a comment\nb"),
        ("FROM m\nSYSTEM use # freely", "system", "use # freely"),
        # instructions are case-insensitive, indentation and comments are fine
        ("  # c\n\tfrom m\n   SyStEm hi", "system", "hi"),
        # a BOM and Windows line ends
        ("\ufeffFROM m\r\nSYSTEM hi\r\n", "system", "hi"),
        # later TEMPLATE/SYSTEM lines replace earlier ones
        ("FROM m\nSYSTEM a\nSYSTEM b", "system", "b"),
        (
            "FROM m\nPARAMETER temperature 1\nPARAMETER temperature 0.5",
            "parameters",
            {"temperature": 0.5},
        ),
        # list options accumulate, in order, even with other lines in between
        (
            'FROM m\nPARAMETER stop "\n"\nPARAMETER top_k 7\nPARAMETER stop " "\nPARAMETER stop User:',
            "parameters",
            {"stop": ["\n", " ", "User:"], "top_k": 7},
        ),
        (
            "FROM m\nPARAMETER seed 42.9\nPARAMETER use_mmap TRUE",
            "parameters",
            {"seed": 42, "use_mmap": True},
        ),
        # MESSAGE roles are lower-cased
        ("FROM m\nMESSAGE USER hi", "messages", [{"role": "user", "content": "hi"}]),
        ("FROM m", "messages", None),
    ],
)
def test_values(tmp_path, text, field, expected):
    assert getattr(parse_modelfile(text, tmp_path), field) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no FROM line"),
        ("# only\nSYSTEM hi", "no FROM line"),
        ("FROM m\nSYSTEM hi\nFORM x", f"(line 3): {INVALID_COMMAND}"),
        ("FROM m\n\n\nTEMPLATE2 x", f"(line 4): {INVALID_COMMAND}"),
        ("FROM m\n!bang", f"(line 2): {INVALID_COMMAND}"),
        ("FROM\n", "(line 1): FROM needs a value"),
        # line numbers count the lines of multi-line values before the error
        (
            'FROM m\nSYSTEM """a\nb\nc"""\nPARAMETER temprature 1',
            "(line 5): unknown parameter 'temprature'",
        ),
        ("FROM m\nPARAMETER num_ctx lots", '(line 2): option "num_ctx" must be of type int'),
        ("FROM m\nPARAMETER temperature", '(line 2): option "temperature" must be of type float32'),
        ("FROM m\nPARAMETER use_mmap yes", '(line 2): option "use_mmap" must be of type bool'),
        ("FROM m\nPARAMETER top-k 4", "(line 2): invalid parameter name 'top-k'"),
        ("FROM m\nPARAMETER", "(line 2): PARAMETER needs a parameter name and a value"),
        (
            "FROM m\nMESSAGE tool hi",
            '(line 2): message role must be one of "system", "user", or "assistant"',
        ),
        ("FROM m\nMESSAGE user: hi", "(line 2): invalid message role 'user:'"),
        ('FROM m\nSYSTEM """never\nclosed', '(line 2): unterminated """ quoted value'),
        ('FROM m\n\nSYSTEM "open', '(line 3): unterminated " quoted value'),
        ("FROM m\nTEMPLATE {{ .Prompt", "(line 2): template error: line 1: unclosed action"),
        (
            "FROM m\nTEMPLATE {{ upper .Prompt }}",
            '(line 2): template error: line 1: function "upper" not defined',
        ),
        ("FROM a\nFROM b", "(line 2): only one FROM line is supported"),
        ("FROM m\nADAPTER ./lora", "(line 2): ADAPTER is not supported yet: "),
        ("FROM m\nDRAFT ./small", "(line 2): DRAFT is not supported yet"),
        ("FROM m\nRENDERER harmony", "(line 2): RENDERER is not supported yet"),
        ("FROM m\nPARSER qwen3-coder", "(line 2): PARSER is not supported yet"),
        ("FROM m\nREQUIRES latest", "(line 2): requires must be a valid semver (e.g. 0.14.0)"),
        ("FROM m\nREQUIRES 1.2-rc1", "(line 2): requires must be a valid semver"),
        ("FROM m\nREQUIRES 01.2.3", "(line 2): requires must be a valid semver"),
    ],
)
def test_errors(tmp_path, text, message):
    with pytest.raises(InvalidModelfile) as err:
        parse_modelfile(text, tmp_path)
    assert str(err.value).startswith(message)


def test_adapter_error_says_what_to_do(tmp_path):
    with pytest.raises(InvalidModelfile, match=r"mlx_lm\.fuse"):
        parse_modelfile("FROM m\nADAPTER ./lora", tmp_path)


@pytest.mark.parametrize(
    "version", ["0.14.0", "v0.14.0", "1", "0.14", "1.2.3-rc.1+build.5", "v2.0.0-beta"]
)
def test_requires_accepts_go_semver(tmp_path, version):
    assert parse_modelfile(f"FROM m\nREQUIRES {version}", tmp_path).source == "m"


def test_deprecated_parameters_are_dropped_with_a_warning(tmp_path):
    with capture_logs() as logs:
        spec = parse_modelfile("FROM m\nPARAMETER mirostat 2\nPARAMETER top_k 3", tmp_path)
    assert spec.parameters == {"top_k": 3}
    assert logs == [
        {
            "event": "modelfile.deprecated_parameter",
            "parameter": "mirostat",
            "line": 2,
            "log_level": "warning",
        }
    ]


def test_from_paths(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.gguf").write_bytes(b"GGUF")
    sub = tmp_path / "recipes"
    sub.mkdir()
    gguf = str(tmp_path / "weights" / "model.gguf")
    cases = {
        "./weights/model.gguf": gguf,  # relative to base_dir
        "weights": str(tmp_path / "weights"),  # a folder
        "recipes/../weights/model.gguf": gguf,  # normalised
        gguf: gguf,  # absolute
        "~/model.gguf": gguf,  # home
        "llama3.2": "llama3.2",  # no such path: a model name
        "ns/model:tag": "ns/model:tag",
        "./missing.gguf": "./missing.gguf",
    }
    monkeypatch.setenv("HOME", str(tmp_path / "weights"))
    for ref, expected in cases.items():
        assert parse_modelfile(f"FROM {ref}", tmp_path).source == expected, ref
    # relative paths follow base_dir, not the working directory
    monkeypatch.chdir(sub)
    assert parse_modelfile("FROM model.gguf", tmp_path / "weights").source == gguf
    assert parse_modelfile("FROM model.gguf", sub).source == "model.gguf"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<|im_end|>", "<|im_end|>"),
        ("two words", "two words"),
        ("", '""'),
        (" lead", '" lead"'),
        ("trail\t", '"trail\t"'),
        ("line\nbreak", '"line\nbreak"'),
        ('say "hi"', 'say "hi"'),
        ('"quoted"', '""""quoted""""'),
        ('multi "line"\nvalue', '"""multi "line"\nvalue"""'),
    ],
)
def test_quote(value, expected):
    assert quote(value) == expected


SHOWN = '''# Modelfile generated by "mlxctl show"
# To build a new Modelfile based on this, replace FROM with:
# FROM pirate:latest

FROM smollm2:135m
TEMPLATE "{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"
SYSTEM You are a pirate.
PARAMETER temperature 0.2
PARAMETER num_ctx 4096
PARAMETER stop <|im_start|>
PARAMETER stop "
"
PARAMETER use_mmap false
LICENSE """Apache License "2.0"
See the file."""
MESSAGE user Where is the treasure?
MESSAGE assistant " Arr."
'''


def test_to_modelfile():
    text = to_modelfile(
        name="pirate:latest",
        from_ref="smollm2:135m",
        template=CHATML,
        system="You are a pirate.",
        parameters={
            "temperature": 0.2,
            "num_ctx": 4096,
            "stop": ["<|im_start|>", "\n"],
            "use_mmap": False,
        },
        messages=[
            {"role": "user", "content": "Where is the treasure?"},
            {"role": "assistant", "content": " Arr."},
        ],
        license=['Apache License "2.0"\nSee the file.'],
    )
    assert text == SHOWN


def test_to_modelfile_minimal():
    assert to_modelfile("m:latest", "/blobs/x") == (
        '# Modelfile generated by "mlxctl show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM m:latest\n\nFROM /blobs/x\n"
    )


@pytest.mark.parametrize(
    ("template", "system", "parameters", "messages", "license"),
    [
        (CHATML, "You are a pirate.", {"temperature": 0.2, "stop": ["<|im_end|>"]}, None, []),
        ('{{ if .System }}"{{ .System }}"{{ end }}{{ .Prompt }}', '"Quoted" start', {}, None, []),
        (
            "",
            "  padded  ",
            {"top_p": 1e-05, "seed": 7, "num_ctx": 1048576, "use_mmap": True},
            None,
            [],
        ),
        (
            None,
            "multi\nline",
            {"stop": ["\n", " ", '"', "\t", "User:"], "temperature": 1.0},
            [{"role": "system", "content": ""}, {"role": "user", "content": '"hi"\nthere'}],
            ["MIT", 'Line "one"\nline two', " "],
        ),
    ],
)
def test_round_trip(tmp_path, template, system, parameters, messages, license):
    text = to_modelfile("x:latest", "base:tag", template, system, parameters, messages, license)
    spec = parse_modelfile(text, tmp_path)
    assert spec.source == "base:tag"
    assert spec.template == template
    assert spec.system == system
    assert spec.parameters == parameters
    assert spec.messages == messages
    assert spec.license == license


def test_round_trip_with_a_path(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    spec = parse_modelfile(to_modelfile("x", str(gguf), parameters={"num_predict": -1}), Path("/"))
    assert (spec.source, spec.parameters) == (str(gguf), {"num_predict": -1})


def test_format_parameters():
    text = format_parameters(
        {
            "stop": ["<|im_end|>", 'say "x"\n'],
            "temperature": 0.7,
            "num_ctx": 4096,
            "top_p": 1.0,
            "use_mmap": True,
        }
    )
    assert text.split("\n") == [
        'stop                           "<|im_end|>"',
        'stop                           "say \\"x\\"\\n"',
        "temperature                    0.7",
        "num_ctx                        4096",
        "top_p                          1",
        "use_mmap                       true",
    ]
    assert format_parameters({}) == ""


def test_load_recipe(tmp_path, monkeypatch):
    (tmp_path / "Modelfile").write_text("FROM base\nSYSTEM hi\n", encoding="utf-8")
    (tmp_path / "spec.yaml").write_text(
        "base: {model: other}\nsystem_prompt: yo\n", encoding="utf-8"
    )
    (tmp_path / "spec.YML").write_text("base: {model: third}\n", encoding="utf-8")
    assert load_recipe(tmp_path / "Modelfile").system == "hi"
    assert load_recipe(tmp_path).source == "base"  # a folder: its Modelfile
    assert load_recipe(tmp_path / "spec.yaml").system == "yo"
    assert load_recipe(tmp_path / "spec.YML").source == "third"
    # relative paths in the recipe are relative to the recipe, whatever the working dir
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "Modelfile").write_text("FROM ../spec.yaml\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "w")
    assert load_recipe(Path("Modelfile")).source == os.path.join(tmp_path, "spec.yaml")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "does not exist: write a Modelfile"),
        ("empty_dir", "dir", "is a folder without a Modelfile"),
        ("latin1", b"FROM m\nSYSTEM caf\xe9\n", "is not UTF-8 text"),
        ("bad", b"FROM m\nNOPE x\n", "(line 2): command must be one of"),
    ],
)
def test_load_recipe_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidModelfile) as err:
        load_recipe(path)
    assert message in str(err.value)
