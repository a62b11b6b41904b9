"""ModelSpec YAML recipes (recipes/modelspec.py)."""

from __future__ import annotations

import os

import pytest
from structlog.testing import capture_logs

from mlxollama.errors import InvalidModelfile
from mlxollama.gotemplate import render_messages
from mlxollama.recipes.modelspec import FIELDS, PROMPT_TEMPLATES, parse_modelspec

FULL = """\
name: smollm2-chat
version: "1.0"
base:
  hf_repo: HuggingFaceTB/SmolLM2-135M-Instruct
  revision: 12fd25f77366fa6b3b4b768ec3050bf629380bac
format: mlx
quantization: int4
prompt_template: chatml
defaults:
  temperature: 0.7
  top_p: 0.9
  max_tokens: 256
  context: 4096
  stop: ["<|im_end|>"]
  repeat_penalty: 1.1
system_prompt: You are a concise assistant.
license: Apache-2.0
messages:
  - {role: user, content: Hi}
  - {role: assistant, content: Hello!}
"""


def test_full_spec(tmp_path):
    spec = parse_modelspec(FULL, tmp_path)
    assert spec.name == "smollm2-chat:1.0"
    assert spec.source == "hf.co/HuggingFaceTB/SmolLM2-135M-Instruct"
    assert spec.revision == "12fd25f77366fa6b3b4b768ec3050bf629380bac"
    assert spec.quantize == "int4"
    assert spec.template == PROMPT_TEMPLATES["chatml"][0]
    assert spec.parameters == {
        "temperature": 0.7,
        "top_p": 0.9,
        "num_predict": 256,
        "num_ctx": 4096,
        "stop": ["<|im_end|>"],  # given, so the format's default stops are not added
        "repeat_penalty": 1.1,
    }
    assert spec.system == "You are a concise assistant."
    assert spec.license == ["Apache-2.0"]
    assert spec.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert spec.recipe == FULL
    assert spec.tokenizer is None


def test_minimal_spec_inherits_everything(tmp_path):
    spec = parse_modelspec("base: {model: smollm2:135m}\n", tmp_path)
    assert (spec.source, spec.name, spec.template, spec.system, spec.messages) == (
        "smollm2:135m",
        None,
        None,
        None,
        None,
    )
    assert (spec.parameters, spec.license, spec.quantize, spec.revision) == ({}, [], None, None)


def test_local_paths(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "tok").mkdir()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # relative to base_dir, not the working dir
    spec = parse_modelspec("base:\n  path: ./weights\ntokenizer: tok\n", tmp_path)
    assert spec.source == str(tmp_path / "weights")
    assert spec.tokenizer == str(tmp_path / "tok")
    spec = parse_modelspec(f"base: {{path: {tmp_path / 'weights'}}}\n", tmp_path / "sub")
    assert spec.source == str(tmp_path / "weights")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_modelspec("base: {path: ~/weights}", tmp_path / "sub").source == str(
        tmp_path / "weights"
    )


@pytest.mark.parametrize(
    ("base", "source", "revision"),
    [
        ("{hf_repo: org/repo}", "hf.co/org/repo", None),
        ("{hf_repo: hf.co/org/repo, revision: main}", "hf.co/org/repo", "main"),
        ("{hf_repo: 'https://huggingface.co/org/re.po_1/'}", "hf.co/org/re.po_1", None),
        ("{model: ns/model:tag}", "ns/model:tag", None),
        # the shorthand reads like a Modelfile FROM
        ("llama3.2", "llama3.2", None),
        ("hf.co/org/repo", "hf.co/org/repo", None),
        ("./weights", "WEIGHTS", None),
    ],
)
def test_base_forms(tmp_path, base, source, revision):
    (tmp_path / "weights").mkdir()
    spec = parse_modelspec(f"base: {base}\n", tmp_path)
    assert spec.source == source.replace("WEIGHTS", str(tmp_path / "weights"))
    assert spec.revision == revision


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", ""),
        ("int4", "int4"),
        ("INT8", "int8"),
        ("fp16", "fp16"),
        ("bf16", "bf16"),
        ("q4_K_M", "int4"),
        ("q8_0", "int8"),
        ("null", None),
    ],
)
def test_quantization(tmp_path, value, expected):
    assert parse_modelspec(f"base: m\nquantization: {value}\n", tmp_path).quantize == expected


@pytest.mark.parametrize(
    ("value", "template", "stop"),
    [
        ("chatml", PROMPT_TEMPLATES["chatml"][0], ["<|im_start|>", "<|im_end|>"]),
        (
            "Llama3",
            PROMPT_TEMPLATES["llama3"][0],
            ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        ),
        ("auto", None, None),
        ("'{{ .System }} {{ .Prompt }}'", "{{ .System }} {{ .Prompt }}", None),
        (
            "|\n  {{ range .Messages }}{{ .Content }}{{ end }}",
            "{{ range .Messages }}{{ .Content }}{{ end }}\n",
            None,
        ),
    ],
)
def test_prompt_template(tmp_path, value, template, stop):
    spec = parse_modelspec(f"base: m\nprompt_template: {value}\n", tmp_path)
    assert spec.template == template
    assert spec.parameters.get("stop") == stop


@pytest.mark.parametrize("name", sorted(PROMPT_TEMPLATES))
def test_named_templates_render_a_chat(name):
    template, stops = PROMPT_TEMPLATES[name]
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "Q"},
    ]
    prompt = render_messages(template, chat, system="S")
    for text in ("S", "Hi", "Yo", "Q"):
        assert text in prompt
    assert prompt.index("S") < prompt.index("Hi") < prompt.index("Yo") < prompt.index("Q")
    assert any(stop in prompt for stop in stops)


