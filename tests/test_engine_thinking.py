"""Thinking without a model: which templates think and with which markers, the parser that
separates the reasoning from the answer (fed at every chunk boundary), the `think` a request
is rendered with, the logprob shapes, and the `/v1` translations of reasoning and logprobs."""

from __future__ import annotations

import itertools

import pytest

from mlxollama import api
from mlxollama.engine import thinking
from mlxollama.engine.decoder import TextParser, logprob_entry, token_bytes
from mlxollama.engine.features import capabilities
from mlxollama.engine.output import ThinkingParser, ToolCallParser
from mlxollama.engine.thinking import HARMONY, THINK_TAGS, ThinkFormat, think_format

# -- detection -----------------------------------------------------------------------------

GO_THINKING = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<reasoning>{{ .Thinking }}</reasoning>\n{{ end }}"
    "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
GO_THINK_FLAG = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}"
)
GO_PLAIN = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:"
JINJA_QWEN = (
    "{% for m in messages %}{{ m.content }}{% endfor %}"
    "{% if enable_thinking is false %}<think>\n\n</think>{% endif %}"
)
JINJA_SPLIT = "{% for m in messages %}{{ m.content.split('</think>')[-1] }}{% endfor %}"
JINJA_HARMONY = (
    "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>"
    "{% endfor %}{% if reasoning_effort %}Reasoning: {{ reasoning_effort }}{% endif %}"
    "<|start|>assistant<|channel|>analysis<|message|>"
)


@pytest.mark.parametrize(
    ("template", "go", "expected"),
    [
        (GO_THINKING, True, ThinkFormat("<reasoning>", "</reasoning>")),
        (GO_THINK_FLAG, True, THINK_TAGS),
        (GO_PLAIN, True, None),
        ("<think>{{ .Prompt }}", True, None),  # written, but nothing reads .Think
        (JINJA_QWEN, False, THINK_TAGS),
        (JINJA_SPLIT, False, THINK_TAGS),
        (JINJA_HARMONY, False, HARMONY),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", False, None),
        (None, False, None),
    ],
)
def test_think_format_from_the_template(template, go, expected):
    assert think_format(template, go) == expected


def test_thinking_inferred_only_inside_the_messages_range():
    # `.Thinking` outside `range .Messages` is not a message's reasoning (Ollama's rule)
    outside = "{{ if .Thinking }}<t>{{ .Thinking }}</t>{{ end }}{{ range .Messages }}{{ end }}"
    assert think_format(outside, True) is None
    # the last `.Thinking` wins, and the markers are stripped of their whitespace
    two = (
        "{{ range .Messages }}{{ if .Thinking }}\n<a>{{ .Thinking }}</a>\n{{ end }}"
        "{{ if .Thinking }}<b> {{ .Thinking }} </b>{{ end }}{{ end }}"
    )
    assert think_format(two, True) == ThinkFormat("<b>", "</b>")


def test_capabilities_list_thinking_and_insert():
    assert "thinking" in capabilities(["completion"], GO_THINKING, True)
    assert "thinking" not in capabilities(["completion"], GO_PLAIN, True)
    fim = "<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>"
    assert capabilities(["completion"], fim, True) == ["completion", "insert"]
    assert capabilities(["embedding"], GO_THINKING, True) == ["embedding"]


@pytest.mark.parametrize(
    ("think", "fmt", "expected"),
    [
        (None, THINK_TAGS, True),  # a thinking model thinks unless told not to
        (None, None, None),
        (False, THINK_TAGS, False),
        ("high", THINK_TAGS, "high"),
        ("max", THINK_TAGS, "max"),
        ("max", HARMONY, "high"),  # harmony has no "max"
    ],
)
def test_effective_think(think, fmt, expected):
    assert thinking.effective_think(think, fmt) == expected


# -- the parser ----------------------------------------------------------------------------


