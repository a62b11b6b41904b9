"""The model store: tags pointing at manifests, manifests pointing at blobs.

Layout under the root (`MLXOLLAMA_MODELS`, default `~/.mlxollama`):

    blobs/sha256/<hex>                          content-addressed files
    manifests/<host>/<namespace>/<model>/<tag>  OCI manifest JSON; the tag is the path
    cache/verified.json                         stat of blobs last hashed at load
    logs/                                       daemon logs
    .lock                                       held by whoever mutates the store

One writer at a time: every mutation runs under the `.lock` file lock, in this process or
another. Readers take no lock: a manifest appears by an atomic rename after all its blobs
exist, and only unreferenced blobs are ever deleted, so a reader sees a model whole or not
at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock, Timeout

from mlxollama.errors import BlobNotFound, DigestMismatch, ModelNotFound
from mlxollama.store.blobs import (
    BlobStore,
    hides_paths,
    locked_temp,
    remove_dead_temp,
    try_lock,
)
from mlxollama.store.manifests import Manifest
from mlxollama.store.names import ModelName, parse_name

PARTIAL_KEEP = 7 * 24 * 3600.0  # seconds an untouched partial download is kept for a resume


# seconds a killed build's last blob may postdate its journal (see _undo_dead_builds)
JOURNAL_SLACK = 2.0


class BuildJournal:
    """The blobs one build adds, in a file its writer holds locked: each digest is written
    before its blob, and the file is touched after it, so its mtime is never older than a
    blob the build wrote."""

    def __init__(self, fd: int):
        self.fd = fd

    def adding(self, digest: str) -> None:
        os.write(self.fd, f"{digest}\n".encode())

    def added(self) -> None:
        os.write(self.fd, b"\n")


@dataclass(frozen=True)
class StoredModel:
    """A tag as found in the store."""

    name: ModelName
    manifest: Manifest
    digest: str  # sha256 hex of the manifest bytes (Ollama's model digest / ID)
    modified_at: float

    @property
    def size(self) -> int:
        return self.manifest.size()


@dataclass(frozen=True)
class Problem:
    """One bad blob found by `verify`."""

    digest: str
    error: str


class Store:
    def __init__(self, root: Path | str, clock: Callable[[], float] = time.time):
        self.root = Path(root).expanduser()
        self.blobs = BlobStore(self.root)
        self.manifests_dir = self.root / "manifests"
        self.clock = clock
        self._lock = FileLock(str(self.root / ".lock"))
        # manifest path -> ((inode, mtime, size), StoredModel): a model's manifest (hundreds
        # of layers) is parsed once, not on every request; a rewrite is a rename (new inode)
        self._parsed: dict[Path, tuple[tuple[int, int, int], StoredModel]] = {}
        # uploads (`POST /api/blobs`) that a create in this process is reading: gc spares them
        self._claims: Counter[str] = Counter()
        self._claims_lock = threading.Lock()

    # -- locking ---------------------------------------------------------------------------

    def lock(self) -> FileLock:
        """The writer lock (re-entrant within a thread). Hold it around any mutation."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self._lock

    # -- reading ---------------------------------------------------------------------------

    def _tag_paths(self) -> list[Path]:
        if not self.manifests_dir.is_dir():
            return []
        return [p for p in self.manifests_dir.glob("*/*/*/*") if p.is_file()]

    def _name_of(self, path: Path) -> ModelName:
        host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
        return ModelName(host, namespace, model, tag)

    @hides_paths
    def find(self, name: str | ModelName) -> ModelName | None:
        """The stored spelling of `name`, matched case-insensitively, or None."""
        wanted = parse_name(name) if isinstance(name, str) else name
        exact = self.manifests_dir / wanted.path()
        if exact.is_file():
            return wanted
        folded = wanted.casefold()
        for path in self._tag_paths():
            candidate = self._name_of(path)
            if candidate.casefold() == folded:
                return candidate
        return None

    @hides_paths
    def get(self, name: str | ModelName) -> StoredModel:
        """Read one model's manifest.

        Raises:
            InvalidName: the name does not follow the grammar.
            ModelNotFound: no such tag.
        """
        found = self.find(name)
        if found is None:
            raise ModelNotFound(str(name) if isinstance(name, str) else name.display())
        return self._read(found)

    def _read(self, name: ModelName) -> StoredModel:
        path = self.manifests_dir / name.path()
        st = path.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == key and cached[1].name == name:
            return cached[1]
        data = path.read_bytes()
        model = StoredModel(
            name=name,
            manifest=Manifest.from_bytes(data),
            digest=hashlib.sha256(data).hexdigest(),
            modified_at=st.st_mtime,
        )
        self._parsed[path] = (key, model)
        return model

    @hides_paths
    def list(self) -> list[StoredModel]:
        """Every tag, newest first."""
        models = []
        for path in self._tag_paths():
            try:
                models.append(self._read(self._name_of(path)))
            except (OSError, ValueError):
                continue  # a foreign file under manifests/ is not a model
        return sorted(models, key=lambda m: m.modified_at, reverse=True)

    def config(self, model: StoredModel) -> dict[str, Any]:
        """The model's config blob (model config, details, provenance)."""
        return orjson.loads(self.blobs.read_bytes(model.manifest.config.digest))

    def referenced(self) -> set[str]:
        refs: set[str] = set()
        for model in self.list():
            refs.update(model.manifest.digests())
        return refs

    # -- writing (callers hold the lock) ----------------------------------------------------

    @hides_paths
    def put_manifest(self, name: ModelName, manifest: Manifest) -> StoredModel:
        """Point `name` at `manifest`, atomically. Every blob must already be stored.

        Raises:
            BlobNotFound: a referenced blob is missing (the tag is left untouched).
        """
        for digest in manifest.digests():
            if not self.blobs.exists(digest):
                raise BlobNotFound(f"cannot tag {name.display()}: blob {digest} is missing")
        path = self.manifests_dir / name.path()
        try:
            old = Manifest.from_bytes(path.read_bytes())
        except (OSError, ValueError):
            old = None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = locked_temp(path.parent)
        try:
            with os.fdopen(fd, "wb") as f:  # renamed while open: locked until in place
                f.write(manifest.to_bytes())
                f.flush()
                os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if old is not None:  # the tag moved: what only the old manifest used is garbage now
            self.remove_unreferenced(set(old.digests()) - set(manifest.digests()))
        return self._read(name)

    @hides_paths
    def copy(self, source: str, destination: str) -> StoredModel:
        """Tag `destination` with `source`'s manifest (blobs are shared, nothing is copied)."""
        dst = parse_name(destination)
        with self.lock():
            src = self.get(source)
            return self.put_manifest(dst, src.manifest)

    @hides_paths
    def remove(self, name: str) -> StoredModel:
        """Delete a tag, then every blob no other tag references."""
        with self.lock():
            model = self.get(name)
            path = self.manifests_dir / model.name.path()
            path.unlink()
            for parent in list(path.parents)[:3]:  # tag's model, namespace and host folders
                try:
                    parent.rmdir()
                except OSError:
                    break
            self.remove_unreferenced(set(model.manifest.digests()))
            return model

    def remove_unreferenced(self, candidates: set[str]) -> tuple[int, int]:
        """Remove the blobs among `candidates` that no manifest references: what a failed
        create, pull or import added, or what a removed or moved tag used. The caller holds
        the store lock (`lock()`), so no manifest can start referring to one meanwhile.

        Returns:
            (blobs removed, bytes freed)
        """
        unreferenced = candidates - self.referenced()
        freed = 0
        for digest in unreferenced:
            try:
                freed += self.blobs.size(digest)
            except BlobNotFound:
                continue
            self.blobs.remove(digest)
        return len(unreferenced), freed

    @hides_paths
    def gc(self, grace: float = 3600.0) -> tuple[int, int]:
        """Remove blobs that no manifest references, what killed writers left (`recover`)
        and week-old partial downloads.

        Unreferenced blobs younger than `grace` seconds stay: a blob uploaded for a create
        that has not run yet (`POST /api/blobs`; uploading it again refreshes it) is
        unreferenced too, as in Ollama. Uploads a running create reads stay too.

        Returns:
            (blobs removed, bytes freed), killed builds' blobs included
        """
        with self.lock():
            count, freed = self.recover()
            self._clean_partials()
            self._clean_prompt_caches()
            cutoff = self.clock() - grace
            old = set()
            for digest in self.blobs.digests() - self._claimed():
                try:
                    if self.blobs.path(digest).stat().st_mtime <= cutoff:
                        old.add(digest)
                except FileNotFoundError:
                    continue
            more, more_freed = self.remove_unreferenced(old)
            return count + more, freed + more_freed

    def prompt_cache_dir(self, digest: str) -> Path:
        """Where the prompt cache of the model with manifest `digest` keeps its files."""
        return self.root / "cache" / "prompts" / digest.replace(":", "-")

    def _clean_prompt_caches(self) -> None:
        """Remove the prompt caches of models no manifest names any more."""
        folder = self.root / "cache" / "prompts"
        if not folder.is_dir():
            return
        live = {self.prompt_cache_dir(m.digest).name for m in self.list()}
        for entry in folder.iterdir():
            if entry.name not in live:
                shutil.rmtree(entry, ignore_errors=True)

    # -- what killed writers leave ----------------------------------------------------------

    @hides_paths
    def recover(self, wait: bool = True) -> tuple[int, int]:
        """Remove the temp files no live writer holds (blobs, manifests, the verify cache)
        and the blobs of builds killed before their manifest (`build_journal`). Without
        `wait`, does nothing when another writer holds the store (a daemon starting beside
        a running `mlxctl create`). Returns (blobs removed, bytes freed)."""
        try:
            self.lock().acquire(timeout=-1 if wait else 0)
        except Timeout:
            return 0, 0
        try:
            self.blobs.clean_temp()
            remove_dead_temp(self.root / "cache")
            if self.manifests_dir.is_dir():
                for folder in self.manifests_dir.glob("*/*/*"):
                    remove_dead_temp(folder)
            return self._undo_dead_builds()
        finally:
            self.lock().release()

    @contextlib.contextmanager
    def build_journal(self) -> Iterator[BuildJournal]:
        """A record of the blobs a build adds (callers hold the lock). The build removes its
        blobs itself when it fails; when it is killed, the record stays, unlocked, and
        `recover` removes what it names."""
        folder = self.root / "cache" / "builds"
        folder.mkdir(parents=True, exist_ok=True)
        fd, path = locked_temp(folder, prefix="build-")
        try:
            yield BuildJournal(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)

    def _undo_dead_builds(self) -> tuple[int, int]:
        folder = self.root / "cache" / "builds"
        if not folder.is_dir():
            return 0, 0
        count = freed = 0
        for journal in folder.iterdir():
            try:
                fd = os.open(journal, os.O_RDONLY)
            except OSError:
                continue
            try:
                if not try_lock(fd):
                    continue  # a build in another thread of this process
                # a blob written again after the build died (an upload for the next create)
                # is newer than the journal's last line, and stays
                ended = os.fstat(fd).st_mtime
                lines = [d for d in journal.read_text().split() if len(d) == 71]
                dead = set()
                for digest in set(lines):
                    # the last one may have been killed between its blob's rename and the
                    # journal's touch: its blob is then a moment newer than the journal
                    slack = JOURNAL_SLACK if digest == lines[-1] else 0.0
                    with contextlib.suppress(FileNotFoundError):
                        if self.blobs.path(digest).stat().st_mtime <= ended + slack:
                            dead.add(digest)
                removed, size = self.remove_unreferenced(dead)
                count, freed = count + removed, freed + size
                journal.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return count, freed

    # -- uploads a create reads -------------------------------------------------------------

    def claim_uploads(self, digests: Iterable[str]) -> float:
        """Mark uploaded blobs as read by a create, so gc spares them; returns the time of
        the claim, for `release_uploads`. The claim is held in memory for this process's gc
        and written as a fresh mtime for another's (`mlxctl gc` spares blobs younger than its
        grace)."""
        digests = set(digests)
        with self._claims_lock:
            self._claims.update(digests)
        since = time.time()
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                self.blobs.touch(digest)
                since = max(since, self.blobs.path(digest).stat().st_mtime)
        return since

    def release_uploads(self, digests: Iterable[str], since: float, drop: bool) -> int:
        """End a claim. With `drop` (the create succeeded), remove the uploads that are now
        unreferenced, claimed by no other create and not uploaded again since the claim:
        the model holds what it needs in its own blobs. Returns how many went."""
        digests = set(digests)
        with self._claims_lock:
            self._claims.subtract(digests)
            self._claims = +self._claims
        if not drop or not digests:
            return 0
        with self.lock():
            idle = set()
            for digest in digests - self._claimed():
                try:
                    if self.blobs.path(digest).stat().st_mtime <= since:
                        idle.add(digest)
                except FileNotFoundError:
                    continue
            return self.remove_unreferenced(idle)[0]

    def _claimed(self) -> set[str]:
        with self._claims_lock:
            return set(self._claims)

    def _clean_partials(self) -> None:
        """Drop interrupted downloads (`blobs/partial/`) untouched for PARTIAL_KEEP seconds:
        a pull resumes from them, so they outlive restarts (Ollama's users lost theirs)."""
        folder = self.root / "blobs" / "partial"
        if not folder.is_dir():
            return
        cutoff = self.clock() - PARTIAL_KEEP
        for path in folder.iterdir():  # not locks/: a lock file may be held (oci.blob_lock)
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime <= cutoff:
                    path.unlink()

    @hides_paths
    def check_blobs(self, model: StoredModel) -> None:
        """Check every blob of a model before it is loaded.

        A blob is re-hashed unless its size, mtime and inode equal those recorded when it last
        hashed correctly (`cache/verified.json`), so a blob changed on disk is caught while an
        unchanged store loads without reading every byte twice.

        Raises:
            BlobNotFound, DigestMismatch: the first bad blob.
        """
        cache_path = self.root / "cache" / "verified.json"
        try:
            cache = orjson.loads(cache_path.read_bytes())
        except (OSError, ValueError):
            cache = {}
        changed = False
        for digest in model.manifest.digests():
            path = self.blobs.path(digest)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise BlobNotFound(f"blob {digest} is missing from the store") from None
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
            if cache.get(digest) == stamp:
                continue
            self.blobs.check(digest)
            cache[digest] = stamp
            changed = True
        if changed:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = locked_temp(cache_path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(cache))
                os.replace(tmp, cache_path)

    def verify(self, name: str, progress: Callable[[str], None] | None = None) -> list[Problem]:
        """Re-hash every blob of a model; returns the problems found (empty: all good)."""
        model = self.get(name)
        problems = []
        for digest in model.manifest.digests():
            if progress:
                progress(digest)
            try:
                self.blobs.check(digest)
            except (BlobNotFound, DigestMismatch) as e:
                problems.append(Problem(digest, str(e)))
        return problems
