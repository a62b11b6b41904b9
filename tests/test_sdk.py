"""The embedded SDK: Ollama's response shapes, streaming and not, on SmolLM2 in-process."""

import pytest

from mlxollama.errors import InvalidOption, ModelNotFound
from mlxollama.sdk import Embedded

Q = "What is the capital of France? Answer in one sentence."
METRICS = {
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


@pytest.mark.model
def test_chat_streams_ollama_objects(store_root):
    parts = list(
        Embedded().chat(
            "smollm2", [{"role": "user", "content": Q}], options={"temperature": 0}, stream=True
        )
    )
    assert len(parts) > 2
    for p in parts[:-1]:
        assert p["done"] is False and p["message"]["role"] == "assistant"
        assert p["model"] == "smollm2:latest" and p["created_at"].endswith("Z")
    last = parts[-1]
    assert last["done"] and last["done_reason"] == "stop" and set(last) >= METRICS
    assert last["load_duration"] > 0  # the first call loaded the model
    assert "Paris" in "".join(p["message"]["content"] for p in parts)


@pytest.mark.model
def test_generate_not_streamed_is_one_object(store_root):
    client = Embedded()
    out = client.generate("smollm2", Q, options={"temperature": 0, "num_predict": 30})
    assert "Paris" in out["response"] and out["done"] and set(out) >= METRICS
    again = client.generate("smollm2", Q, options={"temperature": 0, "num_predict": 30})
    assert again["response"] == out["response"]
    assert again["load_duration"] == 0  # already loaded


@pytest.mark.model
def test_generate_with_system_and_raw(store_root):
    client = Embedded()
    raw = client.generate(
        "smollm2",
        "The capital of France is",
        raw=True,
        options={"temperature": 0, "num_predict": 5},
    )
    assert "Paris" in raw["response"]
    sys_out = client.generate(
        "smollm2",
        "Who are you?",
        system="You are a pirate named Bob.",
        options={"temperature": 0, "num_predict": 20},
    )
    assert sys_out["response"]


@pytest.mark.model
def test_empty_prompt_and_messages_just_load(store_root):
    client = Embedded()
    out = client.generate("smollm2")
    assert out["done"] and out["done_reason"] == "load" and out["response"] == ""
    out = client.chat("smollm2", [])
    assert out["done_reason"] == "load" and out["message"]["content"] == ""


def test_errors_come_before_loading(tmp_path):
    client = Embedded(tmp_path / "s")
    with pytest.raises(ModelNotFound):
        client.chat("ghost", [{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidOption, match="temperature"):
        client.generate("ghost", "hi", options={"temperature": "hot"})
    with pytest.raises(InvalidOption, match="role"):
        client.chat("ghost", [{"role": "wizard", "content": "hi"}])


@pytest.mark.model
def test_go_template_renders_the_same_prompt_as_the_jinja_one(store_root, tmp_path):
    """A Modelfile TEMPLATE in Go syntax, equivalent to SmolLM2's Jinja template, gives the
    same tokens and the same answer."""
    from mlxollama.api import Message
    from mlxollama.engine.prompt import chat_tokens
    from mlxollama.models.load import load
    from mlxollama.recipes.modelfile import parse_modelfile

    chatml = (
        'FROM smollm2\nTEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
        '{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""\n'
        "SYSTEM You are a helpful AI assistant named SmolLM, trained by Hugging Face\n"
    )
    client = Embedded()
    client.create("smol-go", spec=parse_modelfile(chatml, tmp_path))
    jinja_lm, go_lm = load(client.store, "smollm2"), load(client.store, "smol-go")
    msgs = [Message("user", Q)]
    assert go_lm.template is not None and jinja_lm.template is None
    assert chat_tokens(go_lm, msgs) == chat_tokens(jinja_lm, msgs)
    out = client.chat("smol-go", [{"role": "user", "content": Q}], options={"temperature": 0})
    assert "Paris" in out["message"]["content"]


@pytest.mark.model
def test_modelfile_messages_and_parameters_apply(store_root, tmp_path):
    from mlxollama.recipes.modelfile import parse_modelfile

    client = Embedded()
    spec = parse_modelfile(
        "FROM smollm2\nPARAMETER num_predict 3\nPARAMETER temperature 0\n", tmp_path
    )
    client.create("short", spec=spec)
    out = client.chat("short", [{"role": "user", "content": "Tell me a long story."}])
    assert out["eval_count"] == 3 and out["done_reason"] == "length"
    out = client.chat(
        "short", [{"role": "user", "content": "Tell me a story."}], options={"num_predict": 6}
    )
    assert out["eval_count"] == 6  # request options beat the model's parameters