def run(parser, text: str, cuts) -> tuple[str, str, list]:
    """Feed `text` cut at `cuts`; the joined thinking, content and the chunks."""
    chunks = []
    last = 0
    for cut in [*cuts, len(text)]:
        chunks += parser.feed(text[last:cut])
        last = cut
    chunks += parser.close()
    thought = "".join(c.thinking for c in chunks)
    content = "".join(c.text for c in chunks)
    return thought, content, chunks


def all_cuts(text: str, n: int = 2):
    """Every way to cut `text` in up to n places."""
    yield ()
    for k in range(1, n + 1):
        yield from itertools.combinations(range(1, len(text)), k)


def tags(**kwargs) -> ThinkingParser:
    return ThinkingParser("<think>", "</think>", **kwargs)


@pytest.mark.parametrize(
    ("text", "opened", "thought", "content"),
    [
        ("<think>\nI ponder.\n</think>\n\nThe answer.", False, "I ponder.\n", "The answer."),
        ("  <think>a</think>b", False, "a", "b"),
        ("I ponder.</think> The answer.", True, "I ponder.", "The answer."),
        ("\nI ponder.</think>The answer.", True, "I ponder.", "The answer."),
        ("No reasoning at all.", False, "", "No reasoning at all."),
        ("<thin", False, "", "<thin"),  # a partial marker at the end is content
        ("Say <think> later", False, "", "Say <think> later"),  # only at the start
        ("<think>never closed", False, "never closed", ""),
        ("<think></think>", False, "", ""),
        ("<<think>x</think>y", False, "", "<<think>x</think>y"),
    ],
)
def test_thinking_parser_at_every_boundary(text, opened, thought, content):
    for cuts in all_cuts(text):
        got = run(tags(opened=opened), text, cuts)
        assert got[:2] == (thought, content), cuts
        assert all(not (c.text and c.thinking) for c in got[2])  # one kind per chunk


def test_reasoning_streams_before_it_ends():
    parser = tags()
    assert parser.feed("<think>") == []
    first = parser.feed("one two")
    assert [c.thinking for c in first] == ["one two"]  # not held until </think>
    assert [c.thinking for c in parser.feed(" three</")] == [" three"]  # "</" may be a marker
    rest = parser.feed("think>Answer")
    assert [(c.thinking, c.text) for c in rest] == [("", "Answer")]


def test_tool_calls_after_the_reasoning():
    def parse(body):
        return [{"function": {"name": body.strip(), "arguments": {}}}]

    text = "<think>call f</think><tool_call>f</tool_call>done"
    for cuts in all_cuts(text):
        inner = ToolCallParser("<tool_call>", "</tool_call>", parse)
        thought, content, chunks = run(tags(inner=inner), text, cuts)
        assert (thought, content) == ("call f", "done")
        calls = [c for ch in chunks for c in ch.tool_calls or ()]
        assert [c["function"]["name"] for c in calls] == ["f"]


HARMONY_TEXT = (
    "<|channel|>analysis<|message|>User greets. Reply.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello there!"
)


def harmony(**kwargs) -> ThinkingParser:
    return ThinkingParser(HARMONY.start, HARMONY.end, answer=HARMONY.answer, **kwargs)


@pytest.mark.parametrize(
    ("text", "thought", "content"),
    [
        (HARMONY_TEXT, "User greets. Reply.", "Hello there!"),
        ("<|channel|>final<|message|>Straight away.", "", "Straight away."),  # no analysis
        # after the reasoning, a header that is not the final channel is kept (tool calls)
        (
            "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>commentary to=f",
            "x",
            "<|start|>assistant<|channel|>commentary to=f",
        ),
    ],
)
def test_harmony_channels(text, thought, content):
    for cuts in all_cuts(text, 2 if len(text) < 80 else 1):
        assert run(harmony(), text, cuts)[:2] == (thought, content), cuts


def test_a_plain_parser_passes_everything():
    assert run(TextParser(), "<think>a</think>b", [3])[1] == "<think>a</think>b"


# -- logprob shapes ------------------------------------------------------------------------


