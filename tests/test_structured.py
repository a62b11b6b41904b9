"""Structured output end to end: a real daemon on SmolLM2 (sixteen slots), driven by the official
`ollama` and `openai` clients with a nested pydantic schema (objects, arrays, enums, required
fields, bounded numbers). Every answer parses and validates, or stopped at `num_predict`
(`done_reason` / `finish_reason` "length"), greedy and sampled, alone on the model and inside a
batch where constrained and free requests decode together; what the grammar engine cannot do
is a 400 that names it."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jsonschema
import ollama
import openai
import pydantic
import pykka
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field

from mlxollama.cli.main import cli
from mlxollama.engine import grammar
from mlxollama.http.server import shutdown
from tests.daemons import actor_classes, start_daemon

pytestmark = pytest.mark.model

NUM_PREDICT = 200


class Home(BaseModel):
    city: str = Field(max_length=12)
    country: Literal["France", "Spain", "Italy", "Japan", "Peru"]


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    home: Home
    pets: list[Literal["cat", "dog", "bird"]] = Field(max_length=2)


SCHEMA = Person.model_json_schema()  # $defs and $ref, as apps send it
CLOSED = grammar.closed(SCHEMA)

PEOPLE = [
    ("Ann", 31, "Paris", "France", "cat"),
    ("Luis", 45, "Madrid", "Spain", "dog"),
    ("Giulia", 27, "Rome", "Italy", "bird"),
    ("Kenji", 52, "Osaka", "Japan", "cat"),
    ("Rosa", 38, "Lima", "Peru", "dog"),
]


def prompt(i: int) -> str:
    name, age, city, country, pet = PEOPLE[i % len(PEOPLE)]
    age += i // len(PEOPLE)  # every request asks something different
    return f"{name}, {age}, lives in {city}, {country}, has a {pet}. As JSON:"


def options(i: int, sampled: bool) -> dict:
    return {"temperature": 1.0 if sampled else 0.0, "seed": i, "num_predict": NUM_PREDICT}


def check_person(reason: str, content: str) -> str:
    """`reason` if the answer stopped at the length limit, else the answer validates (as a
    pydantic model, against the JSON schema it sent, and with no key the schema does not
    name, as Ollama's grammar has it) and "stop"."""
    if reason == "length":
        return reason
    assert reason == "stop", reason
    Person.model_validate_json(content)
    jsonschema.validate(json.loads(content), SCHEMA)
    jsonschema.validate(json.loads(content), CLOSED)
    return reason


@pytest.fixture(scope="module")
def d(tmp_path_factory, smollm2_store):
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("structured") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    daemon = start_daemon(root, num_parallel=16)  # 16 at once decode 40 requests faster
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def native(d) -> ollama.Client:
    return d.client()


@pytest.fixture(scope="module")
def oa(d) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{d.port}/v1", api_key="mlxollama", timeout=120, max_retries=0
    )


# -- one request, each way the two clients ask ---------------------------------------------


def native_request(client: ollama.Client, i: int, sampled: bool) -> str:
    """Chat, chat streamed and generate in turn, all under the schema."""
    opts = options(i, sampled)
    user = [{"role": "user", "content": prompt(i)}]
    if i % 3 == 0:
        r = client.chat(model="smollm2", messages=user, format=SCHEMA, options=opts)
        return check_person(r.done_reason, r.message.content)
    if i % 3 == 1:
        parts = list(
            client.chat(model="smollm2", messages=user, format=SCHEMA, options=opts, stream=True)
        )
        text = "".join(p.message.content for p in parts)
        return check_person(parts[-1].done_reason, text)
    r = client.generate(model="smollm2", prompt=prompt(i), format=SCHEMA, options=opts)
    return check_person(r.done_reason, r.response)


