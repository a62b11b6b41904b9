"""The prompt cache, measured through the daemon, against plain mlx-lm in the same run.

1. A 10-turn chat under a ~1,000-token system prompt: time to first token per turn with the
   prompt cache and without it (MLXOLLAMA_PROMPT_CACHE=0), and mlx-lm's `stream_generate`
   on the same full prompts (no cache) as the baseline.
2. 8 concurrent chats that share the system prompt, once the prompt is cached: mean TTFT and
   wall time, with and without the cache.
3. A restart: a daemon with only the disk tier (memory tier 0) answering a new question under
   the same system prompt, against a cold one.
4. The cache's size (`/api/ps` `prompt_cache_size`) and the process's peak RSS.

    python benchmarks/bench_prompt_cache.py --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (OpenBLAS for MLX's CPU backend, before mlx loads)

SYSTEM = "You are a meticulous assistant for a travel company. " + " ".join(
    f"Policy {i}: when a customer asks about destination {i}, answer with the season, the "
    f"price band and one practical tip."
    for i in range(40)
)
QUESTIONS = [
    "Where should I go in May?",
    "Is destination 3 expensive?",
    "What about destination 7 in winter?",
    "Give me one tip for destination 12.",
    "Which destination is cheapest?",
    "Can I travel with a dog?",
    "Is there a family discount?",
    "What is the best season for destination 20?",
    "How early should I book?",
    "Thank you, that is all.",
]


def chat_ttft(port: int, messages: list[dict], n: int) -> tuple[float, str, int]:
    """One streamed /api/chat: (seconds to the first piece, the answer, prompt_eval_count)."""
    import http.client

    import orjson

    body = orjson.dumps(
        {
            "model": "bench",
            "messages": messages,
            "options": {"temperature": 0, "num_predict": n},
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    tic = time.perf_counter()
    conn.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
    first, parts, evaluated = None, [], 0
    for line in conn.getresponse():
        part = orjson.loads(line)
        if "error" in part:
            raise RuntimeError(part["error"])
        if part["message"]["content"]:
            first = first or time.perf_counter()
            parts.append(part["message"]["content"])
        if part.get("done"):
            evaluated = part.get("prompt_eval_count", 0)
    conn.close()
    return (first or time.perf_counter()) - tic, "".join(parts), evaluated


def start(root: Path, **settings: str):
    from mlxollama.actors.runtime import Runtime
    from mlxollama.config import Config
    from mlxollama.http.app import create_app
    from mlxollama.http.server import make_server

    env = {"MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_KEEP_ALIVE": "-1"}
    env.update({f"MLXOLLAMA_{k.upper()}": v for k, v in settings.items()})
    config = Config.from_env(env)
    runtime = Runtime(config).start()
    server = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=32)
    threading.Thread(target=server.run, daemon=True).start()
    return server, runtime


def conversation(port: int, n: int) -> tuple[list[float], list[str], list[list[dict]]]:
    """The 10 turns: TTFT of each, the answers, and each turn's messages."""
    messages = [{"role": "system", "content": SYSTEM}]
    ttfts, answers, prompts = [], [], []
    for q in QUESTIONS:
        messages.append({"role": "user", "content": q})
        prompts.append(list(messages))
        ttft, answer, _ = chat_ttft(port, messages, n)
        ttfts.append(ttft)
        answers.append(answer)
        messages.append({"role": "assistant", "content": answer})
    return ttfts, answers, prompts


def mlx_lm_ttft(lm, messages: list[dict]) -> float:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokens = lm.tokenizer.encode(text, add_special_tokens=False)
    tic = time.perf_counter()
    for _ in stream_generate(
        lm.model, lm.tokenizer, tokens, max_tokens=1, sampler=make_sampler(0.0)
    ):
        break
    return time.perf_counter() - tic


def shared(port: int, n: int, streams: int) -> tuple[float, float]:
    """`streams` chats started together under the system prompt: (mean TTFT, wall seconds)."""
    ttfts = [0.0] * streams

    def run(i: int) -> None:
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Tell me about destination {i}."},
        ]
        ttfts[i] = chat_ttft(port, messages, n)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    tic = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statistics.mean(ttfts), time.perf_counter() - tic


def cache_size(port: int) -> int:
    import http.client

    import orjson

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/ps")
    models = orjson.loads(conn.getresponse().read())["models"]
    conn.close()
    return sum(m.get("prompt_cache_size", 0) for m in models)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    ap.add_argument("--streams", type=int, default=8)
    args = ap.parse_args()

    from mlxollama.http.server import shutdown
    from mlxollama.log import configure
    from mlxollama.models.create import create
    from mlxollama.models.load import load
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    configure(None, console=False)
    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-pc-"))
    try:
        store = Store(work / "store")
        create(store, "bench", BuildSpec(source=str(args.gguf)))
        lm = load(store, "bench")
        system_tokens = len(lm.tokenizer.encode(SYSTEM))
        print(f"system prompt: {system_tokens} tokens; {len(QUESTIONS)} turns")

        results = {}
        for label, settings in (
            ("cache", {"prompt_cache": "1GB", "prompt_cache_disk": "0"}),
            ("no cache", {"prompt_cache": "0", "prompt_cache_disk": "0"}),
        ):
            server, runtime = start(work / "store", num_parallel=str(args.streams), **settings)
            port = server.effective_port
            chat_ttft(port, [{"role": "user", "content": "hi"}], 2)  # load and warm up
            ttfts, answers, prompts = conversation(port, args.tokens)
            size = cache_size(port)
            mean, wall = shared(port, args.tokens, args.streams)
            results[label] = (ttfts, answers, mean, wall, size)
            shutdown(server, runtime)

        plain = [mlx_lm_ttft(lm, p) for p in prompts]
        on, off = results["cache"], results["no cache"]
        print("\nturn  TTFT cache  TTFT no cache  mlx-lm (no cache)  cache/no cache")
        for i, (a, b, c) in enumerate(zip(on[0], off[0], plain, strict=True)):
            print(
                f"{i + 1:>4}  {a * 1000:9.0f}ms  {b * 1000:12.0f}ms  {c * 1000:16.0f}ms  {a / b:13.2f}x"
            )
        print(f"turn 2 / turn 1 with the cache: {on[0][1] / on[0][0]:.2f}x")
        print(f"answers identical with and without the cache: {on[1] == off[1]}")
        print(
            f"\n{args.streams} chats sharing the system prompt: mean TTFT "
            f"{on[2] * 1000:.0f}ms (cache) vs {off[2] * 1000:.0f}ms, wall {on[3]:.2f}s vs {off[3]:.2f}s"
        )
        print(f"prompt cache after the chat: {on[4] / 2**20:.1f} MiB")

        # a restart: the first daemon writes the disk tier, the second has only the disk
        root = work / "store"
        for label, settings in (
            ("writer", {"prompt_cache": "1GB", "prompt_cache_disk": "4GB"}),
            ("restart", {"prompt_cache": "0", "prompt_cache_disk": "4GB"}),
            ("cold", {"prompt_cache": "0", "prompt_cache_disk": "0"}),
        ):
            server, runtime = start(root, **settings)
            port = server.effective_port
            chat_ttft(port, [{"role": "user", "content": "hi"}], 2)
            question = "Hello!" if label == "writer" else "Good morning!"
            q = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            ttft, _, evaluated = chat_ttft(port, q, args.tokens)
            shutdown(server, runtime)
            print(f"{label:>8}: TTFT {ttft * 1000:.0f}ms, prompt_eval_count {evaluated}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {rss:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
