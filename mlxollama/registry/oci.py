"""Pull and push over the OCI distribution protocol (Docker Registry HTTP API v2).

Written on httpx rather than oras-py: oras-py 0.2 retries every failure for 131 s, sets no
timeouts, reads uploads into memory, checks no digest and cannot resume
(`docs/registry.md`). Here every request has timeouts and at most three attempts; blobs stream
to a partial file under `blobs/partial/` that survives a crash or restart and is resumed with
`Range`; each blob is hashed while it arrives and enters the store only if its digest matches;
the manifest is written last. Blobs already in the store are not fetched again (diff pulls), and
two pulls of one blob share one download (a lock file per blob, so across processes too).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
import structlog
from filelock import FileLock, Timeout

from mlxollama import __version__
from mlxollama.errors import (
    DigestMismatch,
    RegistryError,
    RegistryUnreachable,
    RemoteNotFound,
    Unauthorized,
)
from mlxollama.registry import Credentials, Progress
from mlxollama.store import manifests as mt
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import ModelName, parse_digest
from mlxollama.store.store import Store, StoredModel

log = structlog.get_logger("mlxollama.registry")

OCI_MANIFEST = mt.MANIFEST_MEDIA_TYPE
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OLLAMA_LAYER_PREFIX = "application/vnd.ollama.image."
CHUNK = 1 << 20
WORKERS = 8  # blobs transferred at once
ATTEMPTS = 3  # per request; a dropped download resumes from where it stopped
BACKOFF = 0.3  # seconds, doubled after each failed attempt
PROGRESS_EVERY = 0.1  # seconds between progress events for one blob
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


def plain_http_allowed(host: str, insecure: bool) -> bool:
    """Plain HTTP only for `insecure` or this machine (as Ollama and Docker do)."""
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return insecure or hostname in LOCAL_HOSTS


class Client:
    """One repository on one registry, with auth (Basic, Bearer tokens from the registry's
    challenge, or a given token), timeouts and bounded retries."""

    def __init__(self, name: ModelName, insecure: bool = False, credentials=None):
        self.host = name.host
        scheme = "http" if plain_http_allowed(name.host, insecure) else "https"
        self.base = f"{scheme}://{name.host}"
        self.repository = f"{name.namespace}/{name.model}"
        self.credentials: Credentials | None = credentials
        self.token = credentials.token if credentials and credentials.token else None
        self.http = httpx.Client(
            timeout=TIMEOUT,
            follow_redirects=True,
            headers={"User-Agent": f"mlxollama/{__version__}"},
        )

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repository}/{path}"

    # -- requests ------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        c = self.credentials
        if c and c.username:
            pair = base64.b64encode(f"{c.username}:{c.password or ''}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    @contextlib.contextmanager
    def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """A streamed response (the body is read by the caller), after auth and retries.

        Raises:
            RegistryUnreachable: no answer after ATTEMPTS tries (connection, timeout, 5xx).
            Unauthorized: 401/403 that credentials could not fix.
        """
        delay = BACKOFF
        # a streamed body (an upload) cannot be replayed: one attempt, the caller retries
        attempts = ATTEMPTS if isinstance(kwargs.get("content", b""), (bytes, str)) else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._send(method, url, headers or {}, kwargs)
            except httpx.TransportError as e:
                if attempt == attempts:
                    raise RegistryUnreachable(
                        f"could not reach the registry {self.host}: {e or type(e).__name__}"
                    ) from None
            else:
                if response.status_code < 500 and response.status_code != 429:
                    break
                if attempt == attempts:
                    break
                response.close()
            time.sleep(delay)
            delay *= 2
        try:
            if response.status_code in (401, 403):
                raise Unauthorized(
                    f"{self.host} refused access to {self.repository} "
                    f"({response.status_code}): set MLXOLLAMA_REGISTRY_USERNAME and "
                    "MLXOLLAMA_REGISTRY_PASSWORD (or MLXOLLAMA_REGISTRY_TOKEN)"
                )
            yield response
        finally:
            response.close()

    def _send(self, method: str, url: str, headers: dict, kwargs: dict) -> httpx.Response:
        used = self.token  # another transfer thread may refresh it meanwhile
        request = self.http.build_request(
            method, url, headers={**self._auth_headers(), **headers}, **kwargs
        )
        response = self.http.send(request, stream=True)
        if response.status_code == 401 and self._answer_challenge(response, used):
            response.close()
            if "content" in kwargs and not isinstance(kwargs["content"], (bytes, str)):
                return response  # a streamed body cannot be sent twice; callers probe first
            request = self.http.build_request(
                method, url, headers={**self._auth_headers(), **headers}, **kwargs
            )
            response = self.http.send(request, stream=True)
        return response

    def _answer_challenge(self, response: httpx.Response, used: str | None) -> bool:
        """Fetch a Bearer token for a `WWW-Authenticate: Bearer realm=...` challenge, or
        switch to Basic; False when there is nothing new to try (the token `used` for the
        refused request is what the token service hands out again)."""
        if self.token != used:
            return True  # another thread got a new token since: try that one
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, params = challenge.partition(" ")
        c = self.credentials
        if scheme.lower() == "basic":  # Basic went out with the request when we have it
            if self.token and c and c.username:
                self.token = None  # a given token the registry does not take: try Basic
                return True
            return False
        if scheme.lower() != "bearer":
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", "")
        if not realm:
            return False
        auth = httpx.BasicAuth(c.username, c.password or "") if c and c.username else None
        try:
            r = self.http.get(realm, params=fields, auth=auth)
        except httpx.TransportError as e:
            raise RegistryUnreachable(f"could not reach the token service {realm}: {e}") from None
        if r.status_code != 200:
            return False
        body = r.json()
        token = body.get("token") or body.get("access_token")
        if not token or token == used:
            return False
        self.token = token
        return True

    def fail(self, response: httpx.Response, what: str) -> RegistryError:
        response.read()
        text = response.text.strip().replace("\n", " ")[:300]
        return RegistryError(f"{self.host}: {what} failed ({response.status_code}): {text}")

    # -- the protocol ----------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> bytes:
        accept = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST))
        with self.request(
            "GET", self.url(f"manifests/{reference}"), headers={"Accept": accept}
        ) as r:
            if r.status_code == 404:
                raise RemoteNotFound(
                    f"pull model manifest: file does not exist: {self.repository}:{reference} "
                    f"is not on {self.host}"
                )
            if r.status_code != 200:
                raise self.fail(r, f"fetching the manifest of {self.repository}:{reference}")
            return r.read()

    def has_blob(self, digest: str) -> bool:
        with self.request("HEAD", self.url(f"blobs/{digest}")) as r:
            return r.status_code == 200

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        headers = {"Content-Type": media_type}
        url = self.url(f"manifests/{reference}")
        with self.request("PUT", url, headers=headers, content=data) as r:
            if r.status_code not in (200, 201):
                raise self.fail(r, f"pushing the manifest of {self.repository}:{reference}")

    def upload_blob(self, path: Path, digest: str, on_bytes) -> None:
        """A monolithic upload: POST for a session, then PUT the file streamed from disk."""
        with self.request("POST", self.url("blobs/uploads/")) as r:
            if r.status_code != 202 or "Location" not in r.headers:
                raise self.fail(r, f"starting the upload of {digest}")
            location = urljoin(self.base + "/", r.headers["Location"])
        separator = "&" if "?" in location else "?"
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    yield block
                    on_bytes(len(block))

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        url = f"{location}{separator}digest={digest}"
        with self.request("PUT", url, headers=headers, content=chunks()) as r:
            if r.status_code != 201:
                raise self.fail(r, f"uploading {digest}")


# -- pull --------------------------------------------------------------------------------------


@dataclass
class Remote:
    """A manifest as the registry sent it."""

    raw: bytes
    doc: dict[str, Any]
    config: Descriptor
    layers: list[Descriptor]

    @property
    def is_ollama(self) -> bool:
        """An Ollama-style model: GGUF and text layers (`application/vnd.ollama.image.*`)."""
        return any(d.media_type.startswith(OLLAMA_LAYER_PREFIX + "model") for d in self.layers)

    @property
    def is_ours(self) -> bool:
        return self.config.media_type == mt.CONFIG_MEDIA_TYPE


def parse_remote(raw: bytes, where: str) -> Remote:
    try:
        doc = orjson.loads(raw)
        config = Descriptor.from_dict(doc["config"])
        layers = [Descriptor.from_dict(d) for d in doc.get("layers") or []]
        for d in [config, *layers]:
            parse_digest(d.digest)
            if d.size < 0:
                raise ValueError(f"negative size for {d.digest}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"{where}: the manifest is not an OCI image manifest: {e}") from None
    return Remote(raw, doc, config, layers)


def pull(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    credentials=None,
    progress: Progress,
) -> StoredModel:
    """Pull `name` (see `mlxollama.registry.pull`)."""
    client = Client(name, insecure, credentials)
    try:
        progress({"status": "pulling manifest"})
        remote = parse_remote(client.get_manifest(name.tag), f"{name.host}/{client.repository}")
        if not (remote.is_ours or remote.is_ollama):
            raise RegistryError(
                f"{name.display()} is neither an mlxollama model nor an Ollama model "
                f"(config {remote.config.media_type})"
            )
        blobs = [remote.config, *remote.layers]
        for d in blobs:  # announce every layer first (`completed` omitted while 0, as Ollama)
            if not store.blobs.exists(d.digest):
                progress({"status": _pulling(d), "digest": d.digest, "total": d.size})
        each(lambda d: fetch_blob(store, client, d, progress), blobs)
        progress({"status": "verifying sha256 digest"})  # each blob was checked as it arrived
        store.blobs.sync()  # downloads skip fsync one by one: one flush before the manifest
        if remote.is_ollama and not remote.is_ours:
            from mlxollama.registry.ollama import convert

            origin = {"type": "registry", "reference": name.display(), "format": "ollama"}
            return convert(store, name, remote, origin, progress)
        progress({"status": "writing manifest"})
        manifest = Manifest.from_bytes(remote.raw)
        with store.lock():
            stored = store.put_manifest(name, manifest)
        log.info("pull.done", model=name.display(), digest=stored.digest)
        progress({"status": "success"})
        return stored
    finally:
        client.close()


def each(work, descriptors: list[Descriptor]) -> None:
    """Run `work` on every descriptor, WORKERS at a time (a model is hundreds of small tensor
    blobs: latency, not bandwidth, bounds one at a time); the first error is raised once the
    others have stopped."""
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(work, d) for d in descriptors]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _pulling(d: Descriptor) -> str:
    return f"pulling {d.digest.split(':', 1)[1][:12]}"


def partial_path(store: Store, digest: str) -> Path:
    return store.root / "blobs" / "partial" / f"sha256-{parse_digest(digest).split(':', 1)[1]}"


def fetch_blob(store: Store, client: Client, d: Descriptor, progress: Progress) -> None:
    """Make blob `d` present in the store: skip it if it is there, wait for a pull that is
    fetching it already, else download (resuming a partial file) and verify it."""
    done = {"status": _pulling(d), "digest": d.digest, "total": d.size, "completed": d.size}
    if store.blobs.exists(d.digest):
        progress(done)
        return
    partial = partial_path(store, d.digest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(partial) + ".lock")
    while True:  # another pull may hold the lock: report its progress until it is done
        try:
            lock.acquire(timeout=PROGRESS_EVERY * 5)
            break
        except Timeout:
            with contextlib.suppress(FileNotFoundError):
                progress({**done, "completed": partial.stat().st_size})
    try:
        if store.blobs.exists(d.digest):  # the other pull finished it
            progress(done)
            return
        _download(store, client, d, partial, lambda n: progress({**done, "completed": n}))
        progress(done)
    finally:
        lock.release()  # the lock file stays (removing it races a waiter); gc drops old ones


def _download(store: Store, client: Client, d: Descriptor, partial: Path, report) -> None:
    hasher = hashlib.sha256()
    have = partial.stat().st_size if partial.exists() else 0
    if have > d.size:
        have = 0
    if have:
        with open(partial, "rb") as f:  # the kept bytes count only if they hash on
            while block := f.read(CHUNK):
                hasher.update(block)
    url = client.url(f"blobs/{d.digest}")
    last = 0.0
    for attempt in range(1, ATTEMPTS + 1):
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with client.request("GET", url, headers=headers) as r:
                if r.status_code == 404:
                    raise RemoteNotFound(f"{client.host} has no blob {d.digest}")
                if r.status_code == 416 and have == d.size:
                    break  # everything is here already
                if r.status_code not in (200, 206):
                    raise client.fail(r, f"downloading {d.digest}")
                if r.status_code == 206 and not r.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                ):
                    raise client.fail(r, f"resuming {d.digest} at byte {have}")
                if r.status_code == 200 and have:  # no range support: start over
                    have, hasher = 0, hashlib.sha256()
                with open(partial, "r+b" if have else "wb") as f:
                    f.seek(have)
                    f.truncate()
                    for block in r.iter_bytes(CHUNK):
                        f.write(block)
                        hasher.update(block)
                        have += len(block)
                        now = time.monotonic()
                        if now - last >= PROGRESS_EVERY:
                            report(have)
                            last = now
            if have >= d.size:
                break
        except (httpx.TransportError, RegistryUnreachable) as e:  # dropped mid-blob: resume
            log.warning("pull.interrupted", digest=d.digest, have=have, error=str(e))
            have = partial.stat().st_size if partial.exists() else 0
            hasher = _rehash(partial)
            if attempt == ATTEMPTS:
                raise RegistryUnreachable(
                    f"the download of {d.digest} from {client.host} was interrupted at "
                    f"{have} of {d.size} bytes: pull again to resume"
                ) from None
            time.sleep(BACKOFF * attempt)
    if have < d.size:  # the registry ended the body early, every time
        raise RegistryUnreachable(
            f"the download of {d.digest} from {client.host} stopped at {have} of {d.size} "
            "bytes: pull again to resume"
        )
    got = f"sha256:{hasher.hexdigest()}"
    if have != d.size or got != d.digest:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(
            f"digest mismatch, file must be downloaded again: want {d.digest} "
            f"({d.size} bytes), got {got} ({have} bytes)"
        )
    store.blobs.adopt(partial, d.digest, sync=False)


def _rehash(path: Path):
    hasher = hashlib.sha256()
    if path.exists():
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                hasher.update(block)
    return hasher


# -- push ----------------------------------------------------------------------------------------


def push(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    credentials=None,
    progress: Progress,
) -> None:
    """Push the stored model `name` (see `mlxollama.registry.push`)."""
    stored = store.get(name)
    client = Client(name, insecure, credentials)
    try:
        progress({"status": "retrieving manifest"})
        manifest = stored.manifest
        each(lambda d: push_blob(store, client, d, progress), [manifest.config, *manifest.layers])
        progress({"status": "pushing manifest"})
        raw = (store.manifests_dir / stored.name.path()).read_bytes()
        client.put_manifest(name.tag, raw, mt.MANIFEST_MEDIA_TYPE)
        log.info("push.done", model=name.display(), digest=stored.digest)
        progress({"status": "success"})
    finally:
        client.close()


def push_blob(store: Store, client: Client, d: Descriptor, progress: Progress) -> None:
    """Upload one blob unless the registry has it (an unchanged tensor costs one HEAD)."""
    event = {"status": f"pushing {d.digest.split(':', 1)[1][:12]}", "digest": d.digest}
    event["total"] = d.size
    if client.has_blob(d.digest):
        progress({**event, "completed": d.size})
        return
    progress({**event, "completed": 0})
    sent, last = 0, 0.0

    def on_bytes(n: int) -> None:
        nonlocal sent, last
        sent += n
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            progress({**event, "completed": sent})
            last = now

    for attempt in range(1, ATTEMPTS + 1):  # a streamed body cannot be replayed: a new upload
        try:
            client.upload_blob(store.blobs.path(d.digest), d.digest, on_bytes)
            break
        except Unauthorized:
            raise
        except RegistryError as e:  # unreachable, or a refused upload (5xx)
            if attempt == ATTEMPTS:
                raise
            log.warning("push.retry", digest=d.digest, error=str(e))
            sent = 0
            time.sleep(BACKOFF * attempt)
    progress({**event, "completed": d.size})
