"""The prompt cache: the KV state of finished sequences, kept per model, so a request whose
prompt starts with tokens already seen (the previous turn of a chat, a shared system prompt,
an agent's scaffold) prefills only the rest.

The bookkeeping is mlx-lm's `LRUPromptCache` (a token trie with an LRU order and a byte cap;
a longer cached sequence is trimmed to the common prefix when its cache type allows it):
what this module adds is the daemon's rules around it. A hit always leaves at least one
token to evaluate (the model needs logits to sample from), a lookup hands out a copy (the
sequence grows its cache in place), and the cap is in bytes, counted by the governor against
the memory budget.

Everything here runs on the model's thread (MLX streams are thread-local).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

_MODEL = "model"  # one cache per model actor: the trie's model key is constant
MAX_ENTRIES = 64  # sequences kept at most, whatever their size


class PromptCache:
    """Finished sequences' KV caches under their tokens, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._lru = LRUPromptCache(max_size=MAX_ENTRIES, max_bytes=max(max_bytes, 0))

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def __len__(self) -> int:
        return len(self._lru)

    def fetch(self, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """A copy of the cache that covers the longest cached prefix of `tokens`, and how
        many tokens it covers (always fewer than `len(tokens)`); (None, 0) on a miss."""
        if self.max_bytes <= 0 or len(tokens) < 2:
            return None, 0
        cache, rest = self._lru.fetch_nearest_cache(_MODEL, list(tokens))
        if cache is None:
            return None, 0
        if not rest:  # the whole prompt is cached: give back its last token to evaluate
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            return cache, len(tokens) - 1
        return cache, len(tokens) - len(rest)

    def store(self, tokens: Sequence[int], cache: list[Any]) -> None:
        """Keep `cache`, which holds exactly `tokens`; the least recently used entries go
        first when the cap is passed (an entry larger than the cap is not kept)."""
        if self.max_bytes <= 0 or not tokens or not cache:
            return
        self._lru.insert_cache(_MODEL, list(tokens), cache)

    def clear(self) -> None:
        self._lru.trim_to(n_sequences=0)


def cached_tokens(cache: list[Any], tokens: Sequence[int]) -> list[int] | None:
    """The tokens a single sequence's KV cache holds (its first layer's offset of `tokens`),
    or None when the cache does not say (then it is not kept)."""
    offset = getattr(cache[0], "offset", None) if cache else None
    if not isinstance(offset, int) or offset <= 0 or offset > len(tokens):
        return None
    return list(tokens[:offset])
