"""Content-addressed blobs under `blobs/sha256/<hex>`.

A blob becomes visible only by an atomic rename after its bytes were hashed, fsynced and
found equal to the digest it is stored under; a crash leaves at most a `.tmp-*` file, which
`clean_temp` removes. Blobs are immutable: a file already present is trusted by name and only
re-hashed by `verify` or by a load whose stat does not match the last verification.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mlxollama.errors import BlobNotFound, DigestMismatch
from mlxollama.store.names import parse_digest

CHUNK = 1 << 20


def without_paths(error: OSError, root: Path) -> OSError:
    """`error` without the file names under `root`, which an error message must not show
    (a client learns the store's absolute path from it); the same OSError subclass."""
    names = [n for n in (error.filename, error.filename2) if n is not None]
    if not any(str(n).startswith(str(root)) for n in names):
        return error
    return type(error)(error.errno, f"{error.strerror} (in the model store)")


TEMP_PREFIX = ".tmp-"

try:
    import fcntl
except ImportError:  # Windows: no flock; temp files are then never taken for dead
    fcntl = None


def lock(fd: int) -> None:
    """Hold an exclusive flock on `fd` until it is closed (where the OS has flock and the
    file system honours it; elsewhere a cleaner just never takes the file for dead)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):  # ENOLCK on some network file systems
            fcntl.flock(fd, fcntl.LOCK_EX)


def try_lock(fd: int) -> bool:
    """Whether `fd` could be locked at once: True means no live writer holds the file."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held; anything else: cannot tell, so assume held
        return False
    return True


def locked_temp(folder: Path, prefix: str = TEMP_PREFIX) -> tuple[int, str]:
    """A new temp file in `folder`, open and locked (flock) for as long as its writer lives,
    so a cleaner tells a running write from a killed one's leftovers without guessing by age.
    The caller renames it while the file is still open, then closes it."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
        lock(fd)
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass  # a cleaner took it in the instant before the lock: make another
        os.close(fd)


def remove_dead_temp(folder: Path) -> int:
    """Delete the temp files in `folder` that no live writer holds (`locked_temp`): a killed
    process leaves them behind, however young. Returns how many went."""
    removed = 0
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # gone already (renamed into place), or not a plain file
        if not try_lock(fd):
            os.close(fd)
            continue  # a live writer
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def hides_paths(method):
    """Decorate a method of an object with a `root`: its OSErrors name no store path."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            clean = without_paths(e, self.root)
            if clean is e:
                raise
            raise clean from e

    return wrapper


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
        self.root = root
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

    @hides_paths
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
        fd, tmp = locked_temp(self.dir)
        try:
            with os.fdopen(fd, "wb") as f:  # renamed while open: locked until in place
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
            if sync and not os.path.exists(tmp):
                _fsync_dir(self.dir)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def touch(self, digest: str) -> None:
        """Mark a blob as just used: gc's grace for unreferenced blobs counts from here."""
        os.utime(self.path(digest))

    @hides_paths
    def put_bytes(self, data: bytes, sync: bool = True) -> str:
        with self.writer(sync=sync) as w:
            w.write(data)
        return w.digest

    @hides_paths
    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None) -> str:
        with self.writer(expected) as w:
            for chunk in chunks:
                w.write(chunk)
        return w.digest

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

    def clean_temp(self) -> int:
        """Delete temp files left by killed writes (none a live writer holds); how many."""
        return remove_dead_temp(self.dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
