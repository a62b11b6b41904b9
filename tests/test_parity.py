"""The daemon and the embedded SDK give the same answer: one greedy request (temperature 0,
a fixed num_predict, a stop string that occurs) through a real daemon (waitress, the actor
runtime, the official `ollama` client) and through `Embedded`, for generate and chat. Both
go through `engine.batch` and `engine.decoder`; this checks that nothing around them drifts."""

from __future__ import annotations

import shutil

import pykka
import pytest

from mlxollama.http.server import shutdown
from mlxollama.sdk import Embedded
from tests.daemons import actor_classes, start_daemon

pytestmark = pytest.mark.model

N = 24
PROMPT = "Name three colours of the rainbow."
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def root(tmp_path_factory, smollm2_store):
    root = tmp_path_factory.mktemp("parity") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    return root


@pytest.fixture(scope="module")
def d(root):
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    daemon = start_daemon(root, prompt_cache="0", prompt_cache_disk="0")
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


@pytest.fixture(scope="module")
def sdk(root):
    """The SDK without a prompt cache, as the daemon: the prompt counts are compared."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLXOLLAMA_PROMPT_CACHE", "0")
        env.setenv("MLXOLLAMA_PROMPT_CACHE_DISK", "0")
        yield Embedded(root)


def a_stop_in(text: str) -> str:
    """A stop string that occurs in `text`, after its first few characters."""
    words = text.split()
    assert len(words) >= 4, text
    return words[3]


def test_generate_gives_the_same_tokens_and_text(d, sdk):
    options = {"temperature": 0, "num_predict": N}
    free = sdk.generate("smollm2", PROMPT, options=options)
    stop = a_stop_in(free["response"])
    options["stop"] = [stop]
    embedded = sdk.generate("smollm2", PROMPT, options=options)
    daemon = d.client().generate(model="smollm2", prompt=PROMPT, options=options)
    assert embedded["done_reason"] == daemon.done_reason == "stop"
    assert stop not in embedded["response"]
    assert embedded["response"] == daemon.response
    assert embedded["eval_count"] == daemon.eval_count < N
    assert embedded["prompt_eval_count"] == daemon.prompt_eval_count

    options.pop("stop")
    daemon = d.client().generate(model="smollm2", prompt=PROMPT, options=options)
    assert (daemon.response, daemon.eval_count) == (free["response"], free["eval_count"])


def test_chat_gives_the_same_tokens_and_text(d, sdk):
    options = {"temperature": 0, "num_predict": N}
    free = sdk.chat("smollm2", MESSAGES, options=options)
    stop = a_stop_in(free["message"]["content"])
    options["stop"] = [stop]
    embedded = sdk.chat("smollm2", MESSAGES, options=options)
    daemon = d.client().chat(model="smollm2", messages=MESSAGES, options=options)
    assert embedded["done_reason"] == daemon.done_reason == "stop"
    assert stop not in embedded["message"]["content"]
    assert embedded["message"]["content"] == daemon.message.content
    assert embedded["eval_count"] == daemon.eval_count < N
    assert embedded["prompt_eval_count"] == daemon.prompt_eval_count

    parts = list(sdk.chat("smollm2", MESSAGES, options=options, stream=True))
    streamed = list(
        d.client().chat(model="smollm2", messages=MESSAGES, options=options, stream=True)
    )
    assert "".join(p["message"]["content"] for p in parts) == daemon.message.content
    assert "".join(p.message.content for p in streamed) == daemon.message.content
    assert parts[-1]["eval_count"] == streamed[-1].eval_count == daemon.eval_count
