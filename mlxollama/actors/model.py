"""ModelActor: one per loaded model. It owns the MLX model and its `engine.batch.Batch` and
only schedules: one `Step` message runs one `Batch.step()` (a token for every active
session) and then re-sends itself, so `Submit`, `Withdraw` and `Unload` interleave between
steps (a cancel costs at most one step) and up to `num_parallel` requests share the model.
An embedding model answers each request at once, in sub-batches; a cancelled request stops
between two of them.

All MLX work happens on this actor's thread, from `on_start` on (MLX streams are
thread-local). A failing step is reported to the sessions it affected; nothing escapes a
`tell` (that would kill the actor). A sequence whose sampler or logits processors raise is
failed alone (the batch goes on); a failure that names no sequence fails the batch, which
rebuilds itself.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Any

import pykka
import structlog

from mlxollama import api
from mlxollama.actors import heap
from mlxollama.actors.messages import (
    Admission,
    Begin,
    Embedded,
    EmptyAnswer,
    Ended,
    Fail,
    LoadFailed,
    ModelDied,
    ModelLoaded,
    Release,
    Stats,
    Step,
    Submit,
    Token,
    Unload,
    Withdraw,
    tell,
)
from mlxollama.errors import Busy

log = structlog.get_logger("mlxollama.model")

# each running ModelActor's thread, by actor urn, for `wait_stopped`
THREADS: weakref.WeakValueDictionary[str, threading.Thread] = weakref.WeakValueDictionary()


def wait_stopped(ref: pykka.ActorRef, timeout: float) -> None:
    """Wait until model actor `ref` has freed its model. Pykka marks an actor dead before its
    `on_stop` runs, so `ref.stop(block=True)` returns at once for one that stopped itself on
    `Unload`, while its weights are still being freed (and its `model.unload` not logged)."""
    thread = THREADS.get(ref.actor_urn)
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


STEP = Step()


class ModelActor(pykka.ThreadingActor):
    """Args:
    name: the model's display name.
    load: `load(store, name, weights) -> LoadedModel` (models.load.load, or a fake in tests).
    store: the store to load from.
    governor: the GovernorActor's ref (told `ModelLoaded`, `LoadFailed`, `Release`,
        `ModelDied`).
    num_parallel: sequences generated at once.
    max_waiting: sessions that may wait for a slot; more get Busy.
    prompt_cache_bytes: the model's prompt cache cap (`engine.prompt_cache`); 0: none.
    prompt_cache_disk: the cap of its disk tier, under the store's `cache/prompts/`; 0: none.
    metrics: the daemon's `mlxollama.metrics.Metrics` (unload durations); None: not counted.
    weights: the form to hold the weights in (`engine.weights.Weights`), handed to `load`.
    warmup: `auto` (on a GPU), `on` or `off`: run every batch size once after the load,
        before the first request is admitted (`engine.warmup`).
    kv_cache_type: its sequences' KV cache type (`MLXOLLAMA_KV_CACHE_TYPE`).
    """

    def __init__(
        self,
        name,
        load,
        store,
        governor,
        num_parallel,
        max_waiting,
        prompt_cache_bytes=0,
        prompt_cache_disk=0,
        metrics=None,
        weights=None,
        warmup="auto",
        kv_cache_type="f16",
    ):
        super().__init__()
        self.metrics = metrics
        self.weights, self.warmup = weights, warmup
        self.kv_cache_type = kv_cache_type
        self.prompt_cache_bytes = prompt_cache_bytes
        self.prompt_cache_disk = prompt_cache_disk
        self.name, self._load, self.store, self.governor = name, load, store, governor
        self.num_parallel, self.max_waiting = num_parallel, max_waiting
        self.active: dict[int, Admission] = {}  # admission id -> admission
        self.waiting: deque[Admission] = deque()
        self.stepping = False
        self.lm = None
        self.batch = None

    # -- lifecycle ---------------------------------------------------------------------------

    def on_start(self) -> None:
        from mlxollama.engine.batch import Batch
        from mlxollama.engine.prompt_cache import DiskTier, PromptCache

        THREADS[self.actor_urn] = threading.current_thread()

        tic = time.perf_counter()
        try:
            self.lm = self._load(self.store, self.name, self.weights)
            if "completion" in self.lm.capabilities:
                eos = self.lm.tokenizer.eos_token_ids
                disk = None
                if self.prompt_cache_disk > 0:
                    folder = self.store.prompt_cache_dir(self.lm.digest)
                    disk = DiskTier(folder, self.prompt_cache_disk, kv_type=self.kv_cache_type)
                cache = PromptCache(self.prompt_cache_bytes, disk, self.kv_cache_type)
                step = api.prefill_step(api.merge_options(self.lm.parameters))  # per load
                self.batch = Batch(
                    self.lm.model, eos, self.num_parallel, cache, self.kv_cache_type, step
                )
                self._warm()
        except Exception as e:  # reported, not raised: the governor fails the waiting requests
            log.warning("model.load_failed", model=self.name, error=str(e))
            tell(self.governor, LoadFailed(self.name, e, self.actor_ref))
            self.actor_ref.tell(Unload())
            return
        heap.settle()  # a full collection would walk the model's objects: see actors/heap.py
        seconds = time.perf_counter() - tic
        log.info("model.load", model=self.name, seconds=round(seconds, 3))
        tell(self.governor, ModelLoaded(self.name, int(seconds * 1e9), self.actor_ref))

    def _warm(self) -> None:
        """Compile the kernels of every batch size now, so the first burst does not (the
        requests that arrive meanwhile wait in the mailbox, as during the load)."""
        from mlxollama.engine import describe
        from mlxollama.engine.warmup import needed, warm

        if self.warmup == "off" or (self.warmup == "auto" and not needed(describe()["backend"])):
            return
        try:
            seconds = warm(
                self.lm.model,
                self.lm.tokenizer.eos_token_ids,
                self.num_parallel,
                self.kv_cache_type,
            )
        except Exception as e:  # a warmup is an optimisation: the model serves without one
            log.warning("model.warmup_failed", model=self.name, error=str(e))
            return
        log.info("model.warmup", model=self.name, seconds=round(seconds, 3))

    def on_stop(self) -> None:
        for adm in [*self.active.values(), *self.waiting]:
            tell(adm.session, Fail(RuntimeError(f"model '{self.name}' was unloaded")))
            self._release()
        self.active.clear()
        self.waiting.clear()
        self._free()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("model.died", model=self.name, error=str(exception_value))
        error = RuntimeError(f"model '{self.name}' stopped: {exception_value}")
        for adm in [*self.active.values(), *self.waiting]:
            tell(adm.session, Fail(error))
        self.active.clear()
        self.waiting.clear()
        tell(self.governor, ModelDied(self.name, error, self.actor_ref))
        self._free()

    def _free(self) -> None:
        tic = time.perf_counter()
        if self.batch is not None:
            self.batch.close()
        self.batch = self.lm = None
        heap.release()
        try:
            import mlx.core as mx

            mx.clear_cache()
        except Exception:
            pass
        seconds = time.perf_counter() - tic
        if self.metrics is not None:
            self.metrics.unloaded(self.name, seconds)
        log.info("model.unload", model=self.name, seconds=round(seconds, 3))

    # -- messages ----------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case Step():
                self._step()
            case Submit(adm):
                self._submit(adm)
            case Withdraw(_, admission_id):
                self._cancel(admission_id)
            case Unload():
                self.stop()
            case Stats():
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
            busy = Busy("server busy, please try again.  maximum pending requests exceeded")
            tell(adm.session, Fail(busy))
            self._release()

    def _admit(self, adm: Admission) -> None:
        from mlxollama.engine.answer import prepare

        try:
            prepared = prepare(self.lm, adm.request, adm.num_ctx)
        except Exception as e:  # a bad template, option or schema: this request only
            tell(adm.session, Fail(e))
            self._release()
            return
        seq = prepared.sequence
        if seq.max_tokens <= 0:  # no room left: an empty answer
            tell(adm.session, Begin(prepared.decoder(adm.started_ns, adm.load_ns)))
            tell(adm.session, Ended("length"))
            self._release()
            return
        try:
            cached = self.batch.add(adm.id, seq)
        except Exception as e:  # this request only; the model keeps serving the others
            log.error("model.admit_failed", model=self.name, error=str(e), exc_info=True)
            tell(adm.session, Fail(RuntimeError(f"generation failed: {e}")))
            self._release()
            return
        tell(adm.session, Begin(prepared.decoder(adm.started_ns, adm.load_ns, cached)))
        self.active[adm.id] = adm
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
            tell(adm.session, Fail(e))
        else:
            result = api.Embeddings(vectors, prompt_eval_count=count, load_duration=adm.load_ns)
            tell(adm.session, Embedded(result))
        self._release()

    def _cancel(self, admission_id: int) -> None:
        for adm in list(self.waiting):
            if adm.id == admission_id:
                self.waiting.remove(adm)
                self._release()
                return
        adm = self.active.get(admission_id)
        if adm is None:
            return
        self.batch.remove(admission_id)
        self._leave(adm)

    def _leave(self, adm: Admission, admit: bool = True) -> None:
        self.active.pop(adm.id, None)
        self._release()
        if admit:
            self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self.waiting and len(self.active) < self.num_parallel:
            self._admit(self.waiting.popleft())

    def _release(self) -> None:
        cache = self.batch.prompt_cache if self.batch is not None else None
        held = cache.nbytes if cache is not None else 0
        tell(self.governor, Release(self.name, self.actor_ref, held))

    def _kick(self) -> None:
        if not self.stepping:
            self.stepping = True
            self.actor_ref.tell(STEP)

    def _step(self) -> None:
        self.stepping = False
        if not self.active:
            return
        try:
            step = self.batch.step()
        except Exception as e:  # no sequence to blame: fail them all, keep the actor alive
            self._batch_failed(e)
            return
        for adm_id, token, finish, logprob in step.tokens:
            adm = self.active.get(adm_id)
            if adm is None:
                continue
            message = Token(token, finish, logprob) if token is not None else Ended("length")
            tell(adm.session, message)
            if finish is not None:
                self._leave(adm)
        for adm_id, error in step.failed.items():
            adm = self.active.get(adm_id)
            if adm is not None:
                self._fail(adm, error)
        if step.failed:
            self._admit_waiting()
        if self.active:
            self._kick()

    def _fail(self, adm: Admission, error: Exception) -> None:
        """End one sequence with its error; the others go on."""
        log.error(
            "model.sequence_failed",
            model=self.name,
            request_id=adm.request.request_id,
            error=str(error),
            exc_info=error,
        )
        tell(adm.session, Fail(RuntimeError(f"generation failed: {error}")))
        self._leave(adm, admit=False)

    def _batch_failed(self, e: Exception) -> None:
        log.error("model.step_failed", model=self.name, error=str(e), exc_info=True)
        for adm in list(self.active.values()):
            tell(adm.session, Fail(RuntimeError(f"generation failed: {e}")))
            self._leave(adm, admit=False)
        self._admit_waiting()
        if self.active:
            self._kick()

    # -- empty requests ----------------------------------------------------------------------

    @staticmethod
    def answer_loaded(adm: Admission, reason: str) -> None:
        tell(adm.session, EmptyAnswer(reason, adm.load_ns))
