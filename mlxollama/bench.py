"""`mlxctl bench`: prompt processing (pp) and generation (tg) tokens/s in llama-bench's shape,
and a concurrency sweep, measured through a `ModelClient` (the daemon's `Client`, so the
figures are what clients get, or `sdk.Embedded` in this process).

pp and tg come from the server's own counts and durations in the final streamed chunk
(`prompt_eval_*`, `eval_*`), not from client clocks; the sweep's TTFT and inter-token latency
are client clocks, since that is what a caller waits for. Every request starts with its own
nonce, so the prompt cache never serves a prefix and pp measures a real prefill.
`benchmarks/bench_daemon.py` drives the same functions.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mlxollama import __version__
from mlxollama.interface import ModelClient

FILLER = " the"  # one token in every BPE vocabulary we serve: p fillers ~ p prompt tokens


def prompt_of(tokens: int) -> str:
    """A prompt of about `tokens` tokens that no earlier request shares a prefix with."""
    return f"[{uuid.uuid4().hex[:8]}]" + FILLER * max(tokens - 4, 1)


@dataclass
class Stream:
    """One streamed generate: the server's counts and durations (ns), and client clocks."""

    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    ttft: float = 0.0  # seconds from sending to the first generated text
    gaps: list[float] = field(default_factory=list)  # seconds between text chunks
    wall: float = 0.0

    @property
    def pp_rate(self) -> float:
        return self.prompt_eval_count / max(self.prompt_eval_duration, 1) * 1e9

    @property
    def tg_rate(self) -> float:
        return self.eval_count / max(self.eval_duration, 1) * 1e9


def stream(client: ModelClient, model: str, prompt: str, n: int) -> Stream:
    """Generate `n` tokens after the raw `prompt` (greedy), streaming, and time it."""
    options = {"temperature": 0, "num_predict": n}
    tic = time.perf_counter()
    out = Stream()
    last = None
    for part in client.generate(model, prompt, raw=True, options=options, stream=True):
        now = time.perf_counter()
        if part.get("response"):
            if last is None:
                out.ttft = now - tic
            else:
                out.gaps.append(now - last)
            last = now
        if part.get("done"):
            for key in ("prompt_eval_count", "prompt_eval_duration", "eval_count"):
                setattr(out, key, part.get(key) or 0)
            out.eval_duration = part.get("eval_duration") or 0
    out.wall = time.perf_counter() - tic
    return out


@dataclass
class Test:
    """One llama-bench row: `pp512` or `tg128`, mean and stddev of the repetitions' t/s."""

    model: str
    backend: str
    weights: str
    test: str
    n_prompt: int
    n_gen: int
    tps_mean: float
    tps_stddev: float
    samples: list[float]


@dataclass
class Sweep:
    """`streams` requests started together: aggregate generated tok/s and client latencies."""

    model: str
    streams: int
    tokens: int
    tps: float
    ttft_ms: float
    itl_p50_ms: float
    itl_p99_ms: float


@dataclass
class Report:
    system: dict[str, Any]
    tests: list[Test] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "tests": [asdict(t) for t in self.tests],
            "concurrency": [asdict(s) for s in self.sweeps],
        }


