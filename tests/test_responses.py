"""`POST /v1/responses` through the unmodified official `openai` client: `responses.create`
and `responses.stream` (whose event accumulator checks the order and shapes of the events)
on a scripted runtime (no MLX: reasoning, text and a call in one stream, a cut answer, an
error mid-stream, the 400s) and on the real SmolLM2 (text, a JSON schema, forced tool calls
and a tool round trip, with the Hermes TEMPLATE of `tests/test_tools.py`)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from mlxollama.api import Chunk
from mlxollama.http.responses import from_responses_request
from tests.test_engine_tools import WEATHER
from tests.test_http_native import FINAL
from tests.test_http_openai import fake  # noqa: F401  (the scripted runtime's daemon)
from tests.test_tools import d, oai  # noqa: F401  (smollm2 and smollm2-tools, Hermes TEMPLATE)

WEATHER_TOOL = {"type": "function", **WEATHER["function"]}  # the Responses API's flat shape
ARGS = WEATHER["function"]["parameters"]
CAPITAL = "What is the capital of France?"


CALL = {"id": "call_a1b2c3d4", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
MIXED = [
    Chunk(thinking="The user wants"),
    Chunk(thinking=" a city."),
    Chunk(text="Paris"),
    Chunk(text=" it is."),
    Chunk(tool_calls=[CALL]),
    FINAL,
]


def test_a_stream_of_reasoning_text_and_a_call_passes_the_clients_checks(fake):  # noqa: F811
    fake.runtime.script = MIXED
    with fake.client.responses.stream(model="smol", input=CAPITAL) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds.count("response.output_item.added") == 3
    assert kinds.count("response.output_item.done") == 3
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert deltas == final.output_text == "Paris it is." and summary == "The user wants a city."
    reasoning, message, call = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == summary
    assert message.type == "message" and message.status == "completed"
    assert call.type == "function_call" and call.call_id == "call_a1b2c3d4"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.name == "get_weather"
    assert final.id.startswith("resp_") and final.status == "completed"
    assert final.usage.input_tokens == FINAL.prompt_eval_count
    assert final.usage.output_tokens == FINAL.eval_count

    fake.runtime.script = MIXED  # not streamed: the same items
    whole = fake.client.responses.create(model="smol", input=CAPITAL)
    assert [i.type for i in whole.output] == ["reasoning", "message", "function_call"]
    assert whole.output_text == final.output_text and whole.usage == final.usage


def test_a_cut_answer_is_incomplete(fake):  # noqa: F811
    fake.runtime.script = [Chunk(text="Par"), Chunk(done=True, done_reason="length", eval_count=1)]
    answer = fake.client.responses.create(model="smol", input=CAPITAL, max_output_tokens=1)
    assert answer.status == "incomplete"
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.output[0].status == "incomplete" and answer.max_output_tokens == 1
    fake.runtime.script = [Chunk(text="Par"), Chunk(done=True, done_reason="length", eval_count=1)]
    events = list(fake.client.responses.create(model="smol", input=CAPITAL, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output[0].content[0].text == "Par"


def test_an_error_mid_stream_is_one_error_event(fake):  # noqa: F811
    fake.runtime.script = [Chunk(text="Hello"), RuntimeError("the model step failed")]
    events = list(fake.client.responses.create(model="smol", input=CAPITAL, stream=True))
    assert events[-1].type == "error" and events[-1].message == "the model step failed"


BAD = [
    ({"previous_response_id": "resp_1"}, "previous_response_id is not supported"),
    ({"background": True}, "background is not supported"),
    ({"input": []}, "empty array"),
    ({"input": 3}, '"input" must be a string or an array'),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "images are not supported",
    ),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "'item_reference' is not supported"),
    ({"input": [{"type": "function_call", "name": "f"}]}, 'needs "name" and "call_id"'),
    ({"tools": [{"type": "web_search"}]}, "'web_search' is not supported"),
    ({"text": {"format": {"type": "xml"}}}, "Invalid value for 'text.format.type'"),
    ({"temperature": 3}, "decimal above maximum value"),
    ({"max_output_tokens": 0}, "integer below minimum value"),
    ({"reasoning": {"effort": "lots"}}, "invalid reasoning value"),
]


@pytest.mark.parametrize(("change", "text"), BAD)
def test_bad_requests_are_openai_400s(fake, change, text):  # noqa: F811
    body = {"model": "smol", "input": CAPITAL, **change}
    with pytest.raises(openai.BadRequestError) as e:
        fake.client.responses.create(**body)
    assert text in e.value.message and e.value.body["type"] == "invalid_request_error"


def test_an_unknown_model_is_404(fake):  # noqa: F811
    with pytest.raises(openai.NotFoundError):
        fake.client.responses.create(model="nope", input=CAPITAL)


def test_items_become_the_chat_conversation():
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Call it."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": "It is sunny."},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "store": True,
        "metadata": {"k": "v"},
    }
    request = from_responses_request(body, "rid")
    roles = [m.role for m in request.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    call = request.messages[2]
    assert call.thinking == "Call it." and call.tool_calls[0]["function"]["name"] == "get_weather"
    assert request.messages[3].tool_name == "get_weather" and request.messages[3].content == "sunny"
    assert request.tools == [WEATHER] and request.tool_choice == {"name": "get_weather"}


# -- the real SmolLM2 ----------------------------------------------------------------------


@pytest.mark.model
def test_text_created_and_streamed_agree(oai):  # noqa: F811
    settings = {"model": "smollm2", "input": CAPITAL, "temperature": 0, "max_output_tokens": 8}
    answer = oai.responses.create(**settings, instructions="Answer in one word.")
    assert answer.output_text and answer.usage.output_tokens <= 8
    assert answer.temperature == 0 and answer.instructions == "Answer in one word."
    with oai.responses.stream(**settings, instructions="Answer in one word.") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == final.output_text == answer.output_text


@pytest.mark.model
def test_json_schema_output_validates(oai):  # noqa: F811
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = oai.responses.create(
        model="smollm2",
        input=CAPITAL,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        temperature=1,
        max_output_tokens=40,
    )
    jsonschema.validate(json.loads(answer.output_text), schema)


@pytest.mark.model
def test_required_tool_calls_validate_created_and_streamed(oai):  # noqa: F811
    settings = {
        "model": "smollm2-tools",
        "input": "What is the weather in Paris?",
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 1,
        "max_output_tokens": 60,
    }
    answer = oai.responses.create(**settings)
    (call,) = [i for i in answer.output if i.type == "function_call"]
    assert call.name == "get_weather" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), ARGS)
    with oai.responses.stream(**settings) as stream:
        pieces = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    (streamed,) = [i for i in final.output if i.type == "function_call"]
    assert "".join(e.delta for e in pieces) == streamed.arguments
    jsonschema.validate(json.loads(streamed.arguments), ARGS)


@pytest.mark.model
def test_a_function_call_and_its_output_round_trip(oai):  # noqa: F811
    answer = oai.responses.create(
        model="smollm2-tools",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_a1b2c3d4",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_a1b2c3d4", "output": "22 C, sunny"},
        ],
        tools=[WEATHER_TOOL],
        temperature=0,
        max_output_tokens=8,
    )
    assert answer.status in ("completed", "incomplete")
    assert answer.usage.input_tokens > 100  # the tools, the call and its result were shown
