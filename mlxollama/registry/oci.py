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
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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
    BlobNotFound,
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
MAX_MANIFEST = 16 << 20  # bytes
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


INSECURE_HINT = "pass insecure: true (mlxctl pull/push --insecure) to allow it"


def registry_scheme(name: ModelName, insecure: bool) -> str:
    """How to reach `name`'s registry. Ollama's rule: HTTPS, plain HTTP only with `insecure`
    (to this machine too); `http://` in the name without it is refused, `https://` stays TLS.

    Raises:
        ValueError: `http://` without `insecure`, or a scheme other than http and https.
    """
    if name.scheme == "http" and not insecure:
        raise ValueError(f"insecure protocol http: {name.host} is plain HTTP; {INSECURE_HINT}")
    if name.scheme not in ("", "http", "https"):
        raise ValueError(f"unsupported protocol {name.scheme}: use http:// or https://")
    return "http" if insecure and name.scheme != "https" else "https"


def _refuse_plain_http(request: httpx.Request) -> None:
    """Every request, redirects and upload locations included: no plain HTTP unless the
    transfer is `insecure`."""
    if request.url.scheme != "https":
        raise RegistryError(
            f"refusing plain HTTP to {request.url.host} (a redirect or an upload location of "
            f"the registry); {INSECURE_HINT}"
        )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


_USERINFO = re.compile(r"(://)[^/\s@]+@")


def _secrets_of(credentials: Credentials | None, token: str | None) -> list[str]:
    """The strings no message may carry: the password, the tokens, the Basic header value."""
    found = [token] if token else []
    if credentials is not None:
        found += [credentials.password, credentials.token]
        if credentials.username:
            pair = f"{credentials.username}:{credentials.password or ''}"
            found.append(base64.b64encode(pair.encode()).decode())
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, credentials: Credentials | None = None, token: str | None = None) -> str:
    """`text` (an error message, a registry's answer) without secrets: a URL's userinfo and
    every credential we hold. Registry messages end up in HTTP answers and logs."""
    text = _USERINFO.sub(r"\1***@", text)
    for secret in _secrets_of(credentials, token):
        text = text.replace(secret, "***")
    return text


