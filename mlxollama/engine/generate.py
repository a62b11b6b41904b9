"""Streaming generation: Ollama options → mlx-lm sampler and processors, incremental
detokenization, stop strings that never leak, done reasons and Ollama's timing metrics."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    categorical_sampling,
    greedy_sampler,
    make_logits_processors,
)

from mlxollama.api import Chunk, SamplingOptions

# Below this temperature sampling is greedy: 1 / temperature overflows float32 near 3e-39,
# and long before that the answer is the argmax anyway.
MIN_TEMPERATURE = 1e-6


def make_sampling(options: SamplingOptions, num_ctx: int):
    """Map Ollama's options onto a sampler and mlx-lm's logits processors.

    Nothing here can raise at sampling time, whatever the options (api.coerce_option has
    checked their types and ranges; a stored model's PARAMETERs may predate that): a
    temperature under MIN_TEMPERATURE is greedy; top_k <= 0 or >= the vocabulary is off, as
    in llama.cpp; top_p outside (0, 1) is off; min_p is clamped to [0, 1]; repeat_penalty
    <= 0 is off; `repeat_last_n` 0 turns the penalties' window off and -1 makes it the
    context length, as in Ollama. A `seed` gives the sampler its own random key, so a
    request's answer does not depend on what else runs in the same batch.
    """
    temp = options.temperature
    if not temp >= MIN_TEMPERATURE or not math.isfinite(temp):
        sampler = greedy_sampler
    else:
        top_p = options.top_p if 0.0 < options.top_p < 1.0 else 0.0
        min_p = min(max(options.min_p, 0.0), 1.0) if math.isfinite(options.min_p) else 0.0
        seed = options.seed if options.seed is not None and options.seed >= 0 else None
        sampler = _sampler(temp, top_p, min_p, options.top_k, seed)
    window = num_ctx if options.repeat_last_n < 0 else min(options.repeat_last_n, num_ctx)
    penalty = options.repeat_penalty
    processors = []
    if window > 0:
        processors = make_logits_processors(
            repetition_penalty=penalty if penalty > 0 and penalty != 1.0 else None,
            repetition_context_size=window,
            presence_penalty=options.presence_penalty or None,
            presence_context_size=window,
            frequency_penalty=options.frequency_penalty or None,
            frequency_context_size=window,
        )
    return sampler, processors


def _sampler(temp: float, top_p: float, min_p: float, top_k: int, seed: int | None):
    """mlx-lm's filter chain (top_p, min_p, top_k), then a categorical sample: from the
    request's own key when it has a seed, else from MLX's global random state."""
    filters = []
    if top_p:
        filters.append(lambda x: apply_top_p(x, top_p))
    if min_p:
        filters.append(lambda x: apply_min_p(x, min_p))
    if top_k > 0:
        # off unless it keeps fewer tokens than the vocabulary (mlx-lm raises otherwise)
        filters.append(lambda x: apply_top_k(x, top_k) if top_k < x.shape[-1] else x)
    key = None if seed is None else mx.random.key(seed % 2**64)

    def sampler(logprobs: mx.array) -> mx.array:
        nonlocal key
        for f in filters:
            logprobs = f(logprobs)
        if key is None:
            return categorical_sampling(logprobs, temp)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logprobs * (1 / temp), key=sub)

    return sampler


def restore_random_state() -> None:
    """Give MLX's global random state a fresh key.

    mlx-lm's filters and its categorical sampler are compiled with `mx.random.state` as
    input and output: when one raises mid-trace, the state is left holding a placeholder,
    and every later unseeded sample on this thread fails with "Attempting to eval an array
    without a primitive". Call this after any failed generation step.
    """
    mx.random.seed(int.from_bytes(os.urandom(8), "little"))


class StopMatcher:
    """Holds back text that may be the start of a stop string.

    `feed` returns the text that is safe to emit and whether a stop string was reached; text
    from the stop string on is dropped.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Budget:
    """How many tokens a request may generate, from num_predict and the context left."""

    max_tokens: int
    prompt_tokens: list[int]


def fit_context(prompt: list[int], num_ctx: int, num_predict: int, num_keep: int = 4) -> Budget:
    """Trim the prompt to the context window and size the generation.

    A prompt that does not fit keeps its first `num_keep` tokens and its end (Ollama's
    truncation); at least one token of room is left for the answer. Generation stops at the
    window's end (done reason `length`) unless num_predict ends it first.
    """
    if len(prompt) >= num_ctx:
        keep = max(0, min(num_keep, num_ctx // 2))
        tail = max(1, num_ctx - 1 - keep)  # never an empty prompt, even for num_ctx 1
        prompt = prompt[:keep] + prompt[len(prompt) - tail :]
    room = num_ctx - len(prompt)
    max_tokens = room if num_predict < 0 else min(num_predict, room)
    return Budget(max_tokens=max_tokens, prompt_tokens=prompt)


def stream(
    model,
    tokenizer,
    prompt: list[int],
    options: SamplingOptions,
    num_ctx: int,
    *,
    prefill_step_size: int = 512,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[Chunk]:
    """Generate from token ids, yielding text chunks and a final chunk with metrics.

    Args:
        model: an mlx-lm model.
        tokenizer: its mlx-lm TokenizerWrapper.
        prompt: the prompt's token ids.
        options: sampling options (stop strings, num_predict, seed, ...).
        num_ctx: the context window.
        prefill_step_size: prompt tokens per prefill step (Ollama's num_batch).
        cancelled: polled between tokens; when it returns True the stream ends early.
    """
    tic = time.perf_counter_ns()
    budget = fit_context(prompt, num_ctx, options.num_predict)
    final = Chunk(done=True, done_reason="length", prompt_eval_count=len(budget.prompt_tokens))
    if budget.max_tokens <= 0:
        final.total_duration = time.perf_counter_ns() - tic
        yield final
        return
    sampler, processors = make_sampling(options, num_ctx)
    detokenizer = copy.copy(tokenizer.detokenizer)
    detokenizer.reset()
    stops = StopMatcher(options.stop)
    eos = set(tokenizer.eos_token_ids)
    steps = generate_step(
        mx.array(budget.prompt_tokens),
        model,
        max_tokens=budget.max_tokens,
        sampler=sampler,
        logits_processors=processors,
        prefill_step_size=prefill_step_size,
    )
    first = None
    n = 0
    stopped = False  # a stop string ended the answer: nothing after it may be emitted
    try:
        for token, _ in steps:
            token = int(token)
            if first is None:
                first = time.perf_counter_ns()
                final.prompt_eval_duration = first - tic
            n += 1
            if token in eos:
                final.done_reason = "stop"
                break
            detokenizer.add_token(token)
            text, stopped = stops.feed(detokenizer.last_segment)
            if text:
                yield Chunk(text=text)
            if stopped or (cancelled is not None and cancelled()):
                final.done_reason = "stop"
                break
    except Exception:
        restore_random_state()  # the next generation on this thread must not inherit it
        raise
    finally:
        steps.close()
    if not stopped:
        detokenizer.finalize()
        text, stopped = stops.feed(detokenizer.last_segment)
        if stopped:
            final.done_reason = "stop"
        else:
            text += stops.flush()
        if text:
            yield Chunk(text=text)
    end = time.perf_counter_ns()
    final.eval_count = n
    final.eval_duration = end - (first or end)
    final.total_duration = end - tic
    yield final