def _mean_std(samples: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def concurrent(client: ModelClient, model: str, prompt_tokens: int, n: int, streams: int) -> Sweep:
    """`streams` generates of `n` tokens started together, each from its own thread (one
    stream runs on this thread: `sdk.Embedded` runs MLX on the caller's thread)."""
    results: list[Stream | BaseException] = [None] * streams  # type: ignore[list-item]

    def run(i: int) -> None:
        try:
            results[i] = stream(client, model, prompt_of(prompt_tokens), n)
        except BaseException as e:  # re-raised on the caller's thread
            results[i] = e

    tic = time.perf_counter()
    if streams == 1:
        run(0)
    else:
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - tic
    for r in results:
        if isinstance(r, BaseException):
            raise r
    done: list[Stream] = results  # type: ignore[assignment]
    gaps = [g for r in done for g in r.gaps]
    return Sweep(
        model=model,
        streams=streams,
        tokens=n,
        tps=sum(r.eval_count for r in done) / wall,
        ttft_ms=statistics.fmean(r.ttft for r in done) * 1e3,
        itl_p50_ms=percentile(gaps, 50) * 1e3,
        itl_p99_ms=percentile(gaps, 99) * 1e3,
    )


def run(
    client: ModelClient,
    models: Sequence[str],
    system: dict[str, Any],
    prompts: Sequence[int] = (512,),
    gens: Sequence[int] = (128,),
    repetitions: int = 5,
    streams: Sequence[int] = (1, 4, 8),
    memory: Callable[[], dict[str, int]] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Report:
    """Benchmark each model: pp for every prompt size, tg for every generation size, each
    `repetitions` times after one warm-up, then the concurrency sweep (`streams`, generating
    the largest tg size after a 16-token prompt). `memory` reads MLX's allocator afterwards.
    """
    report = Report(system=dict(system))
    for model in models:
        details = client.show(model).get("details") or {}
        weights = details.get("quantization_level") or "?"
        say(f"{model}: warming up")
        stream(client, model, prompt_of(16), 2)  # loads the model; compiles the small shapes
        for kind, sizes in (("pp", prompts), ("tg", gens)):
            for size in sizes:
                say(f"{model}: {kind}{size} x {repetitions}")
                p, g = (size, 1) if kind == "pp" else (4, size)
                stream(client, model, prompt_of(p), g)  # a warm-up at this shape
                runs = [stream(client, model, prompt_of(p), g) for _ in range(repetitions)]
                rates = [r.pp_rate if kind == "pp" else r.tg_rate for r in runs]
                mean, std = _mean_std(rates)
                counts = [r.prompt_eval_count if kind == "pp" else r.eval_count for r in runs]
                report.tests.append(
                    Test(
                        model=model,
                        backend=system.get("backend", "?"),
                        weights=weights,
                        test=f"{kind}{size}",
                        n_prompt=min(r.prompt_eval_count for r in runs),
                        n_gen=min(r.eval_count for r in runs) if kind == "tg" else 0,
                        tps_mean=mean,
                        tps_stddev=std,
                        samples=rates,
                    )
                )
                if min(counts) < size and kind == "tg":
                    say(f"{model}: tg{size} stopped early ({min(counts)} tokens)")
        for n in streams:
            say(f"{model}: {n} concurrent stream(s)")
            concurrent(client, model, 16, max(gens), n)  # warm: first use of a batch shape
            report.sweeps.append(concurrent(client, model, 16, max(gens), n))
    if memory is not None:
        report.system.update(memory())
    return report


# -- output ----------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w
                             for i, w in enumerate(widths)) + " |"  # fmt: skip
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _bytes(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def to_table(report: Report) -> str:
    """llama-bench's markdown table, the sweep's table, and a line of versions and memory."""
    s = report.system
    tests = [
        [t.model, t.backend, t.weights, t.test, f"{t.tps_mean:.2f} ± {t.tps_stddev:.2f}"]
        for t in report.tests
    ]
    out = [_table(["model", "backend", "weights", "test", "t/s"], tests, {4})]
    if report.sweeps:
        rows = [
            [
                w.model,
                str(w.streams),
                f"{w.tps:.2f}",
                f"{w.ttft_ms:.1f}",
                f"{w.itl_p50_ms:.1f}",
                f"{w.itl_p99_ms:.1f}",
            ]
            for w in report.sweeps
        ]
        header = ["model", "streams", "tok/s", "TTFT ms", "ITL p50 ms", "ITL p99 ms"]
        out += ["", _table(header, rows, {1, 2, 3, 4, 5})]
    out += [
        "",
        f"{s.get('via', '?')}: mlxollama {s.get('mlxollama', '?')}, mlx {s.get('mlx', '?')}, "
        f"mlx-lm {s.get('mlx_lm', '?')}, backend {s.get('backend', '?')}, "
        f"BLAS {s.get('blas', '?')}, peak memory {_bytes(s.get('peak_memory'))}",
    ]
    return "\n".join(out)


CSV_FIELDS = [
    "model",
    "backend",
    "weights",
    "test",
    "n_prompt",
    "n_gen",
    "streams",
    "tps_mean",
    "tps_stddev",
    "ttft_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "mlxollama",
    "mlx",
    "mlx_lm",
    "peak_memory",
]


def to_csv(report: Report) -> str:
    """One row per test and per sweep point (a sweep point's test is `c<streams>`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    system = {k: report.system.get(k, "") for k in ("mlxollama", "mlx", "mlx_lm", "peak_memory")}
    for t in report.tests:
        writer.writerow({**asdict(t), "streams": 1, **system})
    for w in report.sweeps:
        row = {"test": f"c{w.streams}", "n_gen": w.tokens, "tps_mean": w.tps, **asdict(w)}
        writer.writerow({**row, "backend": report.system.get("backend", ""), **system})
    return buf.getvalue()


def system_of(client: ModelClient, via: str) -> tuple[dict[str, Any], Callable[[], dict]]:
    """What runs the models and a reader of its memory: the daemon's `/api/version` object,
    or this process's engine."""
    version = getattr(client, "version", None)
    if version is not None:  # a daemon: ask it, now and after the run
        info = version()
        engine = {k: v for k, v in (info.get("mlxollama") or {}).items() if "memory" not in k}

        def memory() -> dict[str, int]:
            found = version().get("mlxollama") or {}
            return {k: v for k, v in found.items() if k.endswith("memory")}

        return {"via": via, "mlxollama": info.get("version"), **engine}, memory
    from mlxollama import engine as local

    return {"via": via, "mlxollama": __version__, **local.describe()}, local.memory
