"""Operations resources: `/metrics`, `/api/health`, `/api/stop` and cancelling a request by
its id. They answer from state the runtime already holds (the governor's published counts,
the index of running sessions), so none of them loads a model or scans the store, and each
is guarded like every other route (`http/guards.py`: Host, Origin, API key).

Cancelling: any client that passes the guards may cancel any running request by its
`X-Request-Id`. A request id is a random UUID (122 random bits) that only the requesting
client is sent, so knowing one is the capability to cancel it. docs/operations.md has the
details and every metric.
"""

from __future__ import annotations

import falcon

from mlxollama import __version__
from mlxollama.http.native import loggable_model, model_field, read_json
from mlxollama.metrics import CONTENT_TYPE


class MetricsPage:
    """GET /metrics: Prometheus's text format, from this daemon's own registry."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self.runtime.metrics.exposition()


class Readiness:
    """GET/HEAD /api/health: 200 when ready; 503 while the runtime stops or when the store
    cannot be written (pulls, creates and the prompt cache's disk tier would fail)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rt = self.runtime
        writable = rt.store_writable()
        status = "stopping" if rt.stopping else "ok" if writable else "store_not_writable"
        resident = rt.residency()
        resp.status = 200 if status == "ok" else 503
        resp.media = {
            "status": status,
            "version": __version__,
            "models": [m.name for m in resident if m.state == "ready"],
            "loading": [m.name for m in resident if m.state != "ready"],
            "store_writable": writable,
        }

    on_head = on_get


class Stop:
    """POST /api/stop `{"model": NAME}`: unload it, as `ollama stop` does (what `mlxctl stop`
    and `Client.unload` send). An idle model is unloaded now, whatever its keep_alive; a
    busy one finishes the requests it runs and then unloads (`status` "stopping"); one that
    is not loaded answers `status` "not_loaded" (a success, as in Ollama). 404 when the model
    does not exist."""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        name = model_field(body)
        display, running = self.runtime.stop_model(name)
        status = "not_loaded" if running is None else "stopping" if running else "unloaded"
        resp.media = {"model": display, "status": status, "running": running or 0}


class RunningRequest:
    """DELETE /api/requests/{request_id}: cancel a running generation (204); its stream ends
    with a final chunk whose `done_reason` is "cancel", a non-streamed answer with that
    body. 404 when no generation with that id is running."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_delete(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        if self.runtime.cancel_request(request_id) is None:
            raise falcon.HTTPNotFound(description=f"no running request '{request_id[:64]}'")
        resp.status = falcon.HTTP_204
