"""Streaming generation in the calling thread, for the embedded SDK: one sequence
(`engine.batch.Solo`) decoded by the same `Decoder` the daemon's sessions use."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mlxollama.api import Chunk
from mlxollama.engine.answer import Prepared
from mlxollama.engine.batch import PREFILL_STEP, Solo
from mlxollama.engine.sampling import restore_random_state


def stream(
    model,
    prepared: Prepared,
    *,
    prefill_step_size: int = PREFILL_STEP,
    cancelled: Callable[[], bool] | None = None,
    started_ns: int | None = None,
    load_ns: int = 0,
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
    """
    seq = prepared.sequence
    decoder = prepared.decoder(started_ns=started_ns, load_ns=load_ns)
    if seq.max_tokens <= 0:
        yield from decoder.end("length")
        return
    solo = Solo(model, seq, prepared.tokenizer.eos_token_ids, prefill_step_size)
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
        restore_random_state()  # the next generation on this thread must not inherit it
        raise
    finally:
        solo.close()
