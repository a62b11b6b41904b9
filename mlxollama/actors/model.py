"""ModelActor: one per loaded model. It owns the MLX model and an mlx-lm BatchGenerator and
generates step by step: one `step` message runs one `BatchGenerator.next()` for every active
session and then re-sends itself, so `submit`, `cancel` and `unload` interleave between steps
(a cancel costs at most one step) and up to `num_parallel` requests share the model. An
embedding model answers each request at once, in sub-batches; a cancelled request stops
between two of them.

All MLX work happens on this actor's thread, from `on_start` on (MLX streams are
thread-local). A failing step is reported to the sessions it affected; nothing escapes a
`tell` (that would kill the actor). Each sequence's sampler and logits processors run
inside a `Guard`: one that raises marks only its own sequence failed (the batch goes on with
a harmless value for this step), and that sequence alone is removed and failed. A failure
that names no sequence fails the batch, and the generator is rebuilt. After any failure
MLX's global random state is given a fresh key (`restore_random_state`): a compiled mlx-lm
sampler that raised leaves it unusable for every later unseeded request.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from mlxollama import api
from mlxollama.actors.session import BEGIN, EMBEDDED, FAIL, LOADED, TOKEN, Admission, tell
from mlxollama.errors import Busy

log = structlog.get_logger("mlxollama.model")

STEP = ("step",)

# A request alone on its model, with a prompt no longer than one prefill step, runs through
# mlx-lm's single-sequence `generate_step` (plain KV cache): on an H200 the batch path decoded
# one SmolLM2-sized sequence at 0.65 of its speed. When a second request arrives, the solo
# sequence moves into the BatchGenerator with its cache.
SOLO_MAX_PROMPT = 512


class Guard:
    """Catches a failure of one sequence's sampler or logits processors, so that it ends
    that sequence and not the batch it shares: the first exception is kept in `error`, and
    from then on the sampler answers token 0 and the processors pass the logits through
    until the model actor removes the sequence after this step."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def _failed(self, error: Exception) -> None:
        from mlxollama.engine.generate import restore_random_state

        self.error = error
        restore_random_state()  # before the next sequence of this step samples from it

    def sampler(self, sampler):
        from mlx_lm.sample_utils import greedy_sampler

        if sampler is greedy_sampler:  # cannot fail; shared, so greedy rows sample as one
            return sampler

        def guarded(logprobs):
            if self.error is None:
                try:
                    return sampler(logprobs)
                except Exception as e:
                    self._failed(e)
            import mlx.core as mx

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


@dataclass
class Solo:
    adm: Admission
    steps: Any  # the generate_step generator
    cache: list
    prompt: list[int]
    max_tokens: int
    sampler: Any
    processors: list
    generated: list[int] = field(default_factory=list)


