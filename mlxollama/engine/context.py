"""The context window: how large it is (`num_ctx`, decided here once for the daemon's runtime,
its model actors and the embedded SDK), and how a prompt and its answer fit into it.

No MLX here: the runtime sizes a request's window before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxollama import api

# the context a model that does not say its own (no max_position_embeddings) is held to
UNKNOWN_LIMIT = 4096


def context_window(options: dict[str, Any], default: int, model_limit: int | None) -> int:
    """A request's `num_ctx`: its own (or the model's PARAMETER), else `default`, and never
    more than the model was trained for.

    Args:
        options: the merged options (request over the model's PARAMETERs).
        default: the daemon's or the SDK's default (MLXOLLAMA_CONTEXT_LENGTH).
        model_limit: the model's context length; None or 0 when it does not say (then
            `UNKNOWN_LIMIT`, as `models.load` records it for the SDK).
    """
    return min(api.context_size(options, default), model_limit or UNKNOWN_LIMIT)


@dataclass
class Budget:
    """How many tokens a request may generate, from num_predict and the context left."""

    max_tokens: int
    prompt_tokens: list[int]


def fit_context(prompt: list[int], num_ctx: int, num_predict: int, num_keep: int = 4) -> Budget:
    """Trim the prompt to the context window and size the generation.

    A prompt that does not fit keeps its first `num_keep` tokens and its end (Ollama's
    truncation); at least one token of room is left for the answer. Generation stops at the
    window's end (done reason `length`) unless num_predict ends it first.
    """
    if len(prompt) >= num_ctx:
        keep = max(0, min(num_keep, num_ctx // 2))
        tail = max(1, num_ctx - 1 - keep)  # never an empty prompt, even for num_ctx 1
        prompt = prompt[:keep] + prompt[len(prompt) - tail :]
    room = num_ctx - len(prompt)
    max_tokens = room if num_predict < 0 else min(num_predict, room)
    return Budget(max_tokens=max_tokens, prompt_tokens=prompt)
