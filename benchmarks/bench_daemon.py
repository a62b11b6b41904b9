"""The daemon against plain mlx-lm, in one run on the same model.

Prints single-stream decode tokens/s and time to first token through the daemon (a real
waitress server and the actor runtime, measured by an HTTP client reading NDJSON) against
`mlx_lm.stream_generate` on the same weights, then the aggregate tokens/s of 1, 4 and 8
concurrent streams through the daemon.

    python benchmarks/bench_daemon.py --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/bench_daemon.py --synthetic smollm2 --tokenizer DIR
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (OpenBLAS for MLX's CPU backend, before mlx loads)

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import SHAPES, synthetic_folder


def stream_once(client, prompt: str, n: int) -> tuple[float, float, int]:
    """One streamed /api/generate: (seconds to first token, decode tok/s by the client's
    clock, tokens), measured by `mlxollama.bench.stream` as `mlxctl bench` measures."""
    from mlxollama.bench import stream

    r = stream(client, "bench", prompt, n)
    return r.ttft, len(r.gaps) / max(sum(r.gaps), 1e-9), r.eval_count


def mlx_lm_once(model, tokenizer, prompt: str, n: int) -> tuple[float, float, int]:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    tokens = tokenizer.encode(prompt)
    tic = time.perf_counter()
    first = None
    count = 0
    for _ in stream_generate(model, tokenizer, tokens, max_tokens=n, sampler=make_sampler(0.0)):
        count += 1
        first = first or time.perf_counter()
    end = time.perf_counter()
    return first - tic, (count - 1) / max(end - first, 1e-9), count


def dense_folder(lm, store, stored, out: Path) -> Path:
    """The weights as the engine holds them (float32 on the CPU backend), saved as an mlx-lm
    folder: `mlx_lm.server` then serves exactly what the daemon serves."""
    import json

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlxollama.store import manifests as mt

    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in lm.model_config.items() if not k.startswith("quantization")}
    (out / "config.json").write_text(json.dumps(config))
    for layer in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE):
        shutil.copy(store.blobs.path(layer.digest), out / layer.name)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(lm.model.parameters())))
    return out


@contextlib.contextmanager
def mlx_lm_server(folder: Path):
    """`mlx_lm.server` on `folder` in a child process (with OpenBLAS loaded first, as the
    daemon has it); yields its base URL."""
    import socket
    import subprocess

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import mlxollama.engine; from mlx_lm.server import main; main()"
    args = ["--model", str(folder), "--port", str(port), "--log-level", "WARNING"]
    base = f"http://127.0.0.1:{port}"
    with open(folder / "server.log", "wb") as log:  # its access log, one line per request
        child = subprocess.Popen([sys.executable, "-c", code, *args], stderr=log)
        try:
            for _ in range(600):
                try:
                    httpx.get(base + "/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield base
        finally:
            child.terminate()
            child.wait()


def mlx_lm_stream(base: str, prompt: str, n: int) -> int:
    """One streamed /v1/completions from mlx_lm.server: the tokens it generated."""
    import httpx
    import orjson

    body = {
        "prompt": prompt,
        "max_tokens": n,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = orjson.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return tokens


def mlx_lm_concurrent(base: str, n: int, streams: int) -> float:
    """Aggregate generated tokens/s of `streams` completions started together."""
    from mlxollama.bench import prompt_of

    counts = [0] * streams

    def run(i: int) -> None:
        counts[i] = mlx_lm_stream(base, prompt_of(16), n)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    tic = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - tic)


class StackSampler:
    """Samples where the model actor's thread is, every `interval` seconds: a poor man's
    profiler that needs nothing installed on the benchmark host."""

    def __init__(self, interval: float = 0.002):
        import collections

        self.interval, self.counts, self.total = interval, collections.Counter(), 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import traceback

        while not self.stop.wait(self.interval):
            ids = [t.ident for t in threading.enumerate() if "ModelActor" in t.name]
            frames = sys._current_frames()
            for ident in ids:
                frame = frames.get(ident)
                if frame is None:
                    continue
                stack = traceback.extract_stack(frame)[-4:]
                key = " < ".join(
                    f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack)
                )
                self.counts[key] += 1
                self.total += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        print(f"model thread samples: {self.total}")
        for key, n in self.counts.most_common(12):
            print(f"  {100 * n / max(self.total, 1):5.1f}%  {key}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path)
    src.add_argument("--folder", type=Path)
    src.add_argument("--synthetic", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", type=Path, help="tokenizer files for --synthetic")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--switch-interval", type=float, help="sys.setswitchinterval for this run")
    ap.add_argument("--sample", action="store_true", help="sample the model thread's stacks")
    ap.add_argument(
        "--against-server",
        action="store_true",
        help="also run mlx_lm.server on the same (dense) weights and compare the aggregate "
        "tok/s of each stream count, interleaved, --repeats times",
    )
    ap.add_argument(
        "--num-parallel",
        default=None,
        help="MLXOLLAMA_NUM_PARALLEL for the daemon (default: the largest --streams)",
    )
    ap.add_argument(
        "--table",
        action="store_true",
        help="also print `mlxctl bench`'s table (-p 512 -n TOKENS -r REPEATS -c STREAMS) "
        "from this daemon, to compare with the figures above",
    )
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm

    from mlxollama import bench
    from mlxollama.actors.runtime import Runtime
    from mlxollama.bench import concurrent, prompt_of
    from mlxollama.client import Client
    from mlxollama.config import Config
    from mlxollama.http.app import create_app
    from mlxollama.http.server import make_server, shutdown
    from mlxollama.log import configure
    from mlxollama.models.create import create
    from mlxollama.models.load import load
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    configure(None, console=False)  # the figures only
    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-"))
    streams = [int(s) for s in args.streams.split(",")]
    try:
        source = args.gguf or args.folder
        if args.synthetic:
            source = synthetic_folder(args.synthetic, args.tokenizer, work / "synthetic")
        store = Store(work / "store")
        create(store, "bench", BuildSpec(source=str(source)))
        config = Config.from_env(
            {
                "MLXOLLAMA_MODELS": str(work / "store"),
                "MLXOLLAMA_NUM_PARALLEL": args.num_parallel or str(max(streams)),
                "MLXOLLAMA_KEEP_ALIVE": "-1",
            }
        )
        runtime = Runtime(config).start()
        if args.switch_interval:  # after the start, which sets its own on the CPU backend
            sys.setswitchinterval(args.switch_interval)
        server = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=32)
        threading.Thread(target=server.run, daemon=True).start()
        client = Client(f"127.0.0.1:{server.effective_port}", timeout=600)

        # mlx-lm side: the same weights, loaded the way the engine loads them on this device
        lm = load(store, "bench")
        prompt = prompt_of(64)  # a fresh nonce each: the prompt cache serves no prefix
        stream_once(client, prompt, 8)  # load the model in the daemon and warm up both sides
        mlx_lm_once(lm.model, lm.tokenizer, prompt, 8)
        daemon, plain = [], []
        for i in range(args.repeats):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            prompt = prompt_of(64)
            for side in order:
                if side == 0:
                    daemon.append(stream_once(client, prompt, args.tokens))
                else:
                    plain.append(mlx_lm_once(lm.model, lm.tokenizer, prompt, args.tokens))
        med = {
            name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            for name, runs in (("daemon", daemon), ("mlx_lm", plain))
        }
        print(f"device: {mx.default_device()}  mlx {mx.__version__}  mlx-lm {mlx_lm.__version__}")
        print(
            f"model: {source}  {args.tokens} tokens per request, median of {args.repeats}, "
            f"switch interval {sys.getswitchinterval() * 1e3:g} ms"
        )
        print(f"{'':8} {'TTFT ms':>9} {'decode tok/s':>13}")
        for name, (ttft, tps) in med.items():
            print(f"{name:8} {ttft * 1e3:9.1f} {tps:13.1f}")
        print(
            f"{'ratio':8} {med['daemon'][0] / med['mlx_lm'][0]:9.3f} "
            f"{med['daemon'][1] / med['mlx_lm'][1]:13.3f}   (daemon / mlx_lm)"
        )
        for n in streams:
            # The first run at a new batch size compiles kernels for its shapes (measured on
            # CUDA: 8 cold streams ran at an eighth of their warm speed), so warm up first.
            cold = concurrent(client, "bench", 16, args.tokens, n)
            sampler = StackSampler() if args.sample else contextlib.nullcontext()
            with sampler:
                warm = concurrent(client, "bench", 16, args.tokens, n)
            print(
                f"aggregate through the daemon, {n} stream(s): {warm.tps:.1f} tok/s "
                f"(cold: {cold.tps:.1f}), TTFT {warm.ttft_ms:.0f} ms, "
                f"ITL p50 {warm.itl_p50_ms:.1f} ms p99 {warm.itl_p99_ms:.1f} ms"
            )
        if args.against_server:
            folder = dense_folder(lm, store, store.get("bench"), work / "dense")
            with mlx_lm_server(folder) as lm_base:
                print(f"daemon NUM_PARALLEL {config.num_parallel} against mlx_lm.server:")
                for n in streams:
                    mlx_lm_concurrent(lm_base, args.tokens, n)  # warm both at this shape
                    concurrent(client, "bench", 16, args.tokens, n)
                    ours, theirs = [], []
                    for i in range(args.repeats):
                        for side in (0, 1) if i % 2 == 0 else (1, 0):
                            if side == 0:
                                ours.append(concurrent(client, "bench", 16, args.tokens, n).tps)
                            else:
                                theirs.append(mlx_lm_concurrent(lm_base, args.tokens, n))
                    a, b = statistics.median(ours), statistics.median(theirs)
                    print(
                        f"  {n} stream(s): daemon {a:.1f} tok/s, mlx_lm.server {b:.1f} tok/s, "
                        f"ratio {a / b:.2f} (runs: {[round(x, 1) for x in ours]} / "
                        f"{[round(x, 1) for x in theirs]})"
                    )
        if args.table:
            system, memory = bench.system_of(client, "this daemon")
            report = bench.run(
                client, ["bench"], system, (512,), (args.tokens,), args.repeats, streams, memory
            )
            print(bench.to_table(report))
        shutdown(server, runtime)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
