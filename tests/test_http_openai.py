"""The OpenAI-compatible `/v1` API end to end: a real daemon on SmolLM2 driven by the unmodified
official `openai` client, http.client and raw sockets; plus a scripted runtime (no MLX) for
what a real model cannot be made to do on demand (a queue that is full, a step that fails)."""

from __future__ import annotations

import http.client
import shutil
import socket
import threading
from types import SimpleNamespace

import openai
import orjson
import pykka
import pytest

from mlxollama.api import Chunk
from mlxollama.config import Config
from mlxollama.http.app import create_app
from mlxollama.http.openai import from_chat_request, from_completion_request
from mlxollama.http.server import make_server, shutdown
from mlxollama.store.store import Store
from tests import daemons
from tests.daemons import actor_classes, no_sessions, start_daemon, wait_until
from tests.test_http_native import FakeRuntime, add_model

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"
STORY = "Write a long story about a dragon who learns to bake bread."
USER = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def d(tmp_path_factory, smollm2_store):
    """The real daemon on a copy of the SmolLM2 store (4 slots, a 64 KiB body cap)."""
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("openai") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    daemon = start_daemon(root, num_parallel=4, max_body="64KiB")
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def client(d) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{d.port}/v1", api_key="mlxollama", timeout=120, max_retries=0
    )


def raw_post(port: int, path: str, body: dict) -> socket.socket:
    return daemons.raw_post(port, path, body, headers="Authorization: Bearer anything\r\n")


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the stream ended before {marker!r}: {buf[-300:]!r}")
        buf += chunk
    return buf


def sse_events(body: bytes) -> list[bytes]:
    """The data of every event; each must be exactly `data: <one line>\\n\\n`."""
    assert body.endswith(b"\n\n"), body[-200:]
    events = body[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), body[:500]
    return [e[len(b"data: ") :] for e in events]


# -- chat completions ----------------------------------------------------------------------


def test_chat_completion_and_its_stream_agree(client):
    answer = client.chat.completions.create(
        model="smollm2", messages=USER, temperature=0, max_tokens=40
    )
    (choice,) = answer.choices
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and choice.index == 0
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == "smollm2" and answer.system_fingerprint == "fp_mlxollama"
    assert isinstance(answer.created, int)
    u = answer.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens < 40
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=USER,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].id != answer.id
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *content, finish, last = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content[1:])
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in content)
    assert "".join(c.choices[0].delta.content for c in content) == choice.message.content
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert last.choices == [] and last.usage == answer.usage  # greedy: the same answer


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="smollm2", messages=USER, temperature=0, max_tokens=3, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices and c.usage is None for c in chunks)


def test_stop_cuts_the_answer(client):
    for stop in ("Paris", ["Paris", "nowhere"]):
        answer = client.chat.completions.create(
            model="smollm2", messages=USER, temperature=0, max_tokens=40, stop=stop
        )
        text = answer.choices[0].message.content
        assert "Paris" not in text and "capital" in text, text
        assert answer.choices[0].finish_reason == "stop"


def test_max_tokens_ends_with_length(client):
    for limit in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": STORY}], temperature=0, **limit
        )
        assert answer.choices[0].finish_reason == "length", limit
        assert answer.usage.completion_tokens == 5, limit


def test_seed_makes_sampling_repeatable(client):
    def sample(seed: int) -> str:
        answer = client.chat.completions.create(
            model="smollm2",
            messages=[
                {"role": "user", "content": "Invent a name for a new fruit and describe it."}
            ],
            temperature=1,
            top_p=1,
            seed=seed,
            max_tokens=16,
        )
        return answer.choices[0].message.content

    first = sample(42)
    assert sample(42) == first
    assert any(sample(seed) != first for seed in (7, 1234)), first


def test_absent_temperature_keeps_the_models_own(d, client):
    """No forced 1.0 (Ollama's quirk): a Modelfile's `temperature 0` makes answers greedy."""
    status, _, data = d.call(
        "POST",
        "/api/create",
        {"model": "greedy", "from": "smollm2", "parameters": {"temperature": 0}, "stream": False},
    )
    assert status == 200, data
    try:
        prompt = [{"role": "user", "content": "Invent a name for a new fruit and describe it."}]
        answers = {
            client.chat.completions.create(model="greedy", messages=prompt, max_tokens=16)
            .choices[0]
            .message.content
            for _ in range(2)
        }
        assert len(answers) == 1, answers
    finally:
        unload = {"model": "greedy", "keep_alive": 0}
        assert d.call("POST", "/api/generate", unload)[0] == 200
        assert d.call("DELETE", "/api/delete", {"model": "greedy"})[0] == 200