class Client:
    """One repository on one registry, with auth (Basic, Bearer tokens from the registry's
    challenge, or a given token), timeouts and bounded retries."""

    def __init__(self, name: ModelName, insecure: bool = False, credentials=None):
        self.host = name.host
        self.base = f"{registry_scheme(name, insecure)}://{name.host}"
        self.repository = f"{name.namespace}/{name.model}"
        self.credentials: Credentials | None = credentials
        self.token = credentials.token if credentials and credentials.token else None
        self.basic = False  # send Basic credentials: only once this registry asked for them
        self.http = httpx.Client(
            timeout=TIMEOUT,
            follow_redirects=True,  # httpx drops Authorization on a redirect to another origin
            headers={"User-Agent": f"mlxollama/{__version__}"},
            event_hooks={"request": [] if insecure else [_refuse_plain_http]},
        )

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repository}/{path}"

    # -- requests ------------------------------------------------------------------------------

    def _auth_headers(self, url: str) -> dict[str, str]:
        """Credentials for the registry's own origin only (an upload `Location` or a blob
        may live on another host, which gets none)."""
        if _origin(httpx.URL(url)) != _origin(httpx.URL(self.base)):
            return {}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        c = self.credentials
        if self.basic and c and c.username:
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
        replayable = isinstance(kwargs.get("content", b""), (bytes, str))
        attempts = ATTEMPTS if replayable else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._send(method, url, headers or {}, kwargs, replayable)
            except httpx.TransportError as e:
                if attempt == attempts:
                    reason = self.redact(str(e) or type(e).__name__)
                    raise RegistryUnreachable(
                        f"could not reach the registry {self.host}: {reason}"
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
                if self.credentials is None:
                    hint = (
                        "set MLXOLLAMA_REGISTRY_USERNAME and MLXOLLAMA_REGISTRY_PASSWORD "
                        "(or MLXOLLAMA_REGISTRY_TOKEN)"
                    )
                else:
                    hint = "check the credentials and their permissions on this repository"
                raise Unauthorized(
                    f"{self.host} refused access to {self.repository} "
                    f"({response.status_code}): {hint}"
                )
            yield response
        finally:
            response.close()

    def _send(
        self, method: str, url: str, headers: dict, kwargs: dict, replayable: bool
    ) -> httpx.Response:
        """Send, answering up to two auth challenges (a token refreshed by another transfer
        thread may lack this request's scope). A streamed body is sent once: its caller
        starts over (a new upload) when the answer is a 401."""
        for challenge in range(3):
            used = (self.token, self.basic)  # other transfer threads may change them
            request = self.http.build_request(
                method, url, headers={**self._auth_headers(url), **headers}, **kwargs
            )
            response = self.http.send(request, stream=True)
            if response.status_code != 401 or challenge == 2:
                return response
            if not self._answer_challenge(response, used) or not replayable:
                return response
            response.close()
        return response

    def _answer_challenge(self, response: httpx.Response, used: tuple) -> bool:
        """Get what a `WWW-Authenticate` challenge asks for: a Bearer token from its realm,
        or Basic credentials. False when there is nothing new to try."""
        if (self.token, self.basic) != used:
            return True  # another thread got new credentials since: try those
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, params = challenge.partition(" ")
        c = self.credentials
        if scheme.lower() == "basic":
            if c and c.username and not self.basic:
                self.token, self.basic = None, True
                return True
            return False
        if scheme.lower() != "bearer":
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", "")
        if not realm:
            return False
        # credentials go to a token service over TLS, or on this machine; else ask anonymously
        realm_url = httpx.URL(realm)
        safe = realm_url.scheme == "https" or realm_url.host in LOCAL_HOSTS
        auth = httpx.BasicAuth(c.username, c.password or "") if c and c.username and safe else None
        try:
            r = self.http.get(realm, params=fields, auth=auth)
        except httpx.TransportError as e:
            where = self.redact(f"{realm}: {e}")
            raise RegistryUnreachable(f"could not reach the token service {where}") from None
        if r.status_code != 200:
            return False
        try:
            body = r.json()
        except ValueError:
            return False
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token or token == used[0]:
            return False
        self.token = token
        return True

    def redact(self, text: str) -> str:
        """`text` without this client's secrets (see `redact`)."""
        return redact(text, self.credentials, self.token)

    def fail(self, response: httpx.Response, what: str) -> RegistryError:
        response.read()
        text = self.redact(response.text.strip().replace("\n", " "))[:300]
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
        """An Ollama-style model: GGUF (or Ollama's MLX tensors) and text layers
        (`application/vnd.ollama.image.*`)."""
        kinds = (OLLAMA_LAYER_PREFIX + "model", OLLAMA_LAYER_PREFIX + "tensor")
        return any(d.media_type in kinds for d in self.layers)

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.raw).hexdigest()}"

    @property
    def is_ours(self) -> bool:
        return self.config.media_type == mt.CONFIG_MEDIA_TYPE


