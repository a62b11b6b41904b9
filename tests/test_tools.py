"""Tools end to end on the real SmolLM2, through the unmodified `ollama`, `openai` and
LangChain clients on a real daemon. SmolLM2's own template renders no tools, so the store
also holds `smollm2-tools`: the same weights with a Hermes-style Modelfile TEMPLATE.

SmolLM2 is small: the tests check the protocol and the grammar's guarantee (a forced call's
arguments validate against the function's schema, sampled or greedy), not the answer's
wisdom. Where no call is forced (the native API has no tool_choice) a short example
conversation shows the model the format, and greedy decoding makes its answer repeatable.
"""

from __future__ import annotations

import json
import re
import shutil

import jsonschema
import ollama
import openai
import orjson
import pykka
import pytest

from mlxollama.engine import grammar, prompt, tools
from mlxollama.http.openai import chat_messages
from mlxollama.http.server import shutdown
from mlxollama.models.create import create
from mlxollama.recipes.modelfile import parse_modelfile
from mlxollama.store.store import Store
from tests.daemons import actor_classes, start_daemon
from tests.test_engine_tools import HERMES_TEMPLATE, TIME, WEATHER

pytestmark = pytest.mark.model

ID = re.compile(r"^call_[a-z0-9]{8}$")
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The name of the city
    """
    return f"sunny in {city}"


# One example call before the question: enough for greedy SmolLM2 to answer with a call.
EXAMPLE = [
    {"role": "system", "content": "Answer every question with a tool call."},
    {"role": "user", "content": "Weather in London?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "London"}}}],
    },
    {"role": "user", "content": "Weather in Paris?"},
]


@pytest.fixture(scope="module")
def d(tmp_path_factory, smollm2_store):
    """A daemon on a store with `smollm2` and `smollm2-tools` (the Hermes TEMPLATE)."""
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("tools") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    modelfile = f'FROM smollm2\nTEMPLATE """{HERMES_TEMPLATE}"""\n'
    create(Store(root), "smollm2-tools", parse_modelfile(modelfile, root))
    daemon = start_daemon(root, num_parallel=2)
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def oai(d) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{d.port}/v1", api_key="mlxollama", timeout=120, max_retries=0
    )


def validate(call, tools_offered) -> dict:
    """A call's arguments (the JSON string OpenAI sends), checked against its function."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools_offered}
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schemas[call.function.name])
    return arguments


# -- capabilities --------------------------------------------------------------------------


def test_show_lists_tools_only_for_templates_that_render_them(d):
    client = d.client()
    assert "tools" in client.show("smollm2-tools").capabilities
    assert "tools" not in client.show("smollm2").capabilities
    tags = {m.model: m for m in client.list().models}
    assert "smollm2-tools:latest" in tags


def test_tools_to_a_model_without_them_is_ollamas_400(d, oai):
    with pytest.raises(ollama.ResponseError) as native:
        d.client().chat(model="smollm2", messages=PARIS, tools=[get_weather])
    assert native.value.status_code == 400
    assert native.value.error == "registry.ollama.ai/library/smollm2:latest does not support tools"
    with pytest.raises(openai.BadRequestError) as v1:
        oai.chat.completions.create(model="smollm2", messages=PARIS, tools=[WEATHER])
    assert "does not support tools" in v1.value.message


# -- the native API and the ollama client --------------------------------------------------


def test_ollama_client_turns_a_python_function_into_a_call_and_back(d):
    client = d.client()
    options = {"temperature": 0, "num_predict": 40}
    answer = client.chat(
        model="smollm2-tools", messages=EXAMPLE, tools=[get_weather], options=options
    )
    (call,) = answer.message.tool_calls
    assert call.function.name == "get_weather"
    schema = ollama._utils.convert_function_to_tool(get_weather).model_dump(exclude_none=True)
    jsonschema.validate(call.function.arguments, schema["function"]["parameters"])
    # the result goes back as a `tool` message: the conversation goes on
    result = get_weather(**call.function.arguments)
    history = [
        *EXAMPLE,
        answer.message,
        {"role": "tool", "content": result, "tool_name": "get_weather"},
    ]
    again = client.chat(
        model="smollm2-tools", messages=history, tools=[get_weather], options={"num_predict": 8}
    )
    assert again.done and again.done_reason in ("stop", "length")