class ByteTokenizer:
    """A byte-level BPE vocabulary of four tokens: 'a', ' b', and 'é' split in two."""

    pieces = ("a", "Ġb", "Ã", "©")  # GPT-2's alphabet: Ġ is a space, Ã© the bytes of é
    texts = ("a", " b", "\ufffd", "\ufffd")

    def decode(self, ids):
        return "".join(self.texts[i] for i in ids)

    def convert_ids_to_tokens(self, i):
        return self.pieces[i]


def test_logprob_entry_has_ollamas_fields():
    tok = ByteTokenizer()
    entry = logprob_entry(tok, 1, (-0.25, [(1, -0.25), (0, -1.5)]))
    assert entry == {
        "token": " b",
        "logprob": -0.25,
        "bytes": [32, 98],
        "top_logprobs": [
            {"token": " b", "logprob": -0.25, "bytes": [32, 98]},
            {"token": "a", "logprob": -1.5, "bytes": [97]},
        ],
    }
    # no alternatives asked for: no `top_logprobs` (Ollama's omitempty)
    assert logprob_entry(tok, 0, (-0.1, [])) == {"token": "a", "logprob": -0.1, "bytes": [97]}


def test_bytes_of_a_split_character_join_into_it():
    tok = ByteTokenizer()
    assert token_bytes(tok, 2) + token_bytes(tok, 3) == "é".encode()


def test_spm_byte_tokens():
    class Spm:
        def decode(self, ids):
            return "\ufffd"

        def convert_ids_to_tokens(self, i):
            return "<0xC3>"

    assert token_bytes(Spm(), 7) == b"\xc3"


# -- /v1 shapes ----------------------------------------------------------------------------


def test_openai_chat_output_splits_reasoning_and_carries_logprobs():
    import orjson

    from mlxollama.http.openai import ChatOutput

    request = api.InferenceRequest(model="m", kind="chat", logprobs=True, request_id="r")
    out = ChatOutput(request, include_usage=False)
    lp = [{"token": "x", "logprob": -0.5, "bytes": [120]}]
    data = out.chunk(api.Chunk(thinking="hmm", text="Hi", logprobs=lp))
    events = [orjson.loads(e[6:]) for e in data.split(b"\n\n") if e]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas == [{"role": "assistant", "reasoning": "hmm"}, {"content": "Hi"}]
    assert events[0]["choices"][0]["logprobs"] == {
        "content": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}]
    }
    assert "logprobs" not in events[1]["choices"][0]
    final = api.Chunk(done=True, done_reason="stop", thinking="hmm", text="Hi", logprobs=lp)
    whole = out.whole(final)["choices"][0]
    assert whole["message"] == {"role": "assistant", "content": "Hi", "reasoning": "hmm"}
    assert whole["logprobs"]["content"][0]["token"] == "x"


def test_openai_completion_logprobs_legacy_shape():
    from mlxollama.http.openai import legacy_logprobs

    entries = [
        {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]},
        {"token": " you", "logprob": -2.0, "top_logprobs": [{"token": " me", "logprob": -1.0}]},
    ]
    body, offset = legacy_logprobs(entries, 5)
    assert body["tokens"] == ["Hi", " you"] and body["token_logprobs"] == [-0.1, -2.0]
    assert body["top_logprobs"] == [{"Hi": -0.1}, {" me": -1.0}]
    assert body["text_offset"] == [5, 7] and offset == 11


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"top_logprobs": 3}, "only allowed when 'logprobs' is enabled"),
        ({"logprobs": True, "top_logprobs": 21}, "Expected a value <= 20"),
        ({"reasoning_effort": "extreme"}, 'invalid reasoning value: "extreme"'),
    ],
)
def test_openai_chat_request_refusals(body, message):
    import falcon

    from mlxollama.http.openai import from_chat_request

    full = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(falcon.HTTPBadRequest) as e:
        from_chat_request(full, "r")
    assert message in str(e.value.description)


@pytest.mark.parametrize(
    ("body", "think"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning": {"effort": "xhigh"}}, "max"),
        ({}, None),
    ],
)
def test_openai_reasoning_effort_as_think(body, think):
    from mlxollama.http.openai import from_chat_request

    full = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    assert from_chat_request(full, "r").think == think


