"""Generation on one model: a sequence alone, and the continuous batch.

`plan` turns a request's prompt and options into a `Sequence` (the prompt fitted to the
context, the budget, a guarded sampler and logits processors). `Solo` runs one sequence
through mlx-lm's single-sequence `generate_step`; `Batch` holds every sequence generating on
a model: one alone with a short prompt runs as a `Solo` (on an H200 mlx-lm's BatchGenerator
decoded one SmolLM2-sized sequence at 0.65 of `generate_step`'s speed), and when a second
arrives the solo one moves into the BatchGenerator with its KV cache. The ModelActor only
schedules: it admits, cancels and steps a `Batch` and tells the sessions what came out.

Hybrid models (recurrent layers beside attention: mlx-lm's `ArraysCache`, whose state cannot
be rewound) never run solo, because moving a solo sequence into the batch rewinds its cache
by one token; and since their finished caches cannot be trimmed back to a shorter prefix,
the batch keeps each prompt's state as it ends (mlx-lm's end-of-segment checkpoint, one
token before the prompt's last) for the prompt cache.

Everything here runs on the model's thread (MLX streams are thread-local).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import can_trim_prompt_cache

from mlxollama.api import SamplingOptions
from mlxollama.engine import sampling
from mlxollama.engine.context import fit_context
from mlxollama.engine.decoder import TokenLogprob
from mlxollama.engine.kv_quant import make_cache
from mlxollama.engine.prompt_cache import PromptCache, cached_tokens

# A sequence alone on its model, with a prompt no longer than one prefill step, runs solo.
SOLO_MAX_PROMPT = 512
PREFILL_STEP = 512

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]  # (tokens, logits) -> logits


@dataclass
class Sequence:
    """One request's generation, ready to run: what is fed and how it samples."""

    prompt: list[int]
    max_tokens: int
    sampler: Any
    processors: list[LogitsProcessor]
    guard: sampling.Guard
    logprobs: int | None = None  # None: not asked; else how many top alternatives


def plan(
    prompt: list[int],
    options: SamplingOptions,
    num_ctx: int,
    num_keep: int = 4,
    logits_processors: Iterable[LogitsProcessor] = (),
) -> Sequence:
    """Fit `prompt` into `num_ctx` and build its guarded sampler and processors.

    Args:
        logits_processors: the request's own, after the penalties (the slot for constrained
            decoding); guarded like the others.
    """
    budget = fit_context(prompt, num_ctx, options.num_predict, num_keep)
    sampler, processors = sampling.make_sampling(options, num_ctx)
    guard = sampling.Guard()
    return Sequence(
        prompt=budget.prompt_tokens,
        max_tokens=budget.max_tokens,
        sampler=guard.sampler(sampler),
        processors=[guard.processor(p) for p in [*processors, *logits_processors]],
        guard=guard,
    )


class Solo:
    """One sequence through `generate_step`, with a KV cache of its own.

    Args:
        eos: the end-of-generation token ids.
        prefill_step_size: prompt tokens per prefill step.
        cache: a KV cache already holding the first `cached` prompt tokens (from the
            prompt cache); only the rest is prefilled. Default: a fresh one.
        kv_type: the type of a fresh cache (`MLXOLLAMA_KV_CACHE_TYPE`: f16, q8_0, q4_0).
    """

    def __init__(
        self,
        model,
        seq: Sequence,
        eos: Iterable[int],
        prefill_step_size: int,
        cache: list[Any] | None = None,
        cached: int = 0,
        kv_type: str = "f16",
    ):
        self.seq = seq
        self.eos = frozenset(eos)
        self.cache = cache if cache is not None else make_cache(model, kv_type)
        self.cached = cached if cache is not None else 0
        self.generated: list[int] = []
        processors = seq.processors
        if cached and processors:  # they see the whole text, as without the cache
            prefix = mx.array(seq.prompt[:cached])
            processors = [_after(prefix, p) for p in processors]
        self.steps = generate_step(
            mx.array(seq.prompt[cached:]),
            model,
            max_tokens=seq.max_tokens,
            sampler=seq.sampler,
            logits_processors=processors,
            prompt_cache=self.cache,
            prefill_step_size=prefill_step_size,
        )

    def held(self) -> list[int] | None:
        """The tokens its KV cache holds now (None when the cache does not say)."""
        return cached_tokens(self.cache, self.seq.prompt + self.generated)

    def next(self) -> tuple[int | None, str | None, TokenLogprob | None]:
        """The next token, its finish reason ("stop" for an end token, "length" at
        `max_tokens`, else None) and its logprobs when the sequence asked for them;
        (None, "length", None) if `generate_step` ran out.

        Raises:
            what `generate_step` raised, or the error its sampler or a processor raised
            (the guard caught it).
        """
        try:
            token, logprobs = next(self.steps)
        except StopIteration:
            return None, "length", None
        if self.seq.guard.error is not None:
            raise self.seq.guard.error
        token = int(token)
        self.generated.append(token)
        lp = None
        if self.seq.logprobs is not None:
            lp = sampling.token_logprob(logprobs, token, self.seq.logprobs)
        if token in self.eos:
            return token, "stop", lp
        if len(self.generated) >= self.seq.max_tokens:
            return token, "length", lp
        return token, None, lp

    def close(self) -> None:
        self.steps.close()


