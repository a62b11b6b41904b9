"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) end to end: the
unmodified official `anthropic` client on a real daemon (SmolLM2, and `smollm2-tools` with
the Hermes TEMPLATE of tests/test_tools.py, so that tool calls render and parse), plus a
scripted runtime (no MLX) for the wire format of what a small model will not do on demand
(thinking, a failure mid-stream, a full queue) and for the 4xx answers.

The model tests check the protocol and the forced call's guarantee, not the answers'
wisdom; each generates a few tokens at most.
"""

from __future__ import annotations

import http.client
import threading
from types import SimpleNamespace

import anthropic
import jsonschema
import orjson
import pytest

from mlxollama.api import Chunk
from mlxollama.config import Config
from mlxollama.engine.decoder import StopMatcher
from mlxollama.http.anthropic import from_messages_request
from mlxollama.http.app import create_app
from mlxollama.http.server import make_server, shutdown
from mlxollama.store.store import Store
from tests import test_tools
from tests.test_engine_tools import TIME, WEATHER
from tests.test_http_native import FINAL, FakeRuntime, add_model

PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


def anthropic_tool(tool: dict) -> dict:
    """An OpenAI-shaped test tool in Anthropic's shape."""
    fn = tool["function"]
    out = {"name": fn["name"], "input_schema": fn["parameters"]}
    if "description" in fn:
        out["description"] = fn["description"]
    return out


TOOLS = [anthropic_tool(WEATHER), anthropic_tool(TIME)]


def client_for(port: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{port}", api_key="unused", timeout=120, max_retries=0
    )


# -- the real daemon -----------------------------------------------------------------------


tools_daemon = test_tools.d  # a daemon with `smollm2` and `smollm2-tools`


@pytest.fixture(scope="module")
def client(tools_daemon) -> anthropic.Anthropic:
    return client_for(tools_daemon.port)


@pytest.mark.model
def test_create_answers_a_message_and_counts_its_prompt_exactly(client):
    question = [{"role": "user", "content": "Describe the sea in one sentence."}]
    system = [{"type": "text", "text": "You are terse."}]
    answer = client.messages.create(
        model="smollm2",
        system=system,
        messages=question,
        max_tokens=16,
        extra_body={"temperature": 0},  # this SDK has no sampling arguments
        stop_sequences=["e"],
        metadata={"user_id": "someone"},
    )
    assert answer.id.startswith("msg_") and answer.type == "message"
    assert answer.role == "assistant" and answer.model == "smollm2"
    # English cannot go 16 tokens without an "e": the stop sequence ends it, and is named
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "e")
    assert all(block.type == "text" and "e" not in block.text for block in answer.content)
    assert 0 < answer.usage.output_tokens <= 16
    prompt = answer.usage.input_tokens + answer.usage.cache_read_input_tokens
    # count_tokens renders and tokenizes the same prompt, generating nothing
    count = client.messages.count_tokens(model="smollm2", system=system, messages=question)
    assert count.input_tokens == prompt > 10


