"""Pull and push models: OCI registries (our artifacts), Ollama-style registries (GGUF
layers, converted on pull) and Hugging Face (`hf.co/ORG/REPO[:REVISION]`).

Every transfer reports Ollama's progress objects through a `progress` callback
(`{"status": "pulling manifest"}`, `{"status": "pulling <hex12>", "digest", "total",
"completed"}`, `{"status": "verifying sha256 digest"}`, `{"status": "writing manifest"}`,
`{"status": "success"}`; for push `retrieving manifest`, `pushing <hex12>`, `pushing
manifest`, `success`). Blobs enter the store only after their digest is checked, and the
manifest is written last, so a failed pull leaves neither a tag nor a bad blob.

This package sits beside `store` and `engine` (the actors call it; it never imports daemon
code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxollama.config import Config
from mlxollama.store.names import ModelName, parse_name
from mlxollama.store.store import Store, StoredModel

Progress = Callable[[dict[str, Any]], None]

# Hosts whose names are Hugging Face's: `hf.co/ORG/REPO[:REVISION]`.
HF_HOSTS = ("hf.co", "huggingface.co")


@dataclass(frozen=True, repr=False)
class Credentials:
    """How to authenticate to a registry: HTTP Basic (`username`/`password`, sent only when
    the registry asks, and used to fetch a Bearer token when it asks for one), or a Bearer
    `token` as is. `host` (host[:port]) limits them to one registry; without it they go to
    any OCI registry that asks, never to Hugging Face."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    host: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> Credentials | None:
        """The `registry_*` settings (`MLXOLLAMA_REGISTRY_USERNAME` / `_PASSWORD` /
        `_TOKEN` / `_HOST`); None when no credential is set."""
        found = cls(
            username=config.registry_username,
            password=config.registry_password,
            token=config.registry_token,
            host=config.registry_host,
        )
        return found if (found.username or found.token) else None

    def for_host(self, host: str) -> Credentials | None:
        """These credentials if they may be sent to `host`, else None."""
        if self.host is None:
            return None if host.lower() in HF_HOSTS else self
        return self if host.lower() == self.host.lower() else None

    def __repr__(self) -> str:
        # never the secrets: a repr ends up in tracebacks, debuggers and log lines
        def shown(secret: str | None) -> str:
            return "None" if secret is None else "'***'"

        return (
            f"Credentials(username={self.username!r}, password={shown(self.password)}, "
            f"token={shown(self.token)}, host={self.host!r})"
        )

    __str__ = __repr__


def is_hf(name: ModelName) -> bool:
    return name.host.lower() in HF_HOSTS


def pull(
    store: Store,
    name: str,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    progress: Progress | None = None,
    hf_endpoint: str | None = None,
) -> StoredModel:
    """Pull `name` into `store` and tag it; returns the stored model.

    `hf_endpoint` is the Hugging Face Hub to ask for `hf.co/` names (`Config.hf_endpoint`,
    a mirror); default: huggingface_hub's own.

    Raises:
        InvalidName: `name` does not parse.
        RegistryError and its subclasses: unreachable, 401/403, manifest not found.
        DigestMismatch: a blob's bytes do not match its digest (nothing is kept).
        UnsupportedModel: an Ollama-style model whose GGUF cannot be converted.
    """
    target = parse_name(name)
    say = progress or (lambda event: None)
    credentials = credentials.for_host(target.host) if credentials else None
    if is_hf(target):
        from mlxollama.registry import hf

        return hf.pull(store, target, progress=say, credentials=credentials, endpoint=hf_endpoint)
    from mlxollama.registry import oci

    return oci.pull(store, target, insecure=insecure, credentials=credentials, progress=say)


def push(
    store: Store,
    name: str,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    progress: Progress | None = None,
) -> None:
    """Push the stored model `name` to the registry its name points at.

    Raises:
        ModelNotFound: no such model in the store.
        RegistryError and its subclasses: unreachable, 401/403, refused upload.
    """
    target = parse_name(name)
    if is_hf(target):
        raise ValueError("pushing to Hugging Face is not supported: push to an OCI registry")
    credentials = credentials.for_host(target.host) if credentials else None
    from mlxollama.registry import oci

    oci.push(
        store,
        target,
        insecure=insecure,
        credentials=credentials,
        progress=progress or (lambda e: None),
    )
