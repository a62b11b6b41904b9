"""KV cache quantization (`MLXOLLAMA_KV_CACHE_TYPE`): decode tokens/s and KV cache bytes
for f16, q8_0 and q4_0, at 1 and 4 streams, through the engine's `Batch` (what the daemon's
model actor steps) and through raw mlx-lm in the same run: `generate_step` with `kv_bits`
for one stream, `BatchGenerator` for four (f16 only: mlx-lm cannot batch a quantized cache).

    python benchmarks/bench_kv_quant.py --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/bench_kv_quant.py --synthetic llama8b --tokenizer DIR   # random weights
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_engine import SHAPES, synthetic_folder

import mlxollama.engine  # noqa: F401  (loads OpenBLAS for MLX's CPU backend before mlx)

TYPES = ("f16", "q8_0", "q4_0")


def prompts(vocab: int, n: int, length: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(1000, vocab) for _ in range(length)] for _ in range(n)]


def cache_bytes(batch) -> int:
    if batch.solo is not None:
        return sum(c.nbytes for c in batch.solo[1].cache)
    return batch.gen.prompt_cache_nbytes


def engine(model, kv_type: str, streams: list[list[int]], n: int) -> tuple[float, int]:
    """Aggregate decode tokens/s and the peak KV bytes of the engine's Batch."""
    from mlxollama.api import SamplingOptions
    from mlxollama.engine.batch import Batch, plan

    batch = Batch(model, [], len(streams), kv_type=kv_type)
    opts = SamplingOptions(temperature=0.0, num_predict=n)
    for i, p in enumerate(streams):
        batch.add(i, plan(p, opts, len(p) + n + 8))
    first, count, peak = None, 0, 0
    while batch.seqs:
        step = batch.step()
        peak = max(peak, cache_bytes(batch))
        count += sum(1 for _, t, _, _ in step.tokens if t is not None)
        if first is None and count:
            first, count = time.perf_counter(), 0
    batch.close()
    return count / (time.perf_counter() - first), peak


def mlx_lm_solo(model, kv_type: str, prompt: list[int], n: int) -> tuple[float, int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from mlxollama.engine.kv_quant import GROUP_SIZE, bits_of

    cache = make_prompt_cache(model)
    steps = generate_step(
        mx.array(prompt),
        model,
        max_tokens=n,
        prompt_cache=cache,
        kv_bits=bits_of(kv_type),
        kv_group_size=GROUP_SIZE,
        quantized_kv_start=0,
        prefill_step_size=512,
    )
    next(steps)
    tic, count = time.perf_counter(), 0
    for _ in steps:
        count += 1
    return count / (time.perf_counter() - tic), sum(c.nbytes for c in cache)


def mlx_lm_batch(model, streams: list[list[int]], n: int) -> tuple[float, int]:
    from mlx_lm.generate import BatchGenerator

    size = len(streams)
    gen = BatchGenerator(model, completion_batch_size=size, prefill_batch_size=size)
    gen.insert(streams, max_tokens=[n] * size)
    first, count, peak, finished = None, 0, 0, 0
    while finished < size:  # a sequence may stop early (an end token): count finishes, not n
        _, responses = gen.next()
        peak = max(peak, gen.prompt_cache_nbytes)
        if responses and first is None:
            first, count = time.perf_counter(), -len(responses)
        count += len(responses)
        finished += sum(r.finish_reason is not None for r in responses)
    gen.close()
    return count / (time.perf_counter() - first), peak


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path)
    src.add_argument("--synthetic", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", type=Path, help="tokenizer files for --synthetic")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm

    from mlxollama.models.create import create
    from mlxollama.models.load import load
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-"))
    try:
        source = args.gguf
        if args.synthetic:
            source = synthetic_folder(args.synthetic, args.tokenizer, work / "synthetic")
        store = Store(work / "store")
        create(store, "bench", BuildSpec(source=str(source)))
        model = load(store, "bench").model
        vocab = model.args.vocab_size
        four = prompts(vocab, 4, args.prompt_tokens)
        n = args.tokens
        engine(model, "f16", four[:1], 8)  # warm up
        print(f"device: {mx.default_device()}  mlx {mx.__version__}  mlx-lm {mlx_lm.__version__}")
        print(f"model: {source}  prompt {args.prompt_tokens} tokens, {n} generated per stream")
        print(
            f"{'type':5} {'streams':>7} {'tok/s':>8} {'KV MB':>8} {'KV x f16':>8} "
            f"{'mlx-lm tok/s':>12} {'mlx-lm KV MB':>12} {'tok/s ratio':>11}"
        )
        f16_bytes = {}
        for streams in (1, 4):
            for kv_type in TYPES:
                ours, theirs = [], []
                for _ in range(args.repeats):
                    ours.append(engine(model, kv_type, four[:streams], n))
                    if streams == 1:
                        theirs.append(mlx_lm_solo(model, kv_type, four[0], n))
                    elif kv_type == "f16":
                        theirs.append(mlx_lm_batch(model, four, n))
                speed = statistics.median(r[0] for r in ours)
                kv = max(r[1] for r in ours)
                f16_bytes.setdefault(streams, kv)
                line = (
                    f"{kv_type:5} {streams:7} {speed:8.1f} {kv / 1e6:8.1f} "
                    f"{kv / f16_bytes[streams]:8.2f} "
                )
                if theirs:
                    ref = statistics.median(r[0] for r in theirs)
                    ref_kv = max(r[1] for r in theirs)
                    line += f"{ref:12.1f} {ref_kv / 1e6:12.1f} {speed / ref:11.2f}"
                else:
                    line += f"{'n/a':>12} {'n/a':>12} {'':>11}"
                print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
