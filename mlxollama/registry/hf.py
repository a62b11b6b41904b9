"""Models from Hugging Face: `hf.co/ORG/REPO[:REVISION]` (`latest` is the branch `main`).

A pull resolves the revision to its commit sha, downloads the safetensors weights, config and
tokenizer files of that commit with huggingface_hub's own `snapshot_download` into a cache
under the store (`<root>/cache/huggingface`, HF's layout, so a second pull of the same commit
downloads nothing), checks the sha256 of every weight file the Hub announces one for, then
builds the model through the foundation's `create` path. Provenance records the source as
`{"type": "huggingface", "repo": "ORG/REPO", "revision": "<commit sha>", ...}`.

Settings, given by the caller: the endpoint (`Config.hf_endpoint`, from `MLXOLLAMA_HF_ENDPOINT`:
a Hub mirror; default: huggingface_hub's own, which honours `HF_ENDPOINT`), the token from
`Credentials.token` or else huggingface_hub's (`HF_TOKEN`, `hf auth login`). With `HF_HUB_OFFLINE=1` a pull builds from the
cache alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from mlxollama.errors import (
    DigestMismatch,
    RegistryError,
    RegistryUnreachable,
    RemoteNotFound,
    Unauthorized,
    UnsupportedModel,
)
from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.registry import Credentials, Progress
from mlxollama.store.blobs import CHUNK
from mlxollama.store.names import DEFAULT_TAG, ModelName
from mlxollama.store.store import Store, StoredModel

try:  # huggingface_hub 2.x speaks httpx2; 1.x spoke httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError

DEFAULT_BRANCH = "main"

# What a model folder needs: weights, config and tokenizer files at the repo's top level
# (build reads nothing deeper: no onnx/, openvino/ or original/ copies), plus
# sentence-transformers' pooling settings one level down. Exactly these names are fetched.
_TOP_LEVEL = re.compile(r"[^/]+\.(safetensors|json|txt|model|jinja)")
_POOLING = re.compile(r"[^/]+_Pooling/config\.json")


def wanted(path: str) -> bool:
    """Whether a repo file is one a model build reads."""
    return bool(_TOP_LEVEL.fullmatch(path) or _POOLING.fullmatch(path))


def pull(
    store: Store,
    target: ModelName,
    *,
    progress: Progress,
    credentials: Credentials | None = None,
    endpoint: str | None = None,
) -> StoredModel:
    """Pull `hf.co/ORG/REPO[:REVISION]` into `store`, tagged `target`.

    `endpoint` is the Hub to ask; default: huggingface_hub's.

    `progress` receives Ollama's events: `pulling manifest`; `pulling <commit hex12>` with
    `digest` (the commit sha: huggingface_hub reports one byte count for all files) and the
    bytes `total` and `completed` (called from huggingface_hub's download threads, one call
    at a time); `verifying sha256 digest`; then create's events up to `success`.

    Raises:
        RemoteNotFound: no such repo or revision (or a private repo and no token).
        Unauthorized: a gated repo without access, or a token the Hub refuses.
        RegistryUnreachable: the Hub cannot be reached (or offline and not cached).
        RegistryError: any other failed transfer.
        UnsupportedModel: the repo has no safetensors weights, or build refuses them.
        DigestMismatch: a weight file whose sha256 is not the one the Hub announced.
    """
    from huggingface_hub import constants

    repo_id = f"{target.namespace}/{target.model}"
    ref = DEFAULT_BRANCH if target.tag == DEFAULT_TAG else target.tag
    where = f"hf.co/{repo_id}"
    endpoint = endpoint or None
    token = credentials.token if credentials is not None else None
    cache_dir = store.root / "cache" / "huggingface"
    offline = constants.is_offline_mode()

    progress({"status": "pulling manifest"})
    with _hub_errors(where, ref, endpoint or constants.ENDPOINT, offline):
        if offline:
            sha, files = _cached_listing(repo_id, ref, cache_dir)
        else:
            sha, files = _remote_listing(repo_id, ref, endpoint, token)
        _check_weights(where, files)
        snapshot = cache_dir / _repo_folder(repo_id) / "snapshots" / sha
        fresh = {f: info for f, info in files.items() if not (snapshot / f).exists()}
        counter = _ByteEvents(sha, fresh, progress)
        folder = _download(
            repo_id, sha, sorted(files), cache_dir, endpoint, token, counter, offline
        )
        counter.finish()
    if ref != sha:  # the branch or tag, so an offline pull finds the commit
        _write_ref(cache_dir / _repo_folder(repo_id), ref, sha)
    _verify(folder, fresh, progress)
    origin = {
        "type": "huggingface",
        "repo": repo_id,
        "revision": sha,
        "ref": ref,
        "endpoint": endpoint or constants.ENDPOINT,
    }
    spec = BuildSpec(source=str(folder), revision=sha, origin=origin)
    return create(store, target.display(), spec, progress)


# -- listing -------------------------------------------------------------------------------


def _remote_listing(
    repo_id: str, ref: str, endpoint: str | None, token: str | None
) -> tuple[str, dict[str, dict]]:
    """The commit sha of `ref` and the wanted files: name -> {size, sha256} (either may be None)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(
        repo_id, revision=ref, files_metadata=True
    )
    files = {
        s.rfilename: {"size": s.size, "sha256": s.lfs.sha256 if s.lfs else None}
        for s in info.siblings or []
        if wanted(s.rfilename)
    }
    return info.sha, files


