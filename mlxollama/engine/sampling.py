"""Sampling: Ollama's options → an mlx-lm sampler and logits processors that cannot fail at
sampling time, and the `Guard` that keeps one sequence's failure out of its batch."""

from __future__ import annotations

import math
import os

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    categorical_sampling,
    greedy_sampler,
    make_logits_processors,
)

from mlxollama.api import SamplingOptions

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


class Guard:
    """Catches a failure of one sequence's sampler or logits processors, so that it ends
    that sequence and not the batch it shares: the first exception is kept in `error`, and
    from then on the sampler answers token 0 and the processors pass the logits through
    until the sequence is removed after this step."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def _failed(self, error: Exception) -> None:
        self.error = error
        restore_random_state()  # before the next sequence of this step samples from it

    def sampler(self, sampler):
        if sampler is greedy_sampler:  # cannot fail; shared, so greedy rows sample as one
            return sampler

        def guarded(logprobs):
            if self.error is None:
                try:
                    return sampler(logprobs)
                except Exception as e:
                    self._failed(e)
            return mx.zeros(logprobs.shape[:-1], dtype=mx.uint32)

        return guarded

    def processor(self, processor):
        def guarded(tokens, logits):
            if self.error is None:
                try:
                    return processor(tokens, logits)
                except Exception as e:
                    self._failed(e)
            return logits

        return guarded


def token_logprob(logprobs: mx.array, token: int, top: int):
    """A sampled token's log-probability and the `top` most likely tokens with theirs, from
    the normalized logits the sampler drew from (after the penalties and the grammar)."""
    logprobs = logprobs.reshape(-1)
    if top <= 0:
        return float(logprobs[token].item()), []
    ids = mx.argpartition(-logprobs, top - 1)[:top]
    values = logprobs[ids]
    order = mx.argsort(-values)
    ids, values = ids[order].tolist(), values[order].tolist()
    return float(logprobs[token].item()), list(zip(ids, values, strict=True))
