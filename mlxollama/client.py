"""The HTTP client: `sdk.Embedded`'s calls, answered by a running daemon.

`Client` speaks Ollama's native API (`/api/*`) with httpx and returns the same plain dicts as
`Embedded` (`api`'s types, as JSON): both implement `interface.ModelClient`, so code (the CLI
among it) can take either. Its settings (address, API key) come from `Config.from_env()`. It adds what only a daemon has:
`ps`, `version`, `heartbeat`, `load` and `unload`. `verify` and `gc` stay embedded-only
(the daemon has no API for them).

    from mlxollama.client import Client
    client = Client()  # MLXOLLAMA_HOST, default 127.0.0.1:11435
    for part in client.chat("smollm2", [{"role": "user", "content": "Hi"}], stream=True):
        print(part["message"]["content"], end="", flush=True)

Errors: a 404 raises `ModelNotFound`, a 503 `Busy`, anything else `ResponseError`; all three
carry the server's message and `status_code`. `pull` and `push` add the registry's errors
(`mlxollama.errors`): an unknown remote model raises `RemoteNotFound` (also a
`ModelNotFound`), a 401 `Unauthorized` and a 502 `RegistryError`. A `{"error": ...}` line in
a stream raises the same way, as far as its message tells (a stream has no status). No
answer at all raises `DaemonUnreachable`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from mlxollama import api
from mlxollama.config import Config, parse_host
from mlxollama.errors import (
    Busy,
    MlxOllamaError,
    ModelNotFound,
    RegistryError,
    RemoteNotFound,
    Unauthorized,
)
from mlxollama.recipes.buildspec import MODEL_FILES, BuildSpec

CHUNK_SIZE = 1 << 20  # bytes per read when hashing and uploading blobs

# The files of a safetensors folder that `create` sends: weights, every JSON file (config,
# index, tokenizer), and the other tokenizer files the build reads.
# what a model folder sends to the daemon (sentence-transformers keeps its pooling settings in
# a sub-folder such as 1_Pooling/)
FOLDER_PATTERNS = ("*.safetensors", "*.json", "*_Pooling/config.json", *MODEL_FILES)

_JSON = {"Content-Type": "application/json"}


class ResponseError(MlxOllamaError):
    """The daemon answered with an error: its message, and the HTTP status."""

    def __init__(self, message: str, status_code: int):
        MlxOllamaError.__init__(self, message)
        self.error = message
        self.status_code = status_code


class NotFound(ResponseError, ModelNotFound):
    """404: the model (or blob) is not there."""

    def __init__(self, message: str, status_code: int = 404, name: str = ""):
        ResponseError.__init__(self, message, status_code)
        self.name = name


class ServerBusy(ResponseError, Busy):
    """503: the daemon's queue is full; retry later."""


class RemoteNotFoundError(NotFound, RemoteNotFound):
    """404 from a pull: the registry has no such model."""


class UnauthorizedError(ResponseError, Unauthorized):
    """401: the registry refused the daemon's credentials (MLXOLLAMA_REGISTRY_*)."""


class RegistryFailed(ResponseError, RegistryError):
    """502: the daemon could not reach the registry, or the registry failed."""


class DaemonUnreachable(MlxOllamaError, ConnectionError):
    """Nothing answered at the daemon's address."""


def base_url(host: str | None = None) -> str:
    """The daemon's URL from `host` or `MLXOLLAMA_HOST` (`config.parse_host`: Ollama's
    forms; the host defaults to 127.0.0.1 and the port to 11435, or 80/443 with a scheme).

    Raises:
        ValueError: an address `config.parse_host` cannot read.
    """
    return parse_host(host if host is not None else Config.client_env()[0]).url