def parse_remote(raw: bytes, where: str) -> Remote:
    """Check a registry's manifest before anything in it is used: digests, sizes and layer
    titles (`Descriptor.from_dict` refuses titles that would name files outside a model)."""
    try:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            raise ValueError("schemaVersion is not 2")
        config = Descriptor.from_dict(doc["config"])
        layers = [Descriptor.from_dict(d) for d in doc.get("layers") or []]
        for d in [config, *layers]:
            parse_digest(d.digest)
            if d.size < 0:
                raise ValueError(f"negative size for {d.digest}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"{where}: the manifest is not a usable image manifest: {e}") from None
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
        where = f"{name.host}/{client.repository}"
        raw = client.get_manifest(name.tag)
        if len(raw) > MAX_MANIFEST:
            raise RegistryError(f"{where}: the manifest is over {MAX_MANIFEST} bytes")
        remote = parse_remote(raw, where)
        if not (remote.is_ours or remote.is_ollama):
            raise RegistryError(
                f"{name.display()} is neither an mlxollama model nor an Ollama model "
                f"(config {remote.config.media_type})"
            )
        if remote.is_ollama and not remote.is_ours:
            from mlxollama.registry import ollama

            current = ollama.already_converted(store, name, remote.digest)
            if current is not None:  # the same GGUF as last time: nothing to fetch or convert
                progress({"status": "success"})
                return current
        blobs = [remote.config, *remote.layers]
        for _ in range(ATTEMPTS):  # an `rm` or `gc` meanwhile may take shared blobs away
            fetched = fetch_all(store, client, blobs, progress)
            if fetched:
                progress({"status": "verifying sha256 digest"})  # hashed as they arrived
            store.blobs.sync()  # downloads skip fsync one by one: one flush before the tag
            if remote.is_ollama and not remote.is_ours:
                origin = {
                    "type": "registry",
                    "reference": name.display(),
                    "format": "ollama",
                    "manifest": remote.digest,
                }
                return ollama.convert(store, name, remote, origin, progress)
            with store.lock():
                if all(store.blobs.exists(d.digest) for d in blobs):
                    progress({"status": "writing manifest"})
                    stored = store.put_manifest(name, Manifest.from_bytes(remote.raw))
                    break
        else:
            raise RegistryError(f"blobs of {name.display()} kept disappearing from the store")
        log.info("pull.done", model=name.display(), digest=stored.digest)
        progress({"status": "success"})
        return stored
    finally:
        client.close()


def fetch_all(store: Store, client: Client, blobs: list[Descriptor], progress: Progress) -> int:
    """Make every blob present; returns how many were downloaded. Layers are announced first
    (`completed` omitted while 0, as Ollama does)."""
    missing = []
    for d in blobs:
        if _present(store, d):
            progress(_done(d))
        else:
            missing.append(d)
            progress({"status": _pulling(d), "digest": d.digest, "total": d.size})
    each(lambda d, stop: fetch_blob(store, client, d, progress, stop), missing)
    return len(missing)


def each(work, descriptors: list[Descriptor]) -> None:
    """Run `work(d, stop)` on every descriptor, WORKERS at a time (a model is hundreds of
    small tensor blobs: latency, not bandwidth, bounds one at a time). The first error sets
    `stop`, which the others check between chunks, and is raised once they have ended."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(work, d, stop) for d in descriptors]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            stop.set()
            for future in futures:
                future.cancel()
            wait(futures)
            raise failed.exception()


class Stopped(Exception):
    """Another blob of the same transfer failed: this one stops (its partial file stays)."""


def _pulling(d: Descriptor) -> str:
    return f"pulling {d.digest.split(':', 1)[1][:12]}"


def _done(d: Descriptor) -> dict[str, Any]:
    return {"status": _pulling(d), "digest": d.digest, "total": d.size, "completed": d.size}


def _present(store: Store, d: Descriptor) -> bool:
    """The blob is in the store with the right size (a crash between a download's rename and
    the final sync can leave a short file; it is fetched again). Touched, so that a `gc`
    running meanwhile sees it as recent."""
    path = store.blobs.path(d.digest)
    try:
        if path.stat().st_size == d.size:
            os.utime(path)
            return True
        path.unlink()
    except FileNotFoundError:
        pass
    return False


def partial_path(store: Store, digest: str) -> Path:
    return store.root / "blobs" / "partial" / f"sha256-{parse_digest(digest).split(':', 1)[1]}"


def blob_lock(store: Store, digest: str) -> FileLock:
    """One of 256 lock files (by the digest's first byte) that pulls, threads and processes
    alike, take before they touch a blob's partial file. They are never deleted (removing a
    lock file races a waiter), so there are at most 256."""
    folder = store.root / "blobs" / "partial" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{parse_digest(digest).split(':', 1)[1][:2]}.lock"))


def fetch_blob(
    store: Store, client: Client, d: Descriptor, progress: Progress, stop: threading.Event
) -> None:
    """Download blob `d` (resuming a partial file) and verify it, unless another pull is
    fetching it: then wait for that one, reporting its progress."""
    partial = partial_path(store, d.digest)
    lock = blob_lock(store, d.digest)
    while True:
        try:
            lock.acquire(timeout=PROGRESS_EVERY * 5)
            break
        except Timeout:
            if stop.is_set():
                raise Stopped from None
            with contextlib.suppress(FileNotFoundError):
                if size := partial.stat().st_size:
                    progress({**_done(d), "completed": size})
    try:
        if not _present(store, d):  # else the other pull finished it
            _download(
                store, client, d, partial, lambda n: progress({**_done(d), "completed": n}), stop
            )
        progress(_done(d))
    finally:
        lock.release()


def _download(store, client: Client, d: Descriptor, partial: Path, report, stop) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    if have > d.size:
        partial.unlink()
        have = 0
    hasher = _rehash(partial) if have else hashlib.sha256()  # kept bytes count if they hash on
    url = client.url(f"blobs/{d.digest}")
    last = 0.0
    attempt = 0
    while have < d.size:
        attempt += 1
        headers = {"Accept-Encoding": "identity"}  # byte ranges of the stored bytes, as is
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with client.request("GET", url, headers=headers) as r:
                if r.status_code == 404:
                    raise RegistryError(
                        f"{client.host} lists {d.digest} in the manifest of "
                        f"{client.repository} but does not have it"
                    )
                if r.status_code not in (200, 206):
                    raise client.fail(r, f"downloading {d.digest}")
                if r.status_code == 206 and not r.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                ):  # a range we did not ask for: start over without one
                    partial.unlink(missing_ok=True)
                    have, hasher = 0, hashlib.sha256()
                    continue
                if r.status_code == 200:  # the whole blob (no Range support): restart
                    have, hasher = 0, hashlib.sha256()
                with open(partial, "r+b" if have else "wb") as f:
                    f.seek(have)
                    f.truncate()
                    for block in r.iter_bytes(CHUNK):
                        if stop.is_set():
                            raise Stopped
                        if have + len(block) > d.size:
                            raise DigestMismatch(
                                f"digest mismatch: {client.host} sent more than the {d.size} "
                                f"bytes of {d.digest}"
                            )
                        f.write(block)
                        hasher.update(block)
                        have += len(block)
                        now = time.monotonic()
                        if now - last >= PROGRESS_EVERY:
                            report(have)
                            last = now
        except (httpx.TransportError, RegistryUnreachable) as e:  # dropped mid-blob: resume
            error = client.redact(str(e))
            log.warning("pull.interrupted", digest=d.digest, have=have, error=error)
            have = partial.stat().st_size if partial.exists() else 0
            hasher = _rehash(partial)
        if have < d.size and attempt >= ATTEMPTS:
            raise RegistryUnreachable(
                f"the download of {d.digest} from {client.host} stopped at {have} of {d.size} "
                "bytes: pull again to resume"
            )
        if have < d.size:
            time.sleep(BACKOFF * attempt)
    got = f"sha256:{hasher.hexdigest()}"
    if got != d.digest:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(
            f"digest mismatch, file must be downloaded again: want {d.digest}, got {got}"
        )
    store.blobs.adopt(partial, d.digest, sync=False)
    os.utime(store.blobs.path(d.digest))  # recent for gc's grace, whatever the partial's age


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
        # the bytes whose blobs go up are the bytes that go up: a re-tag meanwhile changes nothing
        raw = stored.manifest.to_bytes()
        manifest = Manifest.from_bytes(raw)
        blobs = [manifest.config, *manifest.layers]
        each(lambda d, stop: push_blob(store, client, d, progress, stop), blobs)
        progress({"status": "pushing manifest"})
        client.put_manifest(name.tag, raw, mt.MANIFEST_MEDIA_TYPE)
        log.info("push.done", model=name.display(), digest=stored.digest)
        progress({"status": "success"})
    finally:
        client.close()


def push_blob(
    store: Store, client: Client, d: Descriptor, progress: Progress, stop: threading.Event
) -> None:
    """Upload one blob unless the registry has it (an unchanged tensor costs one HEAD)."""
    event = {"status": f"pushing {d.digest.split(':', 1)[1][:12]}", "digest": d.digest}
    event["total"] = d.size
    if stop.is_set():
        raise Stopped
    if client.has_blob(d.digest):
        progress({**event, "completed": d.size})
        return
    if not store.blobs.exists(d.digest):
        raise BlobNotFound(
            f"blob {d.digest} of {client.repository} is missing from the store: run mlxctl verify"
        )
    progress(event)  # `completed` omitted while 0, as Ollama does
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
        except RegistryError as e:  # unreachable, refused (5xx), or a 401 for a new token
            if attempt == ATTEMPTS:
                raise
            log.warning("push.retry", digest=d.digest, error=str(e))
            sent = 0
            time.sleep(BACKOFF * attempt)
    progress({**event, "completed": d.size})
