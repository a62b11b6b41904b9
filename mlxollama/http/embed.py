"""Ollama's embedding endpoints, `/api/embed` and the legacy `/api/embeddings`, on the same
runtime, sessions and limits as generation: the request becomes an `InferenceRequest` of
kind "embed", the model actor answers it as one batch, and the handler writes the vectors
with orjson straight from the float32 array.
"""

from __future__ import annotations

from typing import Any

import falcon
import numpy as np
import orjson

from mlxollama import api
from mlxollama.api import field
from mlxollama.http.admission import RESERVATION
from mlxollama.http.errors import bad_request
from mlxollama.http.native import (
    client_gone,
    disconnect_check,
    first_chunk,
    loggable_model,
    model_field,
    read_json,
    request_options,
)

JSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def parse_inputs(value: Any, message: str = "invalid input type") -> list[str]:
    """A string or a list of strings (Ollama's `input`).

    Raises:
        falcon.HTTPBadRequest: another type, or a list with a non-string item.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise bad_request(message)


def embed_request(
    body: dict[str, Any], request_id: str, inputs: list[str], normalize: bool = True
) -> api.InferenceRequest:
    """The runtime request for `inputs`, with the fields every embedding endpoint shares.

    Raises:
        InvalidOption: more inputs or characters than one request may carry (400, before
            the model loads).
    """
    api.check_embed_inputs(inputs)
    wire = api.EmbedRequest.from_json(body)
    if wire.dimensions is not None and wire.dimensions <= 0:
        raise bad_request("dimensions must be a positive integer")
    return api.InferenceRequest(
        model=model_field(body),
        kind="embed",
        inputs=inputs,
        truncate=wire.truncate is not False,
        dimensions=wire.dimensions,
        normalize=normalize,
        options=request_options(wire.options),
        keep_alive=api.parse_keep_alive(wire.keep_alive),
        request_id=request_id,
    )


def run_embed(runtime, req: falcon.Request, request: api.InferenceRequest) -> api.Embeddings:
    """Submit and wait for the vectors. An empty request loads (or unloads) the model and
    answers no vectors, as in Ollama.

    Raises:
        ConnectionAbortedError: the client went away while it waited (nothing to send).
    """
    session = runtime.submit(request, req.env.get(RESERVATION))
    item = first_chunk(session, disconnect_check(req))
    if item is None:
        raise ConnectionAbortedError
    if isinstance(item, api.Embeddings):
        return item
    # a load/unload answer (`Chunk`): no inputs, no vectors
    return api.Embeddings(
        np.zeros((0, 0), dtype=np.float32),
        load_duration=item.load_duration,
        total_duration=item.total_duration,
    )


class EmbedResource:
    """What the embedding endpoints share: run the request, write `render(result)` as JSON
    (float32 arrays serialized by orjson as they are)."""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def answer(self, req: falcon.Request, resp: falcon.Response, request, render) -> None:
        try:
            result = run_embed(self.runtime, req, request)
        except ConnectionAbortedError:
            client_gone(req, resp)
            return
        req.context.stats = result
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps(render(result), option=JSON_NUMPY)


class Embed(EmbedResource):
    """POST /api/embed"""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        raw = body.get("input")
        # Ollama: a bare "" (like no input) just loads the model; [""] embeds the empty string
        inputs = [] if raw == "" else parse_inputs(raw)
        request = embed_request(body, req.context.request_id, inputs)

        def render(result: api.Embeddings) -> dict[str, Any]:
            return api.EmbedResponse(
                model=request.model,
                embeddings=result.vectors,
                total_duration=result.total_duration,
                load_duration=result.load_duration,
                prompt_eval_count=result.prompt_eval_count,
            ).to_json()

        self.answer(req, resp, request, render)


class LegacyEmbeddings(EmbedResource):
    """POST /api/embeddings: one `prompt`, its vector not normalized (Ollama's older API)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        req.context.log_start(loggable_model(body))
        prompt = field(body, "prompt", str, "")
        request = embed_request(
            body, req.context.request_id, [prompt] if prompt else [], normalize=False
        )

        def render(result: api.Embeddings) -> dict[str, Any]:
            vector = result.vectors[0] if len(result.vectors) else []
            return api.EmbeddingResponse(vector).to_json()

        self.answer(req, resp, request, render)
