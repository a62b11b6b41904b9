"""The prompt cache: the KV state of finished sequences, kept per model, so a request whose
prompt starts with tokens already seen (the previous turn of a chat, a shared system prompt,
an agent's scaffold) prefills only the rest.

The bookkeeping is mlx-lm's `LRUPromptCache` (a token trie with an LRU order and a byte cap;
a longer cached sequence is trimmed to the common prefix when its cache type allows it):
what this module adds is the daemon's rules around it. A hit always leaves at least one
token to evaluate (the model needs logits to sample from), a lookup hands out a copy (the
sequence grows its cache in place), and the cap is in bytes, counted by the governor against
the memory budget. Entries are kept per KV cache type (`MLXOLLAMA_KV_CACHE_TYPE`): a cache
made for another type is never handed out (the disk tier keeps each type in its own folder).

Everything here runs on the model's thread (MLX streams are thread-local).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
from mlx_lm.models.cache import (
    LRUPromptCache,
    can_trim_prompt_cache,
    load_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

from mlxollama.engine.kv_quant import batchable, fits, portable

log = structlog.get_logger("mlxollama.prompt_cache")

_MODEL = "model"  # one cache per model actor: the trie's model key is constant
MAX_ENTRIES = 64  # sequences kept at most, whatever their size


class PromptCache:
    """Finished sequences' KV caches under their tokens, at most `max_bytes` in all; with a
    `disk` tier, long prompts are also kept on disk and found there after a restart. Only
    caches of `kv_type` are kept."""

    def __init__(self, max_bytes: int, disk: DiskTier | None = None, kv_type: str = "f16"):
        self.max_bytes = max_bytes
        self.disk = disk
        self.kv_type = kv_type
        self._lru = LRUPromptCache(max_size=MAX_ENTRIES, max_bytes=max(max_bytes, 0))

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def __len__(self) -> int:
        return len(self._lru)

    def fetch(self, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """A copy of the cache that covers the longest cached prefix of `tokens`, and how
        many tokens it covers (always fewer than `len(tokens)`); (None, 0) on a miss."""
        if len(tokens) < 2:
            return None, 0
        cache, count = None, 0
        if self.max_bytes > 0:
            found, rest = self._lru.fetch_nearest_cache(_MODEL, list(tokens))
            if found is not None:
                cache, count = _leave_one(found, len(tokens), len(tokens) - len(rest))
        if self.disk is not None:
            found, n = self.disk.fetch(tokens, better_than=count)
            if found is not None:
                cache, count = _leave_one(found, len(tokens), n)
        return (cache, count) if cache is not None else (None, 0)

    def store(self, tokens: Sequence[int], cache: list[Any], prompt: int = 0) -> None:
        """Keep `cache`, which holds exactly `tokens`; the least recently used entries go
        first when the cap is passed (an entry larger than the cap is not kept). The first
        `prompt` tokens are the request's prompt: the disk tier keeps long ones."""
        if not tokens or not cache or not fits(cache, self.kv_type):
            return
        if self.disk is not None and prompt:
            self.disk.store(tokens[:prompt], cache, len(tokens) - prompt)
        if self.max_bytes > 0:
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


def _leave_one(cache: list[Any], total: int, count: int) -> tuple[list[Any] | None, int]:
    """A cache covering `count` of `total` prompt tokens, trimmed so that at least one is
    left to evaluate; (None, 0) when it covers all and cannot be trimmed."""
    if count < total:
        return cache, count
    if not can_trim_prompt_cache(cache):
        return None, 0
    trim_prompt_cache(cache, count - total + 1)
    return cache, total - 1


def _digest(tokens: Sequence[int]) -> str:
    return hashlib.sha256(orjson.dumps(list(tokens))).hexdigest()


