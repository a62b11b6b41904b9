"""The OCI image layout format: a folder, or a tar of one, that OCI tools read without a
registry (https://github.com/opencontainers/image-spec/blob/main/image-layout.md):

    oci-layout              {"imageLayoutVersion": "1.0.0"}
    index.json              the manifest's descriptor, its tag in org.opencontainers.image.ref.name
    blobs/sha256/<hex>      the manifest, the config and every layer, byte for byte

Writing one (`write_folder`, `write_tar`) and opening one to read (`open_layout`); blobs are
layer_done as streams, nothing is held in memory. What goes in and out of the store is `pack`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from mlxollama.errors import DigestMismatch, UnsupportedModel
from mlxollama.store.manifests import Descriptor

Progress = Callable[[dict[str, Any]], None]

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"  # the tag, as skopeo's `oci:DIR:TAG` reads it
MODEL_NAME = "vnd.mlxollama.model.name"  # the full model name, for an import without a name
MAX_MANIFEST = 16 << 20


def layer_done(verb: str, layer: Descriptor) -> dict[str, Any]:
    """The progress event of one blob copied in full."""
    hex12 = layer.digest.split(":", 1)[1][:12]
    return {
        "status": f"{verb} {hex12}",
        "digest": layer.digest,
        "total": layer.size,
        "completed": layer.size,
    }


def index_json(descriptors: list[dict[str, Any]]) -> bytes:
    """index.json listing `descriptors`."""
    doc = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": descriptors}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def write_folder(dest: Path, manifest_bytes: bytes, descriptor, blobs, say: Progress) -> None:
    """Write a layout folder holding one image, or add the image to the layout at `dest`
    (replacing the entry of the same tag). `blobs` are (descriptor, path) pairs."""
    entries: list[dict[str, Any]] = []
    if dest.exists() and any(dest.iterdir()):
        if not (dest / LAYOUT_FILE).is_file():
            raise FileExistsError(f"{dest} is not empty and not an OCI image layout")
        old = orjson.loads((dest / "index.json").read_bytes()).get("manifests", [])
        tag = descriptor["annotations"][REF_NAME]
        entries = [d for d in old if (d.get("annotations") or {}).get(REF_NAME) != tag]
    blob_dir = dest / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(dest / LAYOUT_FILE, orjson.dumps(LAYOUT_VERSION))
    for layer, path in blobs:
        target = blob_dir / layer.digest.split(":", 1)[1]
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        say(layer_done("copying", layer))
    _atomic_write(blob_dir / descriptor["digest"].split(":", 1)[1], manifest_bytes)
    say({"status": "writing manifest"})
    _atomic_write(dest / "index.json", index_json([*entries, descriptor]))


def write_tar(dest: Path, manifest_bytes: bytes, descriptor, blobs, say: Progress) -> None:
    """Write a layout tar holding one image, replacing `dest` as a whole."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=dest.parent)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add(tar, LAYOUT_FILE, orjson.dumps(LAYOUT_VERSION))
            for layer, path in blobs:
                with open(path, "rb") as blob:
                    _add(tar, f"blobs/sha256/{layer.digest.split(':', 1)[1]}", blob, layer.size)
                say(layer_done("copying", layer))
            say({"status": "writing manifest"})
            _add(tar, f"blobs/sha256/{descriptor['digest'].split(':', 1)[1]}", manifest_bytes)
            _add(tar, "index.json", index_json([descriptor]))
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _add(tar: tarfile.TarFile, name: str, data: bytes | BinaryIO, size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if isinstance(data, bytes):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        info.size = size
        tar.addfile(info, data)  # copies `size` bytes, in chunks


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Folder:
    """A layout folder, opened to read."""

    def __init__(self, root: Path):
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")


class Tar:
    """A layout tar, opened to read."""

    def __init__(self, tar: tarfile.TarFile):
        self.tar = tar
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(name)
        f = self.tar.extractfile(member) if member is not None else None
        if f is None:
            raise FileNotFoundError(f"{self.tar.name}: no {name} in the archive")
        return f


Layout = Folder | Tar


@contextlib.contextmanager
def open_layout(src: Path) -> Iterator[Layout]:
    """Open the layout folder or tar at `src`, after checking its oci-layout file."""
    if src.is_dir():
        layout: Layout = Folder(src)
        _check_layout(layout, src)
        yield layout
    elif src.is_file():
        with tarfile.open(src, mode="r:*") as tar:
            layout = Tar(tar)
            _check_layout(layout, src)
            yield layout
    else:
        raise FileNotFoundError(f"{src}: no such folder or file")


def _check_layout(layout: Layout, src: Path) -> None:
    try:
        with layout.open(LAYOUT_FILE) as f:
            version = orjson.loads(f.read()).get("imageLayoutVersion")
    except (FileNotFoundError, orjson.JSONDecodeError):
        raise UnsupportedModel(f"{src} is not an OCI image layout (no oci-layout file)") from None
    if version != LAYOUT_VERSION["imageLayoutVersion"]:
        raise UnsupportedModel(f"{src}: unsupported OCI image layout version {version}")


def read_verified(layout: Layout, digest: str, size: int) -> bytes:
    """A small blob (a manifest) read whole, refused unless its bytes hash to `digest`."""
    if size > MAX_MANIFEST:
        raise UnsupportedModel(f"a manifest of {size} bytes is not a model's")
    with layout.open(f"blobs/sha256/{digest.split(':', 1)[1]}") as f:
        data = f.read(size + 1)
    actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if actual != digest or len(data) != size:
        raise DigestMismatch(f'digest mismatch, expected "{digest}", got "{actual}"')
    return data
