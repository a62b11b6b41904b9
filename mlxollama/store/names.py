"""Model names and digests as value types with a written grammar.

A model name is `[scheme://][host/][namespace/]model[:tag]`, Ollama's grammar:

- host: 1-255 chars of letters, digits, `_ - . :`; default `registry.ollama.ai`
- namespace: 1-80 chars of letters, digits, `_ -`; default `library`
- model: 1-80 chars of letters, digits, `_ - .`
- tag: 1-80 chars of letters, digits, `_ - .`; default `latest`

Every part starts with a letter, digit or `_`, so `.`, `..` and `/` can never reach a path.
The tag is split off only when the last `:` follows the last `/`, so `host:5000/m` works. A
separator promising a part that is empty (`m:`, `/m`, `a//m`) makes the name invalid.

Two departures from Ollama, both so that a name that parses always has a path: the host is
capped at 255 characters (Ollama allows 350, but the host is one path component and no file
system takes a name over 255 bytes; a DNS name is at most 253), and nothing is stripped, so
`"victim\n"` is invalid rather than `victim` (Ollama's parser refuses it too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from mlxollama.errors import InvalidDigest, InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

NAME_MAX = 255  # bytes in one path component (Linux and macOS)
_LIMITS = {"host": NAME_MAX, "namespace": 80, "model": 80, "tag": 80}
_PART = {
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class ModelName:
    """A parsed name; empty strings stand for parts the text did not give."""

    host: str = ""
    namespace: str = ""
    model: str = ""
    tag: str = ""
    # `http` or `https` when the text gave one (`http://host/ns/m`); not part of the identity
    scheme: str = field(default="", compare=False, repr=False)

    @classmethod
    def parse_bare(cls, text: str) -> ModelName:
        """Split `text` into parts without applying defaults or validating them.

        Parts promised by a separator but empty are kept as the marker `"!"`, which no
        part may contain, so `is_valid` fails on them.
        """
        s, scheme = text, ""
        if "://" in s:
            scheme, s = s.split("://", 1)
        tag = ""
        colon, slash = s.rfind(":"), s.rfind("/")
        if colon > slash:
            s, tag = s[:colon], s[colon + 1 :] or "!"
        parts = s.split("/")
        if len(parts) > 3:
            return cls(model="!")
        parts = [p or "!" for p in parts]
        host, namespace = "", ""
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        return cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme.lower())

    def with_defaults(self) -> ModelName:
        return ModelName(
            host=self.host or DEFAULT_HOST,
            namespace=self.namespace or DEFAULT_NAMESPACE,
            model=self.model,
            tag=self.tag or DEFAULT_TAG,
            scheme=self.scheme,
        )

    def is_valid(self) -> bool:
        """True when every given part follows the grammar (missing parts are allowed)."""
        if not self.model:
            return False
        return all(not value or _PART[part].fullmatch(value) for part, value in self._items())

    def too_long(self) -> tuple[str, int] | None:
        """The first part over its length limit and its length, or None."""
        for part, value in self._items():
            if len(value) > _LIMITS[part]:
                return part, len(value)
        return None

    def is_fully_qualified(self) -> bool:
        return self.is_valid() and all(value for _, value in self._items())

    def path(self) -> PurePosixPath:
        """The manifest's relative path `<host>/<namespace>/<model>/<tag>`.

        Raises:
            InvalidName: unless the name is valid and fully qualified.
        """
        if not self.is_fully_qualified():
            raise InvalidName(f"invalid model name '{self}'")
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    def display(self) -> str:
        """The shortest form: default host and namespace are dropped; the tag always stays."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def casefold(self) -> ModelName:
        return replace(
            self,
            host=self.host.lower(),
            namespace=self.namespace.lower(),
            model=self.model.lower(),
            tag=self.tag.lower(),
        )

    def _items(self) -> list[tuple[str, str]]:
        return [
            ("host", self.host),
            ("namespace", self.namespace),
            ("model", self.model),
            ("tag", self.tag),
        ]

    def __str__(self) -> str:
        head = "/".join(p for p in (self.host, self.namespace, self.model) if p)
        return f"{head}:{self.tag}" if self.tag else head


def parse_name(text: str) -> ModelName:
    """Parse a user-given name and fill in the defaults.

    Raises:
        InvalidName: the text does not follow the grammar.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidName("invalid model name: the name is empty")
    name = ModelName.parse_bare(text).with_defaults()
    if not name.is_fully_qualified():
        long = name.too_long()
        if long is not None:
            part, length = long
            raise InvalidName(
                f"invalid model name {text[:60]!r}...: the {part} is {length} characters long, "
                f"at most {_LIMITS[part]} are allowed"
            )
        raise InvalidName(
            f"invalid model name {text!r}: use [host/][namespace/]model[:tag] with letters, "
            "digits, '_', '-' and '.' (host may add ':'), and no spaces or control characters"
        )
    return name


def parse_digest(text: str) -> str:
    """Normalise `sha256:<hex>` or `sha256-<hex>` to `sha256:<lowercase hex>`.

    Raises:
        InvalidDigest: anything else.
    """
    m = _DIGEST.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise InvalidDigest(f"invalid digest format '{text}': expected sha256:<64 hex digits>")
    return f"sha256:{m.group(1).lower()}"
