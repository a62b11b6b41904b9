"""Streaming generation in the calling thread, for the embedded SDK: one sequence
(`engine.batch.Solo`) decoded by the same `Decoder` the daemon's sessions use."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mlxollama.api import Chunk, SamplingOptions
from mlxollama.engine.batch import PREFILL_STEP, Solo, plan
from mlxollama.engine.decoder import Decoder
from mlxollama.engine.sampling import restore_random_state


def stream(
    model,
    tokenizer,
    prompt: list[int],
    options: SamplingOptions,
    num_ctx: int,
    *,
    num_keep: int = 4,
    prefill_step_size: int = PREFILL_STEP,
    cancelled: Callable[[], bool] | None = None,
    started_ns: int | None = None,
    load_ns: int = 0,
) -> Iterator[Chunk]:
    """Generate from token ids, yielding text chunks and a final chunk with metrics.

    Args:
        model: an mlx-lm model.
        tokenizer: its mlx-lm TokenizerWrapper.
        prompt: the prompt's token ids.
        options: sampling options (stop strings, num_predict, seed, ...).
        num_ctx: the context window (`engine.context.context_window`).
        num_keep: prompt tokens kept from the start when the prompt must be cut.
        prefill_step_size: prompt tokens per prefill step (Ollama's num_batch).
        cancelled: polled between tokens; when it returns True the stream ends early.
        started_ns: when the request began (`time.perf_counter_ns`), for total_duration.
            Default: now.
        load_ns: the model load this request waited for (load_duration).
    """
    seq = plan(prompt, options, num_ctx, num_keep)
    decoder = Decoder(
        tokenizer,
        options.stop,
        prompt_count=len(seq.prompt),
        started_ns=started_ns,
        load_ns=load_ns,
    )
    if seq.max_tokens <= 0:
        yield from decoder.end("length")
        return
    solo = Solo(model, seq, tokenizer.eos_token_ids, prefill_step_size)
    try:
        while not decoder.done:
            token, finish = solo.next()
            if token is None:
                yield from decoder.end("length")
                return
            yield from decoder.add(token, finish)
            if not decoder.done and cancelled is not None and cancelled():
                yield from decoder.end("stop")
    except Exception:
        restore_random_state()  # the next generation on this thread must not inherit it
        raise
    finally:
        solo.close()
