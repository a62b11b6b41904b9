"""Streaming generation in the calling thread, for the embedded SDK: one sequence
(`engine.batch.Solo`) decoded by the same `Decoder` the daemon's sessions use."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mlxollama.api import Chunk
from mlxollama.engine.answer import Prepared
from mlxollama.engine.batch import PREFILL_STEP, Solo
from mlxollama.engine.prompt_cache import PromptCache
from mlxollama.engine.sampling import restore_random_state


def stream(
    model,
    prepared: Prepared,
    *,
    prefill_step_size: int = PREFILL_STEP,
    cancelled: Callable[[], bool] | None = None,
    started_ns: int | None = None,
    load_ns: int = 0,
    prompt_cache: PromptCache | None = None,
    kv_type: str = "f16",
) -> Iterator[Chunk]:
    """Generate a prepared request (`engine.answer.prepare`), yielding its chunks and a final
    chunk with metrics.

    Args:
        model: an mlx-lm model.
        prepared: the request, rendered, constrained and fitted to its context.
        prefill_step_size: prompt tokens per prefill step (Ollama's num_batch).
        cancelled: polled between tokens; when it returns True the stream ends early.
        started_ns: when the request began (`time.perf_counter_ns`), for total_duration.
            Default: now.
        load_ns: the model load this request waited for (load_duration).
        prompt_cache: where the prompt's prefix is looked for, and where the sequence's KV
            cache is kept when it ends (the daemon's ModelActor keeps one per model).
        kv_type: the KV cache type (`MLXOLLAMA_KV_CACHE_TYPE`: f16, q8_0, q4_0).
    """
    seq = prepared.sequence
    cache, cached = None, 0
    if prompt_cache is not None and seq.max_tokens > 0:
        cache, cached = prompt_cache.fetch(seq.prompt)
    decoder = prepared.decoder(started_ns=started_ns, load_ns=load_ns, cached=cached)
    if seq.max_tokens <= 0:
        yield from decoder.end("length")
        return
    eos = prepared.tokenizer.eos_token_ids
    solo = Solo(model, seq, eos, prefill_step_size, cache, cached, kv_type)
    failed = False
    try:
        while not decoder.done:
            token, finish, logprob = solo.next()
            if token is None:
                yield from decoder.end("length")
                return
            yield from decoder.add(token, finish, logprob)
            if not decoder.done and cancelled is not None and cancelled():
                yield from decoder.end("stop")
    except Exception:
        failed = True
        restore_random_state()  # the next generation on this thread must not inherit it
        raise
    finally:
        solo.close()
        held = solo.held() if prompt_cache is not None and not failed else None
        if held is not None:
            prompt_cache.store(held, solo.cache, len(seq.prompt))
