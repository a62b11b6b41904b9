"""`ModelClient`: the calls `client.Client` (a daemon over HTTP) and `sdk.Embedded` (this
process) both answer, with the same signatures and Ollama's JSON shapes (`api`'s types, as
dicts). Code that takes either, the CLI among it, is written against this Protocol;
tests/test_interface.py checks that both implement it with identical signatures.

Only a daemon has `ps`, `version`, `heartbeat`, `load`, `unload` and `cancel` (`Client`); only a
store in this process has `verify` and `gc` (`Embedded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from mlxollama import api
from mlxollama.recipes.buildspec import BuildSpec


@runtime_checkable
class ModelClient(Protocol):
    def list(self) -> dict[str, Any]:
        """`/api/tags`: the stored models."""
        ...

    def show(self, model: str, verbose: bool = False) -> dict[str, Any]:
        """`/api/show`: a model's Modelfile, parameters, template, details; with `verbose`
        its tensors."""
        ...

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
        """Build `model` from a BuildSpec or Ollama's `create` fields; progress objects go
        to `progress`; returns `{"status": "success"}`."""
        ...

    def pull(
        self,
        model: str,
        insecure: bool = False,
        stream: bool = False,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Fetch `model` from its registry: an iterator of progress objects with `stream`,
        else the last one (each handed to `progress` as it arrives)."""
        ...

    def push(
        self,
        model: str,
        insecure: bool = False,
        stream: bool = False,
        progress: api.OnProgress | None = None,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Send `model` to the registry its name points at; answers as `pull`."""
        ...

    def copy(self, source: str, destination: str) -> dict[str, Any]: ...

    def delete(self, model: str) -> dict[str, Any]: ...

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
        """`/api/generate`: `api.GenerateResponse` objects (an empty prompt just loads)."""
        ...

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
        """`/api/chat`: `api.ChatResponse` objects (no messages just loads)."""
        ...

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
        """`/api/embed`: `api.EmbedResponse` (no input just loads)."""
        ...
