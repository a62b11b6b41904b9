"""Weights held stored against dense, and the first burst after a load, through the daemon.

One run, one synthetic model (random weights, 4-bit stored: throughput does not depend on
the values): for each `MLXOLLAMA_WEIGHTS` form a real waitress daemon is started, the first
8-stream burst after the load is timed, then a warm one, then aggregate decode tokens/s at
each stream count; then `mlx_lm.server` at the same stream counts, on the same folder and on
the same weights dense (bf16: what `auto` holds on CUDA); and,
with `--cold`, the first burst after a load with `MLXOLLAMA_WARMUP=off`. Figures print as
they come (a run cut short keeps what it printed).

    python benchmarks/bench_weights.py --shape llama8b --tokenizer DIR
    python benchmarks/bench_weights.py --shape tiny --tokenizer DIR --streams 1,2 --tokens 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (OpenBLAS for MLX's CPU backend, before mlx loads)

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import SHAPES, synthetic_folder

from mlxollama.bench import concurrent, prompt_of
from mlxollama.client import Client

PROMPT_TOKENS = 64  # each request's prompt, with a nonce (no prefix is shared)


def say(text: str) -> None:
    print(text, flush=True)


def daemon(store_root: Path, env: dict[str, str]):
    """A started runtime and waitress server on `store_root`: (runtime, server, base URL)."""
    from mlxollama.actors.runtime import Runtime
    from mlxollama.config import Config
    from mlxollama.http.app import create_app
    from mlxollama.http.server import make_server

    config = Config.from_env({"MLXOLLAMA_MODELS": str(store_root), **env})
    runtime = Runtime(config).start()
    server = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=64)
    threading.Thread(target=server.run, daemon=True).start()
    return runtime, server, f"http://127.0.0.1:{server.effective_port}"


def load_now(base: str) -> float:
    """Load `bench` with an empty request (load + warmup); seconds it took."""
    import http.client

    import orjson

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=900)
    tic = time.perf_counter()
    conn.request("POST", "/api/generate", orjson.dumps({"model": "bench"}))
    body = conn.getresponse().read()
    conn.close()
    if b"error" in body:
        raise RuntimeError(body.decode())
    return time.perf_counter() - tic


def ps_weights(base: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/ps") as r:
        models = json.loads(r.read())["models"]
    return ", ".join(f"{m.get('weights')} size {m['size'] / 1e9:.1f} GB" for m in models)


def run_daemon(
    store_root, form, warmup, streams, tokens, burst, switch_interval=None
) -> dict[int, float]:
    from mlxollama.http.server import shutdown

    env = {
        "MLXOLLAMA_WEIGHTS": form,
        "MLXOLLAMA_WARMUP": warmup,
        "MLXOLLAMA_NUM_PARALLEL": str(max(max(streams), burst)),
        "MLXOLLAMA_KEEP_ALIVE": "-1",
        "MLXOLLAMA_PROMPT_CACHE": "0",  # every burst prefills: runs compare
        "MLXOLLAMA_PROMPT_CACHE_DISK": "0",
    }
    runtime, server, base = daemon(store_root, env)
    if switch_interval:  # after the runtime's start, which sets its own on the CPU backend
        sys.setswitchinterval(switch_interval)
    client = Client(base.removeprefix("http://"), timeout=900)

    def rate(n: int) -> float:
        return concurrent(client, "bench", PROMPT_TOKENS, tokens, n).tps

    rates: dict[int, float] = {}
    try:
        seconds = load_now(base)
        say(f"[{form}, warmup {warmup}] load {seconds:.1f} s; /api/ps: {ps_weights(base)}")
        first = rate(burst)
        warm = rate(burst)
        say(
            f"[{form}, warmup {warmup}] {burst}-stream burst: first after load {first:.1f} "
            f"tok/s, warm {warm:.1f} tok/s: first is {warm / first:.2f}x slower"
        )
        if warmup == "off":
            return rates
        for n in streams:
            rates[n] = rate(n)
            say(f"[{form}] {n:3d} stream(s): {rates[n]:8.1f} tok/s aggregate")
    finally:
        shutdown(server, runtime)
    return rates


def mlx_lm_completions(base: str, tokens: int, streams: int) -> float:
    """Aggregate completion tokens/s of `streams` /v1/completions started together (a
    connection it resets is retried: the time counts, its tokens once)."""
    import http.client
    import json
    import urllib.request

    counts = [0] * streams

    def one(i: int) -> None:
        body = json.dumps(
            {
                "prompt": prompt_of(PROMPT_TOKENS),
                "max_tokens": tokens,
                "temperature": 0.0,
                "stream": False,
            }
        ).encode()
        req = urllib.request.Request(
            f"{base}/v1/completions", body, {"Content-Type": "application/json"}
        )
        for _ in range(100):  # its HTTP server's listen backlog is 5: a burst of 32 is reset
            try:
                with urllib.request.urlopen(req, timeout=900) as r:
                    counts[i] = json.loads(r.read())["usage"]["completion_tokens"]
                return
            except (ConnectionError, http.client.RemoteDisconnected):
                time.sleep(0.05)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    tic = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - tic)


def run_mlx_lm(folder: Path, streams, tokens) -> dict[int, float]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--port", str(port)]
    cmd += ["--decode-concurrency", str(max(streams)), "--prompt-concurrency", str(max(streams))]
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (not a pipe: unread, it would stall)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    rates: dict[int, float] = {}
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/v1/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"mlx_lm.server exited: {log.read()[-2000:]}") from None
                time.sleep(0.5)
        for n in streams:
            mlx_lm_completions(base, tokens, n)  # its cold shapes, not counted
            rates[n] = mlx_lm_completions(base, tokens, n)
            say(f"[mlx_lm.server] {n:3d} stream(s): {rates[n]:8.1f} tok/s aggregate")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama8b")
    ap.add_argument("--tokenizer", type=Path, required=True, help="tokenizer files to use")
    ap.add_argument("--tokens", type=int, default=128, help="generated per request")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--burst", type=int, default=8, help="streams in the first-burst test")
    ap.add_argument("--forms", default="stored,auto")
    ap.add_argument(
        "--server-forms",
        default="stored,dense",
        help="mlx_lm.server on the 4-bit folder (stored) and on bf16 weights (dense); '': none",
    )
    ap.add_argument("--cold", action="store_true", help="also a load with warmup off")
    ap.add_argument("--switch-interval", type=float, help="sys.setswitchinterval in daemons")
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm

    from mlxollama.log import configure
    from mlxollama.models.create import create
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    configure(None, console=False)  # the figures only
    streams = [int(s) for s in args.streams.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-weights-"))
    info = mx.device_info()
    say(
        f"device: {mx.default_device()} {info.get('device_name', '')} "
        f"{info.get('memory_size', 0) / 2**30:.0f} GiB  mlx {mx.__version__}  "
        f"mlx-lm {mlx_lm.__version__}  shape {args.shape} 4-bit (random weights), "
        f"{args.tokens} tokens per request"
    )
    try:
        tic = time.perf_counter()
        folder = synthetic_folder(args.shape, args.tokenizer, work / "synthetic")
        create(Store(work / "store"), "bench", BuildSpec(source=str(folder)))
        say(f"model built and stored in {time.perf_counter() - tic:.1f} s")
        results = {}
        for form in args.forms.split(","):
            results[form] = run_daemon(
                work / "store",
                form,
                "auto",
                streams,
                args.tokens,
                args.burst,
                args.switch_interval,
            )
        for form in filter(None, args.server_forms.split(",")):
            source = folder
            if form == "dense":  # 16 GB for llama8b: built when needed, removed after
                source = synthetic_folder(args.shape, args.tokenizer, work / "dense", bits=None)
            say(f"[mlx_lm.server] {form} weights")
            results[f"mlx_lm {form}"] = run_mlx_lm(source, streams, args.tokens)
            shutil.rmtree(work / "dense", ignore_errors=True)
        say(f"\n{'streams':>8} " + " ".join(f"{k:>14}" for k in results))
        for n in streams:
            say(f"{n:8d} " + " ".join(f"{r.get(n, 0):14.1f}" for r in results.values()))
        if "auto" in results and "stored" in results:
            ratio = " ".join(
                f"{n}: {results['auto'][n] / results['stored'][n]:.2f}x" for n in streams
            )
            say(f"auto / stored: {ratio}")
        for theirs in ("mlx_lm stored", "mlx_lm dense"):
            if "auto" in results and theirs in results:
                ratio = " ".join(
                    f"{n}: {results['auto'][n] / max(results[theirs].get(n, 0), 1e-9):.2f}x"
                    for n in streams
                )
                say(f"auto / {theirs}: {ratio}")
        if args.cold:
            run_daemon(
                work / "store",
                "auto",
                "off",
                streams,
                args.tokens,
                args.burst,
                args.switch_interval,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