def test_openai_completion_logprobs_is_a_count():
    from mlxollama.http.openai import from_completion_request

    request = from_completion_request({"model": "m", "prompt": "x", "logprobs": 3}, "r")
    assert (request.logprobs, request.top_logprobs) == (True, 3)
    request = from_completion_request({"model": "m", "prompt": "x"}, "r")
    assert (request.logprobs, request.top_logprobs) == (False, 0)


# -- the CLI -------------------------------------------------------------------------------


class StreamingClient:
    """A ModelClient's `chat` that streams a fixed answer and records what it was asked."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.asked = []

    def chat(self, model, messages, **kwargs):
        self.asked.append(kwargs)
        return iter(
            {"message": {"role": "assistant", "content": c, **({"thinking": t} if t else {})}}
            for t, c in self.pieces
        )


PIECES = [("I ", ""), ("ponder.", ""), ("", "The "), ("", "answer.")]


def test_cli_shows_thinking_as_ollama_does(capsys):
    from mlxollama.cli.repl import Conversation

    client = StreamingClient(PIECES)
    reply = Conversation(client, "m", think="high").ask("Why?")
    out = capsys.readouterr().out
    assert out == "Thinking...\nI ponder.\n...done thinking.\n\nThe answer.\n\n"
    assert reply == "The answer." and client.asked[0]["think"] == "high"

    Conversation(StreamingClient(PIECES), "m", hidethinking=True).ask("Why?")
    assert capsys.readouterr().out == "The answer.\n\n"


def test_cli_dims_thinking_on_a_terminal():
    import click
    from click.testing import CliRunner

    from mlxollama.cli.repl import ThinkingDisplay

    runner = CliRunner()

    def show():
        shown = ThinkingDisplay(tty=True)
        shown.thinking("hmm\n")
        shown.done()

    out = runner.invoke(click.command()(show), color=True).output
    assert out == (
        click.style("Thinking...\n", dim=True, bold=True)
        + click.style("hmm\n", dim=True)
        + click.style("...done thinking.\n\n", dim=True, bold=True)
    )


def test_repl_set_think(capsys):
    from mlxollama.cli.repl import Conversation, command

    conv = Conversation(StreamingClient([]), "m")
    command(conv, "/set think")
    assert conv.think is True and "Set 'think' mode." in capsys.readouterr().out
    command(conv, "/set think low")
    assert conv.think == "low" and "Set 'think' mode to 'low'." in capsys.readouterr().out
    command(conv, "/set think loud")
    assert conv.think == "low" and "Invalid think level" in capsys.readouterr().out
    command(conv, "/set nothink")
    assert conv.think is False and "Set 'nothink' mode." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "think"),
    [([], None), (["--think"], True), (["--think=false"], False), (["--think=max"], "max")],
)
def test_cli_think_flag(monkeypatch, args, think):
    from click.testing import CliRunner

    from mlxollama.cli import main

    seen = {}

    class Client:
        def show(self, model):
            return {"capabilities": ["completion", "thinking"]}

        def chat(self, model, messages, **kwargs):
            seen.update(kwargs)
            return iter([{"message": {"role": "assistant", "content": "ok"}}])

    monkeypatch.setattr(main, "connect", lambda embedded, announce=False: Client())
    out = CliRunner().invoke(main.cli, ["run", "m", *args, "--hidethinking", "hi"])
    assert out.exit_code == 0, out.output
    assert seen["think"] == think and out.output == "ok\n\n"


def test_cli_think_flag_refuses_other_values():
    from click.testing import CliRunner

    from mlxollama.cli import main

    out = CliRunner().invoke(main.cli, ["run", "m", "--think=loud", "hi"])
    assert out.exit_code == 2 and 'invalid value for --think: "loud"' in out.output


def test_a_grammar_leaves_no_room_to_think():
    # format or a forced tool call: a thinking model is told not to think unless asked
    assert thinking.effective_think(None, THINK_TAGS, constrained=True) is False
    assert thinking.effective_think("low", THINK_TAGS, constrained=True) == "low"
