"""Embeddings (issue 4): all-MiniLM-L6-v2 imported from its sentence-transformers folder and
run by our MLX BERT, compared with sentence-transformers' own outputs (PyTorch, computed once
into tests/fixtures/minilm_reference.json); then the same model through a real daemon with
the official `ollama` and `openai` clients, the HTTP client, and `mlxctl run`.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import openai
import pykka
import pytest
from click.testing import CliRunner

from mlxollama.cli.main import cli
from mlxollama.client import Client
from mlxollama.engine.embed import InputTooLong
from mlxollama.errors import UnsupportedModel
from mlxollama.http.server import shutdown
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.sdk import Embedded
from mlxollama.store.store import Store
from tests.daemons import actor_classes, start_daemon

pytestmark = pytest.mark.model

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text(encoding="utf-8")
)
SENTENCES: list[str] = REFERENCE["sentences"]
EXPECTED = np.array(REFERENCE["embeddings"], dtype=np.float64)
LONG = "word " * 300  # past the model's 256-token window


def cosines(vectors, expected: np.ndarray | None = None) -> np.ndarray:
    """Row-wise cosine similarity with `expected` (default: the reference's first rows)."""
    v = np.asarray(vectors, dtype=np.float64)
    e = EXPECTED[: len(v)] if expected is None else np.asarray(expected, dtype=np.float64)
    return (v * e).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(e, axis=1)


def assert_matches_reference(vectors) -> None:
    sims = cosines(vectors)
    worst = int(sims.argmin())
    assert sims.min() > 0.999, f"cosine {sims[worst]:.6f} for {SENTENCES[worst]!r}"


def norms(vectors) -> np.ndarray:
    return np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)


# -- in-process: the engine through the embedded SDK ----------------------------------------


@pytest.fixture(scope="module")
def local(minilm_store) -> Embedded:
    return Embedded(minilm_store)


def test_the_store_knows_an_embedding_model(local):
    shown = local.show("all-minilm")
    assert shown["capabilities"] == ["embedding"]
    assert shown["details"]["family"] == "bert"
    assert shown["model_info"]["bert.context_length"] == 256  # sentence-transformers' window
    assert shown["model_info"]["bert.embedding_length"] == 384
    entry = next(m for m in local.list()["models"] if m["name"] == "all-minilm:latest")
    assert entry["capabilities"] == ["embedding"]


def test_embeddings_match_sentence_transformers(local):
    out = local.embed("all-minilm", SENTENCES)
    assert_matches_reference(out["embeddings"])
    assert np.allclose(norms(out["embeddings"]), 1.0, atol=1e-5)
    assert out["prompt_eval_count"] == sum(REFERENCE["token_counts"])


def test_a_batch_equals_its_inputs_one_at_a_time(local):
    """Padding in a batch must not change any vector (the mask and the mean ignore it)."""
    batch = np.array(local.embed("all-minilm", SENTENCES)["embeddings"])
    alone = np.array([local.embed("all-minilm", [s])["embeddings"][0] for s in SENTENCES[:6]])
    assert np.abs(batch[:6] - alone).max() < 1e-5


def test_the_retrieval_ranking_is_the_reference_one(local):
    query = local.embed("all-minilm", REFERENCE["query"])["embeddings"][0]
    docs = np.array(local.embed("all-minilm", REFERENCE["documents"])["embeddings"])
    ranking = list(np.argsort(-(docs @ np.array(query))))
    assert ranking == REFERENCE["ranking"]
    assert ranking[0] == 0  # the Eiffel Tower document answers the Eiffel Tower question


