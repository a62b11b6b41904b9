"""Thinking, logprobs and fill-in-the-middle on a real daemon with SmolLM2, through the
official `ollama` and `openai` clients and raw HTTP.

SmolLM2 does not think on its own: `thinker` is SmolLM2 with a Modelfile TEMPLATE that shows
a message's `.Thinking` between `<think>` and `</think>` and opens `<think>` when `.Think` is
set; two worked examples in the chat (assistant turns with `thinking`) make greedy SmolLM2
write a short reasoning, close it and answer. `fim` is SmolLM2 with a `.Suffix` template
(SmolLM2 has no FIM tokens, so the protocol is tested, not the infill's quality).
"""

from __future__ import annotations

import shutil

import ollama
import openai
import orjson
import pykka
import pytest

from mlxollama.http.server import shutdown
from tests.daemons import actor_classes, start_daemon

pytestmark = pytest.mark.model

THINKER = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>\n{{ end }}"
    "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ if .Think }}<think>\n{{ end }}"
)
FIM = "<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>"
EXAMPLES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "thinking": "Two plus two is four.", "content": "4"},
    {"role": "user", "content": "What is the capital of Italy?"},
    {"role": "assistant", "thinking": "Italy's capital is Rome.", "content": "Rome"},
    {"role": "user", "content": "What is the capital of France?"},
]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def d(tmp_path_factory, smollm2_store):
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("thinking") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    # prompt_eval_count compares prompt lengths here: nothing may come from the prompt cache
    daemon = start_daemon(root, num_parallel=2, prompt_cache="0", prompt_cache_disk="0")
    client = daemon.client()
    client.create(model="thinker", from_="smollm2", template=THINKER)
    client.create(model="fim", from_="smollm2", template=FIM)
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def oc(d) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{d.port}/v1", api_key="x", timeout=120, max_retries=0
    )