class ModelActor(pykka.ThreadingActor):
    """Args:
    name: the model's display name.
    load: `load(store, name) -> LoadedModel` (models.load.load, or a fake in tests).
    store: the store to load from.
    governor: the GovernorActor's ref (told `loaded`, `load_failed`, `release`, `died`).
    num_parallel: sequences generated at once.
    max_waiting: sessions that may wait for a slot; more get Busy.
    default_ctx: num_ctx when neither the request nor the model sets one.
    """

    def __init__(self, name, load, store, governor, num_parallel, max_waiting, default_ctx):
        super().__init__()
        self.name, self._load, self.store, self.governor = name, load, store, governor
        self.num_parallel, self.max_waiting, self.default_ctx = (
            num_parallel,
            max_waiting,
            default_ctx,
        )
        self.active: dict[int, Admission] = {}  # admission id -> admission
        self.guards: dict[int, Guard] = {}  # admission id -> its sequence's guard
        self.uids: dict[int, int] = {}  # BatchGenerator uid -> admission id
        self.waiting: deque[Admission] = deque()
        self.stepping = False
        self.lm = None
        self.gen = None
        self.solo: Solo | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def on_start(self) -> None:
        tic = time.perf_counter()
        try:
            self.lm = self._load(self.store, self.name)
            if "completion" in self.lm.capabilities:
                self.gen = self._new_generator()
        except Exception as e:  # reported, not raised: the governor fails the waiting requests
            log.warning("model.load_failed", model=self.name, error=str(e))
            self._to_governor("load_failed", e)
            self.actor_ref.tell(("unload",))
            return
        seconds = time.perf_counter() - tic
        log.info("model.load", model=self.name, seconds=round(seconds, 3))
        self._to_governor("loaded", int(seconds * 1e9))

    def _new_generator(self):
        from mlx_lm.generate import BatchGenerator

        eos = sorted(self.lm.tokenizer.eos_token_ids)
        return BatchGenerator(
            self.lm.model,
            stop_tokens=[[t] for t in eos],
            completion_batch_size=self.num_parallel,
            prefill_batch_size=self.num_parallel,
            prefill_step_size=512,
        )

    def on_stop(self) -> None:
        for adm in [*self.active.values(), *self.waiting]:
            tell(adm.session, (FAIL, RuntimeError(f"model '{self.name}' was unloaded")))
            self._to_governor("release")
        self.active.clear()
        self.waiting.clear()
        self._free()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("model.died", model=self.name, error=str(exception_value))
        error = RuntimeError(f"model '{self.name}' stopped: {exception_value}")
        for adm in [*self.active.values(), *self.waiting]:
            tell(adm.session, (FAIL, error))
        self.active.clear()
        self.waiting.clear()
        self._to_governor("died", error)
        self._free()

    def _free(self) -> None:
        self.solo = None
        if self.gen is not None:
            self.gen.close()
        self.gen = self.lm = None
        gc.collect()
        try:
            import mlx.core as mx

            mx.clear_cache()
        except Exception:
            pass
        log.info("model.unload", model=self.name)

    # -- messages ----------------------------------------------------------------------------

    def on_receive(self, message: tuple) -> Any:
        kind = message[0]
        if kind == "step":
            self._step()
        elif kind == "submit":
            self._submit(message[1])
        elif kind == "cancel":
            self._cancel(message[1])
        elif kind == "unload":
            self.stop()
        elif kind == "stats":
            return {"active": len(self.active), "waiting": len(self.waiting)}
        return None

    def _submit(self, adm: Admission) -> None:
        if adm.request.kind == "embed":
            self._embed(adm)
            return
        if len(self.active) < self.num_parallel:
            self._admit(adm)
        elif len(self.waiting) < self.max_waiting:
            self.waiting.append(adm)
        else:
            log.warning("queue.reject", model=self.name, request_id=adm.request.request_id)
            tell(
                adm.session,
                (FAIL, Busy("server busy, please try again.  maximum pending requests exceeded")),
            )
            self._to_governor("release")

    def _admit(self, adm: Admission) -> None:
        from mlxollama.engine.generate import fit_context, make_sampling
        from mlxollama.engine.prompt import chat_tokens, generate_tokens

        req, lm = adm.request, self.lm
        try:
            opts = api.merge_options(lm.parameters, req.options)
            num_ctx = min(api.context_size(opts, self.default_ctx), lm.context_length)
            sampling = api.SamplingOptions.from_options(opts)
            if req.kind == "chat":
                tokens = chat_tokens(lm, req.messages, template=req.template)
            else:
                tokens = generate_tokens(
                    lm, req.prompt, system=req.system, template=req.template, raw=req.raw
                )
            budget = fit_context(tokens, num_ctx, sampling.num_predict, opts["num_keep"])
            sampler, processors = make_sampling(sampling, num_ctx)
            guard = self.guards[adm.id] = Guard()
            sampler = guard.sampler(sampler)
            processors = [guard.processor(p) for p in processors]
        except Exception as e:  # a bad template or option: this request only
            tell(adm.session, (FAIL, e))
            self._to_governor("release")
            return
        tell(adm.session, (BEGIN, lm.tokenizer, sampling, len(budget.prompt_tokens), adm.load_ns))
        if budget.max_tokens <= 0:
            tell(adm.session, (LOADED, "length", adm.load_ns))  # no room left: an empty answer
            self.guards.pop(adm.id, None)
            self._to_governor("release")
            return
        try:
            if not self.active and len(budget.prompt_tokens) <= SOLO_MAX_PROMPT:
                self._start_solo(adm, budget.prompt_tokens, budget.max_tokens, sampler, processors)
            else:
                self._to_batch()  # a second request: the solo one joins the batch first
                self._insert(adm, [budget.prompt_tokens], budget.max_tokens, sampler, processors)
        except Exception as e:  # this request only; the model keeps serving the others
            log.error("model.admit_failed", model=self.name, error=str(e), exc_info=True)
            tell(adm.session, (FAIL, RuntimeError(f"generation failed: {e}")))
            self._leave(adm, admit=False)
            return
        self._kick()

    def _embed(self, adm: Admission) -> None:
        """Embed a request's inputs now (an encoder has no steps to interleave: requests
        queue in this actor's mailbox). The reply's `cancelled` event, set when the client
        goes away, is polled between sub-batches, so a cancelled request frees the model
        within one forward pass."""
        from mlxollama.engine.embed import Cancelled, embed_texts

        req = adm.request
        event = getattr(adm.session, "cancelled", None)
        try:
            vectors, count = embed_texts(
                self.lm,
                req.inputs,
                req.options,
                req.truncate,
                req.dimensions,
                req.normalize,
                cancelled=None if event is None else event.is_set,
            )
        except Cancelled:
            log.info("embed.cancelled", model=self.name, request_id=req.request_id)
        except Exception as e:  # bad input (too long, dimensions) or a failed batch: this one
            tell(adm.session, (FAIL, e))
        else:
            result = api.Embeddings(vectors, prompt_eval_count=count, load_duration=adm.load_ns)
            tell(adm.session, (EMBEDDED, result))
        self._to_governor("release")

    def _insert(self, adm, prompt, max_tokens, sampler, processors, cache=None, seen=None):
        (uid,) = self.gen.insert(
            prompt,
            max_tokens=[max_tokens],
            caches=None if cache is None else [cache],
            all_tokens=None if seen is None else [seen],
            samplers=[sampler],
            logits_processors=[processors],
        )
        self.active[adm.id] = adm
        self.uids[uid] = adm.id
        adm.uid = uid

    def _start_solo(self, adm, prompt, max_tokens, sampler, processors) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.lm.model)
        steps = generate_step(
            mx.array(prompt),
            self.lm.model,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors,
            prompt_cache=cache,
            prefill_step_size=SOLO_MAX_PROMPT,
        )
        self.solo = Solo(adm, steps, cache, list(prompt), max_tokens, sampler, processors)
        self.active[adm.id] = adm
        adm.uid = None

    def _to_batch(self) -> None:
        """Move the solo sequence into the BatchGenerator, keeping its KV cache.

        `generate_step` has already fed the last token it yielded to the model, so the cache
        holds one token more than the text so far: trim it, and let the batch feed that token
        again as a one-token prompt.
        """
        solo, self.solo = self.solo, None
        if solo is None:
            return
        solo.steps.close()
        remaining = solo.max_tokens - len(solo.generated)
        if not solo.generated:  # nothing ran yet: start over in the batch
            self._insert(solo.adm, [solo.prompt], solo.max_tokens, solo.sampler, solo.processors)
            return
        import mlx.core as mx

        mx.eval([c.state for c in solo.cache])
        for c in solo.cache:
            c.trim(1)
        seen = solo.prompt + solo.generated[:-1]
        self._insert(
            solo.adm,
            [solo.generated[-1:]],
            remaining,
            solo.sampler,
            solo.processors,
            cache=solo.cache,
            seen=seen,
        )

    def _cancel(self, admission_id: int) -> None:
        for adm in list(self.waiting):
            if adm.id == admission_id:
                self.waiting.remove(adm)
                self._to_governor("release")
                return
        adm = self.active.get(admission_id)
        if adm is None:
            return
        if self.solo is not None and self.solo.adm is adm:
            self.solo.steps.close()
            self.solo = None
        else:
            self.gen.remove([adm.uid])
        self._leave(adm)

    def _leave(self, adm: Admission, admit: bool = True) -> None:
        self.active.pop(adm.id, None)
        self.guards.pop(adm.id, None)
        if adm.uid is not None:
            self.uids.pop(adm.uid, None)
        self._to_governor("release")
        if admit:
            self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self.waiting and len(self.active) < self.num_parallel:
            self._admit(self.waiting.popleft())

    def _to_governor(self, kind: str, *args) -> None:
        """Tell the governor, naming this actor: a newer load of the same model has another."""
        tell(self.governor, (kind, self.name, *args, self.actor_ref))

    def _kick(self) -> None:
        if not self.stepping:
            self.stepping = True
            self.actor_ref.tell(STEP)

    def _step(self) -> None:
        self.stepping = False
        if not self.active:
            return
        if self.solo is not None:
            self._solo_step()
            return
        try:
            _, responses = self.gen.next()
        except Exception as e:  # no sequence to blame: fail the batch, keep the actor alive
            self._batch_failed(e)
            return
        failed = self._failed_sequences()
        for r in responses:
            adm_id = self.uids.get(r.uid)
            if adm_id is None or adm_id in failed:
                continue
            adm = self.active[adm_id]
            tell(adm.session, (TOKEN, r.token, r.finish_reason))
            if r.finish_reason is not None:
                self._leave(adm)
        for adm_id, error in failed.items():
            adm = self.active[adm_id]
            self.gen.remove([adm.uid])  # a uid the batch has already let go is ignored
            self._fail(adm, error)
        if failed:
            self._admit_waiting()
        if self.active:
            self._kick()

    def _failed_sequences(self) -> dict[int, Exception]:
        """The active sequences whose guard caught a failure in this step."""
        return {
            adm_id: guard.error
            for adm_id, guard in self.guards.items()
            if guard.error is not None and adm_id in self.active
        }

    def _fail(self, adm: Admission, error: Exception) -> None:
        """End one sequence with its error; the others go on."""
        log.error(
            "model.sequence_failed",
            model=self.name,
            request_id=adm.request.request_id,
            error=str(error),
            exc_info=error,
        )
        tell(adm.session, (FAIL, RuntimeError(f"generation failed: {error}")))
        self._leave(adm, admit=False)

    def _batch_failed(self, e: Exception) -> None:
        from mlxollama.engine.generate import restore_random_state

        log.error("model.step_failed", model=self.name, error=str(e), exc_info=True)
        failed = list(self.active.values())
        self.gen.close()
        restore_random_state()
        self.gen = self._new_generator()  # before anyone waiting is admitted to it
        for adm in failed:
            tell(adm.session, (FAIL, RuntimeError(f"generation failed: {e}")))
            self._leave(adm, admit=False)
        self._admit_waiting()
        if self.active:
            self._kick()

    def _solo_step(self) -> None:
        solo = self.solo
        try:
            token, _ = next(solo.steps)
        except StopIteration:
            token = None
        except Exception as e:  # report it, keep serving (like a failed batch step)
            from mlxollama.engine.generate import restore_random_state

            log.error("model.step_failed", model=self.name, error=str(e), exc_info=True)
            restore_random_state()
            self.solo = None
            tell(solo.adm.session, (FAIL, RuntimeError(f"generation failed: {e}")))
            self._leave(solo.adm)
            return
        error = self.guards[solo.adm.id].error if solo.adm.id in self.guards else None
        if error is not None:  # its sampler or a processor raised (the guard caught it)
            solo.steps.close()
            self.solo = None
            self._fail(solo.adm, error)
            self._admit_waiting()
            return
        if token is None:  # generate_step ran out (max_tokens): already reported
            self.solo = None
            self._leave(solo.adm)
            return
        token = int(token)
        solo.generated.append(token)
        finish = None
        if token in self.lm.tokenizer.eos_token_ids:
            finish = "stop"
        elif len(solo.generated) >= solo.max_tokens:
            finish = "length"
        tell(solo.adm.session, (TOKEN, token, finish))
        if finish is not None:
            solo.steps.close()
            self.solo = None
            self._leave(solo.adm)
        if self.active:
            self._kick()

    # -- empty requests ----------------------------------------------------------------------

    @staticmethod
    def answer_loaded(adm: Admission, reason: str) -> None:
        tell(adm.session, (LOADED, reason, adm.load_ns))