def test_chatml_template_matches_smollm2_format():
    template, _ = PROMPT_TEMPLATES["chatml"]
    prompt = render_messages(template, [{"role": "user", "content": "Hi"}], system="Be brief.")
    assert (
        prompt
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ("{max_tokens: 12, context: 2048}", {"num_predict": 12, "num_ctx": 2048}),
        ("{stops: [a, b], seed: '7'}", {"stop": ["a", "b"], "seed": 7}),
        (
            "{stop: END, num_gpu: 1.0, use_mmap: false}",
            {"stop": ["END"], "num_gpu": 1, "use_mmap": False},
        ),
        ("{temperature: 0}", {"temperature": 0.0}),
        ("{}", {}),
    ],
)
def test_defaults(tmp_path, defaults, expected):
    assert parse_modelspec(f"base: m\ndefaults: {defaults}\n", tmp_path).parameters == expected


def test_deprecated_defaults_are_dropped_with_a_warning(tmp_path):
    with capture_logs() as logs:
        spec = parse_modelspec("base: m\ndefaults: {low_vram: true, top_k: 5}\n", tmp_path)
    assert spec.parameters == {"top_k": 5}
    assert [e["event"] for e in logs] == ["modelspec.deprecated_parameter"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the ModelSpec is empty"),
        ("- a\n- b\n", "a ModelSpec must be a YAML mapping of name, version, base"),
        (
            "base: m\nbase_model: x\nsytem_prompt: y\n",
            "unknown ModelSpec keys 'base_model', 'sytem_prompt': use " + ", ".join(FIELDS),
        ),
        ("name: x\n", "ModelSpec needs a `base`"),
        ("base: {model: m\n", "invalid ModelSpec YAML (line 2)"),
        ("base:\n  model: m\n   bad: indent\n", "invalid ModelSpec YAML (line 3)"),
        ("base: {}\n", "base: give exactly one of hf_repo (with revision), path, or model"),
        ("base: {model: a, path: b}\n", "got path and model"),
        ("base: {model: a, revision: abc}\n", "base.revision: only applies to base.hf_repo"),
        ("base: {hf_repo: justaname}\n", "base.hf_repo: 'justaname' is not an <org>/<repo> name"),
        ("base: {model: m, url: x}\n", "base: unknown key 'url'"),
        ("base: {path: ./nowhere}\n", "base.path: "),
        ("base: [a]\n", "base: expected a mapping"),
        ("base: m\ntokenizer: ./tok\n", "tokenizer: "),
        ("base: m\nformat: onnx\n", "format: 'onnx' is not one of mlx, gguf, safetensors"),
        (
            "base: m\nquantization: q3_k\n",
            "quantization: 'q3_k' is not supported: use none, int8, int4, fp16 or bf16",
        ),
        ("base: m\nquantization: true\n", "quantization: True is not supported"),
        (
            "base: m\nprompt_template: vicuna\n",
            "prompt_template: 'vicuna' is neither a known format (chatml, llama3",
        ),
        (
            "base: m\nprompt_template: '{{ .Prompt'\n",
            "prompt_template: template error: line 1: unclosed action",
        ),
        (
            "base: m\ndefaults: {temprature: 1}\n",
            "defaults: unknown parameter 'temprature': use an Ollama option",
        ),
        (
            "base: m\ndefaults: {temperature: hot}\n",
            'defaults: option "temperature" must be of type float32',
        ),
        ("base: m\ndefaults: {stop: [1, 2]}\n", 'defaults: option "stop" must be of type []string'),
        ("base: m\ndefaults: {top_k: [1]}\n", "defaults: top_k takes one value"),
        (
            "base: m\ndefaults: {max_tokens: 1, num_predict: 2}\n",
            "defaults: max_tokens and num_predict both set num_predict",
        ),
        ("base: m\ndefaults: [temperature]\n", "defaults: expected a mapping"),
        (
            "base: m\nname: x\nversion: 1.10\n",
            'version: 1.1 reads as a number; quote it (version: "1.1")',
        ),
        ("base: m\nname: x:v1\nversion: v2\n", "name: 'x:v1' already has a tag"),
        ("base: m\nname: x\nversion: 'bad tag'\n", "version: 'bad tag' is not a valid tag"),
        ("base: m\nversion: '1'\n", "version: given without a name"),
        ("base: m\nsystem_prompt: [a]\n", "system_prompt: expected text"),
        ("base: m\nlicense: [MIT, 3]\n", "license: expected text, got int 3"),
        ("base: m\nmessages: {role: user}\n", "messages: expected a list"),
        (
            "base: m\nmessages: [{role: tool, content: x}]\n",
            'messages: item 1: role must be one of "system", "user", or "assistant"',
        ),
        (
            "base: m\nmessages: [{role: user, text: x}]\n",
            "messages: item 1 must be a mapping with role and content",
        ),
    ],
)
def test_errors(tmp_path, text, message):
    with pytest.raises(InvalidModelfile) as err:
        parse_modelspec(text, tmp_path)
    assert message in str(err.value)


def test_missing_path_error_names_the_absolute_path(tmp_path):
    with pytest.raises(InvalidModelfile) as err:
        parse_modelspec("base: {path: ./nowhere}\n", tmp_path)
    assert str(err.value) == f"base.path: {os.path.join(tmp_path, 'nowhere')} does not exist"


def test_license_list_and_version_int(tmp_path):
    spec = parse_modelspec(
        "base: m\nname: x\nversion: 2\nlicense: [MIT, 'Line one\n\n  more']\n", tmp_path
    )
    assert spec.name == "x:2"
    assert spec.license == ["MIT", "Line one\nmore"]
