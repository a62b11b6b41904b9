"""Embedding requests are bounded and cancellable (issue 9, defect 9): one request carries at
most `api.MAX_EMBED_INPUTS` inputs and `api.MAX_EMBED_CHARS` characters (400 beyond), and a
client that hangs up frees the model within one sub-batch, so the next request is answered
promptly. A real daemon on all-MiniLM, the official `ollama` and `openai` clients, raw
sockets for the client that leaves."""

from __future__ import annotations

import shutil
import time

import ollama
import openai
import pykka
import pytest

from mlxollama import api
from mlxollama.http.server import shutdown
from tests.daemons import actor_classes, raw_post, start_daemon, wait_until

pytestmark = pytest.mark.model

LONG = "the quick brown fox jumps over the lazy dog " * 30  # past the 256-token window


@pytest.fixture(scope="module")
def d(tmp_path_factory, minilm_store):
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("embed-limits") / "store"
    shutil.copytree(minilm_store, root, symlinks=True)
    daemon = start_daemon(root)
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def client(d) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{d.port}", timeout=60)


def test_too_many_inputs_is_a_400(d, client):
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="all-minilm", input=["x"] * (api.MAX_EMBED_INPUTS + 1))
    assert e.value.status_code == 400
    assert f"at most {api.MAX_EMBED_INPUTS} inputs" in e.value.error
    v1 = openai.OpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        v1.embeddings.create(model="all-minilm", input=["x"] * (api.MAX_EMBED_INPUTS + 1))
    assert f"at most {api.MAX_EMBED_INPUTS} inputs" in str(e.value)
    assert len(client.embed(model="all-minilm", input=["x"] * 64).embeddings) == 64


def test_too_many_characters_is_a_400(client):
    size = api.MAX_EMBED_CHARS // 4 + 1
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="all-minilm", input=["a" * size] * 4)
    assert e.value.status_code == 400
    assert f"at most {api.MAX_EMBED_CHARS} characters" in e.value.error


def test_a_client_that_hangs_up_frees_the_model(d, client):
    client.embed(model="all-minilm", input="warm up")  # loaded: the big request runs at once
    body = {"model": "all-minilm", "input": [f"{i} {LONG}" for i in range(api.MAX_EMBED_INPUTS)]}
    sock = raw_post(d.port, "/api/embed", body)
    time.sleep(3)  # the model is inside the big batch now
    sock.close()
    tic = time.monotonic()
    out = client.embed(model="all-minilm", input=["after the hang-up"])
    seconds = time.monotonic() - tic
    print(f"next request after the hang-up: {seconds:.2f} s")
    assert len(out.embeddings) == 1
    assert seconds < 30, f"the next request waited {seconds:.1f} s"
    assert wait_until(lambda: d.active() == 0, 30)
