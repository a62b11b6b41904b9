"""Constrained decoding against free decoding and plain mlx-lm, in one run on one model.

Prints decode tokens/s of one stream through the engine's single-sequence path
(`engine.batch.Solo`, what a request alone on its model runs) without and with a JSON schema,
of mlx-lm's `generate_step` on the same weights, and the aggregate tokens/s of 8 streams in
`engine.batch.Batch` (mlx-lm's BatchGenerator) free, all constrained, and half and half. Then
the per-token cost of the mask itself: the matcher consuming a token, computing its bitmask
and the masked logits being built, replayed on the tokens the constrained run produced.

    python benchmarks/bench_structured.py --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/bench_structured.py --synthetic smollm2 --tokenizer DIR

End-of-generation is off for every run, and the schema asks for more items than `--tokens`
can hold, so every run decodes exactly `--tokens` tokens.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (OpenBLAS for MLX's CPU backend, before mlx loads)

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import SHAPES, synthetic_folder

# Nested objects, arrays, enums, bounded numbers and strings: the shapes apps send. The
# `minItems` outlasts any --tokens, so the grammar never allows the end token.
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "people": {
            "type": "array",
            "minItems": 400,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "role": {"enum": ["admin", "user", "guest"]},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["name", "age", "role", "score"],
            },
        },
    },
    "required": ["title", "people"],
}
PROMPT = (
    "<|im_start|>user\nList the people of a small company as JSON, with their names, ages, "
    "roles and scores.<|im_end|>\n<|im_start|>assistant\n"
)


def free_seq(tokens, n):
    from mlxollama.api import SamplingOptions
    from mlxollama.engine.batch import plan

    opts = SamplingOptions(temperature=0.0, num_predict=n, repeat_penalty=1.0)
    return plan(tokens, opts, 1 << 16)


def constrained_seq(lm, rule, tokens, n):
    from mlxollama.api import SamplingOptions
    from mlxollama.engine import grammar
    from mlxollama.engine.batch import plan

    opts = SamplingOptions(temperature=0.0, num_predict=n, repeat_penalty=1.0)
    return plan(tokens, opts, 1 << 16, logits_processors=[grammar.constraint(lm, rule)])


def timed_solo(lm, seq):
    """Decode tok/s of one sequence through `Solo` (first token excluded: it is prefill)."""
    from mlxollama.engine.batch import Solo

    solo = Solo(lm.model, seq, (), 512)
    out, first = [], None
    while True:
        token, finish, _ = solo.next()
        if token is None:
            break
        out.append(token)
        first = first or time.perf_counter()
        if finish:
            break
    end = time.perf_counter()
    solo.close()
    return (len(out) - 1) / (end - first), out


def timed_mlx_lm(lm, tokens, n):
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    first, count = None, 0
    for _ in generate_step(
        mx.array(tokens), lm.model, max_tokens=n, sampler=make_sampler(0.0), prefill_step_size=512
    ):
        count += 1
        first = first or time.perf_counter()
    end = time.perf_counter()
    return (count - 1) / (end - first)


def timed_batch(lm, seqs):
    """Aggregate decode tok/s of `seqs` together in a `Batch` (from the first token of all)."""
    from mlxollama.engine.batch import Batch

    batch = Batch(lm.model, (), size=len(seqs))
    for key, seq in enumerate(seqs):
        batch.add(key, seq)
    pending = set(range(len(seqs)))
    started: set[int] = set()
    first, count = None, 0
    while pending:
        step = batch.step()
        if step.failed:
            raise RuntimeError(f"a sequence failed: {step.failed}")
        for key, token, finish, _ in step.tokens:
            if token is not None:
                if len(started) == len(seqs):
                    count += 1
                started.add(key)
                if len(started) == len(seqs) and first is None:
                    first = time.perf_counter()
            if finish:
                pending.discard(key)
    end = time.perf_counter()
    batch.close()
    return count / (end - first)


def masking_cost(lm, rule, prompt, answer):
    """Per-token ms of the constraint alone (consume, bitmask, masked logits evaluated),
    replayed on `answer` with random logits."""
    import mlx.core as mx

    from mlxollama.engine import grammar

    c = grammar.constraint(lm, rule)
    logits = mx.random.normal((1, c.vocab_size))
    tokens = list(prompt)
    mx.eval(c(mx.array(tokens), logits))
    times = []
    for token in answer[:-1]:
        tokens.append(token)
        ctx = mx.array(tokens)
        mx.eval(ctx)
        tic = time.perf_counter()
        mx.eval(c(ctx, logits))
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e3, statistics.mean(times) * 1e3, max(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path)
    src.add_argument("--folder", type=Path, help="an HF/mlx-lm safetensors folder")
    src.add_argument("--synthetic", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", type=Path, help="tokenizer files for --synthetic")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm

    from mlxollama.engine import grammar
    from mlxollama.models.create import create
    from mlxollama.models.load import load
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-"))
    try:
        source = args.gguf or args.folder
        if args.synthetic:
            source = synthetic_folder(args.synthetic, args.tokenizer, work / "synthetic")
        store = Store(work / "store")
        create(store, "bench", BuildSpec(source=str(source)))
        lm = load(store, "bench")
        prompt = lm.tokenizer.encode(PROMPT)
        n = args.tokens
        rule = grammar.json_grammar(SCHEMA)

        tic = time.perf_counter()
        grammar.constraint(lm, rule)
        setup_ms = (time.perf_counter() - tic) * 1e3  # the tokenizer view is built once
        tic = time.perf_counter()
        grammar.constraint(lm, rule)
        matcher_ms = (time.perf_counter() - tic) * 1e3

        runs = {
            "mlx_lm": lambda: timed_mlx_lm(lm, prompt, n),
            "free": lambda: timed_solo(lm, free_seq(prompt, n))[0],
            "schema": lambda: timed_solo(lm, constrained_seq(lm, rule, prompt, n))[0],
        }
        k = args.streams
        batches = {
            f"free x{k}": lambda: timed_batch(lm, [free_seq(prompt, n) for _ in range(k)]),
            f"schema x{k}": lambda: timed_batch(
                lm, [constrained_seq(lm, rule, prompt, n) for _ in range(k)]
            ),
            f"mixed x{k}": lambda: timed_batch(
                lm,
                [
                    constrained_seq(lm, rule, prompt, n) if i % 2 else free_seq(prompt, n)
                    for i in range(k)
                ],
            ),
        }
        for run in [*runs.values(), *batches.values()]:  # warm up every shape once
            run()
        rows = {name: [] for name in [*runs, *batches]}
        for i in range(args.repeats):  # alternate the order, so no run always goes first
            names = list(rows) if i % 2 == 0 else list(reversed(rows))
            for name in names:
                rows[name].append({**runs, **batches}[name]())
        med = {name: statistics.median(v) for name, v in rows.items()}

        _, answer = timed_solo(lm, constrained_seq(lm, rule, prompt, n))
        text = lm.tokenizer.decode(answer)
        cost = masking_cost(lm, rule, prompt, answer)

        print(f"device: {mx.default_device()}  mlx {mx.__version__}  mlx-lm {mlx_lm.__version__}")
        print(
            f"model: {source}  prompt {len(prompt)} tokens, {n} generated per stream, "
            f"median of {args.repeats}"
        )
        print(f"{'':12} {'decode tok/s':>13}")
        for name, value in med.items():
            print(f"{name:12} {value:13.1f}")
        print(
            f"ratio 1 stream:  schema / free {med['schema'] / med['free']:.3f}, "
            f"free / mlx_lm {med['free'] / med['mlx_lm']:.3f}, "
            f"schema / mlx_lm {med['schema'] / med['mlx_lm']:.3f}"
        )
        print(
            f"ratio {k} streams: schema / free {med[f'schema x{k}'] / med[f'free x{k}']:.3f}, "
            f"mixed / free {med[f'mixed x{k}'] / med[f'free x{k}']:.3f}"
        )
        step_ms = 1e3 / med["free"]
        print(
            f"masking per token: median {cost[0]:.3f} ms, mean {cost[1]:.3f} ms, "
            f"max {cost[2]:.3f} ms (a free decode step takes {step_ms:.2f} ms)"
        )
        print(
            f"setup: first constraint {setup_ms:.0f} ms (tokenizer view, once per model), "
            f"then {matcher_ms:.1f} ms per request"
        )
        print(f"constrained answer starts: {text[:120]!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