def openai_request(client: openai.OpenAI, i: int, sampled: bool) -> str:
    """`chat.completions.parse` with the pydantic model (the SDK sends a strict json_schema)
    and a hand-written strict json_schema in turn, and every fifth `json_object` (any object:
    its finish reason comes back as "object-stop" / "object-length")."""
    kw = dict(
        model="smollm2",
        messages=[{"role": "user", "content": prompt(i)}],
        temperature=1.0 if sampled else 0.0,
        seed=i,
        max_tokens=NUM_PREDICT,
    )
    if i % 5 == 4:  # any object: a small model may ramble on, so a shorter leash
        kw["max_tokens"] = 60
        r = client.chat.completions.create(response_format={"type": "json_object"}, **kw)
        reason, content = r.choices[0].finish_reason, r.choices[0].message.content
        if reason != "length":
            assert reason == "stop" and isinstance(json.loads(content), dict), content
        return f"object-{reason}"
    if i % 2 == 0:
        try:
            r = client.chat.completions.parse(response_format=Person, **kw)
        except openai.LengthFinishReasonError:
            return "length"
        message = r.choices[0].message
        assert isinstance(message.parsed, Person)
        return check_person(r.choices[0].finish_reason, message.content)
    spec = {"name": "person", "schema": SCHEMA, "strict": True}
    r = client.chat.completions.create(
        response_format={"type": "json_schema", "json_schema": spec}, **kw
    )
    return check_person(r.choices[0].finish_reason, r.choices[0].message.content)


def run_all(calls) -> list[str]:
    """The calls sixteen at a time (the daemon batches them); their finish reasons."""
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda call: call(), calls))


def assert_mostly_complete(reasons: list[str]) -> None:
    """Length stops are allowed, but a bounded schema leaves room to finish in most (a
    json_object answer may ramble on: it is not counted)."""
    assert set(reasons) <= {"stop", "length", "object-stop", "object-length"}, reasons
    under_schema = [r for r in reasons if not r.startswith("object-")]
    assert under_schema.count("stop") >= 0.75 * len(under_schema), reasons


# -- the acceptance runs --------------------------------------------------------------------


def test_alone_on_the_model_each_answer_validates(native, oa):
    """One request at a time: the single-sequence path (`generate_step`), each way once."""
    reasons = [
        native_request(native, 0, False),  # chat
        native_request(native, 2, True),  # generate
        openai_request(oa, 0, True),  # parse with the pydantic model
        openai_request(oa, 1, False),  # a json_schema by hand
    ]
    assert_mostly_complete(reasons)


def test_twenty_greedy_and_twenty_sampled_alone_in_process_all_validate(d):
    """The 20 + 20 one at a time on the single-sequence path, through the embedded SDK (the
    engine both APIs share; the daemon's way of asking is the test above)."""
    from mlxollama.sdk import Embedded

    sdk = Embedded(d.root)
    reasons = []
    for sampled in (False, True):
        for i in range(20):
            user = [{"role": "user", "content": prompt(i)}]
            r = sdk.chat("smollm2", user, format=SCHEMA, options=options(i, sampled))
            reasons.append(check_person(r["done_reason"], r["message"]["content"]))
    assert_mostly_complete(reasons[:20])
    assert_mostly_complete(reasons[20:])


def twenty_and_twenty(request) -> dict[str, list[str]]:
    """20 greedy and 20 sampled requests (temperature 1), batched sixteen at a time."""
    calls = [lambda i=i, s=s: request(i, s) for s in (False, True) for i in range(20)]
    reasons = run_all(calls)
    return {"greedy": reasons[:20], "sampled": reasons[20:]}


def test_twenty_greedy_and_twenty_sampled_through_the_native_api(native):
    reasons = twenty_and_twenty(lambda i, sampled: native_request(native, i, sampled))
    for kind in ("greedy", "sampled"):
        assert len(reasons[kind]) == 20
        assert_mostly_complete(reasons[kind])


def test_twenty_greedy_and_twenty_sampled_through_the_openai_api(oa):
    reasons = twenty_and_twenty(lambda i, sampled: openai_request(oa, i, sampled))
    for kind in ("greedy", "sampled"):
        assert len(reasons[kind]) == 20
        assert_mostly_complete(reasons[kind])