def _cached_listing(repo_id: str, ref: str, cache_dir: Path) -> tuple[str, dict[str, dict]]:
    """As `_remote_listing`, from the cache alone (HF_HUB_OFFLINE)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError

    try:
        tree = get_cached_repo_tree(repo_id, revision=ref, cache_dir=cache_dir)
    except CachedRepoTreeNotFoundError as e:
        raise LocalEntryNotFoundError(str(e)) from e
    ref_file = cache_dir / _repo_folder(repo_id) / "refs" / ref
    sha = ref_file.read_text().strip() if ref_file.is_file() else ref
    return sha, {f.path: {"size": f.size, "sha256": None} for f in tree if wanted(f.path)}


def _check_weights(where: str, files: dict[str, dict]) -> None:
    if any(name.endswith(".safetensors") for name in files):
        return
    raise UnsupportedModel(
        f"{where} has no safetensors weights at its top level: mlxollama pulls safetensors "
        "models from Hugging Face (for a GGUF repo, download the .gguf and create a model "
        "FROM it)"
    )


# -- downloading ---------------------------------------------------------------------------


def _download(
    repo_id: str,
    sha: str,
    names: list[str],
    cache_dir: Path,
    endpoint: str | None,
    token: str | None,
    counter: _ByteEvents,
    offline: bool,
) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id,
        revision=sha,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        allow_patterns=[_literal(name) for name in names],
        tqdm_class=counter.bar_class(),
        local_files_only=offline,
    )
    return Path(folder)


class _ByteEvents:
    """Bytes written by a snapshot download, as throttled `pulling` events.

    huggingface_hub feeds every file's bytes into one aggregate "Reconstructing" bar (the
    per-file bars are internal to `snapshot_download`), from its worker threads.
    """

    def __init__(self, sha: str, fresh: dict[str, dict], progress: Progress):
        self.sha, self.progress = sha, progress
        sizes = [info["size"] for info in fresh.values()]
        self.total: int | None = None if None in sizes else sum(sizes)
        self.completed = 0
        self._lock = threading.Lock()
        self._last = (0.0, 0)  # time and bytes of the last event

    def add(self, n: int) -> None:
        with self._lock:
            self.completed += n
            total = max(self.total or 0, self.completed)
            now = time.monotonic()
            if now - self._last[0] >= 0.1 or self.completed - self._last[1] >= total / 50:
                self._emit(total, now)

    def finish(self) -> None:
        with self._lock:
            if self.total or self.completed:
                self._emit(self.completed if self.total is None else self.total, 0.0)

    def _emit(self, total: int, now: float) -> None:
        self._last = (now, self.completed)
        self.progress(
            {
                "status": f"pulling {self.sha[:12]}",
                "digest": self.sha,
                "total": total,
                "completed": min(self.completed, total),
            }
        )

    def bar_class(self) -> type:
        counter = self

        class Bar(tqdm):
            """A silent tqdm whose byte count goes to `counter`."""

            def __init__(self, *args, **kwargs):
                self.counts = str(kwargs.get("desc") or "").startswith("Reconstructing")
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n=1):
                if self.counts and n:
                    counter.add(int(n))

        return Bar


def _verify(folder: Path, fresh: dict[str, dict], progress: Progress) -> None:
    """Check the sha256 of the files just downloaded that the Hub gave one for (LFS files);
    a bad one is removed from the cache, so the next pull fetches it again."""
    checked = {name: info["sha256"] for name, info in fresh.items() if info["sha256"]}
    if not checked:
        return
    progress({"status": "verifying sha256 digest"})
    for name, expected in sorted(checked.items()):
        path = folder / name
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != expected:
            real = path.resolve()
            path.unlink(missing_ok=True)
            real.unlink(missing_ok=True)
            raise DigestMismatch(
                f'digest mismatch for {name}, expected "sha256:{expected}", '
                f'got "sha256:{h.hexdigest()}"'
            )


# -- errors --------------------------------------------------------------------------------


@contextmanager
def _hub_errors(where: str, ref: str, endpoint: str, offline: bool) -> Iterator[None]:
    """huggingface_hub's exceptions as the registry's."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise Unauthorized(
            f"{where} is gated: accept its conditions on huggingface.co and give a token "
            "(HF_TOKEN or `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise RemoteNotFound(
            f"{where} not found on Hugging Face (if it is private, give a token: HF_TOKEN or "
            "`hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise RemoteNotFound(f"revision '{ref}' of {where} not found on Hugging Face") from None
    except RemoteEntryNotFoundError as e:
        raise RegistryError(f"{where}@{ref}: a listed file is missing on the Hub: {e}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise Unauthorized(f"Hugging Face refused access to {where} ({status})") from None
        raise RegistryError(f"Hugging Face failed on {where}: {e}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if offline:
            raise RegistryUnreachable(
                f"HF_HUB_OFFLINE is set and {where}@{ref} is not in the cache"
            ) from None
        raise RegistryUnreachable(f"cannot reach Hugging Face at {endpoint}: {e}") from None
    except TransportError as e:
        raise RegistryUnreachable(f"cannot reach Hugging Face at {endpoint}: {e}") from None


# -- the cache -----------------------------------------------------------------------------


def _repo_folder(repo_id: str) -> str:
    return "--".join(["models", *repo_id.split("/")])


def _write_ref(storage: Path, ref: str, sha: str) -> None:
    path = storage / "refs" / ref
    if path.is_file() and path.read_text() == sha:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ref}.{os.getpid()}.tmp")
    tmp.write_text(sha)
    os.replace(tmp, path)


def _literal(name: str) -> str:
    """An fnmatch pattern matching exactly `name`."""
    return re.sub(r"([*?\[])", r"[\1]", name)
