"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1 (Falcon on waitress), serving
repos from local folders, so the real `huggingface_hub.snapshot_download` runs end to end
against it: only the host differs. It answers what huggingface_hub 2.4 calls (see
`_snapshot_download.py`, `file_download.py`, `hf_api.py`):

    GET  /api/models/{repo}[/revision/{rev}]   repo info: sha, siblings (sizes with ?blobs=true)
    GET  /api/models/{repo}/tree/{rev}          recursive file listing (one page)
    HEAD /{repo}/resolve/{rev}/{path}           X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{path}           the bytes, with Range support

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo). No `X-Xet-*` headers, so the plain-HTTP downloader is the one exercised.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import falcon
import waitress

CHUNK = 1 << 20


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, Path] = field(default_factory=dict)  # commit sha -> folder
    token: str | None = None  # gated: requests need `Authorization: Bearer <token>`


class HubStandin:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.bytes_sent = 0
        self.corrupt: set[str] = set()  # paths served with their first byte flipped
        self._lock = threading.Lock()
        app = falcon.App()
        app.add_sink(
            self._info,
            re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$"),
        )
        app.add_sink(
            self._tree, re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
        )
        app.add_sink(
            self._resolve,
            re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
        )
        self._server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"

    def add(self, repo_id: str, folder: Path, refs=("main",), token: str | None = None) -> str:
        """Serve `folder` as a commit of `repo_id` that `refs` point at; returns its sha."""
        h = hashlib.sha1(repo_id.encode())
        for path in _files(folder):
            h.update(f"{path.relative_to(folder).as_posix()}\0{_sha256(path)}\n".encode())
        sha = h.hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[sha] = folder
        repo.refs.update(dict.fromkeys(refs, sha))
        repo.token = token or repo.token
        return sha

    def downloads(self) -> int:
        """How many file bodies were requested (GET .../resolve/...)."""
        return sum(1 for method, path in self.requests if method == "GET" and "/resolve/" in path)

    def start(self) -> HubStandin:
        threading.Thread(target=self._server.run, name="hub-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.close()

    # -- routes ----------------------------------------------------------------------------

    def _commit(self, req, repo_id: str, rev: str | None) -> tuple[str, Path]:
        with self._lock:
            self.requests.append((req.method, req.path))
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _error(falcon.HTTP_404, "RepoNotFound", "Repository not found")
        if repo.token and req.get_header("Authorization") != f"Bearer {repo.token}":
            raise _error(falcon.HTTP_401, "GatedRepo", "Access to this model is restricted")
        sha = repo.refs.get(rev or "main", rev if rev in repo.commits else None)
        if sha is None:
            raise _error(falcon.HTTP_404, "RevisionNotFound", "Invalid rev id")
        return sha, repo.commits[sha]

    def _info(self, req, resp, repo: str, rev: str | None = None) -> None:
        sha, folder = self._commit(req, repo, rev)
        blobs = req.get_param_as_bool("blobs") or False
        siblings = [
            {"rfilename": path, **(_blob(p) if blobs else {})} for path, p in _listing(folder)
        ]
        resp.media = {
            "id": repo,
            "modelId": repo,
            "sha": sha,
            "private": False,
            "siblings": siblings,
        }

    def _tree(self, req, resp, repo: str, rev: str) -> None:
        _, folder = self._commit(req, repo, rev)
        resp.media = [
            {"type": "file", "path": path, "size": p.stat().st_size, "oid": _oid(p)}
            for path, p in _listing(folder)
        ]

    def _resolve(self, req, resp, repo: str, rev: str, path: str) -> None:
        sha, folder = self._commit(req, repo, rev)
        resp.set_header("X-Repo-Commit", sha)
        file = folder / path
        if ".." in Path(path).parts or not file.is_file():
            raise _error(falcon.HTTP_404, "EntryNotFound", f"{path} does not exist", sha)
        size = file.stat().st_size
        resp.set_header("ETag", f'"{_sha256(file)}"')
        resp.set_header("Accept-Ranges", "bytes")
        start, end = 0, size - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", req.get_header("Range") or "")
        if m:
            start, end = int(m[1]), min(int(m[2] or size - 1), size - 1)
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        resp.content_length = end - start + 1
        if req.method == "GET":
            resp.stream = self._chunks(file, start, end - start + 1, path in self.corrupt)

    def _chunks(self, file: Path, start: int, length: int, corrupt: bool):
        with open(file, "rb") as f:
            f.seek(start)
            while length > 0 and (chunk := f.read(min(CHUNK, length))):
                if corrupt and f.tell() == start + len(chunk):
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                length -= len(chunk)
                with self._lock:
                    self.bytes_sent += len(chunk)
                yield chunk


def _error(status: str, code: str, message: str, sha: str | None = None) -> falcon.HTTPError:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if sha:
        headers["X-Repo-Commit"] = sha
    return falcon.HTTPError(status, description=message, headers=headers)


def _blob(path: Path) -> dict:
    """A sibling's `?blobs=true` fields; safetensors files are LFS files, as on the Hub."""
    size = path.stat().st_size
    blob = {"size": size, "blobId": _oid(path)}
    if path.suffix == ".safetensors":
        blob["lfs"] = {"sha256": _sha256(path), "size": size, "pointerSize": 134}
    return blob


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _listing(folder: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(folder).as_posix(), p) for p in _files(folder)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _oid(path: Path) -> str:
    """The git blob id, as the Hub gives it."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
