"""`Client` and `Embedded` implement `interface.ModelClient` with identical signatures, and the
contract's types write and read Ollama's JSON the same way both directions."""

from __future__ import annotations

import inspect

import pytest

from mlxollama import api
from mlxollama.client import Client
from mlxollama.interface import ModelClient
from mlxollama.sdk import Embedded

METHODS = [
    name
    for name, member in inspect.getmembers(ModelClient, inspect.isfunction)
    if not name.startswith("_")
]


def test_the_protocol_names_the_shared_calls():
    assert set(METHODS) == {
        "list", "show", "create", "pull", "push", "copy", "delete", "generate", "chat", "embed",
    }  # fmt: skip


@pytest.mark.parametrize("implementation", [Client, Embedded])
@pytest.mark.parametrize("name", METHODS)
def test_each_call_has_the_protocols_signature(implementation, name):
    expected = inspect.signature(getattr(ModelClient, name), eval_str=True)
    got = inspect.signature(getattr(implementation, name), eval_str=True)
    assert got == expected, f"{implementation.__name__}.{name}{got} != {expected}"


def test_both_clients_are_model_clients(tmp_path):
    with Client("127.0.0.1:9") as client:
        assert isinstance(client, ModelClient)
    assert isinstance(Embedded(tmp_path), ModelClient)


def test_embedded_refuses_bad_requests_before_looking_for_the_model(tmp_path):
    """What the daemon answers 400 to fails the same way in-process, before any model is
    looked up (the store is empty: a 404 would mean the check came too late)."""
    embedded = Embedded(tmp_path)
    with pytest.raises(api.InvalidOption, match="invalid format: 'yaml'"):
        embedded.generate("nothing", "Hi", format="yaml")
    with pytest.raises(api.InvalidOption, match=r'Unimplemented keys: \["if"\]'):
        embedded.chat("nothing", [{"role": "user", "content": "Hi"}], format={"if": {}})
    with pytest.raises(api.InvalidOption, match="top_logprobs must be between 0 and 20"):
        embedded.chat("nothing", [{"role": "user", "content": "Hi"}], top_logprobs=21)
    with pytest.raises(api.InvalidOption, match="each tool needs"):
        embedded.chat("nothing", [], tools=[{"type": "function"}])
    with pytest.raises(api.InvalidOption, match="invalid duration"):
        embedded.chat("nothing", [], keep_alive="soon")


SHOW = {
    "license": "MIT",
    "modelfile": "FROM x\n",
    "parameters": "stop <|im_end|>",
    "template": "{{ .Prompt }}",
    "system": "",
    "details": {
        "parent_model": "",
        "format": "mlx",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "135M",
        "quantization_level": "Q4_0",
    },
    "messages": [],
    "model_info": {"general.architecture": "llama"},
    "capabilities": ["completion"],
    "modified_at": "2024-05-01T12:00:00Z",
    "provenance": {},
}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (api.ShowResponse, SHOW),
        (api.ShowResponse, {**SHOW, "tensors": [{"name": "w", "digest": "sha256:0", "size": 1}]}),
        (api.ListResponse, {"models": []}),
        (api.Progress, {"status": "pulling abc", "digest": "sha256:abc", "total": 9, "completed": 3}),
        (api.Progress, {"status": "success"}),
        (api.GenerateRequest, {"model": "m", "prompt": "Hi", "stream": True}),
        (api.EmbedRequest, {"model": "m", "input": ["a", "b"], "truncate": False}),
    ],
)  # fmt: skip
def test_types_read_back_what_they_write(kind, body):
    assert list(kind.from_json(body).to_json().items()) == list(body.items())


def test_a_chat_stream_line_and_its_last_line():
    piece = api.ChatResponse.from_chunk("m", api.Chunk(text="Hel")).to_json()
    assert list(piece) == ["model", "created_at", "message", "done"]
    assert piece["message"] == {"role": "assistant", "content": "Hel"}
    final = api.Chunk(done=True, done_reason="stop", eval_count=2, total_duration=5)
    last = api.ChatResponse.from_chunk("m", final).to_json()
    assert list(last) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        *api.METRIC_FIELDS,
    ]
    assert api.ChatResponse.from_json(last).to_json() == last