def test_constrained_and_free_requests_share_a_batch(d, native, oa):
    """Four constrained and four free requests decode together; the first constrained one
    starts alone and moves into the batch, its matcher and all, when the others arrive."""
    user = [{"role": "user", "content": "Write a long story about a dragon."}]
    free_opts = {"temperature": 1.0, "seed": 7, "num_predict": 48}
    free_answers: list[str] = []
    seen_active: list[int] = []

    def free_native(i: int) -> str:
        r = native.chat(model="smollm2", messages=user, options={**free_opts, "seed": i})
        free_answers.append(r.message.content)
        return r.done_reason

    def free_openai(i: int) -> str:
        r = oa.chat.completions.create(
            model="smollm2", messages=user, temperature=1.0, seed=i, max_tokens=48
        )
        free_answers.append(r.choices[0].message.content)
        return r.choices[0].finish_reason

    first = native.chat(
        model="smollm2",
        messages=[{"role": "user", "content": prompt(3)}],
        format=SCHEMA,
        options=options(3, True),
        stream=True,
    )
    parts = [next(first)]  # decoding alone now
    calls = [
        lambda: native_request(native, 6, True),
        lambda: openai_request(oa, 7, False),
        lambda: openai_request(oa, 8, True),
        lambda: free_native(1),
        lambda: free_native(2),
        lambda: free_openai(3),
        lambda: free_openai(4),
    ]
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen_active.append(d.active())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(7) as pool:
            futures = [pool.submit(call) for call in calls]
            parts += list(first)  # the first one finishes inside the batch
            reasons = [f.result() for f in futures]
    finally:
        done.set()
        watcher.join()
    constrained = [check_person(parts[-1].done_reason, "".join(p.message.content for p in parts))]
    constrained += reasons[:3]
    assert all(r in ("stop", "length") for r in reasons[3:])
    assert constrained.count("stop") >= 3, constrained
    assert len(free_answers) == 4 and all(free_answers)
    assert not all(a.lstrip().startswith("{") for a in free_answers)  # free ones are free
    assert max(seen_active) >= 6, max(seen_active)  # they did run together


# -- the CLI ------------------------------------------------------------------------------


def test_mlxctl_run_format_json_through_the_daemon_and_in_process(d, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{d.port}")
    monkeypatch.setenv("MLXOLLAMA_MODELS", str(d.root))
    args = ["run", "smollm2", "--format", "json", "-p", "temperature=0", prompt(2)]
    daemon = CliRunner().invoke(cli, args, input="", catch_exceptions=False)
    assert daemon.exit_code == 0 and "no daemon" not in daemon.output
    assert isinstance(json.loads(daemon.output), dict), daemon.output
    embedded = CliRunner().invoke(cli, [*args, "--embedded"], input="", catch_exceptions=False)
    assert embedded.exit_code == 0
    assert embedded.output == daemon.output  # greedy: the same constrained answer


# -- what is refused ------------------------------------------------------------------------


def test_an_unsupported_schema_feature_is_a_400_naming_it(native, oa):
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "tags": {"uniqueItems": True}}}
    user = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ollama.ResponseError) as e:
        native.chat(model="smollm2", messages=user, format=schema)
    assert e.value.status_code == 400 and '"uniqueItems"' in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        native.generate(model="smollm2", prompt="Hi", format={"type": "object", "not": {}})
    assert e.value.status_code == 400 and '"not"' in e.value.error
    spec = {"name": "tagged", "schema": schema, "strict": True}
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(
            model="smollm2",
            messages=user,
            response_format={"type": "json_schema", "json_schema": spec},
        )
    assert '"uniqueItems"' in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


def test_a_bad_format_or_response_format_is_a_400(d, oa):
    user = [{"role": "user", "content": "Hi"}]
    for path in ("/api/chat", "/api/generate"):  # the ollama client refuses it unsent
        body = {"model": "smollm2", "messages": user, "prompt": "Hi", "format": "yaml"}
        status, _, data = d.call("POST", path, body)
        assert status == 400 and "invalid format: 'yaml'" in json.loads(data)["error"]
    for response_format, text in [
        ({"type": "yaml"}, "Invalid value for 'response_format.type' = 'yaml'"),
        ({"type": "json_schema"}, "Missing required parameter: 'response_format.json_schema'"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(
                model="smollm2", messages=user, response_format=response_format
            )
        assert text in e.value.body["message"]


def test_pydantic_accepts_what_the_schema_allows():
    """The validators themselves are not lax: an answer out of bounds fails both."""
    bad = {"name": "A", "age": 400, "home": {"city": "X", "country": "Peru"}}
    with pytest.raises(pydantic.ValidationError):
        Person.model_validate({**bad, "pets": []})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**bad, "pets": []}, SCHEMA)
