"""OCI image manifests for models, and the media types of their layers.

A model is one OCI image manifest whose config blob holds the model's config and provenance
and whose layers are: one safetensors blob per tensor (so variants share unchanged tensors and
pulls fetch only what differs), the tokenizer files, and Ollama's template / system / params /
messages / license layers (Ollama's media types, so Ollama-style registries map one to one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.mlxollama.model.v1"
CONFIG_MEDIA_TYPE = "application/vnd.mlxollama.model.config.v1+json"
TENSOR_MEDIA_TYPE = "application/vnd.mlxollama.tensor.v1+safetensors"
FILE_MEDIA_TYPE = "application/vnd.mlxollama.file.v1"  # tokenizer.json, tokenizer_config.json, ...
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
SYSTEM_MEDIA_TYPE = "application/vnd.ollama.image.system"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
MESSAGES_MEDIA_TYPE = "application/vnd.ollama.image.messages"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
TITLE = "org.opencontainers.image.title"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor; `name` is the layer's title annotation (tensor or file name)."""

    media_type: str
    digest: str
    size: int
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.name is not None:
            d["annotations"] = {TITLE: self.name}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Descriptor:
        """Raises ValueError for a title that is not a relative path inside a model: a
        title names a file when the model loads, and manifests now come from registries."""
        name = (d.get("annotations") or {}).get(TITLE)
        if name is not None:
            check_title(name)
        return cls(media_type=d["mediaType"], digest=d["digest"], size=int(d["size"]), name=name)


def check_title(title: Any) -> None:
    """A tensor name or a file name inside the model (`1_Pooling/config.json` at most):
    relative, without `.` or `..` parts, backslashes or NUL."""
    if not isinstance(title, str):
        raise ValueError(f"layer title {title!r} is not a string")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in title.split("/")):
        raise ValueError(f"layer title {title!r} is not a relative path inside the model")


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...] = field(default_factory=tuple)

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys), so equal models give equal manifest digests."""
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        doc = orjson.loads(data)
        if doc.get("schemaVersion") != 2 or "config" not in doc:
            raise ValueError("not an OCI image manifest (schemaVersion 2 with a config)")
        return cls(
            config=Descriptor.from_dict(doc["config"]),
            layers=tuple(Descriptor.from_dict(d) for d in doc.get("layers", [])),
        )

    def digests(self) -> list[str]:
        return [self.config.digest, *(layer.digest for layer in self.layers)]

    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def layers_of(self, media_type: str) -> list[Descriptor]:
        return [layer for layer in self.layers if layer.media_type == media_type]