def _after(prefix: mx.array, processor: LogitsProcessor) -> LogitsProcessor:
    """`processor` fed the cached prefix before the tokens `generate_step` gives it."""

    def processed(tokens: mx.array, logits: mx.array) -> mx.array:
        return processor(mx.concatenate([prefix, tokens.astype(prefix.dtype)]), logits)

    return processed


@dataclass
class Step:
    """What one `Batch.step` produced: `tokens` as (key, token or None, finish reason or
    None, logprobs or None), and the sequences whose sampler or processors failed (`failed`:
    key -> error), already removed. A sequence with a finish reason has left the batch."""

    tokens: list[tuple[int, int | None, str | None, TokenLogprob | None]] = field(
        default_factory=list
    )
    failed: dict[int, Exception] = field(default_factory=dict)


class Batch:
    """The sequences generating on one model, each under the caller's key.

    Args:
        model: an mlx-lm model.
        eos: its end-of-generation token ids.
        size: sequences generated at once.
        prompt_cache: where finished sequences leave their KV caches and new ones look for
            their prompt's prefix. Default: none (every prompt is prefilled whole).
        kv_type: every sequence's KV cache type (`MLXOLLAMA_KV_CACHE_TYPE`); a quantized
            one batches through `engine.kv_quant.BatchQuantizedKVCache`.
        prefill_step: prompt tokens per prefill step (`num_batch`), shared by every sequence
            of the batch, so it is fixed for the model's load.
    """

    def __init__(
        self,
        model,
        eos: Iterable[int],
        size: int,
        prompt_cache=None,
        kv_type: str = "f16",
        prefill_step: int = PREFILL_STEP,
    ):
        self.model = model
        self.kv_type = kv_type
        self.prefill_step = prefill_step
        self.eos = sorted(eos)
        self.size = size
        self.prompt_cache: PromptCache | None = prompt_cache
        self.gen = self._new_generator()
        self.solo: tuple[int, Solo] | None = None
        self.uids: dict[int, int] = {}  # BatchGenerator uid -> key
        self.keys: dict[int, int] = {}  # key -> BatchGenerator uid
        self.seqs: dict[int, Sequence] = {}
        # False for hybrid models: no solo, and a checkpoint at the end of every prompt
        self.trimmable = can_trim_prompt_cache(make_cache(model, kv_type))

    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in self.eos],
            completion_batch_size=self.size,
            prefill_batch_size=self.size,
            prefill_step_size=self.prefill_step,
        )

    def add(self, key: int, seq: Sequence) -> int:
        """Start generating `seq`; returns how many of its prompt tokens came from the prompt
        cache (they are not evaluated again). Raises what mlx-lm raises (nothing was added
        then)."""
        cache, cached = None, 0
        if self.prompt_cache is not None:
            cache, cached = self.prompt_cache.fetch(seq.prompt)
        if self.trimmable and not self.seqs and len(seq.prompt) - cached <= SOLO_MAX_PROMPT:
            solo = Solo(self.model, seq, self.eos, self.prefill_step, cache, cached, self.kv_type)
            self.solo = (key, solo)
        else:
            self._to_batch()  # a second sequence: the solo one joins the batch first
            self._insert(
                key,
                seq,
                [seq.prompt[cached:]],
                seq.max_tokens,
                cache=cache,
                seen=seq.prompt[:cached] if cache is not None else None,
            )
        self.seqs[key] = seq
        return cached

    def remove(self, key: int) -> None:
        """Stop generating `key`'s sequence (nothing happens for an unknown key); what its
        KV cache holds goes to the prompt cache."""
        if self.solo is not None and self.solo[0] == key:
            self._close_solo()
        elif key in self.keys:
            uid = self.keys[key]
            # a uid the batch has already let go is ignored
            kept = self.gen.remove([uid], return_prompt_caches=self.prompt_cache is not None)
            if kept and uid in kept:
                cache, tokens = kept[uid]
                self._keep(tokens, cache, len(self.seqs[key].prompt))
        self._forget(key)

    def _keep(self, tokens, cache, prompt: int) -> None:
        if self.prompt_cache is not None and tokens and cache:
            self.prompt_cache.store(list(tokens), cache, prompt)

    def _close_solo(self) -> None:
        """End the solo sequence; its KV cache goes to the prompt cache."""
        _, solo = self.solo
        self.solo = None
        solo.close()
        if self.prompt_cache is not None:
            held = solo.held()
            if held is not None:
                self._keep(held, solo.cache, len(solo.seq.prompt))

    def step(self) -> Step:
        """One token for every sequence.

        Raises:
            a failure that names no one sequence: every sequence has been dropped (and the
            BatchGenerator rebuilt), the caller fails them all.
        """
        if self.solo is not None:
            return self._solo_step()
        try:
            prefilled, responses = self.gen.next()
            if not self.trimmable:
                self._checkpoint(prefilled)
        except Exception:
            self.reset()
            raise
        out = Step()
        for key, seq in self.seqs.items():
            if seq.guard.error is not None:
                out.failed[key] = seq.guard.error
        for r in responses:
            key = self.uids.get(r.uid)
            if key is None or key in out.failed:
                continue
            seq = self.seqs[key]
            lp = None
            if seq.logprobs is not None:
                lp = sampling.token_logprob(r.logprobs, r.token, seq.logprobs)
            out.tokens.append((key, r.token, r.finish_reason, lp))
            if r.finish_reason is not None:
                self._keep(r.all_tokens, r.prompt_cache, len(self.seqs[key].prompt))
                self._forget(key)
        for key in out.failed:
            self.remove(key)
        return out

    def _checkpoint(self, prefilled) -> None:
        """Keep the state of each prompt whose prefill just ended (all but its last token),
        for a model whose caches cannot be trimmed back to a prefix later."""
        if self.prompt_cache is None:
            return
        ended = [r.uid for r in prefilled if r.end_of_segment and not r.end_of_prompt]
        for cache, tokens in self.gen.extract_cache(ended).values():
            self._keep(tokens, cache, len(tokens))

    def reset(self) -> None:
        """Drop every sequence; a new BatchGenerator replaces the old one."""
        sampling.restore_random_state()
        if self.solo is not None:
            self.solo[1].close()
            self.solo = None
        else:
            self.gen.close()
            self.gen = self._new_generator()
        self.uids.clear()
        self.keys.clear()
        self.seqs.clear()

    def close(self) -> None:
        if self.solo is not None:
            self.solo[1].close()
            self.solo = None
        self.gen.close()
        if self.prompt_cache is not None:
            self.prompt_cache.clear()

    def _solo_step(self) -> Step:
        key, solo = self.solo
        try:
            token, finish, lp = solo.next()
        except Exception as e:
            if solo.seq.guard.error is e:  # its own sampler or processor: this one only
                solo.close()
                self.solo = None
                self._forget(key)
                return Step(failed={key: e})
            self.reset()
            raise
        if finish is not None:
            self._close_solo()
            self._forget(key)
        return Step(tokens=[(key, token, finish, lp)])

    def _insert(self, key: int, seq: Sequence, prompt, max_tokens, cache=None, seen=None):
        (uid,) = self.gen.insert(
            prompt,
            max_tokens=[max_tokens],
            caches=[make_cache(self.model, self.kv_type) if cache is None else cache],
            all_tokens=None if seen is None else [seen],
            samplers=[seq.sampler],
            logits_processors=[seq.processors],
        )
        self.uids[uid] = key
        self.keys[key] = uid

    def _to_batch(self) -> None:
        """Move the solo sequence into the BatchGenerator, keeping its KV cache.

        `generate_step` has already fed the last token it yielded to the model, so the cache
        holds one token more than the text so far: trim it, and let the batch feed that token
        again as a one-token prompt.
        """
        if self.solo is None:
            return
        (key, solo), self.solo = self.solo, None
        solo.close()
        seq = solo.seq
        if not solo.generated:  # nothing ran yet: start in the batch, with its cached prefix
            cached = solo.cached
            cache = solo.cache if cached else None
            seen = seq.prompt[:cached] if cached else None
            self._insert(key, seq, [seq.prompt[cached:]], seq.max_tokens, cache=cache, seen=seen)
            return
        mx.eval([c.state for c in solo.cache])
        for c in solo.cache:
            c.trim(1)
        self._insert(
            key,
            seq,
            [solo.generated[-1:]],
            seq.max_tokens - len(solo.generated),
            cache=solo.cache,
            seen=seq.prompt + solo.generated[:-1],
        )

    def _forget(self, key: int) -> None:
        uid = self.keys.pop(key, None)
        if uid is not None:
            self.uids.pop(uid, None)
        self.seqs.pop(key, None)
