"""An Ollama model store on disk (`~/.ollama/models`, or `OLLAMA_MODELS`), read in place so
that a user switching from Ollama brings the models they have without any network.

Ollama's layout: `manifests/<host>/<namespace>/<model>/<tag>` holds each tag's manifest (a
Docker v2 manifest, JSON) and `blobs/sha256-<hex>` the layers. Nothing here writes to it.
Each chosen model is hashed layer by layer (a damaged blob is refused before anything is
built), then converted by `registry.ollama.convert_layers`, the same code an Ollama-registry
pull runs, and tagged under the same name. A model already converted from the same manifest
(its digest is in the provenance) is skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from mlxollama.errors import DigestMismatch, InvalidName, ModelNotFound, UnsupportedModel
from mlxollama.registry import Progress
from mlxollama.registry.ollama import already_converted, convert_layers, ollama_layers
from mlxollama.store.blobs import CHUNK
from mlxollama.store.manifests import Descriptor
from mlxollama.store.names import ModelName, parse_name
from mlxollama.store.store import Store, StoredModel

DEFAULT_ROOT = "~/.ollama/models"
MAX_MANIFEST = 4 << 20  # a manifest is a few KB; anything this large is not one


@dataclass(frozen=True)
class OllamaModel:
    """One tag of the Ollama store: its name and its manifest file."""

    name: ModelName
    path: Path

    def display(self) -> str:
        return self.name.display()


@dataclass(frozen=True)
class Imported:
    """What `import_model` did: the stored model, and whether it was already there."""

    model: StoredModel
    skipped: bool


class OllamaStore:
    """The Ollama store at `root` (its `manifests/` and `blobs/` folders)."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()
        if not (self.root / "manifests").is_dir():
            raise FileNotFoundError(
                f"{self.root} is not an Ollama model store (it has no manifests/ folder); "
                "set OLLAMA_MODELS or pass --from to the folder Ollama keeps its models in"
            )

    def models(self) -> list[OllamaModel]:
        """Every tag, sorted by name; files whose path is not a model name are ignored (Ollama
        itself cannot have written them)."""
        found = []
        for path in sorted((self.root / "manifests").glob("*/*/*/*")):
            if not path.is_file():
                continue
            host, namespace, model, tag = path.relative_to(self.root / "manifests").parts
            try:
                name = parse_name(f"{host}/{namespace}/{model}:{tag}")
            except InvalidName:
                continue
            found.append(OllamaModel(name, path))
        return found

    def find(self, text: str) -> OllamaModel:
        """The tag `text` names, with Ollama's defaults (`llama3.2` is
        `registry.ollama.ai/library/llama3.2:latest`).

        Raises:
            InvalidName: `text` is not a model name.
            ModelNotFound: no such tag; the message lists the tags there are.
        """
        wanted = parse_name(text)
        models = self.models()
        for m in models:
            if m.name == wanted:
                return m
        there = ", ".join(m.display() for m in models) or "none"
        raise ModelNotFound(f"'{text}' is not in the Ollama store at {self.root} (it has: {there})")

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-", 1)

    def read(self, model: OllamaModel) -> tuple[str, list[Descriptor]]:
        """The manifest's digest (the sha256 of its bytes, as Ollama's registry names it) and
        its layers.

        Raises:
            UnsupportedModel: a manifest that is not Ollama's JSON (too large, not JSON, no
                layers, a bad layer).
        """
        where = f"{model.display()} ({model.path})"
        raw = model.path.read_bytes()
        if len(raw) > MAX_MANIFEST:
            raise UnsupportedModel(f"{where}: the manifest is over {MAX_MANIFEST} bytes")
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
                raise ValueError("schemaVersion is not 2")
            layers = ollama_layers(doc)
            if not layers:
                raise ValueError("it has no layers")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UnsupportedModel(f"{where}: not a usable Ollama manifest: {e}") from None
        return f"sha256:{hashlib.sha256(raw).hexdigest()}", layers

    def check_blobs(self, model: OllamaModel, layers: list[Descriptor], progress: Progress) -> None:
        """Hash every layer's blob against its digest, reporting bytes as a pull does.

        Raises:
            UnsupportedModel: a blob is missing (an interrupted `ollama pull`).
            DigestMismatch: a blob's size or bytes do not match its digest.
        """
        for d in layers:
            path = self.blob_path(d.digest)
            if not path.is_file():
                raise UnsupportedModel(
                    f"{model.display()}: blob {d.digest} is missing from {self.root / 'blobs'}; "
                    f"`ollama pull {model.display()}` fetches it again"
                )
            status = f"reading {d.digest.split(':', 1)[1][:12]}"
            h, done = hashlib.sha256(), 0
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    done += len(chunk)
                    if done == len(chunk) or done % (256 * CHUNK) < len(chunk):
                        progress({"status": status, "digest": d.digest, "total": d.size,
                                  "completed": min(done, d.size)})  # fmt: skip
            if done != d.size or f"sha256:{h.hexdigest()}" != d.digest:
                raise DigestMismatch(
                    f"{model.display()}: blob {path} does not match its digest {d.digest} "
                    f"({done} bytes, manifest says {d.size})"
                )
            progress({"status": status, "digest": d.digest, "total": d.size, "completed": d.size})


def import_model(
    store: Store, ollama: OllamaStore, model: OllamaModel, progress: Progress | None = None
) -> Imported:
    """Convert one Ollama tag into `store` under the same name, unless it already holds the
    conversion of this very manifest. A failure leaves no tag and no blob behind (`create`'s
    guarantee: Ollama's blobs are read in place, never copied into the store).

    Raises:
        UnsupportedModel: a corrupt manifest, a missing blob, a layer mlxollama cannot run
            (adapters, projectors, unknown media types) or a GGUF the converter refuses.
        DigestMismatch: a damaged blob.
    """
    say = progress or (lambda event: None)
    say({"status": f"reading manifest of {model.display()}"})
    digest, layers = ollama.read(model)
    current = already_converted(store, model.name, digest)
    if current is not None:
        say({"status": "success"})
        return Imported(current, skipped=True)
    ollama.check_blobs(model, layers, say)
    origin = {
        "type": "ollama-store",
        "reference": model.display(),
        "format": "ollama",
        "path": str(model.path),
        "manifest": digest,
    }
    stored = convert_layers(store, model.name, layers, ollama.blob_path, origin, say)
    return Imported(stored, skipped=False)