def test_text_parts_developer_role_and_options(client):
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
    ]
    answer = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        temperature=0,
        extra_body={"options": {"num_predict": 3, "temperature": 0.9}},
    )
    assert answer.usage.completion_tokens == 3  # the options object applies
    # explicit fields win over it
    answer = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        temperature=0,
        max_tokens=2,
        extra_body={"options": {"num_predict": 3}},
    )
    assert answer.usage.completion_tokens == 2


# -- completions ---------------------------------------------------------------------------


def test_text_completion_and_its_stream_agree(client):
    prompt = "Name the capital of France."
    answer = client.completions.create(model="smollm2", prompt=prompt, temperature=0, max_tokens=8)
    (choice,) = answer.choices
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert choice.text and choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert answer.usage.prompt_tokens > 3 and 0 < answer.usage.completion_tokens <= 8

    chunks = list(
        client.completions.create(
            model="smollm2",
            prompt=[prompt],
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    *pieces, last = chunks
    assert all(c.object == "text_completion" for c in chunks)
    assert [c.choices[0].finish_reason for c in pieces] == [None] * (len(pieces) - 1) + [
        choice.finish_reason
    ]
    assert "".join(c.choices[0].text for c in pieces) == choice.text
    assert last.choices == [] and last.usage == answer.usage


def test_an_empty_prompt_loads_the_model_and_answers_nothing(client):
    answer = client.completions.create(model="smollm2", prompt="")
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("", "stop")
    assert answer.usage.completion_tokens == 0
    (chunk,) = client.completions.create(model="smollm2", prompt="", stream=True)
    assert (chunk.choices[0].text, chunk.choices[0].finish_reason) == ("", "stop")


# -- models --------------------------------------------------------------------------------


def test_models_list_and_retrieve(d, client):
    (model,) = client.models.list().data
    assert (model.id, model.object, model.owned_by) == ("smollm2:latest", "model", "library")
    assert isinstance(model.created, int) and model.created > 1_600_000_000
    assert client.models.retrieve("smollm2:latest") == model
    assert client.models.retrieve("smollm2") == model

    d.runtime.copy("smollm2", "hf.co/org/repo:q4")  # a name with slashes in the path
    try:
        got = client.models.retrieve("hf.co/org/repo:q4")
        assert (got.id, got.owned_by) == ("hf.co/org/repo:q4", "org")
        assert {m.id for m in client.models.list()} == {"smollm2:latest", "hf.co/org/repo:q4"}
    finally:
        d.runtime.delete("hf.co/org/repo:q4")

    for missing in ("ghost", "hf.co/org/ghost:q4", "not a name!"):
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(missing)
        assert e.value.body["message"] == f"model '{missing}' not found"


# -- errors --------------------------------------------------------------------------------


def test_bad_requests_raise_the_sdks_typed_errors(client):
    chat = client.chat.completions.create
    with pytest.raises(openai.NotFoundError) as e:
        chat(model="ghost", messages=USER)
    assert e.value.body == {
        "message": "model 'ghost' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    cases = [
        ({"n": 2}, "n: only 1 choice is supported"),
        ({"messages": []}, "[] is too short - 'messages'"),
        ({"tools": [tool]}, "registry.ollama.ai/library/smollm2:latest does not support tools"),
        ({"response_format": {"type": "yaml"}}, "Invalid value for 'response_format.type'"),
        ({"logprobs": True}, "logprobs are not supported"),
        ({"stop": 5}, '"stop" must be a string or an array of strings'),
        ({"temperature": "hot"}, '"temperature" must be a number'),
        ({"messages": [{"role": "user", "content": [image]}]}, "images are not supported"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "invalid message role"),
        ({"extra_body": {"keep_alive": "soon"}}, "invalid duration"),
        ({"extra_body": {"num_ctx": "big"}}, '"num_ctx" must be an integer'),
    ]
    for change, text in cases:
        with pytest.raises(openai.BadRequestError) as e:
            chat(**{"model": "smollm2", "messages": USER, **change})
        assert text in e.value.body["message"], (change, e.value.body)
        assert e.value.body["type"] == "invalid_request_error"

    complete = client.completions.create
    for change, text in [
        ({"suffix": "end"}, "does not support insert"),
        ({"echo": True}, "echo is not supported"),
        ({"best_of": 2}, "best_of"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"n": 3}, "n: only 1 choice"),
        ({"prompt": ["a", "b"]}, '"prompt" must be a string'),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            complete(**{"model": "smollm2", "prompt": "Hi", **change})
        assert text in e.value.body["message"], (change, e.value.body)
    with pytest.raises(openai.NotFoundError):
        complete(model="ghost", prompt="Hi")


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"temperature": 100}, "Invalid 'temperature': decimal above maximum value"),
        ({"temperature": -0.5}, "Invalid 'temperature': decimal below minimum value"),
        ({"top_p": 1.5}, "Invalid 'top_p': decimal above maximum value. Expected a value <= 1"),
        ({"top_p": -1}, "Invalid 'top_p': decimal below minimum value. Expected a value >= 0"),
        ({"presence_penalty": 3}, "Invalid 'presence_penalty': decimal above maximum value"),
        ({"frequency_penalty": -2.5}, "Invalid 'frequency_penalty': decimal below minimum"),
        ({"max_tokens": -1}, "Invalid 'max_tokens': integer below minimum value"),
        ({"max_tokens": 0}, "Expected a value >= 1, but got 0 instead"),
        ({"max_completion_tokens": 0}, "Invalid 'max_completion_tokens': integer below minimum"),
        ({"n": True}, '"n" must be an integer, not boolean'),
        ({"n": "1"}, '"n" must be an integer, not string'),
        ({"n": 0}, "n: only 1 choice is supported, not 0"),
        ({"temperature": True}, '"temperature" must be a number, not boolean'),
        ({"seed": True}, '"seed" must be an integer, not boolean'),
    ],
)
def test_out_of_range_sampling_fields_are_openai_400s(client, change, text):
    """What OpenAI refuses (temperature outside [0, 2], top_p outside [0, 1], penalties
    outside [-2, 2], max_tokens < 1, n that is not the integer 1) is a 400 here too."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{"model": "smollm2", "messages": USER, **change})
    assert text in e.value.body["message"], (change, e.value.body)
    assert e.value.body["type"] == "invalid_request_error"
    if "max_completion_tokens" not in change:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**{"model": "smollm2", "prompt": "Hi", **change})
        assert text in e.value.body["message"], (change, e.value.body)


def test_the_edges_of_the_ranges_are_accepted(client):
    answer = client.chat.completions.create(
        model="smollm2",
        messages=USER,
        temperature=2,
        top_p=1,
        presence_penalty=-2,
        frequency_penalty=2,
        max_tokens=1,
        n=1,
    )
    assert answer.choices[0].finish_reason == "length"


def test_error_bodies_have_openais_shape_and_native_ones_do_not(d):
    def error(status: int, kind: str, message: str) -> tuple[int, dict]:
        body = {"message": message, "type": kind, "param": None, "code": None}
        return status, {"error": body}

    def got(method: str, path: str, body=None) -> tuple[int, dict]:
        status, _, data = d.call(method, path, body, {"Content-Type": "application/json"})
        return status, orjson.loads(data)

    assert got("GET", "/v1/nope") == error(404, "not_found_error", "404 page not found")
    assert got("GET", "/v1") == error(404, "not_found_error", "404 page not found")
    status, body = got("POST", "/v1/chat/completions", b'{"model":')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("invalid JSON in request body")
    assert got("POST", "/v1/completions", b"") == error(
        400, "invalid_request_error", "missing request body"
    )
    status, body = got("DELETE", "/v1/models")
    assert status == 405 and body["error"]["type"] == "api_error"
    big = {"model": "smollm2", "prompt": "x" * (80 * 1024)}
    status, body = got("POST", "/v1/completions", big)
    assert status == 413 and "MLXOLLAMA_MAX_BODY" in body["error"]["message"]
    assert body["error"]["type"] == "api_error"

    assert got("GET", "/api/nope") == (404, {"error": "404 page not found"})
    status, body = got("POST", "/api/chat", b'{"model":')
    assert status == 400 and list(body) == ["error"] and "invalid JSON" in body["error"]


# -- the wire: SSE framing, incremental delivery, disconnects ------------------------------


def test_sse_framing_headers_and_ids(d):
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    body = {"model": "smollm2", "messages": USER, "temperature": 0, "max_tokens": 6}
    conn.request(
        "POST",
        "/v1/chat/completions",
        orjson.dumps({**body, "stream": True}),
        {"Authorization": "Bearer anything", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/event-stream"
    assert resp.getheader("Cache-Control") == "no-cache"
    request_id = resp.getheader("X-Request-Id")
    events = sse_events(resp.read())
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{request_id}"}  # logs line up
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert all("usage" not in c for c in chunks)

    conn.request("POST", "/v1/chat/completions", orjson.dumps(body))  # no stream: one object
    resp = conn.getresponse()
    assert resp.getheader("Content-Type").startswith("application/json")
    assert orjson.loads(resp.read())["object"] == "chat.completion"
    conn.close()


def test_chunks_go_out_as_tokens_are_produced(d):
    sock = raw_post(
        d.port,
        "/v1/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": STORY}],
            "temperature": 0,
            "max_tokens": 200,
            "stream": True,
        },
    )
    try:
        head = read_until(sock, b'"role":"assistant"')
        assert b"text/event-stream" in head and b"[DONE]" not in head
        assert d.active() == 1  # still generating when the first chunk arrived
        more = b""
        while more.count(b"data: {") < 5:  # and more follow, one by one
            more += read_until(sock, b"data: {")
        assert b"[DONE]" not in more and d.active() == 1
    finally:
        sock.close()
    assert wait_until(lambda: d.active() == 0, 1.0)


def test_a_client_that_hangs_up_cancels_its_generation(d):
    offset = d.log_path.stat().st_size
    for path, body in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": STORY}]}),
        ("/v1/completions", {"prompt": STORY}),
    ]:
        body = {**body, "model": "smollm2", "max_tokens": 2000, "stream": True}
        sock = raw_post(d.port, path, body)
        read_until(sock, b"data: {")
        assert d.active() == 1
        sock.close()
        assert wait_until(lambda: d.active() == 0, 1.0), d.runtime.ps()
        assert wait_until(no_sessions, 2), actor_classes()

    def events() -> list[dict]:
        return [orjson.loads(line) for line in d.log_path.read_bytes()[offset:].splitlines()]

    def gone() -> set[str]:
        return {
            e["request_id"]
            for e in events()
            if e["event"] == "request.end" and e.get("error") == "client disconnected"
        }

    assert wait_until(lambda: len(gone()) == 2, 3), events()
    ids = gone()
    paths = {
        e["path"] for e in events() if e["event"] == "request.start" and e["request_id"] in ids
    }
    assert paths == {"/v1/chat/completions", "/v1/completions"}


# -- extra fields (last of the daemon's tests: it unloads the model) -----------------------


def test_num_ctx_truncates_and_keep_alive_zero_unloads(d, client):
    long = " ".join(["Tell me about the history of bread."] * 20)
    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": long}],
        temperature=0,
        max_tokens=4,
        extra_body={"num_ctx": 64},
    )
    assert answer.usage.prompt_tokens <= 64 and answer.usage.completion_tokens > 0

    answer = client.chat.completions.create(
        model="smollm2",
        messages=USER,
        temperature=0,
        max_tokens=4,
        extra_body={"num_ctx": 64, "keep_alive": 0},
    )
    assert answer.choices[0].message.content
    assert wait_until(lambda: orjson.loads(d.call("GET", "/api/ps")[2])["models"] == [], 3)


# -- a scripted runtime: a full queue, a failure mid-stream --------------------------------


@pytest.fixture
def fake(tmp_path):
    store = Store(tmp_path / "models")
    add_model(store, "smol")
    runtime = FakeRuntime(store)
    config = Config.from_env({"MLXOLLAMA_MODELS": str(store.root)})
    srv = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=8)
    threading.Thread(target=srv.run, daemon=True).start()
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{srv.effective_port}/v1", api_key="x", max_retries=0
    )
    yield SimpleNamespace(runtime=runtime, client=client)
    shutdown(srv, runtime)


def test_a_full_queue_is_503_in_openais_shape(fake):
    fake.runtime.busy = True
    with pytest.raises(openai.InternalServerError) as e:
        fake.client.chat.completions.create(model="smol", messages=USER)
    assert e.value.status_code == 503 and e.value.body["type"] == "api_error"
    assert e.value.body["message"].startswith("server busy, please try again.")


def test_an_error_mid_stream_is_one_error_event(fake):
    fake.runtime.script = [Chunk(text="Hello"), RuntimeError("the model step failed")]
    stream = fake.client.chat.completions.create(model="smol", messages=USER, stream=True)
    first = next(stream)
    assert first.choices[0].delta.content == "Hello"
    with pytest.raises(openai.APIError) as e:
        next(stream)
    assert e.value.message == "the model step failed" and e.value.body["type"] == "api_error"


# -- the translation itself ----------------------------------------------------------------


def test_absent_sampling_fields_are_left_to_the_model():
    request = from_chat_request({"model": "m", "messages": USER}, "rid")
    assert request.options == {} and request.keep_alive is None
    request = from_chat_request(
        {
            "model": "m",
            "messages": USER,
            "temperature": 0.5,
            "top_p": 0.8,
            "seed": 3,
            "stop": "x",
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "max_tokens": 9,
            "max_completion_tokens": 7,
            "options": {"top_k": 5, "temperature": 1.5},
            "num_ctx": 128,
            "keep_alive": "5m",
            "user": "ignored",
        },
        "rid",
    )
    assert request.options == {
        "top_k": 5,
        "temperature": 0.5,
        "top_p": 0.8,
        "seed": 3,
        "stop": ["x"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "num_predict": 7,
        "num_ctx": 128,
    }
    assert request.keep_alive == 300 and request.kind == "chat"
    completion = from_completion_request({"model": "m", "prompt": ["Hi"], "max_tokens": 3}, "r")
    assert (completion.kind, completion.prompt, completion.raw) == ("generate", "Hi", False)
    assert completion.options == {"num_predict": 3}
