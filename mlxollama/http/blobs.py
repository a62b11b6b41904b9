"""Blob uploads, the first half of creating a model over HTTP (`http/create.py` is the
second): a client uploads each model file with `POST /api/blobs/<digest>`, hashed while it
is written; a blob becomes visible only once its digest is verified.

An upload is unreferenced until a create uses it; gc spares it for an hour after its last
upload (uploading it again refreshes it), as in Ollama.
"""

from __future__ import annotations

import falcon

from mlxollama.errors import DigestMismatch
from mlxollama.http.errors import bad_request
from mlxollama.store.blobs import CHUNK
from mlxollama.store.names import parse_digest


class Blob:
    """HEAD/POST /api/blobs/{digest}"""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_head(self, req: falcon.Request, resp: falcon.Response, digest: str) -> None:
        if not self.runtime.store.blobs.exists(parse_digest(digest)):
            raise falcon.HTTPNotFound(description=f'blob "{digest}" not found')

    def on_post(self, req: falcon.Request, resp: falcon.Response, digest: str) -> None:
        digest = parse_digest(digest)
        blobs = self.runtime.store.blobs
        if blobs.exists(digest):
            try:
                blobs.touch(digest)  # a create is coming: gc's grace starts again
                return  # 200: already there, the body is not read
            except FileNotFoundError:
                pass  # gc took it just now: store it again
        chunks = iter(lambda: req.bounded_stream.read(CHUNK), b"")
        try:
            blobs.put_stream(chunks, expected=digest)
        except DigestMismatch as e:
            raise bad_request(str(e)) from None  # the client's bytes, not the store, are wrong
        resp.status = falcon.HTTP_201