def test_truncate_dimensions_and_the_context_window(local):
    long = local.embed("all-minilm", LONG)
    assert long["prompt_eval_count"] == 256  # [CLS] + 254 words + [SEP]
    with pytest.raises(InputTooLong, match="exceeds the context length"):
        local.embed("all-minilm", LONG, truncate=False)
    short = local.embed("all-minilm", "word " * 10, truncate=False, options={"num_ctx": 12})
    assert short["prompt_eval_count"] == 12
    with pytest.raises(InputTooLong):
        local.embed("all-minilm", "word " * 11, truncate=False, options={"num_ctx": 12})

    full = np.array(local.embed("all-minilm", SENTENCES[0])["embeddings"][0])
    cut = np.array(local.embed("all-minilm", SENTENCES[0], dimensions=64)["embeddings"][0])
    assert cut.shape == (64,)
    assert np.allclose(cut, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    with pytest.raises(ValueError, match="between 1 and 384"):
        local.embed("all-minilm", "x", dimensions=385)
    assert local.embed("all-minilm", [])["embeddings"] == []


def test_capabilities_are_enforced_in_process(local):
    with pytest.raises(UnsupportedModel, match="does not support chat"):
        local.chat("all-minilm", [{"role": "user", "content": "hi"}])
    with pytest.raises(UnsupportedModel, match="does not support generate"):
        local.generate("all-minilm", "hi")
    with pytest.raises(UnsupportedModel, match="does not support embeddings"):
        local.embed("smollm2", "hi")


def _folder_with_pooling(tmp_path: Path, source: Path, pooling: dict) -> Path:
    """The model's folder as symlinks, with our own 1_Pooling/config.json."""
    folder = tmp_path / "st-model"
    folder.mkdir()
    for item in source.iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def test_the_pooling_mode_comes_from_the_sentence_transformers_folder(tmp_path, minilm_folder):
    store = Store(tmp_path / "store")
    folder = _folder_with_pooling(
        tmp_path, minilm_folder, {"word_embedding_dimension": 384, "pooling_mode_cls_token": True}
    )
    create(store, "cls-pooled", BuildSpec(source=str(folder)))
    assert store.config(store.get("cls-pooled"))["pooling"] == "cls"
    local = Embedded(store.root)
    mean = np.array(local.embed("cls-pooled", SENTENCES[:3])["embeddings"])
    assert cosines(mean)[:3].max() < 0.99  # CLS pooling is another embedding than the mean

    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True})
    )
    with pytest.raises(UnsupportedModel, match="exactly one of mean, cls or max"):
        create(store, "two-modes", BuildSpec(source=str(folder)))
    assert store.find("two-modes") is None


# -- through the daemon ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, minilm_store):
    assert not pykka.ActorRegistry.get_all(), actor_classes()
    root = tmp_path_factory.mktemp("embed-daemon") / "store"
    shutil.copytree(minilm_store, root, symlinks=True)
    d = start_daemon(root, num_parallel=4)
    yield d
    shutdown(d.srv, d.runtime)


def test_the_official_ollama_client_embeds(daemon):
    client = daemon.client()
    out = client.embed(model="all-minilm", input=SENTENCES)
    assert out.model == "all-minilm"
    assert_matches_reference(out.embeddings)
    assert out.prompt_eval_count == sum(REFERENCE["token_counts"])
    assert out.total_duration > 0

    query = client.embed(model="all-minilm", input=REFERENCE["query"]).embeddings[0]
    docs = np.array(client.embed(model="all-minilm", input=REFERENCE["documents"]).embeddings)
    assert list(np.argsort(-(docs @ np.array(query)))) == REFERENCE["ranking"]

    cut = client.embed(model="all-minilm", input="hello", dimensions=32).embeddings[0]
    assert len(cut) == 32 and abs(np.linalg.norm(cut) - 1) < 1e-5
    assert client.embed(model="all-minilm", input=LONG).prompt_eval_count == 256


def test_the_legacy_endpoint_returns_the_raw_pooled_vector(daemon):
    client = daemon.client()
    raw = np.array(client.embeddings(model="all-minilm", prompt=SENTENCES[0]).embedding)
    assert abs(np.linalg.norm(raw) - 1) > 0.01  # not normalized, as in Ollama
    unit = np.array(client.embed(model="all-minilm", input=SENTENCES[0]).embeddings[0])
    assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)
    assert client.embeddings(model="all-minilm", prompt="").embedding == []


def test_an_empty_input_loads_the_model_and_keep_alive_zero_unloads_it(daemon):
    client = daemon.client()
    out = client.embed(model="all-minilm", input=[], keep_alive="5m")
    assert out.embeddings == []
    assert "all-minilm:latest" in [m.model for m in client.ps().models]
    status, _, body = daemon.call("POST", "/api/embed", {"model": "all-minilm", "keep_alive": 0})
    assert status == 200 and json.loads(body)["embeddings"] == []
    assert "all-minilm:latest" not in [m.model for m in client.ps().models]


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/embed", {"model": "smollm2", "input": "hi"}, 400, "does not support embeddings"),
        ("/api/embeddings", {"model": "smollm2", "prompt": "hi"}, 400, "does not support"),
        (
            "/api/chat",
            {"model": "all-minilm", "messages": [{"role": "user", "content": "hi"}]},
            400,
            "does not support chat",
        ),
        ("/api/generate", {"model": "all-minilm", "prompt": "hi"}, 400, "does not support"),
        ("/api/embed", {"model": "all-minilm", "input": 5}, 400, "invalid input type"),
        ("/api/embed", {"model": "all-minilm", "input": ["a", 1]}, 400, "invalid input type"),
        (
            "/api/embed",
            {"model": "all-minilm", "input": LONG, "truncate": False},
            400,
            "the input length exceeds the context length",
        ),
        ("/api/embed", {"model": "all-minilm", "input": "x", "dimensions": 0}, 400, "positive"),
        ("/api/embed", {"model": "all-minilm", "input": "x", "dimensions": 999}, 400, "384"),
        ("/api/embed", {"model": "ghost", "input": "x"}, 404, "not found"),
        ("/api/embed", {"input": "x"}, 400, "model is required"),
    ],
)
def test_bad_embedding_requests_get_clear_errors(daemon, path, body, status, message):
    got, _, data = daemon.call("POST", path, body)
    assert got == status, data
    assert message in json.loads(data)["error"]


