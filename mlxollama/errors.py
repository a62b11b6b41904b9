"""The few domain errors. Each subclasses the built-in whose meaning fits, so callers that
know nothing of mlxollama still catch them sensibly; `http/` maps them to status codes once."""


class MlxOllamaError(Exception):
    """Base class; its message is meant to be shown to users as is."""


class InvalidName(MlxOllamaError, ValueError):
    """A model name, tag or digest that does not follow the grammar."""


class InvalidDigest(InvalidName):
    """A digest that is not `sha256:<64 hex>`."""


class ModelNotFound(MlxOllamaError, LookupError):
    """No manifest for that name in the store."""

    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")
        self.name = name


class BlobNotFound(MlxOllamaError, LookupError):
    """A manifest references a blob that is missing from the store."""


class DigestMismatch(MlxOllamaError, ValueError):
    """Bytes whose sha256 is not the digest they were stored or announced under."""


class InvalidModelfile(MlxOllamaError, ValueError):
    """A Modelfile or ModelSpec that cannot be parsed; the message names the line."""


class InvalidOption(MlxOllamaError, ValueError):
    """An option with an unknown name or a value of the wrong type."""


class UnsupportedModel(MlxOllamaError, ValueError):
    """A model source we recognise but cannot import (architecture, tensor type, adapter)."""


class Busy(MlxOllamaError):
    """A queue is full; the caller should retry later (HTTP 503)."""


class RegistryError(MlxOllamaError, ConnectionError):
    """A registry (OCI, Ollama-style, Hugging Face) refused or failed a transfer; the
    message says which registry and what failed."""


class RegistryUnreachable(RegistryError):
    """The registry could not be reached (connection refused, DNS, timeout)."""


class Unauthorized(RegistryError, PermissionError):
    """The registry answered 401/403: credentials are missing or wrong."""


class RemoteNotFound(RegistryError, LookupError):
    """The registry has no such model (manifest 404)."""
