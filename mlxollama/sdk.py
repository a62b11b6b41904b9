"""The Python API: the same calls as Ollama's Python client, answered in-process.

`Embedded` runs the store and MLX inside the calling process: no daemon, no HTTP, and none of
Falcon, waitress or the actors is imported (tests/test_layering.py checks it), so an app can
embed inference without the server. Answers have Ollama's shapes (`api`'s types, as plain
dicts), and the calls are `client.Client`'s: both implement `interface.ModelClient`.

    from mlxollama.sdk import Embedded
    client = Embedded()
    for part in client.chat("smollm2", [{"role": "user", "content": "Hi"}], stream=True):
        print(part["message"]["content"], end="", flush=True)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from mlxollama import api
from mlxollama.config import Config
from mlxollama.errors import MlxOllamaError
from mlxollama.models import catalog
from mlxollama.models.create import create as build_create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.store.names import parse_name
from mlxollama.store.store import Problem, Store


class Embedded:
    """Ollama's client calls on a store path, with inference in this process.

    Args:
        models: the store root. Default: ``MLXOLLAMA_MODELS`` or ``~/.mlxollama``.
    """

    def __init__(self, models: str | Path | None = None):
        self.config = Config.from_env()
        self.store = Store(models if models is not None else self.config.models)
        self._loaded: dict[str, Any] = {}  # name -> LoadedModel (one at a time)
        self._prompt_cache = None  # the loaded model's (engine.prompt_cache.PromptCache)

    # -- the store -------------------------------------------------------------------------

    def list(self) -> dict[str, Any]:
        entries = [catalog.list_entry(self.store, m) for m in self.store.list()]
        return api.ListResponse(entries).to_json()

    def show(self, model: str, verbose: bool = False) -> dict[str, Any]:
        return catalog.show(self.store, self.store.get(model), verbose=verbose).to_json()

    def create(
        self,
        model: str,
        from_: str | None = None,
        *,
        spec: BuildSpec | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        messages: list[dict[str, str]] | None = None,
        license: str | list[str] | None = None,
        quantize: str | None = None,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any]:
        """Build a model from a BuildSpec, or from Ollama's `create` fields.

        `from_` is a model name, a GGUF file or a safetensors folder.
        """
        if spec is None:
            if from_ is None:
                raise ValueError("create needs `from_` (a model, GGUF file or folder) or `spec`")
            spec = BuildSpec(
                source=str(from_),
                parameters=api.parse_options(parameters),
                template=template,
                system=system,
                messages=messages,
                license=[license] if isinstance(license, str) else list(license or []),
                quantize=quantize,
            )
        build_create(self.store, model, spec, progress)
        self._loaded.pop(model, None)
        return api.SUCCESS.to_json()

    def copy(self, source: str, destination: str) -> dict[str, Any]:
        self.store.copy(source, destination)
        return api.SUCCESS.to_json()

    def delete(self, model: str) -> dict[str, Any]:
        removed = self.store.remove(model)
        self._loaded.pop(removed.name.display(), None)
        return api.SUCCESS.to_json()

    def pull(
        self,
        model: str,
        insecure: bool = False,
        stream: bool = False,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Ollama's `pull`, in this process: fetch `model` from its registry (an OCI
        registry, an Ollama-style one, or `hf.co/ORG/REPO[:REVISION]`) into the store.

        `insecure` allows plain HTTP to the registry; the credentials are
        `MLXOLLAMA_REGISTRY_USERNAME` / `_PASSWORD` / `_TOKEN` (this object's `config`). The transfer runs on a
        thread of its own. With `stream`, an iterator of Ollama's progress objects, whose
        errors it raises (closing it early leaves the pull running to its end); otherwise
        waits, hands each object to `progress` on the calling thread, and returns the last,
        `{"status": "success"}`. Interrupting the wait (Ctrl-C) stops the transfer; what was
        downloaded is kept and a later pull resumes it.

        Raises:
            InvalidName: at once.
            RegistryError (RemoteNotFound, Unauthorized, RegistryUnreachable),
                DigestMismatch, UnsupportedModel: the transfer failed; nothing is tagged.
        """
        from mlxollama import registry

        parse_name(model)

        def run(say: api.OnProgress) -> None:
            stored = registry.pull(
                self.store,
                model,
                insecure=insecure,
                credentials=registry.Credentials.from_config(self.config),
                progress=say,
                hf_endpoint=self.config.hf_endpoint,
            )
            self._loaded.pop(stored.name.display(), None)

        return _transfer(_Background(run, f"pull {model}"), stream, progress)

    def push(
        self,
        model: str,
        insecure: bool = False,
        stream: bool = False,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Ollama's `push`, in this process: send the stored `model` to the registry its
        name points at (`host[:port]/namespace/model:tag`); arguments and answers as for
        `pull`.

        Raises:
            InvalidName, ModelNotFound: at once.
            RegistryError: the transfer failed.
        """
        from mlxollama import registry

        self.store.get(model)

        def run(say: api.OnProgress) -> None:
            creds = registry.Credentials.from_config(self.config)
            registry.push(self.store, model, insecure=insecure, credentials=creds, progress=say)

        return _transfer(_Background(run, f"push {model}"), stream, progress)

    def verify(self, model: str) -> list[Problem]:
        return self.store.verify(model)

    def gc(self) -> tuple[int, int]:
        return self.store.gc()

    # -- inference -------------------------------------------------------------------------

    def _load(self, model: str, kind: str):
        """The loaded model and the nanoseconds its load took (0 when it was loaded).

        Raises:
            UnsupportedModel: the model cannot do `kind` (chat on an embedding model, ...).
        """
        from mlxollama.models.load import load

        stored = self.store.get(model)
        name = stored.name.display()
        capabilities = self.store.config(stored).get("capabilities", ["completion"])
        api.InferenceRequest(model=name, kind=kind).require(name, capabilities)
        lm = self._loaded.get(name)
        if lm is not None and lm.digest == stored.digest:
            return lm, 0
        self._loaded.clear()  # one model at a time in-process: free the old one first
        self._prompt_cache = None
        lm = load(self.store, name)
        self._loaded[name] = lm
        if kind != "embed":
            from mlxollama.engine.prompt_cache import DiskTier, PromptCache

            kv_type = self.config.kv_cache_type
            disk = None
            if self.config.prompt_cache_disk > 0:
                folder = self.store.prompt_cache_dir(lm.digest)
                disk = DiskTier(folder, self.config.prompt_cache_disk, kv_type=kv_type)
            self._prompt_cache = PromptCache(self.config.prompt_cache, disk, kv_type)
        return lm, int(lm.load_duration * 1e9)

    def _run(self, lm, request: api.InferenceRequest, load_ns: int):
        """The chunks of one answer, generated as the daemon's model actor would (the same
        context window, rendering, constraint, sampling and decoder); total_duration counts
        the load too."""
        from mlxollama.engine.answer import prepare
        from mlxollama.engine.context import context_window
        from mlxollama.engine.generate import stream

        opts = api.merge_options(lm.parameters, request.options)
        num_ctx = context_window(opts, self.config.context_length, lm.context_length)
        prepared = prepare(lm, request, num_ctx)
        started = time.perf_counter_ns() - load_ns
        yield from stream(
            lm.model,
            prepared,
            started_ns=started,
            load_ns=load_ns,
            prompt_cache=self._prompt_cache,
            kv_type=self.config.kv_cache_type,
            prefill_step_size=api.prefill_step(opts),  # one sequence at a time: per request
        )

    def _answer(self, request: api.InferenceRequest, kind: str, stream: bool, render):
        """Validate `request` as the daemon does (before the model loads), then run it."""
        from mlxollama.engine.features import check, validate
        from mlxollama.models.catalog import capabilities

        validate(request)
        stored = self.store.get(request.model)
        if request.kind != "embed":
            check(request, str(stored.name), capabilities(self.store, stored))
        lm, load_ns = self._load(request.model, kind)
        request.model = lm.name
        if request.empty:
            chunks = iter([api.Chunk(done=True, done_reason="load", load_duration=load_ns)])
        else:
            chunks = self._run(lm, request, load_ns)
        parts = (render(lm.name, c) for c in chunks)
        if stream:
            return (p.to_json() for p in parts)
        chunk = api.join_chunks(chunks)
        return render(lm.name, chunk).to_json()

    def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        suffix: str = "",
        system: str | None = None,
        template: str | None = None,
        raw: bool = False,
        options: dict[str, Any] | None = None,
        format: str | dict | None = None,
        think: bool | str | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        keep_alive: float | str | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Ollama's `generate`: a completion of `prompt` (an empty prompt just loads).

        The fields mean what they mean on the daemon's `/api/generate`. `keep_alive` is
        checked as the daemon checks it and otherwise has no effect here: the process keeps
        one model loaded until another one is asked for.
        """
        request = api.InferenceRequest(
            model=model,
            kind="generate",
            prompt=prompt,
            suffix=suffix,
            system=system,
            template=template,
            raw=raw,
            options=api.parse_options(options),
            keep_alive=api.parse_keep_alive(keep_alive),
            format=_schema(format),
            think=think,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        return self._answer(request, "generate", stream, _generate_response)

    def chat(
        self,
        model: str,
        messages: list[dict[str, Any]] | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
        format: str | dict | None = None,
        think: bool | str | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        keep_alive: float | str | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Ollama's `chat`: the assistant's next message (no messages just loads); the
        fields as on the daemon's `/api/chat`, `keep_alive` as for `generate`."""
        request = api.InferenceRequest(
            model=model,
            kind="chat",
            messages=[api.Message.from_dict(m) for m in messages or []],
            tools=list(tools or []),
            options=api.parse_options(options),
            keep_alive=api.parse_keep_alive(keep_alive),
            format=_schema(format),
            think=think,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        return self._answer(request, "chat", stream, _chat_response)

    def embed(
        self,
        model: str,
        input: str | list[str] = "",
        *,
        truncate: bool = True,
        dimensions: int | None = None,
        options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> dict[str, Any]:
        """Ollama's `embed`: one L2-normalized vector per input, computed as one batch (no
        input just loads the model); `keep_alive` as for `generate`."""
        from mlxollama.engine.embed import embed_texts

        # a bare "" is no input (Ollama's load request); [""] embeds the empty string
        inputs = ([input] if input else []) if isinstance(input, str) else list(input)
        api.parse_keep_alive(keep_alive)
        opts = api.parse_options(options)
        tic = time.perf_counter_ns()
        lm, load_ns = self._load(model, "embed")
        vectors, count = [], 0
        if inputs:
            array, count = embed_texts(lm, inputs, opts, truncate, dimensions)
            # through orjson: float32 values as their shortest decimals, as the daemon sends
            vectors = orjson.loads(orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY))
        return api.EmbedResponse(
            model=lm.name,
            embeddings=vectors,
            total_duration=time.perf_counter_ns() - tic,
            load_duration=load_ns,
            prompt_eval_count=count,
        ).to_json()


def _schema(format: str | dict | None) -> dict | None:
    from mlxollama.engine.grammar import schema_of

    return schema_of(format)


def _generate_response(model: str, chunk: api.Chunk) -> api.GenerateResponse:
    return api.GenerateResponse.from_chunk(model, chunk)


def _chat_response(model: str, chunk: api.Chunk) -> api.ChatResponse:
    return api.ChatResponse.from_chunk(model, chunk)


class _Stopped(MlxOllamaError):
    """The transfer was interrupted in this process (Ctrl-C)."""


class _Background:
    """A transfer on a thread of its own; iterating yields its progress objects on the
    caller's thread (the registry reports from several worker threads) and raises its error.

    The thread is not a daemon thread: a transfer whose reader went away still ends, and
    the process waits for it, unless `cancel()` was called (the next progress object then
    stops it).
    """

    _END = object()

    def __init__(self, run: Callable[[api.OnProgress], None], what: str):
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._what = what
        self._run = run
        threading.Thread(target=self._main, name=what, daemon=False).start()

    def _say(self, event: dict[str, Any]) -> None:
        if self._cancelled.is_set():
            raise _Stopped(f"{self._what}: stopped")
        self._queue.put(event)

    def _main(self) -> None:
        try:
            self._run(self._say)
        except BaseException as exc:
            self._queue.put(exc)
        else:
            self._queue.put(self._END)

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                item = self._queue.get(timeout=0.5)  # a timeout lets Ctrl-C through
            except queue.Empty:
                continue
            except BaseException:
                self.cancel()
                raise
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _transfer(job: _Background, stream: bool, progress) -> dict[str, Any] | Iterator[dict]:
    if stream:
        return iter(job)
    last: dict[str, Any] = api.SUCCESS.to_json()
    try:
        for last in job:
            if progress is not None:
                progress(last)
    except BaseException:
        job.cancel()  # Ctrl-C, or a progress callback that failed: stop the transfer
        raise
    return last
