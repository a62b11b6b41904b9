"""`POST /api/pull` and `POST /api/push`: a registry transfer's progress as NDJSON.

The body is Ollama's: `model` (or the legacy `name`), `insecure` (allow plain HTTP to the
registry), `stream` (default true). The answer streams Ollama's progress objects
(`pulling manifest`, `pulling <hex12>` with `digest`/`total`/`completed`, `verifying sha256
digest`, `writing manifest`, `success`; for a push `retrieving manifest`, `pushing <hex12>`,
`pushing manifest`, `success`). An error before the first object gets its status (400 invalid
name, 404 no such local model to push); after it, a final `{"error": "..."}` line, as in
Ollama (an unknown model: `pull model manifest: file does not exist: ...`). With `stream:
false` the answer is the last object, or the error with its status: 401 the registry refused
the credentials, 404 it has no such model, 502 it cannot be reached or failed.

The transfer runs on its own actor (`actors/puller.py`) with the daemon's credentials
(`MLXOLLAMA_REGISTRY_*` in the daemon's environment). A client that hangs up stops
receiving progress; the transfer goes on to its end.
"""

from __future__ import annotations

import falcon

from mlxollama.api import field
from mlxollama.http.native import model_field, progress_answer, read_json


class _Transfer:
    """What Pull and Push share: the body, the first object, then stream or collect."""

    reads_model = True
    kind = ""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        name = model_field(body)
        req.context.log_start(name)
        insecure = field(body, "insecure", bool, False)
        stream = field(body, "stream", bool, True)
        start = getattr(self.runtime, self.kind)
        progress = iter(start(name, insecure=insecure, request_id=req.context.request_id))

        def finish() -> None:
            progress.close()  # stop listening; the transfer itself goes on

        progress_answer(
            req, resp, progress, stream, finish, "client disconnected (the transfer goes on)"
        )


class Pull(_Transfer):
    """POST /api/pull"""

    kind = "pull"


class Push(_Transfer):
    """POST /api/push"""

    kind = "push"
