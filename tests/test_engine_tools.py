"""Tool calls without a model: which format a template writes (Go and Jinja), the parsers fed
over arbitrary chunk boundaries, the forced-call grammars, and the OpenAI shapes of calls
(output deltas, history on input) rendered through a Go template."""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace

import orjson
import pytest

from mlxollama import api, gotemplate
from mlxollama.engine import grammar, thinking, tools
from mlxollama.engine.answer import _parser
from mlxollama.errors import InvalidOption
from mlxollama.http import openai as oa

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, TIME]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
ID = re.compile(r"^call_[a-z0-9]{8}$")

# A Hermes-style Go template for a ChatML model (what tests/test_tools.py gives SmolLM2).
HERMES_TEMPLATE = """{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}
You can call these functions (JSON schemas):
{{- range .Tools }}
{{ json .Function }}
{{- end }}
To call one, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}
{{- range .ToolCalls }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>tool
{{ .Content }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# Template excerpts as the families write them (Jinja chat templates and Ollama Go templates).
TEMPLATES = {
    "hermes-go": (HERMES_TEMPLATE, tools.HERMES),
    "qwen2.5-jinja": (
        "{%- if tools %}{{- '<tools>' }}{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}"
        '{%- endif %}{{- \'<tool_call>\\n{"name": "\' }}{{ tool_call.name }}',
        tools.HERMES,
    ),
    "qwen3-coder-jinja": (
        "{% if tools %}{{ tools }}{% endif %}{{- '<tool_call>\\n<function=' + tool_call.name }}",
        tools.QWEN3_CODER,
    ),
    "llama3.1-jinja": (
        "{%- if tools is not none %}Environment: ipython{%- endif %}"
        "{{- '<|python_tag|>' + tool_call.name + '.call(' }}"
        "{{- '{\"name\": \"' + tool_call.name + '\", ' }}{{- '\"parameters\": ' }}",
        tools.LLAMA3,
    ),
    "llama3.2-go": (
        '{{ if .Tools }}Respond in the format {"name": function name, "parameters": '
        "dictionary of argument name and its value}.{{ range $.Tools }}{{ . }}{{ end }}"
        '{{ end }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": '
        "{{ .Function.Arguments }}}{{ end }}",
        tools.LLAMA3,
    ),
    "mistral-go": (
        "{{- if .Tools }}[AVAILABLE_TOOLS] {{ json $.Tools }}[/AVAILABLE_TOOLS]{{ end }}"
        '[TOOL_CALLS] [{{ range .ToolCalls }}{"name": "{{ .Function.Name }}"}{{ end }}]',
        tools.MISTRAL,
    ),
    "mistral-small-jinja": (
        "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{%- endif %}"
        "[TOOL_CALLS]{{ tool_call.function.name }}[ARGS]{{ arguments }}",
        tools.MISTRAL_ARGS,
    ),
    "gpt-oss-jinja": (
        "{%- if tools %}namespace functions {% endif %}<|start|>assistant<|channel|>"
        "commentary to=functions.{{ tool_call.name }} <|constrain|>json<|message|>",
        tools.HARMONY,
    ),
    "functiongemma-jinja": (
        "{%- if tools %}{{ tools }}{% endif %}<start_function_call>call:{{ name }}{",
        tools.FUNCTION_GEMMA,
    ),
    "gemma4-jinja": (
        "{%- if tools %}{{ tools }}{% endif %}<|tool_call>call:{{ name }}<tool_call|>",
        tools.GEMMA4,
    ),
    "lfm2-jinja": (
        "{%- if tools %}<|tool_list_start|>{{ tools }}<|tool_list_end|>{% endif %}",
        tools.PYTHONIC,
    ),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_format_is_read_from_the_template(name):
    template, fmt = TEMPLATES[name]
    assert tools.tool_format(template) is fmt


@pytest.mark.parametrize(
    "template",
    [
        None,
        "",
        "{{ .Prompt }}",
        # SmolLM2's own ChatML template: no tools
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{{ message['content'] }}<|im_end|>\n{% endfor %}",
        # markers without rendering the request's tools: the model would never see them
        "<|im_start|>system\nAnswer with <tool_call> tags<|im_end|>{{ .Prompt }}",
    ],
)
def test_templates_that_render_no_tools_have_no_format(template):
    assert tools.tool_format(template) is None


def test_tools_capability_follows_the_template():
    from mlxollama.engine.features import capabilities

    assert "tools" in capabilities(["completion"], HERMES_TEMPLATE, True)
    assert "tools" not in capabilities(["completion"], "{{ .Prompt }}", True)
    assert "tools" not in capabilities(["embedding"], HERMES_TEMPLATE, True)


# -- parsers -------------------------------------------------------------------------------

# One answer per format: (text before, the call as the model writes it, text after).
ANSWERS = {
    tools.HERMES: (
        "Let me check. ",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "",
    ),
    tools.QWEN3_CODER: (
        "",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "</function>\n</tool_call>",
        "",
    ),
    tools.LLAMA3: (
        "",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
    ),
    tools.MISTRAL: (
        "",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "",
    ),
    tools.MISTRAL_ARGS: ("", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', ""),
    tools.HARMONY: (
        "",
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}',
        "",
    ),
    tools.FUNCTION_GEMMA: (
        "",
        "<start_function_call>call:get_weather{city:<escape>Paris<escape>}<end_function_call>",
        "",
    ),
    tools.GEMMA4: ("", '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>', ""),
    tools.PYTHONIC: ("", '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>', ""),
}


def run(parser, pieces):
    chunks = []
    for piece in pieces:
        chunks += parser.feed(piece)
    chunks += parser.close()
    text = "".join(c.text for c in chunks)
    calls = [c for chunk in chunks for c in chunk.tool_calls or ()]
    return text, calls


def random_pieces(text: str, rng: random.Random) -> list[str]:
    """`text` cut at random places (pieces of 1 to 6 characters)."""
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        pieces.append(text[i : i + n])
        i += n
    return pieces


@pytest.mark.parametrize("fmt", list(ANSWERS), ids=lambda f: f.name + f.start[:3])
def test_each_format_parses_over_any_chunk_boundaries(fmt):
    before, call, after = ANSWERS[fmt]
    answer = before + call + after
    rng = random.Random(fmt.name)
    cuttings = [[answer], list(answer)] + [random_pieces(answer, rng) for _ in range(20)]
    cuttings += [[answer[:i], answer[i:]] for i in range(1, len(answer))]
    for pieces in cuttings:
        text, calls = run(fmt.parser(TOOLS), pieces)
        assert text == before + after, pieces
        assert [c["function"]["name"] for c in calls] == ["get_weather"], pieces
        assert calls[0]["function"]["arguments"] == {"city": "Paris"}
        assert calls[0]["function"]["index"] == 0
        assert ID.match(calls[0]["id"]), calls[0]


def test_several_calls_get_their_own_index_and_id():
    one = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    two = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    text, calls = run(tools.HERMES.parser(TOOLS), list(one + "\n" + two))
    assert text == "\n"
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]
    # two calls in one block (as some models write them) are two calls as well
    both = (
        '<tool_call>\n{"name": "get_weather", "arguments": {}}\n{"name": "get_time"}\n</tool_call>'
    )
    _, calls = run(tools.HERMES.parser(TOOLS), [both])
    assert [(c["function"]["name"], c["function"]["index"]) for c in calls] == [
        ("get_weather", 0),
        ("get_time", 1),
    ]


def test_what_does_not_parse_is_kept_as_content():
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call> done'
    text, calls = run(tools.HERMES.parser(TOOLS), random_pieces(broken, random.Random(1)))
    assert (text, calls) == (broken, [])
    cut = 'Sure <tool_call>\n{"name": "get_weather"'  # the answer ended inside the call
    text, calls = run(tools.HERMES.parser(TOOLS), list(cut))
    assert (text, calls) == (cut, [])
    not_a_call = '<tool_call>["just", "a", "list"]</tool_call>'
    assert run(tools.HERMES.parser(TOOLS), [not_a_call]) == (not_a_call, [])


def test_a_marker_prefix_is_held_back_only_while_it_could_be_a_marker():
    parser = tools.HERMES.parser(TOOLS)
    assert [c.text for c in parser.feed("a <tool")] == ["a "]
    assert [c.text for c in parser.feed("box")] == ["<toolbox"]


def test_llama3_text_answers_stream_and_json_that_is_no_call_is_content():
    parser = tools.LLAMA3.parser(TOOLS)
    assert [c.text for c in parser.feed("The weather")] == ["The weather"]
    assert [c.text for c in parser.feed(" is fine")] == [" is fine"]
    answer = '{"city": "Paris", "temperature": 21}'
    assert run(tools.LLAMA3.parser(TOOLS), list(answer)) == (answer, [])
    text, calls = run(
        tools.LLAMA3.parser(TOOLS),
        ['  {"name": "get_weather", "parameters": {"city": "Paris"}}; ', '{"name": "get_time"}'],
    )
    assert text == "" and [c["function"]["index"] for c in calls] == [0, 1]
    assert calls[1]["function"]["arguments"] == {}


def test_the_answer_parser_splits_thinking_then_tool_calls():
    template = HERMES_TEMPLATE + "{{ if .Think }}<think>{{ end }}"
    fmt = thinking.think_format(template, True)
    parser = _parser(template, "prompt", TOOLS, fmt, True)
    answer = "<think>need weather</think>" + ANSWERS[tools.HERMES][1]
    chunks = []
    for piece in random_pieces(answer, random.Random(3)):
        chunks += parser.feed(piece)
    chunks += parser.close()
    joined = api.join_chunks([*chunks, api.Chunk(done=True, done_reason="stop")])
    assert joined.thinking == "need weather"
    assert joined.text == ""
    assert [c["function"]["name"] for c in joined.tool_calls] == ["get_weather"]


# -- forced calls --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in tools.FORMATS if f.call_lark], ids=lambda f: f.name)
def test_forced_call_grammars_compile(fmt):
    for name in (None, "get_time"):
        lark = tools.required_lark(fmt, TOOLS, name)
        assert lark.startswith("start: ")
        assert lark.count("%json") == (2 if name is None else 1)
        grammar.lark_grammar(lark, "tool_choice")


def test_special_tokens_are_written_as_tokens():
    tok = SimpleNamespace(added_tokens_encoder={"<tool_call>": 151657, "</tool_call>": 151658})
    lark = tools.required_lark(tools.HERMES, [WEATHER], None, tools.special_marker(tok))
    assert '<[151657]> "\\n" %json' in lark and '"\\n" <[151658]>' in lark
    grammar.lark_grammar(lark, "tool_choice")
    # a marker the vocabulary does not hold as one token is spelled out
    assert '"<tool_call>"' in tools.required_lark(tools.HERMES, [WEATHER], None)


def test_forced_calls_follow_each_function_schema():
    lark = tools.required_lark(tools.HERMES, TOOLS, "get_weather")
    schema = json.loads(lark.split("%json ", 1)[1].rsplit(' "\\n"', 1)[0])
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"]["required"] == ["city"]
    assert schema["x-guidance"] == grammar.JSON_STYLE
    assert list(schema["properties"]) == ["name", "arguments"]


def test_forced_calls_are_refused_where_they_cannot_be_enforced():
    with pytest.raises(InvalidOption, match="not supported for models that write gemma4"):
        tools.required_lark(tools.GEMMA4, TOOLS, None)
    with pytest.raises(InvalidOption, match="'nope', which is not in tools"):
        tools.required_lark(tools.HERMES, TOOLS, "nope")


# -- OpenAI shapes -------------------------------------------------------------------------


def sse(data: bytes) -> list:
    events = [e.removeprefix(b"data: ") for e in data.strip().split(b"\n\n")]
    return [orjson.loads(e) for e in events if e != b"[DONE]"]


def openai_request():
    return api.InferenceRequest(model="m", kind="chat", request_id="1", tools=TOOLS)


def test_openai_streams_tool_calls_as_deltas_and_finishes_with_tool_calls():
    out = oa.ChatOutput(openai_request(), include_usage=False)
    parser = tools.HERMES.parser(TOOLS)
    one = ANSWERS[tools.HERMES][1]
    two = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    events = []
    for piece in random_pieces(one + two, random.Random(5)):
        for chunk in parser.feed(piece):
            events += sse(out.chunk(chunk))
    for chunk in parser.close():
        events += sse(out.chunk(chunk))
    events += sse(out.chunk(api.Chunk(done=True, done_reason="stop")))
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0]["role"] == "assistant"
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [(c["index"], c["type"], c["function"]["name"]) for c in calls] == [
        (0, "function", "get_weather"),
        (1, "function", "get_time"),
    ]
    assert all(ID.match(c["id"]) for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}


def test_openai_whole_answer_has_message_tool_calls():
    calls = [{"id": "call_abcdefgh", "function": {"index": 0, **PARIS}}]
    final = api.Chunk(done=True, done_reason="stop", tool_calls=calls)
    body = oa.ChatOutput(openai_request(), include_usage=False).whole(final)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_abcdefgh",
            "index": 0,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    plain = oa.ChatOutput(openai_request(), False).whole(api.Chunk(done=True, done_reason="stop"))
    assert "tool_calls" not in plain["choices"][0]["message"]
    assert plain["choices"][0]["finish_reason"] == "stop"
    cut = api.Chunk(done=True, done_reason="length", tool_calls=calls)
    assert oa.ChatOutput(openai_request(), False).whole(cut)["choices"][0]["finish_reason"] == (
        "length"
    )


def test_openai_tool_history_is_rendered_not_dropped():
    body = {
        "model": "m",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"},
            {"role": "tool", "tool_call_id": "call_9", "name": "other", "content": "x"},
        ],
    }
    request = oa.from_chat_request(body, "1")
    assistant, tool, named = request.messages[1:]
    assert assistant.content == ""
    assert assistant.tool_calls == [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert (tool.tool_call_id, tool.tool_name) == ("call_1", "get_weather")
    assert (named.tool_call_id, named.tool_name) == ("call_9", "other")
    prompt = gotemplate.render_messages(
        HERMES_TEMPLATE, [m.to_dict() for m in request.messages], tools=request.tools
    )
    assert '{"name": "get_weather", "arguments": {"city":"Paris"}}' in prompt
    assert "<|im_start|>tool\n22 degrees and sunny<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_openai_tool_choice_forms():
    assert oa.tool_choice(None) == "auto"
    assert oa.tool_choice("required") == "required"
    assert oa.tool_choice({"type": "function", "function": {"name": "f"}}) == {"name": "f"}


def test_forced_arguments_are_the_functions_own():
    nested = {
        "type": "object",
        "properties": {
            "where": {"type": "object", "properties": {"city": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {}}},
            "extra": {"type": "object", "additionalProperties": True, "properties": {}},
        },
    }
    out = tools.closed(nested)
    assert out["additionalProperties"] is False
    assert out["properties"]["where"]["additionalProperties"] is False
    assert out["properties"]["tags"]["items"]["additionalProperties"] is False
    assert out["properties"]["extra"]["additionalProperties"] is True
    assert "additionalProperties" not in nested  # the request's schema is not changed
    fn = {"type": "function", "function": {"name": "f", "parameters": nested}}
    assert '"additionalProperties": false' in tools.required_lark(tools.LLAMA3, [fn], None)


def test_a_forced_choice_the_format_cannot_enforce_is_refused_before_decoding():
    from mlxollama.engine.answer import _grammar
    from mlxollama.http.errors import status_of

    gemma4, _ = TEMPLATES["gemma4-jinja"]
    required = api.InferenceRequest(model="m", kind="chat", tools=TOOLS, tool_choice="required")
    with pytest.raises(InvalidOption) as refused:
        _grammar(required, gemma4, TOOLS)
    assert status_of(refused.value)[0] == 400
    auto = api.InferenceRequest(model="m", kind="chat", tools=TOOLS)
    assert _grammar(auto, gemma4, TOOLS) is None  # "auto" parses what the model writes
    named = api.InferenceRequest(
        model="m", kind="chat", tools=TOOLS, tool_choice={"name": "get_time"}
    )
    assert "get_time" in _grammar(named, HERMES_TEMPLATE, TOOLS)