class Client:
    """Ollama's client calls against a running daemon.

    Args:
        host: the daemon's address (see `base_url`). Default: ``MLXOLLAMA_HOST``, else
            ``127.0.0.1:11435``.
        timeout: seconds to wait for an answer (httpx's timeout). Default: no limit once
            connected (model loads and long answers take time); 10 s to connect.

    Sends ``MLXOLLAMA_API_KEY`` (the daemon's key, if it has one) as a Bearer token when it
    is set. Both come from `Config.client_env()`.
    """

    def __init__(self, host: str | None = None, timeout: float | None = None):
        env_host, key = Config.client_env()
        self.host = base_url(host if host is not None else env_host)
        limit = httpx.Timeout(timeout) if timeout is not None else httpx.Timeout(None, connect=10)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        self._http = httpx.Client(base_url=self.host, timeout=limit, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the daemon --------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """True when a daemon answers `HEAD /`."""
        try:
            return self._http.head("/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def version(self) -> dict[str, Any]:
        return self._call("GET", "/api/version")

    def ps(self) -> dict[str, Any]:
        """The loaded models (`/api/ps`)."""
        return self._call("GET", "/api/ps")

    def load(self, model: str, keep_alive: float | str | None = None) -> dict[str, Any]:
        """Load a model now (an empty generate); `keep_alive` as in Ollama."""
        return self.generate(model, keep_alive=keep_alive)

    def unload(self, model: str) -> dict[str, Any]:
        """Unload a model now, or once its running requests end (`POST /api/stop`, what
        `mlxctl stop` uses): `{"model", "status": "unloaded"|"stopping", "running"}`.

        Raises:
            ModelNotFound: no such model, or it is not loaded.
        """
        return self._call("POST", "/api/stop", {"model": model}, model=model)

    def cancel(self, request_id: str) -> None:
        """Cancel a running generation by its `X-Request-Id` (`DELETE /api/requests/{id}`);
        its stream ends with `done_reason` "cancel".

        Raises:
            MlxOllamaError: 404, no such request is running.
        """
        self._call("DELETE", f"/api/requests/{quote(request_id, safe='')}")

    # -- the store ---------------------------------------------------------------------------

    def list(self) -> dict[str, Any]:
        return self._call("GET", "/api/tags")

    def show(self, model: str, verbose: bool = False) -> dict[str, Any]:
        body = api.ShowRequest(model, verbose=verbose or None).to_json()
        return self._call("POST", "/api/show", body, model=model)

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
        """Build a model on the daemon from a BuildSpec, or from Ollama's `create` fields.

        `from_` (or `spec.source`) is a model name, a GGUF file or a safetensors folder. Local
        files are hashed, and the ones the daemon lacks are uploaded (streamed from disk)
        before `/api/create` names them by digest. Progress objects (uploads, then the
        daemon's) go to `progress` as they arrive. Returns the last one, `{"status":
        "success"}`.
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
        body = self._create_body(model, spec, progress or (lambda _: None))
        last: dict[str, Any] = {}
        for last in self._stream("POST", "/api/create", body, model=spec.source):
            if progress:
                progress(last)
        return last

    def pull(
        self,
        model: str,
        insecure: bool = False,
        stream: bool = False,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Ollama's `pull`: fetch `model` from its registry into the daemon's store.

        `insecure` allows plain HTTP to the registry. With `stream`, an iterator of the
        progress objects (closing it early leaves the pull running on the daemon); otherwise
        waits, hands each object to `progress` as it arrives, and returns the last one,
        `{"status": "success"}`. The daemon uses its own registry credentials.
        """
        return self._transfer("/api/pull", model, insecure, stream, progress)

    def push(
        self,
        model: str,
        insecure: bool = False,
        stream: bool = False,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Ollama's `push`: send the daemon's `model` to the registry its name points at
        (`host[:port]/namespace/model:tag`); arguments and answers as for `pull`."""
        return self._transfer("/api/push", model, insecure, stream, progress)

    def copy(self, source: str, destination: str) -> dict[str, Any]:
        body = {"source": source, "destination": destination}
        self._call("POST", "/api/copy", body, model=source)
        return api.SUCCESS.to_json()

    def delete(self, model: str) -> dict[str, Any]:
        self._call("DELETE", "/api/delete", {"model": model}, model=model)
        return api.SUCCESS.to_json()

    # -- inference ---------------------------------------------------------------------------

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
        """Ollama's `generate`: a completion of `prompt` (an empty prompt just loads)."""
        body = api.GenerateRequest(
            model,
            prompt,
            suffix=suffix or None,
            system=system,
            template=template,
            raw=raw or None,
            format=format,
            options=options,
            think=think,
            logprobs=logprobs or None,
            top_logprobs=top_logprobs or None,
            keep_alive=keep_alive,
        ).to_json()
        return self._infer("/api/generate", body, stream, empty=not prompt)

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
        """Ollama's `chat`: the assistant's next message (no messages just loads)."""
        body = api.ChatRequest(
            model,
            messages or [],
            tools=tools or None,
            format=format,
            options=options,
            think=think,
            logprobs=logprobs or None,
            top_logprobs=top_logprobs or None,
            keep_alive=keep_alive,
        ).to_json()
        return self._infer("/api/chat", body, stream, empty=not messages)

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
        """Ollama's `embed`: one L2-normalized vector per input (no input just loads)."""
        body = api.EmbedRequest(
            model,
            input,
            truncate=None if truncate else False,
            dimensions=dimensions,
            options=options,
            keep_alive=keep_alive,
        ).to_json()
        return self._call("POST", "/api/embed", body, model=model)

    # -- plumbing ----------------------------------------------------------------------------

    def _transfer(
        self, path: str, model: str, insecure: bool, stream: bool, progress: api.OnProgress | None
    ):
        body = {"model": model, "insecure": insecure}
        if stream:
            return self._stream("POST", path, body, model=model)
        if progress is None:
            return self._call("POST", path, {**body, "stream": False}, model=model)
        last: dict[str, Any] = {}
        with self._stream("POST", path, body, model=model) as lines:
            for last in lines:
                progress(last)
        return last

    def _infer(self, path: str, body: dict, stream: bool, empty: bool):
        if stream and not empty:
            return self._stream("POST", path, body, model=body["model"])
        # An empty request (load/unload) is answered with one object whatever `stream` says.
        answer = self._call("POST", path, {**body, "stream": False}, model=body["model"])
        return iter([answer]) if stream else answer

    def _call(self, method: str, path: str, body: dict | None = None, model: str = "") -> Any:
        r = self._send(self._http.build_request(method, path, content=_json(body), headers=_JSON))
        if r.status_code >= 400:
            raise _error(r.status_code, _message(r.content, r.reason_phrase), model)
        return orjson.loads(r.content) if r.content.strip() else {}

    def _stream(self, method: str, path: str, body: dict, model: str = "") -> _Lines:
        """Send the request now (so errors before the first byte raise here) and return an
        iterator over the NDJSON objects; closing it closes the connection, which the
        daemon takes as a cancel."""
        content = _json({**body, "stream": True})
        request = self._http.build_request(method, path, content=content, headers=_JSON)
        r = self._send(request, stream=True)
        if r.status_code >= 400:
            try:
                content = r.read()
            finally:
                r.close()
            raise _error(r.status_code, _message(content, r.reason_phrase), model)
        return _Lines(r, model)

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            return self._http.send(request, stream=stream)
        except httpx.TimeoutException as e:
            raise DaemonUnreachable(
                f"the mlxctl daemon at {self.host} did not answer in time ({type(e).__name__})"
            ) from None
        except httpx.TransportError as e:
            raise DaemonUnreachable(
                f"could not reach the mlxctl daemon at {self.host}: {e}"
            ) from None

    def _create_body(self, model: str, spec: BuildSpec, progress: api.OnProgress) -> dict[str, Any]:
        if spec.tokenizer:
            raise MlxOllamaError(
                "the daemon cannot build from a separate tokenizer folder yet: "
                "create this model in-process (mlxctl create --embedded)"
            )
        body: dict[str, Any] = {"model": model}
        source = Path(spec.source).expanduser()
        if source.exists():
            progress(api.Progress("gathering model components").to_json())
            body["files"] = self._upload_files(source, progress)
        elif _looks_like_path(spec.source):
            raise FileNotFoundError(f"FROM {spec.source}: no such file or folder")
        else:
            body["from"] = spec.source
        for key in ("template", "system", "messages", "quantize"):
            if getattr(spec, key) is not None:
                body[key] = getattr(spec, key)
        if spec.parameters:
            body["parameters"] = spec.parameters
        if spec.license:
            body["license"] = spec.license
        return body

    def _upload_files(self, source: Path, progress: api.OnProgress) -> dict[str, str]:
        files = {}
        for path, name in _model_files(source):
            digest = file_digest(path)
            if (
                self._send(self._http.build_request("HEAD", f"/api/blobs/{digest}")).status_code
                != 200
            ):
                self._upload(path, digest, progress)
            files[name] = digest
        return files

    def _upload(self, path: Path, digest: str, progress: api.OnProgress) -> None:
        size = path.stat().st_size

        def say(done: int) -> None:
            progress(api.Progress(f"copying file {digest}", digest, size, done).to_json())

        def chunks() -> Iterator[bytes]:
            done = 0
            with path.open("rb") as f:
                while block := f.read(CHUNK_SIZE):
                    yield block
                    done += len(block)
                    say(done)

        if size == 0:
            say(0)
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        request = self._http.build_request(
            "POST", f"/api/blobs/{digest}", content=chunks(), headers=headers
        )
        r = self._send(request)
        if r.status_code >= 400:
            raise _error(r.status_code, _message(r.content, r.reason_phrase), "")


class _Lines:
    """The NDJSON objects of a streamed answer. Raises the daemon's `{"error": ...}` line;
    `close()` (or leaving a `with` block, or garbage collection) drops the connection."""

    def __init__(self, response: httpx.Response, model: str):
        self._response = response
        self._lines = response.iter_lines()
        self._model = model

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            for line in self._lines:
                if not line.strip():
                    continue
                obj = orjson.loads(line)
                if isinstance(obj, dict) and "error" in obj:
                    raise _error(_stream_status(obj["error"]), str(obj["error"]), self._model)
                return obj
        except httpx.TimeoutException:
            self.close()
            raise DaemonUnreachable("the mlxctl daemon stopped sending (read timeout)") from None
        except httpx.TransportError as e:
            self.close()
            raise DaemonUnreachable(f"the mlxctl daemon dropped the connection: {e}") from None
        except BaseException:
            self.close()
            raise
        self.close()
        raise StopIteration

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(CHUNK_SIZE):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def _model_files(source: Path) -> list[tuple[Path, str]]:
    """(path, name to send) for a GGUF file, or for the model files of a folder."""
    if source.is_file():
        return [(source, source.name)]
    found = {p for pattern in FOLDER_PATTERNS for p in source.glob(pattern) if p.is_file()}
    if not found:
        raise MlxOllamaError(f"{source} holds no model files (*.safetensors, config.json)")
    return [(p, p.relative_to(source).as_posix()) for p in sorted(found)]


def _looks_like_path(ref: str) -> bool:
    """What the store's build also takes for a path, not a model name."""
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref.lower().endswith(
        (".gguf", ".safetensors", ".bin")
    )


def _json(body: dict | None) -> bytes | None:
    return None if body is None else orjson.dumps(body)


def _message(content: bytes, reason: str) -> str:
    """The `error` of an Ollama error body; the text itself when it is not JSON."""
    try:
        obj = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode(errors="replace").strip() or reason
    if isinstance(obj, dict) and "error" in obj:
        return str(obj["error"])
    return content.decode(errors="replace").strip() or reason


_REMOTE_404 = "pull model manifest: file does not exist"  # Ollama's words, which we keep


def _stream_status(message: str) -> int:
    """The status an error that arrived mid-stream would have had."""
    if re.match(r"model ['\"].*['\"] not found", message) or _REMOTE_404 in message:
        return 404
    return 503 if message.startswith("server busy") else 500


def _error(status: int, message: str, model: str) -> ResponseError:
    if status == 404 and _REMOTE_404 in message:
        return RemoteNotFoundError(message, status, model)
    if status == 404:
        return NotFound(message, status, model)
    if status == 401:
        return UnauthorizedError(message, status)
    if status == 502:
        return RegistryFailed(message, status)
    if status == 503:
        return ServerBusy(message, status)
    return ResponseError(message, status)
