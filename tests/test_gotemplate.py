"""Go text/template rendering and Ollama's chat-to-prompt rules (the gotemplate package)."""

from __future__ import annotations

import datetime

import pytest

from mlxollama.errors import InvalidModelfile
from mlxollama.gotemplate import (
    TemplateError,
    go_float,
    go_quote,
    parse,
    render_messages,
)

# SmolLM2-Instruct's chat format in Go syntax: ChatML, with the model's default system
# prompt when the chat brings none.
SMOLLM2 = """\
{{- if ne (index .Messages 0).Role "system" }}<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

# Llama 3 style: one header per message, and the assistant header after the last one only.
LLAMA3 = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

# The same ChatML format written the old way, with .System/.Prompt/.Response.
CHATML_LEGACY = """\
{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""

CHATML = """\
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

U1 = {"role": "user", "content": "Hi!"}
A1 = {"role": "assistant", "content": "Hello, how can I help?"}
U2 = {"role": "user", "content": "Name a color."}
SYS = {"role": "system", "content": "Be brief."}


def im(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("{{ .System }}|{{ .Prompt }}", {"System": "s", "Prompt": "p"}, "s|p"),
        ("{{ . }}", {"A": 1}, "map[A:1]"),
        # trimming: "{{- " eats blanks before, " -}}" after; "{{-3}}" is the number -3
        ("a  \n {{- .X -}} \n\t b", {"X": "x"}, "axb"),
        ("a {{-3}}", {}, "a -3"),
        ("a {{- /* note */ -}} b", {}, "ab"),
        ("a{{/* multi\nline */}}b", {}, "ab"),
        # if / else if / else
        (
            '{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else }}C{{ end }}',
            {"R": "b"},
            "B",
        ),
        ('{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else }}C{{ end }}', {"R": "z"}, "C"),
        ("{{ if .Missing }}yes{{ else }}no{{ end }}", {}, "no"),
        ("{{ if .L }}yes{{ else }}no{{ end }}", {"L": []}, "no"),
        ("{{ if .N }}yes{{ else }}no{{ end }}", {"N": 0.0}, "no"),
        # range: index and element, else, break, continue, over an int and a map (sorted)
        ("{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
        ("{{ range .L }}{{ . }}{{ else }}empty{{ end }}", {"L": []}, "empty"),
        (
            "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}"
            "{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            {"L": [1, 2, 3, 4, 5]},
            "13",
        ),
        ("{{ range 3 }}{{ . }}{{ end }}", {}, "012"),
        ("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", {"M": {"b": 2, "a": 1}}, "a1b2"),
        # with / else with
        ("{{ with .X }}<{{ . }}>{{ else with .Y }}[{{ . }}]{{ end }}", {"Y": "y"}, "[y]"),
        ("{{ with .X }}<{{ . }}>{{ end }}", {"X": "x"}, "<x>"),
        # $ and variables; an assignment inside range changes the outer variable
        ("{{ range .L }}{{ $.S }}{{ . }}{{ end }}", {"S": "-", "L": [1, 2]}, "-1-2"),
        ('{{ $x := "a" }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}', {"L": ["b", "c"]}, "c"),
        (
            "{{ $last := 0 }}{{ range $i, $_ := .L }}{{ $last = $i }}{{ end }}{{ $last }}",
            {"L": [7, 8, 9]},
            "2",
        ),
        # functions
        (
            '{{ eq .R "x" "y" "z" }} {{ ne 1 2 }} {{ lt 1 2.5 }} {{ ge "b" "a" }}',
            {"R": "z"},
            "true true true true",
        ),
        (
            '{{ or .A "default" }}|{{ and 1 0 2 }}|{{ and 1 "last" }}|{{ not .A }}',
            {"A": ""},
            "default|0|last|true",
        ),
        ("{{ len .S }} {{ len .L }} {{ len .M }}", {"S": "héllo", "L": [1, 2], "M": {}}, "6 2 0"),
        (
            '{{ index .L 1 }} {{ index .M "k" }} {{ (index .Msgs 0).Role }}',
            {"L": [5, 6], "M": {"k": "v"}, "Msgs": [{"Role": "user"}]},
            "6 v user",
        ),
        ('{{ slice "hello" 1 3 }} {{ slice .L 1 }}', {"L": [1, 2, 3]}, "el [2 3]"),
        (
            '{{ printf "%s=%d %q %v %.2f %5s|%-3s|" "n" 3 "a\\n" 1.5 3.14159 "r" "l" }}',
            {},
            'n=3 "a\\n" 1.5 3.14     r|l  |',
        ),
        ('{{ printf "%s %s" "only" }}', {}, "only %!s(MISSING)"),
        ('{{ print 1 2 "a" "b" 3 }}|{{ println "x" 1 }}', {}, "1 2ab3|x 1\n"),
        (
            "{{ json .M }}",
            {"M": {"k": "<b>", "n": 2.0, "l": [True, None]}},
            '{"k":"\\u003cb\\u003e","n":2,"l":[true,null]}',
        ),
        (
            '{{ html "<a href=\'x\'>" }} {{ urlquery "a b&c" }}',
            {},
            "&lt;a href=&#39;x&#39;&gt; a+b%26c",
        ),
        ('{{ .X | printf "%s!" }} {{ "a" | eq "a" }}', {"X": "hi"}, "hi! true"),
        # literals and Go's printing of values
        (
            "{{ \"tab\\there\" }}|{{ `raw\\n` }}|{{ 'A' }}|{{ 0x10 }}|{{ 1_000 }}",
            {},
            "tab\there|raw\\n|65|16|1000",
        ),
        (
            "{{ .F }} {{ .G }} {{ .H }} {{ .B }} {{ .L }}",
            {"F": 1e6, "G": 0.5, "H": 1e-5, "B": False, "L": ["a", 1]},
            "1e+06 0.5 1e-05 false [a 1]",
        ),
        ("[{{ .Missing }}]", {}, "[<no value>]"),
        ("{{ .M.Inner.Deep }}", {"M": {"Inner": {"Deep": "d"}}}, "d"),
        # whitespace-only actions between text keep the text's own spacing
        ("{{ if true }}\n  x\n{{ end }}", {}, "\n  x\n"),
    ],
)
def test_render(template, values, expected):
    assert parse(template).render(values) == expected


def test_dates():
    today = datetime.date.today()
    out = parse("{{ currentDate }} {{ yesterdayDate }}").render({})
    assert out == f"{today.isoformat()} {(today - datetime.timedelta(days=1)).isoformat()}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ .Prompt ", "line 1: unclosed action"),
        ("ok\n\n{{ if .X }}never closed", "unexpected EOF"),
        ("a\n{{ end }}", "line 2: unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("x\ny\n{{ lower .X }}", 'line 3: function "lower" not defined'),
        ("{{ $x }}", 'undefined variable "$x"'),
        ("{{ range .L }}{{ $y := 1 }}{{ end }}{{ $y }}", 'undefined variable "$y"'),
        ("{{ $x = 1 }}", 'undefined variable "$x"'),
        ("{{ .X | }}", "missing value for command"),
        ("{{ }}", "missing value for command"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ (.X }}", "unclosed left paren"),
        ("{{ .X) }}", "unexpected right paren"),
        ("{{/* never closed", "unclosed comment"),
        ("{{/* x */ }}", "comment ends before closing delimiter"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ `abc }}", "unterminated raw quoted string"),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ('{{ define "x" }}{{ end }}', "{{define}} is not supported"),
        ('{{ template "x" }}', "{{template}} is not supported"),
        ("{{ if .A }}{{ else }}{{ else }}{{ end }}", "expected {{end}}; found {{else}}"),
        ("{{ range .A }}{{ else if .B }}{{ end }}", "{{else if}} inside {{range}}"),
        ("{{ nil }}", "nil is not a command"),
        ("{{ .X # }}", "unrecognized character in action"),
        ("{{ 3x }}", "bad number syntax"),
    ],
)
def test_parse_errors(template, message):
    with pytest.raises(InvalidModelfile) as err:
        parse(template)
    assert str(err.value).startswith("template error: ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("template", "values", "message"),
    [
        ('{{ "a" .X }}', {}, "can't give argument to non-function"),
        ("{{ .X.Y }}", {}, "nil pointer evaluating .Y"),
        ("{{ .S.Y }}", {"S": "text"}, "can't evaluate field Y in type string"),
        ("{{ len .Missing }}", {}, "len of nil pointer"),
        ("{{ index .L 5 }}", {"L": [1]}, "index out of range: 5"),
        ('{{ eq .N "1" }}', {"N": 1}, "incompatible types for comparison"),
        ("{{ range .S }}{{ end }}", {"S": "abc"}, "range can't iterate over abc"),
        ("{{ not 1 2 }}", {}, "wrong number of args for not"),
    ],
)
def test_render_errors(template, values, message):
    with pytest.raises(TemplateError, match="template error") as err:
        parse(template).render(values)
    assert message in str(err.value)


def test_vars_are_the_mentioned_names():
    t = parse("{{ with .Tools }}{{ . }}{{ end }}{{ range $m := .Messages }}{{ $m.Role }}{{ end }}")
    assert {"tools", "messages", "role", "$m"} <= t.vars
    assert "prompt" not in t.vars
    assert t.source.startswith("{{ with")


@pytest.mark.parametrize(
    ("template", "messages", "system", "expected"),
    [
        # SmolLM2: the model's default system prompt, unless the chat brings one
        (
            SMOLLM2,
            [U1],
            None,
            im("system", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
            + im("user", "Hi!")
            + "<|im_start|>assistant\n",
        ),
        (
            SMOLLM2,
            [U1, A1, U2],
            "Be brief.",
            im("system", "Be brief.")
            + im("user", "Hi!")
            + im("assistant", "Hello, how can I help?")
            + im("user", "Name a color.")
            + "<|im_start|>assistant\n",
        ),
        # the chat's own system message wins over the model's SYSTEM
        (
            CHATML,
            [SYS, U1],
            "ignored",
            im("system", "Be brief.") + im("user", "Hi!") + "<|im_start|>assistant\n",
        ),
        # consecutive messages of one role are joined with a blank line
        (
            CHATML,
            [U1, {"role": "user", "content": "Anyone?"}],
            None,
            im("user", "Hi!\n\nAnyone?") + "<|im_start|>assistant\n",
        ),
        (
            LLAMA3,
            [U1, A1, U2],
            "Be brief.",
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello, how can I help?<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        # Llama 3: a final assistant message is left open for the model to continue
        (
            LLAMA3,
            [U1, {"role": "assistant", "content": "Sure"}],
            None,
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nSure<|eot_id|>",
        ),
        # legacy: one run per round, system in the first, the last cut after .Response
        (
            CHATML_LEGACY,
            [U1, A1, U2],
            "Be brief.",
            im("system", "Be brief.")
            + im("user", "Hi!")
            + im("assistant", "Hello, how can I help?")
            + im("user", "Name a color.")
            + "<|im_start|>assistant\n",
        ),
        # legacy: a final assistant message is continued (prefill), not closed
        (
            CHATML_LEGACY,
            [U1, {"role": "assistant", "content": "Red is"}],
            None,
            im("user", "Hi!") + "<|im_start|>assistant\nRed is",
        ),
        # legacy without .Response: {{ .Response }} is appended to every round
        (
            "{{ if .System }}{{ .System }} {{ end }}USER: {{ .Prompt }} ASSISTANT: ",
            [SYS, U1, A1, U2],
            None,
            "Be brief. USER: Hi! ASSISTANT: Hello, how can I help?USER: Name a color. ASSISTANT: ",
        ),
        # legacy: a system message in mid-chat starts a new round and goes into it
        (
            "[{{ .System }}|{{ .Prompt }}|{{ .Response }}]",
            [U1, A1, SYS, U2],
            None,
            "[|Hi!|Hello, how can I help?][Be brief.|Name a color.|",
        ),
        # the cut keeps an enclosing block's start and drops everything after .Response
        (
            "{{ if .Prompt }}Q: {{ .Prompt }}\nA: {{ .Response }}</s>\n{{ end }}{{ .System }}",
            [U1],
            None,
            "Q: Hi!\nA: ",
        ),
        # no messages at all: the template runs once with empty values
        ("{{ .System }}>{{ .Prompt }}", [], None, ">"),
        ("{{ .System }}>{{ .Prompt }}", [], "sys", "sys>"),
    ],
)
def test_render_messages(template, messages, system, expected):
    assert render_messages(template, messages, system=system) == expected


def test_messages_template_sees_joined_system_and_system_messages():
    template = "{{ .System }}|{{ range .Messages }}{{ .Role }};{{ end }}"
    msgs = [SYS, U1, {"role": "system", "content": "Be kind."}]
    assert render_messages(template, msgs) == "Be brief.\n\nBe kind.|system;user;system;"


def test_legacy_and_messages_templates_agree():
    chat = [SYS, U1, A1, U2]
    by_messages = render_messages(CHATML, chat)
    assert by_messages.count("<|im_start|>") == 5
    assert render_messages(CHATML_LEGACY, chat) == by_messages


def test_tools_and_tool_calls():
    template = (
        "{{ range .Tools }}{{ .Function.Name }}({{ .Function.Parameters.Properties }})"
        "{{ range $k, $p := .Function.Parameters.Properties }} {{ $k }}:{{ toTypeScriptType $p }}{{ end }}"
        "{{ end }}\n"
        "{{ range .Messages }}{{ .Role }}:{{ .Content }}"
        "{{ range .ToolCalls }}<call {{ .Function.Name }} {{ .Function.Arguments }}>{{ end }}"
        '{{ if eq .Role "tool" }}[{{ .ToolName }}]{{ end }}\n{{ end }}'
        "{{ json .Tools }}"
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Get the weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": ["integer", "null"]},
                    },
                },
            },
        }
    ]
    messages = [
        U1,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
        {"role": "tool", "content": "warm", "tool_name": "weather"},
    ]
    out = render_messages(template, messages, tools=tools).split("\n")
    assert out[0] == (
        'weather({"city":{"type":"string"},"days":{"type":["integer","null"]}})'
        " city:string days:number | null"
    )
    assert out[1:5] == [
        "user:Hi!",
        'assistant:<call weather {"city":"Oslo"}>',
        "tool:sunny[weather]",  # tool results are never merged
        "tool:warm[weather]",
    ]
    assert out[5].startswith('[{"type":"function","function":{"name":"weather"')


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (None, "false||false"),
        (True, "true|medium|true"),  # Ollama: true is the "medium" level
        (False, "false||true"),
        ("high", "true|high|true"),
    ],
)
def test_think_values(think, expected):
    template = "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}{{ range .Messages }}{{ end }}"
    assert render_messages(template, [U1], think=think) == expected


def test_render_messages_accepts_parsed_templates_and_objects():
    class Msg:
        def __init__(self, role, content):
            self.role, self.content = role, content

        def to_dict(self):
            return {"role": self.role, "content": self.content}

    t = parse(CHATML)
    assert render_messages(t, [Msg("USER", "Hi!")]) == im("user", "Hi!") + "<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.7, "0.7"),
        (1.0, "1"),
        (100.0, "100"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5e-7, "-2.5e-07"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_go_float(value, expected):
    assert go_float(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<|im_end|>", '"<|im_end|>"'),
        ('say "hi"\n', '"say \\"hi\\"\\n"'),
        ("tab\there\\", '"tab\\there\\\\"'),
        ("\x1b[0m", '"\\x1b[0m"'),
        ("\u00a0é", '"\\u00a0é"'),
    ],
)
def test_go_quote(value, expected):
    assert go_quote(value) == expected
