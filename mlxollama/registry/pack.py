"""`pack`: a stored model as an OCI image layout, and back.

The manifest is our own (one OCI image manifest per model), so a model exported and imported
again has the same manifest digest. On import every blob is hashed before it enters the
store, and the tag is written last, under the store lock; a bad blob raises DigestMismatch
and leaves neither a tag nor the blobs that import added. The format itself is `layout`.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import orjson

from mlxollama.errors import DigestMismatch, InvalidName, UnsupportedModel
from mlxollama.registry.layout import (
    INDEX_MEDIA_TYPE,
    MODEL_NAME,
    REF_NAME,
    Layout,
    Progress,
    layer_done,
    open_layout,
    read_verified,
    write_folder,
    write_tar,
)
from mlxollama.store import manifests as mt
from mlxollama.store.blobs import CHUNK
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import parse_digest, parse_name
from mlxollama.store.store import Store, StoredModel


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
        write_tar(dest, manifest_bytes, descriptor, blobs, say)
    else:
        write_folder(dest, manifest_bytes, descriptor, blobs, say)
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
    with open_layout(Path(src).expanduser()) as layout:
        descriptor, target = _choose(layout, name)
        digest = parse_digest(descriptor["digest"])
        data = read_verified(layout, digest, int(descriptor["size"]))
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
                    say(layer_done("copying", layer))
                say({"status": "writing manifest"})
                store.blobs.sync()
                stored = store.put_manifest(target, manifest)
            except BaseException:
                with contextlib.suppress(Exception):
                    store.remove_unreferenced(added)
                raise
    say({"status": "success"})
    return stored


def _descriptors(manifest: Manifest) -> list[Descriptor]:
    """Config and layers, each digest once (a model may use one blob twice)."""
    seen: dict[str, Descriptor] = {}
    for d in (manifest.config, *manifest.layers):
        seen.setdefault(d.digest, d)
    return list(seen.values())


def _choose(layout: Layout, name: str | None):
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


def _import_blob(store: Store, layout: Layout, layer: Descriptor) -> None:
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