def ndjson(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


# -- thinking ------------------------------------------------------------------------------


def test_capabilities_in_show(d):
    client = d.client()
    assert "thinking" in client.show("thinker").capabilities
    assert "thinking" not in client.show("smollm2").capabilities
    assert "insert" in client.show("fim").capabilities
    assert "insert" not in client.show("thinker").capabilities


def test_chat_separates_reasoning_while_streaming(d):
    """`think` omitted on a thinking model: it thinks (Ollama's default); the reasoning
    streams in `message.thinking`, the answer in `content`, never both in one line; the
    stream and the whole answer agree."""
    status, _, body = d.call(
        "POST", "/api/chat", {"model": "thinker", "messages": EXAMPLES, "options": GREEDY}
    )
    assert status == 200
    lines = ndjson(body)
    pieces = [line["message"] for line in lines[:-1]]
    thinking = "".join(m.get("thinking", "") for m in pieces)
    content = "".join(m["content"] for m in pieces)
    assert "Paris" in thinking and "</think>" not in thinking + content
    assert content.strip() and "<think>" not in content
    assert sum(1 for m in pieces if m.get("thinking")) > 1  # streamed, not held to the end
    assert not any(m.get("thinking") and m["content"] for m in pieces)
    first_content = next(i for i, m in enumerate(pieces) if m["content"])
    assert all(not m.get("thinking") for m in pieces[first_content:])  # reasoning came first

    whole = d.client().chat("thinker", EXAMPLES, options=GREEDY, think=True)
    assert whole.message.thinking == thinking and whole.message.content == content
    assert whole.done_reason == lines[-1]["done_reason"]


def test_think_false_is_not_separated_and_the_template_is_told(d):
    client = d.client()
    on = client.chat("thinker", EXAMPLES, options={**GREEDY, "num_predict": 1}, think=True)
    off = client.chat("thinker", EXAMPLES, options=GREEDY, think=False)
    assert off.message.thinking is None
    assert off.prompt_eval_count < on.prompt_eval_count  # no `<think>` opened in the prompt
    # whatever the model writes stays in the content (Ollama does not parse it either)
    assert off.message.content.strip()


def test_format_on_a_thinking_model_answers_in_the_content(d):
    """A grammar binds the answer from its first token: the model is told not to think
    (think omitted) and the JSON is the content, not taken for reasoning."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = d.client().chat("thinker", EXAMPLES, format=schema, options={**GREEDY, "num_predict": 16})
    assert r.message.thinking is None
    if r.done_reason == "stop":
        assert isinstance(orjson.loads(r.message.content)["city"], str)
    else:
        assert r.message.content.startswith("{")


def test_generate_has_thinking(d):
    client = d.client()
    r = client.generate("thinker", "Why is the sky blue?", options={**GREEDY, "num_predict": 8})
    assert r.thinking and not r.response  # the prompt opened <think>; 8 tokens of reasoning
    lines = [
        line
        for line in client.generate(
            "thinker", "Hi", options={**GREEDY, "num_predict": 4}, stream=True
        )
    ]
    assert all(line.thinking for line in lines[:-1]) and not any(line.response for line in lines)
    off = client.generate("thinker", "Hi", think=False, options={**GREEDY, "num_predict": 4})
    assert off.thinking is None and off.response


def test_thinking_refused_where_the_model_does_not_think(d, oc):
    status, _, body = d.call(
        "POST", "/api/chat", {"model": "smollm2", "messages": EXAMPLES[:1], "think": True}
    )
    assert status == 400 and orjson.loads(body) == {"error": '"smollm2" does not support thinking'}
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        d.client().generate("smollm2", "hi", think="low")
    with pytest.raises(openai.BadRequestError, match='"smollm2" does not support thinking'):
        oc.chat.completions.create(model="smollm2", messages=EXAMPLES[:1], reasoning_effort="low")
    # think false and reasoning_effort "none" are fine anywhere
    ok = oc.chat.completions.create(
        model="smollm2", messages=EXAMPLES[:1], reasoning_effort="none", max_tokens=1
    )
    assert ok.choices[0].finish_reason == "length"


def test_openai_reasoning_in_message_and_deltas(oc):
    # OpenAI's shape of the examples: an assistant's reasoning is `reasoning`
    messages = [
        {
            "role": m["role"],
            "content": m["content"],
            **({"reasoning": m["thinking"]} if "thinking" in m else {}),
        }
        for m in EXAMPLES
    ]
    kwargs = {"model": "thinker", "messages": messages, "temperature": 0, "max_tokens": 24}
    answer = oc.chat.completions.create(reasoning_effort="medium", **kwargs)
    message = answer.choices[0].message
    reasoning = message.model_extra["reasoning"]
    assert "Paris" in reasoning and message.content.strip()
    chunks = list(oc.chat.completions.create(reasoning_effort="medium", stream=True, **kwargs))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    streamed = "".join((d.model_extra or {}).get("reasoning", "") for d in deltas)
    assert streamed == reasoning
    assert "".join(d.content or "" for d in deltas) == message.content


# -- logprobs ------------------------------------------------------------------------------


def check_entries(entries, top: int):
    for e in entries:
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == top
        best = e["top_logprobs"][0]
        # greedy: the chosen token is the most likely one, with the same logprob
        assert (best["token"], best["logprob"]) == (e["token"], e["logprob"])
        values = [t["logprob"] for t in e["top_logprobs"]]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert bytes(e["bytes"]) == e["token"].encode()


def test_native_logprobs(d):
    body = {
        "model": "smollm2",
        "prompt": "Write a poem about the sea.",
        "logprobs": True,
        "top_logprobs": 3,
        "options": {"temperature": 0, "num_predict": 10},
    }
    status, _, data = d.call("POST", "/api/generate", {**body, "stream": False})
    whole = orjson.loads(data)
    assert status == 200 and whole["done_reason"] == "length"
    entries = whole["logprobs"]
    assert len(entries) == whole["eval_count"] == 10
    check_entries(entries, 3)
    assert "".join(e["token"] for e in entries) == whole["response"]
    _, _, data = d.call("POST", "/api/generate", body)
    streamed = [e for line in ndjson(data) for e in line.get("logprobs", ())]
    assert streamed == entries  # greedy: the same tokens, the same numbers
    # without top_logprobs: the chosen token only, no `top_logprobs` key (Ollama's omitempty)
    r = d.client().chat(
        "smollm2", EXAMPLES[:1], logprobs=True, options={"temperature": 0, "num_predict": 4}
    )
    assert len(r.logprobs) == r.eval_count and all(lp.top_logprobs is None for lp in r.logprobs)


def test_openai_chat_logprobs(oc):
    kwargs = {"model": "smollm2", "messages": EXAMPLES[:1], "temperature": 0, "max_tokens": 6}
    answer = oc.chat.completions.create(logprobs=True, top_logprobs=2, **kwargs)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 6
    check_entries([c.model_dump() for c in content], 2)
    chunks = list(oc.chat.completions.create(logprobs=True, top_logprobs=2, stream=True, **kwargs))
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert oc.chat.completions.create(**kwargs).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="only allowed when 'logprobs' is enabled"):
        oc.chat.completions.create(top_logprobs=2, **kwargs)


def test_openai_completions_logprobs(oc):
    answer = oc.completions.create(
        model="smollm2", prompt="The sea is", logprobs=2, temperature=0, max_tokens=6
    )
    lp = answer.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == answer.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) == value and top[token] == value


# -- fill in the middle --------------------------------------------------------------------


def test_suffix_fills_the_middle(d, oc):
    client = d.client()
    prompt, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    options = {"temperature": 0, "num_predict": 8}
    with_suffix = client.generate("fim", prompt, suffix=suffix, options=options)
    without = client.generate("fim", prompt, options=options)
    assert with_suffix.response and with_suffix.prompt_eval_count > without.prompt_eval_count
    completion = oc.completions.create(
        model="fim", prompt=prompt, suffix=suffix, temperature=0, max_tokens=8
    )
    assert completion.choices[0].text == with_suffix.response  # one rendering, greedy
    assert completion.usage.prompt_tokens == with_suffix.prompt_eval_count
    with pytest.raises(ollama.ResponseError, match="does not support insert"):
        client.generate("smollm2", prompt, suffix=suffix)
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        oc.completions.create(model="smollm2", prompt=prompt, suffix=suffix, max_tokens=1)
