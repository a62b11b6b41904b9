"""Engine against plain mlx-lm, side by side in one run, on the same stored model.

Prints prefill and decode tokens/s of `mlxollama.engine.generate.stream` and of
`mlx_lm.stream_generate` on the very same loaded weights, and the load time from the store
against `mlx_lm.load` of the same weights saved as an ordinary mlx-lm folder.

    python benchmarks/bench_engine.py --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/bench_engine.py --synthetic smollm2 --tokenizer DIR   # random weights

`--synthetic` builds a SmolLM2-shaped (or Llama-8B-shaped) 4-bit model with random weights,
for machines where the real file cannot travel; throughput does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import mlxollama.engine  # noqa: F401  (loads OpenBLAS for MLX's CPU backend before mlx)

SHAPES = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    "smollm2": dict(
        hidden_size=576,
        num_hidden_layers=30,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "llama8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
}


def synthetic_folder(shape: str, tokenizer_dir: Path, out: Path, bits: int | None = 4) -> Path:
    """An mlx-lm folder of a llama of `shape` with random weights (seeded: every run the
    same), quantized to `bits` (None: dense bf16, the same weights before quantization)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = {
        "model_type": "llama",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        **SHAPES[shape],
    }
    mx.random.seed(0)  # the same weights every run: the same tokens, so runs compare
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if bits is None:
        model.set_dtype(mx.bfloat16)
    else:
        nn.quantize(model, group_size=64, bits=bits)
        config["quantization"] = {"group_size": 64, "bits": bits}
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def export_folder(lm, store, stored, out: Path) -> Path:
    """The stored model as a plain mlx-lm folder, for `mlx_lm.load`."""
    from mlxollama.store import manifests as mt

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(lm.model_config))
    for layer in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE):
        shutil.copy(store.blobs.path(layer.digest), out / layer.name)
    import mlx.core as mx

    weights = {}
    for layer in stored.manifest.layers_of(mt.TENSOR_MEDIA_TYPE):
        weights.update(mx.load(str(store.blobs.path(layer.digest)), format="safetensors"))
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return out


def timed_engine(lm, prompt, n):
    from mlxollama.api import SamplingOptions
    from mlxollama.engine.generate import stream

    opts = SamplingOptions(temperature=0.0, num_predict=n, repeat_penalty=1.0)
    final = list(stream(lm.model, lm.tokenizer, prompt, opts, 1 << 16))[-1]
    return (
        final.prompt_eval_count / (final.prompt_eval_duration / 1e9),
        (final.eval_count - 1) / (final.eval_duration / 1e9),
        final.eval_count,
    )


def timed_mlx_lm(lm, prompt, n):
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    tic = time.perf_counter()
    first = None
    count = 0
    for _ in stream_generate(
        lm.model,
        lm.tokenizer,
        prompt,
        max_tokens=n,
        sampler=make_sampler(0.0),
        prefill_step_size=512,
    ):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return len(prompt) / (first - tic), (count - 1) / (end - first), count


def timed_batch_generator(lm, prompt, n):
    """mlx-lm's BatchGenerator with one sequence: what the daemon's model actor runs."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(
        lm.model, completion_batch_size=8, prefill_batch_size=8, prefill_step_size=512
    )
    tic = time.perf_counter()
    gen.insert([prompt], max_tokens=[n])
    first, count = None, 0
    while count < n:
        _, responses = gen.next()
        for _ in responses:
            count += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    gen.close()
    return len(prompt) / (first - tic), (count - 1) / (end - first), count


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path)
    src.add_argument("--folder", type=Path, help="an HF/mlx-lm safetensors folder")
    src.add_argument("--synthetic", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", type=Path, help="tokenizer files for --synthetic")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm

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
        stored = store.get("bench")

        loads_store, loads_mlx = [], []
        tic = time.perf_counter()
        lm = load(store, "bench", weights="stored")  # hashes every blob once
        first_load = time.perf_counter() - tic
        for _ in range(args.repeats):
            tic = time.perf_counter()
            lm = load(store, "bench", weights="stored")
            loads_store.append(time.perf_counter() - tic)
        folder = export_folder(lm, store, stored, work / "exported")
        for _ in range(args.repeats):
            tic = time.perf_counter()
            mlx_lm.load(str(folder))
            loads_mlx.append(time.perf_counter() - tic)
        if mx.default_device() == mx.cpu:
            lm = load(store, "bench")  # the engine's CPU path: float32 weights + BLAS

        lm.tokenizer._eos_token_ids = set()  # both sides generate exactly --tokens tokens
        words = ("the quick brown fox jumps over the lazy dog " * 400).split()
        prompt = lm.tokenizer.encode(" ".join(words))[: args.prompt_tokens]
        timed_engine(lm, prompt, 8)  # warm up both paths at full size
        timed_mlx_lm(lm, prompt, 8)
        rows = {"engine": [], "mlx_lm": [], "batchgen": []}
        for i in range(args.repeats):  # alternate the order, so neither always goes first
            order = (
                ("engine", "mlx_lm", "batchgen") if i % 2 == 0 else ("batchgen", "mlx_lm", "engine")
            )
            runs = {
                "engine": timed_engine,
                "mlx_lm": timed_mlx_lm,
                "batchgen": timed_batch_generator,
            }
            for name in order:
                rows[name].append(runs[name](lm, prompt, args.tokens))

        print(f"device: {mx.default_device()}  mlx {mx.__version__}  mlx-lm {mlx_lm.__version__}")
        print(
            f"model: {source}  prompt {len(prompt)} tokens, {args.tokens} generated, "
            f"median of {args.repeats}"
        )
        print(f"{'':8} {'prefill tok/s':>14} {'decode tok/s':>13}")
        med = {}
        for name, runs in rows.items():
            med[name] = (
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs),
            )
            print(f"{name:8} {med[name][0]:14.1f} {med[name][1]:13.1f}")
        for name in ("engine", "batchgen"):
            print(
                f"{'ratio':8} {med[name][0] / med['mlx_lm'][0]:14.3f} "
                f"{med[name][1] / med['mlx_lm'][1]:13.3f}   ({name} / mlx_lm)"
            )
        s, m = statistics.median(loads_store), statistics.median(loads_mlx)
        print(
            f"load: store {s:.3f} s, mlx_lm.load {m:.3f} s, ratio {s / m:.2f} "
            f"(first load from the store, hashing every blob: {first_load:.3f} s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
