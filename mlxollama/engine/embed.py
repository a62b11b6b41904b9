"""Sentence embeddings: tokenize, run the encoder on one padded MLX batch, pool, normalize.

This is what sentence-transformers does for a Transformer + Pooling (+ Normalize) model:
`[CLS] text [SEP]` ids cut to the model's `max_seq_length`, the encoder's last hidden
states, then mean (or CLS, or max) pooling over the real tokens. Inputs are sorted by length
and run in sub-batches of similar lengths, so padding costs little; between sub-batches a
cancelled request stops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx
import numpy as np

POOLING_MODES = ("mean", "cls", "max")
MAX_BATCH = 32  # sequences per MLX call


class InputTooLong(ValueError):
    """An input longer than the context with `truncate` off (HTTP 400, as in Ollama)."""


class Cancelled(Exception):
    """The request was cancelled (its client went away) between two sub-batches."""


def load_tokenizer(path: str):
    """A `tokenizers.Tokenizer` from tokenizer.json, with the file's own truncation and
    padding switched off: lengths are decided per request here."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokenize(tokenizer, texts: list[str], max_length: int, truncate: bool) -> list[list[int]]:
    """Token ids with the model's special tokens, at most `max_length` each.

    Raises:
        InputTooLong: an input is longer than `max_length` and `truncate` is False.
    """
    encodings = tokenizer.encode_batch(texts)
    ids = []
    for enc in encodings:
        if len(enc.ids) > max_length:
            if not truncate:
                raise InputTooLong("the input length exceeds the context length")
            specials = enc.special_tokens_mask
            # keep the leading and trailing special tokens ([CLS] ... [SEP]), cut the text
            head = 0
            while head < len(specials) and specials[head]:
                head += 1
            tail = 0
            while tail < len(specials) - head and specials[-1 - tail]:
                tail += 1
            body = enc.ids[head : len(enc.ids) - tail]
            keep = max(0, max_length - head - tail)
            ids.append(enc.ids[:head] + body[:keep] + enc.ids[len(enc.ids) - tail :])
        else:
            ids.append(list(enc.ids))
    return ids


def encode(model, batch: list[list[int]], pooling: str) -> mx.array:
    """One MLX forward pass over `batch` (right-padded), pooled: (len(batch), hidden).

    `pooling` is one of POOLING_MODES (sentence-transformers' Pooling module)."""
    longest = max(len(ids) for ids in batch)
    tokens = np.zeros((len(batch), longest), dtype=np.int32)
    mask = np.zeros((len(batch), longest), dtype=np.int32)
    for i, ids in enumerate(batch):
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    m = mx.array(mask)
    states = model(mx.array(tokens), m).astype(mx.float32)
    if pooling == "cls":
        return states[:, 0]
    if pooling == "max":
        return mx.where(m[..., None].astype(mx.bool_), states, -mx.inf).max(axis=1)
    weights = m[..., None].astype(mx.float32)
    return (states * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1.0)


def embed(
    model,
    token_ids: list[list[int]],
    pooling: str,
    dimensions: int | None = None,
    normalize: bool = True,
    cancelled: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Embed tokenized inputs: a float32 array (len(token_ids), dimensions or hidden).

    `dimensions` keeps the first that many components (Matryoshka-style), then the vector is
    L2-normalized again when `normalize` is on. `cancelled` is polled before each sub-batch
    of MAX_BATCH inputs, so a request whose client left stops within one forward pass.

    Raises:
        ValueError: `dimensions` out of range, or a vector that is not finite.
        Cancelled: `cancelled()` turned true.
    """
    if not token_ids:
        return np.zeros((0, 0), dtype=np.float32)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    vectors: np.ndarray | None = None
    for start in range(0, len(order), MAX_BATCH):
        if cancelled is not None and cancelled():
            raise Cancelled("the embedding request was cancelled")
        chunk = order[start : start + MAX_BATCH]
        pooled = encode(model, [token_ids[i] for i in chunk], pooling)
        mx.eval(pooled)
        if vectors is None:
            vectors = np.empty((len(token_ids), pooled.shape[1]), dtype=np.float32)
        vectors[chunk] = np.array(pooled)
    size = vectors.shape[1]
    if dimensions is not None:
        if not 0 < dimensions <= size:
            raise ValueError(f"dimensions must be between 1 and {size}, got {dimensions}")
        vectors = vectors[:, :dimensions]
    if not np.isfinite(vectors).all():
        raise ValueError("the model produced an embedding that is not finite (NaN or Inf)")
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, math.ulp(1.0))
    return vectors.astype(np.float32)


def embed_texts(
    lm,
    texts: list[str],
    options: dict | None = None,
    truncate: bool = True,
    dimensions: int | None = None,
    normalize: bool = True,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, int]:
    """Embed `texts` with a loaded embedding model (`engine.loader.LoadedModel`): the window
    is the request's `num_ctx` over the model's PARAMETERs, capped at the model's context.
    Returns the vectors and the number of tokens read.

    Raises:
        InvalidOption: more inputs or characters than one request may carry
            (`api.check_embed_inputs`).
        InputTooLong, ValueError, Cancelled: as `tokenize` and `embed`.
    """
    from mlxollama import api

    api.check_embed_inputs(texts)
    opts = api.merge_options(lm.parameters, options)
    max_length = min(api.context_size(opts, lm.context_length), lm.context_length)
    ids = tokenize(lm.tokenizer, texts, max_length, truncate)
    vectors = embed(lm.model, ids, lm.pooling, dimensions, normalize, cancelled)
    return vectors, sum(len(t) for t in ids)