@pytest.mark.model
def test_stream_helper_reassembles_text_and_stops_at_max_tokens(client):
    with client.messages.stream(
        model="smollm2", messages=PARIS, max_tokens=4, extra_body={"temperature": 0}
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4
    (block,) = final.content
    assert block.type == "text" and block.text == "".join(texts) != ""
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 10


@pytest.mark.model
def test_forced_tool_streamed_then_its_result_round_trips(client):
    """`tool_choice` `tool`, streamed through the helper: one `tool_use` block whose input
    validates (the grammar forces it, sampled at temperature 1); then the conversation with
    its `tool_result` goes back, and the model is shown the result."""
    with client.messages.stream(
        model="smollm2-tools",
        messages=PARIS,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=60,
        extra_body={"temperature": 1},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["function"]["parameters"])

    turns = [
        *PARIS,
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "22 degrees, sunny"}
            ],
        },
    ]
    answer = client.messages.create(
        model="smollm2-tools",
        messages=turns,
        tools=TOOLS,
        max_tokens=4,
        extra_body={"temperature": 0},
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    before = client.messages.count_tokens(model="smollm2-tools", messages=turns[:2], tools=TOOLS)
    after = answer.usage.input_tokens + answer.usage.cache_read_input_tokens
    assert after > before.input_tokens + 5  # the result was rendered for the model


@pytest.mark.model
def test_any_tool_with_create_stream_sends_input_json_deltas(client):
    events = list(
        client.messages.create(
            model="smollm2-tools",
            messages=PARIS,
            tools=TOOLS,
            tool_choice={"type": "any"},
            max_tokens=60,
            extra_body={"temperature": 0},
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    uses = [b for b in starts if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name in ("get_weather", "get_time") and uses[0].input == {}
    parts = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    parts = [p for p in parts if p is not None]
    tool = {t["name"]: t for t in TOOLS}[uses[0].name]
    jsonschema.validate(orjson.loads("".join(parts)), tool["input_schema"])
    assert events[-2].delta.stop_reason == "tool_use"


@pytest.mark.model
def test_unknown_model_and_missing_tool_support_are_typed_errors(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope", messages=PARIS, max_tokens=4)
    assert e.value.body["error"]["type"] == "not_found_error"
    assert "model 'nope' not found" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:  # SmolLM2's own template: no tools
        client.messages.create(model="smollm2", messages=PARIS, tools=TOOLS, max_tokens=4)
    assert "does not support tools" in e.value.message


# -- a scripted runtime --------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path):
    store = Store(tmp_path / "models")
    add_model(store, "smol")
    runtime = FakeRuntime(store)
    config = Config.from_env({"MLXOLLAMA_MODELS": str(store.root), "MLXOLLAMA_MAX_BODY": "64KiB"})
    srv = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=8)
    threading.Thread(target=srv.run, daemon=True).start()
    port = srv.effective_port
    yield SimpleNamespace(runtime=runtime, client=client_for(port), port=port)
    shutdown(srv, runtime)


CALL = {"id": "call_ab12cd34", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
THOUGHT = [
    Chunk(thinking="Let me "),
    Chunk(thinking="think."),
    Chunk(text="It is "),
    Chunk(text="sunny."),
    Chunk(tool_calls=[CALL]),
    FINAL,
]


def test_stream_events_give_each_kind_its_block(fake):
    fake.runtime.script = THOUGHT
    events = list(
        fake.client.messages.create(model="smol", messages=PARIS, max_tokens=9, stream=True)
    )
    shape = [(e.type, getattr(e, "index", None)) for e in events]
    assert shape == [  # the client drops the `ping` after message_start
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[1].content_block.type == "thinking"
    assert events[9].content_block.id == "toolu_ab12cd34"
    assert events[10].delta.partial_json == '{"city":"Oslo"}'
    assert events[-2].usage.input_tokens == 5 and events[-2].usage.output_tokens == 2
    (request,) = fake.runtime.requests
    assert request.options == {"num_predict": 9} and request.kind == "chat"
    # on the wire: `event:` lines, and the ping
    fake.runtime.script = THOUGHT
    body = {"model": "smol", "messages": PARIS, "max_tokens": 9, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=30)
    conn.request("POST", "/v1/messages", body=orjson.dumps(body))
    resp = conn.getresponse()
    assert resp.getheader("Content-Type") == "text/event-stream"
    lines = resp.read().split(b"\n\n")
    assert lines[0].startswith(b"event: message_start\ndata: {")
    assert lines[1] == b'event: ping\ndata: {"type":"ping"}'


def test_stream_helper_and_whole_answer_agree(fake):
    fake.runtime.script = THOUGHT
    with fake.client.messages.stream(model="smol", messages=PARIS, max_tokens=9) as stream:
        streamed = stream.get_final_message()
    fake.runtime.script = THOUGHT
    whole = fake.client.messages.create(model="smol", messages=PARIS, max_tokens=9)
    for answer in (streamed, whole):
        assert [b.type for b in answer.content] == ["thinking", "text", "tool_use"]
        assert answer.content[0].thinking == "Let me think."
        assert answer.content[1].text == "It is sunny."
        assert answer.content[2].input == {"city": "Oslo"}
        assert answer.stop_reason == "tool_use"
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (5, 2)


def test_an_error_mid_stream_is_an_error_event(fake):
    fake.runtime.script = [Chunk(text="Hello"), RuntimeError("the model step failed")]
    stream = fake.client.messages.create(model="smol", messages=PARIS, max_tokens=9, stream=True)
    with pytest.raises(anthropic.APIStatusError) as e:
        list(stream)
    assert e.value.body["error"] == {"type": "api_error", "message": "the model step failed"}


def test_a_full_queue_is_an_overloaded_error(fake):
    fake.runtime.busy = True
    with pytest.raises(anthropic.InternalServerError) as e:
        fake.client.messages.create(model="smol", messages=PARIS, max_tokens=9)
    assert e.value.status_code == 503 and e.value.body["error"]["type"] == "overloaded_error"


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}


@pytest.mark.parametrize(
    "change, wording",
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "Invalid 'max_tokens'"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [IMAGE]}]}, "no model here has vision"),
        ({"temperature": 1.5}, "Invalid 'temperature'"),
        ({"top_k": -1}, "top_k"),
        ({"stop_sequences": [1]}, '"stop_sequences"'),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema: Field required"),
        ({"tools": [{"type": "web_search_20250305", "name": "w"}]}, "not supported"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool", "name": "f"}}, "not in tools"),
        ({"thinking": {"type": "enabled"}}, "budget_tokens: Field required"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "does not support thinking"),
        ({"system": [IMAGE]}, "system"),
        ({"metadata": "x"}, "metadata"),
    ],
)
def test_bad_input_is_a_400_in_anthropics_shape(fake, change, wording):
    body = {"model": "smol", "messages": PARIS, "max_tokens": 9, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(anthropic.BadRequestError) as e:
        fake.client.post("/v1/messages", body=body, cast_to=object)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert wording in e.value.body["error"]["message"]
    assert fake.runtime.requests == []  # refused before anything was submitted


def test_an_oversized_body_is_refused_in_anthropics_shape(fake):
    """Refused by the waitress layer on its Content-Length, before Falcon sees it."""
    big = [{"role": "user", "content": "x" * 100_000}]
    with pytest.raises(anthropic.APIStatusError) as e:
        fake.client.messages.create(model="smol", messages=big, max_tokens=9)
    assert e.value.status_code == 413
    assert e.value.body["error"]["type"] == "request_too_large"


def test_unknown_model_is_not_found_for_both_routes(fake):
    with pytest.raises(anthropic.NotFoundError):
        fake.client.messages.create(model="nope", messages=PARIS, max_tokens=9)
    with pytest.raises(anthropic.NotFoundError) as e:
        fake.client.messages.count_tokens(model="nope", messages=PARIS)
    assert e.value.body["error"]["type"] == "not_found_error"


# -- the translation itself ----------------------------------------------------------------


def test_blocks_become_ollamas_messages():
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "A tool.", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True},
                    {"type": "text", "text": "Thanks."},
                ],
            },
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "stop_sequences": ["END"],
        "tool_choice": {"type": "any"},
        "tools": [anthropic_tool(WEATHER)],
        "thinking": {"type": "disabled"},
    }
    request = from_messages_request(body, "rid")
    assert [m.to_dict() for m in request.messages] == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "thinking": "A tool.",
            "tool_calls": [{"id": "toolu_1", "function": {"name": "get_weather", "arguments": {}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "toolu_1"},
        {"role": "tool", "content": "Error", "tool_name": "get_weather", "tool_call_id": "toolu_1"},
        {"role": "user", "content": "Thanks."},
    ]
    assert request.options == {
        "num_predict": 5,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "stop": ["END"],
    }
    assert request.tools == [WEATHER] and request.tool_choice == "required"
    assert request.think is False
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    structured = from_messages_request(
        {
            **body,
            "thinking": None,
            "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        },
        "rid",
    )
    assert structured.format == schema and structured.think == "low"
    counting = from_messages_request(body, "rid", counting=True)
    assert counting.options["num_predict"] == 0 and counting.tool_choice == "auto"


def test_the_decoder_names_the_stop_string_that_ended_the_answer():
    matcher = StopMatcher(["END", "."])
    assert matcher.feed("one EN") == ("one ", False) and matcher.matched is None
    assert matcher.feed("D. two") == ("", True) and matcher.matched == "END"