def test_concurrent_requests_each_get_their_own_vectors(daemon):
    client = daemon.client()
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        results[i] = client.embed(model="all-minilm", input=SENTENCES[i : i + 4]).embeddings

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        got = np.array(results[i])
        assert (cosines(got, EXPECTED[i : i + 4]) > 0.999).all()
    assert daemon.active() == 0


def test_openai_embeddings_float_and_base64(daemon):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon.port}/v1", api_key="mlxollama")
    # the SDK asks for base64 unless told otherwise, and decodes it itself
    out = client.embeddings.create(model="all-minilm", input=SENTENCES)
    assert [d.index for d in out.data] == list(range(len(SENTENCES)))
    assert_matches_reference([d.embedding for d in out.data])
    assert out.usage.prompt_tokens == sum(REFERENCE["token_counts"])
    assert out.usage.total_tokens == out.usage.prompt_tokens
    floats = client.embeddings.create(model="all-minilm", input=SENTENCES, encoding_format="float")
    assert_matches_reference([d.embedding for d in floats.data])

    one = client.embeddings.create(model="all-minilm", input="hello", dimensions=16)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 16

    # base64: little-endian float32 bytes (the SDK asks for base64 by default and decodes)
    status, _, body = daemon.call(
        "POST",
        "/v1/embeddings",
        {"model": "all-minilm", "input": SENTENCES[:2], "encoding_format": "base64"},
    )
    assert status == 200
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        for d in json.loads(body)["data"]
    ]
    assert (cosines(rows, EXPECTED[:2]) > 0.999).all()
    raw = client.embeddings.create(
        model="all-minilm", input=SENTENCES[:2], encoding_format="base64"
    )  # asked for explicitly, the SDK hands the base64 text over as it came
    assert [d.embedding for d in raw.data] == [d["embedding"] for d in json.loads(body)["data"]]

    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        client.embeddings.create(model="all-minilm", input="x", encoding_format="int8")
    with pytest.raises(openai.BadRequestError, match="invalid input"):
        client.embeddings.create(model="all-minilm", input=[])
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        client.embeddings.create(model="all-minilm", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="does not support embeddings"):
        client.embeddings.create(model="smollm2", input="x")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="ghost", input="x")


def test_create_through_the_daemon_uploads_the_pooling_settings(daemon, minilm_folder):
    client = Client(host=f"127.0.0.1:{daemon.port}")
    events: list[dict] = []
    client.create("minilm-copy", str(minilm_folder), progress=events.append)
    assert events[-1] == {"status": "success"}
    shown = client.show("minilm-copy")
    assert shown["capabilities"] == ["embedding"]
    store = Store(daemon.root)
    assert store.config(store.get("minilm-copy"))["pooling"] == "mean"
    out = client.embed("minilm-copy", SENTENCES)
    assert_matches_reference(out["embeddings"])


def test_mlxctl_run_prints_the_vector_as_json(daemon, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", f"127.0.0.1:{daemon.port}")
    out = CliRunner().invoke(cli, ["run", "all-minilm", SENTENCES[0]], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    vector = json.loads(out.output)
    assert len(vector) == 384
    assert cosines([vector], EXPECTED[:1])[0] > 0.999

    out = CliRunner().invoke(cli, ["run", "all-minilm"], input="")
    assert out.exit_code != 0
    assert "embedding model" in out.output


def test_a_direct_reply_answers_once_and_shutdown_never_strands_a_reader():
    """Embed requests have no SessionActor: DirectReply puts the answer on the queue."""
    import queue

    from mlxollama.actors.messages import Cancel, Embedded, Fail
    from mlxollama.actors.session import DONE, DirectReply
    from mlxollama.api import Embeddings

    out: queue.Queue = queue.Queue()
    reply = DirectReply(1, out, cancel_model=lambda aid: None)
    result = Embeddings(np.ones((1, 2), dtype=np.float32))
    reply.tell(Embedded(result))
    reply.tell(Fail(RuntimeError("late")))  # after the answer: ignored
    reply.stop()
    assert out.get_nowait() is result and result.total_duration > 0
    assert out.get_nowait() is DONE and out.empty()

    cancelled: list[int] = []
    waiting = DirectReply(2, out, cancel_model=cancelled.append)
    waiting.stop()  # the runtime stops: the reader gets an error, not silence
    assert "shutting down" in str(out.get_nowait())
    assert out.get_nowait() is DONE
    gone = DirectReply(3, out, cancel_model=cancelled.append)
    gone.tell(Cancel())
    assert cancelled == [3] and out.get_nowait() is DONE
