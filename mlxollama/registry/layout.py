"""`pack`: a stored model as an OCI image layout, and back.

An OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
is a folder, or a tar of one, that OCI tools read without a registry (`skopeo inspect
oci:DIR:latest`, `skopeo copy oci:DIR:TAG docker://...`, `oras copy --from-oci-layout`):

    oci-layout              {"imageLayoutVersion": "1.0.0"}
    index.json              the manifest's descriptor, its tag in org.opencontainers.image.ref.name
    blobs/sha256/<hex>      the manifest, the config and every layer, byte for byte

The manifest is our own (one OCI image manifest per model), so a model exported and imported
again has the same manifest digest. Blobs are copied as streams: nothing is held in memory.
On import every blob is hashed before it enters the store, and the tag is written last, under
the store lock; a bad blob raises DigestMismatch and leaves neither a tag nor the blobs that
import added.
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

from mlxollama.errors import DigestMismatch, InvalidName, UnsupportedModel
from mlxollama.store import manifests as mt
from mlxollama.store.blobs import CHUNK
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import parse_digest, parse_name
from mlxollama.store.store import Store, StoredModel

Progress = Callable[[dict[str, Any]], None]

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"  # the tag, as skopeo's `oci:DIR:TAG` reads it
MODEL_NAME = "vnd.mlxollama.model.name"  # the full model name, for an import without a name
MAX_MANIFEST = 16 << 20


def export_layout(
    store: Store, name: str, dest: Path | str, progress: Progress | None = None
) -> Path:
    """Write the stored model `name` as an OCI image layout at `dest`: a folder, or a tar
    file when `dest` ends with `.tar`. An existing layout folder gains the model (replacing
    the entry of the same tag); a tar is replaced as a whole. Returns `dest`.

    Raises:
        ModelNotFound: no such model.
        BlobNotFound, DigestMismatch: a blob of the model is missing or damaged in the store.
        FileExistsError: `dest` is a non-empty folder that is not an OCI layout.
    """
    say = progress or (lambda event: None)
    dest = Path(dest).expanduser()
    model = store.get(name)
    store.check_blobs(model)
    manifest_bytes = model.manifest.to_bytes()  # the bytes the store holds (canonical JSON)
    descriptor = {
        "mediaType": mt.MANIFEST_MEDIA_TYPE,
        "artifactType": mt.ARTIFACT_TYPE,
        "digest": f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}",
        "size": len(manifest_bytes),
        "annotations": {REF_NAME: model.name.tag, MODEL_NAME: model.name.display()},
    }
    blobs = [(layer, store.blobs.path(layer.digest)) for layer in _descriptors(model.manifest)]
    if dest.name.endswith(".tar"):
        _write_tar(dest, manifest_bytes, descriptor, blobs, say)
    else:
        _write_folder(dest, manifest_bytes, descriptor, blobs, say)
    say({"status": "success"})
    return dest


def import_layout(
    store: Store, src: Path | str, name: str | None = None, progress: Progress | None = None
) -> StoredModel:
    """Import a model from an OCI image layout (a folder or a tar) and tag it.

    The name is `name`, else the one recorded at export, else the layout's ref name when it
    is a full model name (`smollm2:latest`, not a bare tag such as `latest`). A layout that
    holds several images needs `name`; its tag picks the image whose ref name it is.

    Raises:
        InvalidName: no usable name, or an invalid one.
        FileNotFoundError: `src` is missing, or a blob the index or manifest names is.
        DigestMismatch: a blob whose bytes do not hash to its digest (nothing is kept).
        UnsupportedModel: the image is not an mlxollama model (a container image, an index).
    """
    say = progress or (lambda event: None)
    with _open_layout(Path(src).expanduser()) as layout:
        descriptor, target = _choose(layout, name)
        digest = parse_digest(descriptor["digest"])
        data = _read_verified(layout, digest, int(descriptor["size"]))
        doc = orjson.loads(data)
        if doc.get("mediaType", mt.MANIFEST_MEDIA_TYPE) != mt.MANIFEST_MEDIA_TYPE:
            raise UnsupportedModel(f"{src}: {doc.get('mediaType')} is not an image manifest")
        manifest = Manifest.from_bytes(data)
        if manifest.config.media_type != mt.CONFIG_MEDIA_TYPE:
            raise UnsupportedModel(
                f"{src}: not an mlxollama model (config {manifest.config.media_type})"
            )
        added: set[str] = set()
        with store.lock():
            try:
                for layer in _descriptors(manifest):
                    if not store.blobs.exists(layer.digest):
                        _import_blob(store, layout, layer)
                        added.add(layer.digest)
                    say(_done("copying", layer))
                say({"status": "writing manifest"})
                store.blobs.sync()
                stored = store.put_manifest(target, manifest)
            except BaseException:
                with contextlib.suppress(Exception):
                    store._remove_unreferenced(added)
                raise
    say({"status": "success"})
    return stored


# -- export --------------------------------------------------------------------------------


def _descriptors(manifest: Manifest) -> list[Descriptor]:
    """Config and layers, each digest once (a model may use one blob twice)."""
    seen: dict[str, Descriptor] = {}
    for d in (manifest.config, *manifest.layers):
        seen.setdefault(d.digest, d)
    return list(seen.values())


def _done(verb: str, layer: Descriptor) -> dict[str, Any]:
    hex12 = layer.digest.split(":", 1)[1][:12]
    return {
        "status": f"{verb} {hex12}",
        "digest": layer.digest,
        "total": layer.size,
        "completed": layer.size,
    }


def _index(descriptors: list[dict[str, Any]]) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": descriptors}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def _write_folder(dest: Path, manifest_bytes: bytes, descriptor, blobs, say: Progress) -> None:
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
        say(_done("copying", layer))
    _atomic_write(blob_dir / descriptor["digest"].split(":", 1)[1], manifest_bytes)
    say({"status": "writing manifest"})
    _atomic_write(dest / "index.json", _index([*entries, descriptor]))


def _write_tar(dest: Path, manifest_bytes: bytes, descriptor, blobs, say: Progress) -> None:
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
                say(_done("copying", layer))
            say({"status": "writing manifest"})
            _add(tar, f"blobs/sha256/{descriptor['digest'].split(':', 1)[1]}", manifest_bytes)
            _add(tar, "index.json", _index([descriptor]))
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


# -- import --------------------------------------------------------------------------------


class _Folder:
    def __init__(self, root: Path):
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")


class _Tar:
    def __init__(self, tar: tarfile.TarFile):
        self.tar = tar
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(name)
        f = self.tar.extractfile(member) if member is not None else None
        if f is None:
            raise FileNotFoundError(f"{self.tar.name}: no {name} in the archive")
        return f


@contextlib.contextmanager
def _open_layout(src: Path) -> Iterator[_Folder | _Tar]:
    if src.is_dir():
        layout: _Folder | _Tar = _Folder(src)
        _check_layout(layout, src)
        yield layout
    elif src.is_file():
        with tarfile.open(src, mode="r:*") as tar:
            layout = _Tar(tar)
            _check_layout(layout, src)
            yield layout
    else:
        raise FileNotFoundError(f"{src}: no such folder or file")


def _check_layout(layout: _Folder | _Tar, src: Path) -> None:
    try:
        with layout.open(LAYOUT_FILE) as f:
            version = orjson.loads(f.read()).get("imageLayoutVersion")
    except (FileNotFoundError, orjson.JSONDecodeError):
        raise UnsupportedModel(f"{src} is not an OCI image layout (no oci-layout file)") from None
    if version != LAYOUT_VERSION["imageLayoutVersion"]:
        raise UnsupportedModel(f"{src}: unsupported OCI image layout version {version}")


def _choose(layout: _Folder | _Tar, name: str | None):
    """The index entry to import and the name to tag it with."""
    with layout.open("index.json") as f:
        entries = [
            d
            for d in orjson.loads(f.read()).get("manifests", [])
            if d.get("mediaType") in (mt.MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPE)
        ]
    if name is not None:
        target = parse_name(name)
        if len(entries) > 1:
            entries = [
                d
                for d in entries
                if (d.get("annotations") or {}).get(REF_NAME) in (target.tag, name)
                or (d.get("annotations") or {}).get(MODEL_NAME) == target.display()
            ]
    refs = sorted(str((d.get("annotations") or {}).get(REF_NAME)) for d in entries)
    if len(entries) != 1:
        raise InvalidName(
            f"the layout holds {len(entries)} matching images ({', '.join(refs) or 'none'}): "
            "give a name whose tag is the image's ref name"
        )
    (entry,) = entries
    if entry.get("mediaType") == INDEX_MEDIA_TYPE:
        raise UnsupportedModel("the layout's image is an image index, not an mlxollama model")
    if name is None:
        annotations = entry.get("annotations") or {}
        name = annotations.get(MODEL_NAME) or annotations.get(REF_NAME)
        if not name or ("/" not in name and ":" not in name):
            raise InvalidName(
                f"the layout does not say the model's name (ref name {name!r}): give one"
            )
        target = parse_name(name)
    return entry, target


def _read_verified(layout: _Folder | _Tar, digest: str, size: int) -> bytes:
    if size > MAX_MANIFEST:
        raise UnsupportedModel(f"a manifest of {size} bytes is not a model's")
    with layout.open(f"blobs/sha256/{digest.split(':', 1)[1]}") as f:
        data = f.read(size + 1)
    actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if actual != digest or len(data) != size:
        raise DigestMismatch(f'digest mismatch, expected "{digest}", got "{actual}"')
    return data


def _import_blob(store: Store, layout: _Folder | _Tar, layer: Descriptor) -> None:
    """Stream one blob into the store; it lands only if its sha256 and size match. Not
    synced: the caller syncs once before the manifest refers to it."""
    hexdigest = parse_digest(layer.digest).split(":", 1)[1]
    with (
        layout.open(f"blobs/sha256/{hexdigest}") as f,
        store.blobs.writer(layer.digest, sync=False) as w,
    ):
        while chunk := f.read(CHUNK):
            w.write(chunk)
            if w.size > layer.size:
                break
        if w.size != layer.size:
            raise DigestMismatch(
                f"blob {layer.digest} does not have its descriptor's {layer.size} bytes"
            )