class DiskTier:
    """Long prompts' KV caches as files in `folder` (one model's: the store keeps it under
    the model's manifest digest), at most `max_bytes` of them, the oldest removed first.

    Each entry is `<sha256 of the tokens>.safetensors` (mlx-lm's prompt-cache format) and a
    `.json` beside it naming the tokens; both are written to a temp file and renamed, so a
    killed daemon leaves no half entry. A file that does not load, whose tokens do not hash
    to its name, or whose KV cache type is not `kv_type`, is ignored and removed: it is never
    trusted. A quantized type keeps its files in a sub-folder of its own (`q8_0/`), so that
    switching `MLXOLLAMA_KV_CACHE_TYPE` back and forth keeps both.

    Args:
        min_tokens: shorter prompts are not worth a file (the memory tier has them).
        kv_type: the KV cache type of the entries (`MLXOLLAMA_KV_CACHE_TYPE`).
    """

    def __init__(self, folder: Path, max_bytes: int, min_tokens: int = 256, kv_type: str = "f16"):
        self.kv_type = kv_type
        self.folder = Path(folder) if kv_type == "f16" else Path(folder) / kv_type
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.index: dict[str, list[int]] = {}  # digest -> tokens
        if max_bytes > 0 and self.folder.is_dir():
            for meta in self.folder.glob("*.json"):
                tokens = self._read_tokens(meta)
                if tokens is not None:
                    self.index[meta.stem] = tokens

    def _read_tokens(self, meta: Path) -> list[int] | None:
        try:
            tokens = orjson.loads(meta.read_bytes())["tokens"]
            if (
                isinstance(tokens, list)
                and all(isinstance(t, int) for t in tokens)
                and _digest(tokens) == meta.stem
                and meta.with_suffix(".safetensors").is_file()
            ):
                return tokens
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            pass
        self._remove(meta.stem)
        return None

    def fetch(self, tokens: Sequence[int], better_than: int = 0) -> tuple[list[Any] | None, int]:
        """The cached entry sharing the longest prefix with `tokens` (at least `min_tokens`
        and more than `better_than`), trimmed to that prefix: (cache, tokens it holds)."""
        best, best_len = None, max(better_than, self.min_tokens - 1)
        for digest, cached in self.index.items():
            n = _common(cached, tokens)
            if n > best_len:
                best, best_len = digest, n
        if best is None:
            return None, 0
        path = self.folder / f"{best}.safetensors"
        try:
            cache, meta = load_prompt_cache(str(path), return_metadata=True)
            if meta.get("tokens") != best:
                raise ValueError("tokens digest differs")
            if meta.get("kv_cache_type", "f16") != self.kv_type or not fits(cache, self.kv_type):
                raise ValueError(f"not a {self.kv_type} KV cache")
            cache = batchable(cache)
        except Exception as e:  # a corrupt or foreign file: forget it
            log.warning("prompt_cache.bad_file", file=path.name, error=str(e))
            self._remove(best)
            return None, 0
        extra = len(self.index[best]) - best_len
        if extra:
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, extra)
        os.utime(path)  # recently used: the last to be removed
        return cache, best_len

    def store(self, prompt: Sequence[int], cache: list[Any], extra: int) -> None:
        """Keep the KV cache of `prompt`, from `cache`, which holds `extra` tokens more (the
        answer so far; trimmed off a copy)."""
        if self.max_bytes <= 0 or len(prompt) < self.min_tokens:
            return
        digest = _digest(prompt)
        if digest in self.index:
            os.utime(self.folder / f"{digest}.safetensors")
            return
        if extra:
            if not can_trim_prompt_cache(cache):
                return
            cache = copy.deepcopy(cache)
            trim_prompt_cache(cache, extra)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            meta = {"tokens": digest, "kv_cache_type": self.kv_type}
            save_prompt_cache(tmp, portable(cache), meta)
            meta_fd, meta_tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
            with os.fdopen(meta_fd, "wb") as f:
                f.write(orjson.dumps({"tokens": list(prompt)}))
            os.replace(tmp, self.folder / f"{digest}.safetensors")
            os.replace(meta_tmp, self.folder / f"{digest}.json")
        except OSError as e:
            log.warning("prompt_cache.write_failed", error=str(e))
            return
        self.index[digest] = list(prompt)
        self._trim()

    def nbytes(self) -> int:
        return sum(self._size(d) for d in self.index)

    def _size(self, digest: str) -> int:
        try:
            return (self.folder / f"{digest}.safetensors").stat().st_size
        except OSError:
            return 0

    def _trim(self) -> None:
        def age(digest: str) -> float:
            try:
                return (self.folder / f"{digest}.safetensors").stat().st_mtime
            except OSError:
                return 0.0

        total = self.nbytes()
        for digest in sorted(self.index, key=age):
            if total <= self.max_bytes:
                break
            total -= self._size(digest)
            self._remove(digest)

    def _remove(self, digest: str) -> None:
        self.index.pop(digest, None)
        for suffix in (".safetensors", ".json"):
            with contextlib.suppress(OSError):
                (self.folder / f"{digest}{suffix}").unlink()


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