def test_native_stream_carries_ollamas_tool_call_shape(d):
    body = {
        "model": "smollm2-tools",
        "messages": EXAMPLE,
        "tools": [WEATHER],
        "options": {"temperature": 0, "num_predict": 40},
    }
    status, _, data = d.call("POST", "/api/chat", body)
    assert status == 200
    lines = [orjson.loads(line) for line in data.splitlines()]
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not with_calls[0]["done"]
    (call,) = with_calls[0]["message"]["tool_calls"]
    assert ID.match(call["id"])
    assert call["function"]["index"] == 0 and call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], dict)
    assert "<tool_call>" not in "".join(line["message"]["content"] for line in lines)
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


# -- the OpenAI API and the openai client --------------------------------------------------


def test_openai_required_returns_calls_that_validate(oai):
    """Sampled at temperature 1, so the arguments validate by the grammar, not by luck."""
    answer = oai.chat.completions.create(
        model="smollm2-tools",
        messages=PARIS,
        tools=[WEATHER, TIME],
        tool_choice="required",
        temperature=1,
        seed=7,
        max_tokens=60,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ""
    (call,) = choice.message.tool_calls
    assert ID.match(call.id) and call.type == "function"
    validate(call, [WEATHER, TIME])


def test_openai_named_function_is_the_one_called(oai):
    answer = oai.chat.completions.create(
        model="smollm2-tools",
        messages=PARIS,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=1,
        max_tokens=60,
    )
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    validate(call, [WEATHER, TIME])


def test_openai_streamed_tool_calls_reassemble(oai):
    stream = oai.chat.completions.create(
        model="smollm2-tools",
        messages=PARIS,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    calls: dict[int, dict] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert reasons[-1] == "tool_calls" and set(reasons[:-1]) == {None}
    assert list(calls) == [0]
    assert ID.match(calls[0]["id"]) and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_openai_conversation_with_tool_results_round_trips(oai, smollm2_loaded):
    arguments = '{"city": "Paris"}'
    messages = [
        *PARIS,
        {  # as the openai client sends a call back: content null, arguments a JSON string
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a1b2c3d4",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a1b2c3d4", "content": "22 degrees and sunny"},
    ]
    answer = oai.chat.completions.create(
        model="smollm2-tools", messages=messages, tools=[WEATHER], temperature=0, max_tokens=8
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage.prompt_tokens > 100  # the tools, the call and its result were shown
    # what the model was shown: the call and its result, rendered by the template
    rendered = prompt.chat_text(
        smollm2_loaded, chat_messages(messages), template=HERMES_TEMPLATE, tools=[WEATHER]
    )
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}' in rendered
    assert "<|im_start|>tool\n22 degrees and sunny<|im_end|>" in rendered
    tokens = smollm2_loaded.tokenizer.encode(rendered)
    assert answer.usage.prompt_tokens == len(tokens)


def test_forced_call_grammar_on_smollm2s_tokenizer(smollm2_loaded):
    """The Lark grammar `required_lark` writes, compiled against SmolLM2's vocabulary: the
    call the template shows is accepted, a call to another function or with arguments
    outside the schema is not."""
    import llguidance

    lm = smollm2_loaded
    vocab = int(lm.model_config.get("vocab_size") or len(lm.tokenizer.get_vocab()))
    llt = grammar.tokenizer_for(lm.tokenizer, vocab)
    lark = tools.required_lark(
        tools.HERMES, [WEATHER, TIME], None, tools.special_marker(lm.tokenizer)
    )
    compiled = grammar.lark_grammar(lark, "tool_choice")

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(llt, compiled)
        tokens = lm.tokenizer.encode(text, add_special_tokens=False)
        return matcher.consume_tokens(tokens) and matcher.is_accepting()

    assert accepts(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert accepts('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not accepts('<tool_call>\n{"name": "get_news", "arguments": {}}\n</tool_call>')
    assert not accepts(
        '<tool_call>\n{"name": "get_weather", "arguments": {"days": 2}}\n</tool_call>'
    )
    assert not accepts('{"name": "get_weather", "arguments": {"city": "Paris"}}')


# -- LangChain -----------------------------------------------------------------------------


def test_langchain_chat_ollama_bind_tools(d):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    model = ChatOllama(
        model="smollm2-tools", base_url=f"http://127.0.0.1:{d.port}", temperature=0, num_predict=40
    ).bind_tools([get_weather])
    example = AIMessage(
        content="", tool_calls=[{"name": "get_weather", "args": {"city": "London"}, "id": "1"}]
    )
    answer = model.invoke(
        [
            SystemMessage("Answer every question with a tool call."),
            HumanMessage("Weather in London?"),
            example,
            HumanMessage("Weather in Paris?"),
        ]
    )
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], get_weather.tool_call_schema.model_json_schema())
