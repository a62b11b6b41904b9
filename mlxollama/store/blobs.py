"""Content-addressed blobs under `blobs/sha256/<hex>`.

A blob becomes visible only by an atomic rename after its bytes were hashed, fsynced and
found equal to the digest it is stored under; a crash leaves at most a `.tmp-*` file, which
`clean_temp` removes. Blobs are immutable: a file already present is trusted by name and only
re-hashed by `verify` or by a load whose stat does not match the last verification.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mlxollama.errors import BlobNotFound, DigestMismatch
from mlxollama.store.names import parse_digest

CHUNK = 1 << 20


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return f"sha256:{h.hexdigest()}"


class _HashingWriter:
    """A file object that hashes what passes through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)


class BlobStore:
    """The `blobs/sha256/` folder of a store."""

    def __init__(self, root: Path):
        self.dir = root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        """The file of a digest (validated first, so no name can reach outside the folder)."""
        return self.dir / parse_digest(digest).split(":", 1)[1]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is missing from the store") from None

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is missing from the store") from None

    def digests(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in self.dir.iterdir() if len(p.name) == 64}

    @contextmanager
    def writer(self, expected: str | None = None, sync: bool = True):
        """Yield a file-like object; on clean exit its bytes become a blob.

        The final digest is available as `w.digest` after the block. With `expected`, a
        different hash raises DigestMismatch and nothing is stored. With `sync=False` the
        caller promises to call `sync()` before anything refers to the blob (a build writes
        hundreds of tensor blobs and flushes them once, before its manifest).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                w = _HashingWriter(f)
                yield w
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            w.digest = f"sha256:{w.h.hexdigest()}"
            if expected is not None and parse_digest(expected) != w.digest:
                raise DigestMismatch(
                    f'digest mismatch, expected "{parse_digest(expected)}", got "{w.digest}"'
                )
            final = self.path(w.digest)
            if final.exists():
                os.utime(final)  # keep the existing (identical) file; mark it as used
            else:
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
                if sync:
                    _fsync_dir(self.dir)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes, sync: bool = True) -> str:
        with self.writer(sync=sync) as w:
            w.write(data)
        return w.digest

    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None) -> str:
        with self.writer(expected) as w:
            for chunk in chunks:
                w.write(chunk)
        return w.digest

    def put_file(self, src: Path, expected: str | None = None) -> str:
        """Copy a file in. When `expected` names a blob we already have, nothing is read."""
        if expected is not None and self.exists(expected):
            return parse_digest(expected)
        with open(src, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""), expected)

    def adopt(self, src: Path, digest: str, sync: bool = True) -> str:
        """Move a file whose sha256 the caller has just checked (a finished download, on the
        same filesystem) into the store under `digest`. With `sync=False` the caller calls
        `sync()` before anything refers to the blob, as for `writer`."""
        final = self.path(digest)
        self.dir.mkdir(parents=True, exist_ok=True)
        if sync:
            with open(src, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(src, 0o644)
        os.replace(src, final)
        if sync:
            _fsync_dir(self.dir)
        return parse_digest(digest)

    def sync(self) -> None:
        """Flush blobs written with `sync=False` to disk (one filesystem sync)."""
        os.sync()

    def check(self, digest: str) -> None:
        """Re-hash one blob.

        Raises:
            BlobNotFound: the file is missing.
            DigestMismatch: its bytes no longer hash to its name.
        """
        path = self.path(digest)
        if not path.is_file():
            raise BlobNotFound(f"blob {digest} is missing from the store")
        actual = sha256_file(path)
        if actual != parse_digest(digest):
            raise DigestMismatch(f"blob {digest} is corrupted: its content hashes to {actual}")

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def clean_temp(self, min_age: float = 3600.0) -> int:
        """Delete temp files left by interrupted writes (older than `min_age` seconds, so a
        write in progress in another process is left alone); returns how many."""
        if not self.dir.is_dir():
            return 0
        cutoff = time.time() - min_age
        stale = [
            p
            for p in self.dir.iterdir()
            if p.name.startswith(".tmp-") and p.stat().st_mtime <= cutoff
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
