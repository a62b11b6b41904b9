"""The prompt cache through a real daemon (waitress, the actors, the official clients): a
chat's second turn evaluates only its new tokens and says how many came from the cache, in
Ollama's counts, OpenAI's usage and the request log; `/api/ps` shows the cache's size; after
a restart the disk tier serves a long system prompt; `gc` removes a deleted model's files."""

from __future__ import annotations

import shutil

import openai
import orjson
import pykka
import pytest

from mlxollama.http.server import shutdown
from mlxollama.store.store import Store
from tests.daemons import actor_classes, start_daemon

pytestmark = pytest.mark.model

SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer briefly and precisely about subject {i}." for i in range(30)
)
GREEDY = {"temperature": 0, "num_predict": 8}


def chat(daemon, question: str, history: list | None = None, system: str = SYSTEM):
    messages = [{"role": "system", "content": system}, *(history or [])]
    messages.append({"role": "user", "content": question})
    return daemon.client().chat("smollm2", messages, options=GREEDY)


@pytest.fixture(scope="module")
def root(tmp_path_factory, smollm2_store):
    root = tmp_path_factory.mktemp("prompt-cache") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    return root


@pytest.fixture
def daemon(root):
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    d = start_daemon(root, num_parallel=4)
    yield d
    shutdown(d.srv, d.runtime)


def test_a_second_turn_evaluates_only_its_new_tokens(daemon):
    first = chat(daemon, "What is the capital of France?")
    assert first.prompt_eval_count > 300  # the whole system prompt, evaluated
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first.message.content},
    ]
    second = chat(daemon, "And of Spain?", history)
    assert second.prompt_eval_count < 40  # the first turn came from the cache
    [running] = daemon.client().ps().models
    _, _, body = daemon.call("GET", "/api/ps")
    assert orjson.loads(body)["models"][0]["prompt_cache_size"] > 0 and running.size > 0
    ends = [
        orjson.loads(line)
        for line in daemon.log_path.read_text().splitlines()
        if '"request.end"' in line and "prompt_eval_count" in line
    ]
    assert ends[-1]["prompt_cached_count"] > 300 and ends[-1]["prompt_eval_count"] < 40


def test_openai_usage_counts_the_cached_tokens(daemon):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon.port}/v1", api_key="x")
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name a colour."},
    ]
    answers = [
        client.chat.completions.create(
            model="smollm2", messages=messages, temperature=0, max_tokens=8
        )
        for _ in range(2)
    ]
    first, second = (a.usage for a in answers)
    assert first.prompt_tokens == second.prompt_tokens
    assert second.prompt_tokens_details.cached_tokens >= second.prompt_tokens - 1
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content


def test_after_a_restart_the_disk_tier_serves_the_system_prompt(root):
    poet = "You write short poems. " + " ".join(
        f"Poem {i} rhymes with word {i}." for i in range(40)
    )
    d = start_daemon(root)
    try:
        fresh = chat(d, "What is two plus two?", system=poet)
    finally:
        shutdown(d.srv, d.runtime)
    d = start_daemon(root, prompt_cache="0")  # nothing in memory: only the disk can serve
    try:
        again = chat(d, "Name a fruit.", system=poet)
    finally:
        shutdown(d.srv, d.runtime)
    assert fresh.prompt_eval_count > 300
    assert again.prompt_eval_count < 40


def test_a_corrupt_cache_file_is_ignored_and_gc_removes_a_deleted_models_files(root):
    store = Store(root)
    folder = store.prompt_cache_dir(store.get("smollm2").digest)
    chef = "You are a chef. " + " ".join(f"Recipe {i} needs spice {i}." for i in range(50))
    before = set(folder.glob("*.safetensors"))
    d = start_daemon(root)
    try:
        chat(d, "Name a soup.", system=chef)
    finally:
        shutdown(d.srv, d.runtime)
    [written] = set(folder.glob("*.safetensors")) - before
    written.write_bytes(b"not a cache")
    d = start_daemon(root, prompt_cache="0")
    try:
        answer = chat(d, "Name a cake.", system=chef)
    finally:
        shutdown(d.srv, d.runtime)
    assert answer.prompt_eval_count > 300  # evaluated again, not read from garbage
    store.copy("smollm2", "other")
    store.remove("smollm2")
    store.gc(grace=0)
    assert folder.is_dir()  # "other" is the same manifest: its cache stays
    store.remove("other")
    store.gc(grace=0)
    assert not folder.exists()
