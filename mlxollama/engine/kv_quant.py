"""KV cache quantization (`MLXOLLAMA_KV_CACHE_TYPE`, Ollama's `OLLAMA_KV_CACHE_TYPE`): the
keys and values of a model's plain full-attention layers kept as 8- or 4-bit affine
quantized tuples (`mx.quantize`: packed uint32 words, a scale and a bias per group), which
mlx-lm's attention (`models.base.scaled_dot_product_attention`) reads with
`mx.quantized_matmul` when the cache has `bits`.

mlx-lm has a single-sequence `QuantizedKVCache` but no batched form: it cannot `merge` into,
nor be `extract`ed from, the BatchGenerator that our continuous batch runs on. This module
hand-writes that batched form, `BatchQuantizedKVCache`, following `BatchKVCache`'s layout
(left padding, one write index for the batch, a per-sequence offset), with every array op
applied to each part of the quantized tuple. Only plain MLX ops: it runs on Metal, CUDA and
the CPU alike.

Only plain `KVCache` layers are quantized: sliding-window (`RotatingKVCache`, gemma3's local
layers), state-space and other layers of hybrid models stay as the model makes them (they
are bounded, or hold no keys and values).

Group size: 64, mlx-lm's own default for `QuantizedKVCache` and `--kv-group-size`; its scale
and bias cost 0.5 bit per element at 16-bit (8.5 bits for q8_0, 4.5 for q4_0), against 1 bit
at llama.cpp's 32-element blocks. A head size 64 does not divide falls back to 32.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import (
    KVCache,
    QuantizedKVCache,
    _BaseCache,
    dynamic_roll,
    make_prompt_cache,
)

from mlxollama.config import KV_CACHE_BITS

GROUP_SIZE = 64
_GROUPS = (GROUP_SIZE, 32)  # mx.quantize's group sizes, the largest a head size allows first

Quantized = tuple[mx.array, mx.array, mx.array]  # packed words, scales, biases


def bits_of(kv_type: str) -> int | None:
    """The bits `kv_type` stores a key or value element in; None: unquantized (f16).

    Raises:
        ValueError: an unknown type.
    """
    if kv_type not in KV_CACHE_BITS:
        raise ValueError(f"unknown KV cache type {kv_type!r}: use one of {sorted(KV_CACHE_BITS)}")
    return KV_CACHE_BITS[kv_type]


def make_cache(model, kv_type: str = "f16") -> list[Any]:
    """A fresh KV cache for one sequence: the model's own (`make_prompt_cache`), with each
    plain `KVCache` layer replaced by a quantized one when `kv_type` asks for it."""
    cache = make_prompt_cache(model)
    bits = bits_of(kv_type)
    if bits is None:
        return cache
    return [QuantizedCache(GROUP_SIZE, bits) if type(c) is KVCache else c for c in cache]


def fits(cache: list[Any], kv_type: str) -> bool:
    """Whether `cache` was made for `kv_type`: a layer `make_cache` quantizes has that
    type's bits (a plain `KVCache` layer: f16 only); other layers do not say."""
    bits = bits_of(kv_type)
    return all(
        (bits is None) if type(c) is KVCache else getattr(c, "bits", bits) == bits for c in cache
    )


def batchable(cache: list[Any]) -> list[Any]:
    """`cache` with mlx-lm's `QuantizedKVCache` layers (a prompt-cache file loads as them)
    made `QuantizedCache`s, which the continuous batch can merge."""
    return [QuantizedCache.from_state(c.state) if type(c) is QuantizedKVCache else c for c in cache]


def portable(cache: list[Any]) -> list[Any]:
    """`cache` with mlx-lm's own classes only, for `save_prompt_cache` (it records class
    names, and `load_prompt_cache` knows only mlx-lm's)."""
    return [
        QuantizedKVCache.from_state(c.state) if isinstance(c, QuantizedCache) else c for c in cache
    ]


def _group(cache, k_dim: int, v_dim: int) -> None:
    """Fit the cache's group size to the model's head sizes, before its first write."""
    for g in (cache.group_size, *_GROUPS):
        if k_dim % g == 0 and v_dim % g == 0:
            cache.group_size = g
            return
    raise ValueError(
        f"KV cache quantization needs head sizes divisible by 32; this model's are "
        f"{k_dim} and {v_dim} (use MLXOLLAMA_KV_CACHE_TYPE=f16)"
    )


def _empty(shape: tuple[int, ...], dim: int, dtype, group_size: int, bits: int) -> Quantized:
    """Zeroed storage for `shape[:-1]` positions of `dim` elements, quantized."""
    words = dim * bits // 32
    groups = dim // group_size
    return (
        mx.zeros((*shape, words), dtype=mx.uint32),
        mx.zeros((*shape, groups), dtype=dtype),
        mx.zeros((*shape, groups), dtype=dtype),
    )


class QuantizedCache(QuantizedKVCache):
    """mlx-lm's `QuantizedKVCache` that the continuous batch can merge (`merge`, `size`),
    and whose group size fits the model's head size."""

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        if self.keys is None:
            _group(self, keys.shape[-1], values.shape[-1])
        return super().update_and_fetch(keys, values)

    def size(self) -> int:
        return self.offset

    @classmethod
    def merge(cls, caches: list[QuantizedCache]) -> BatchQuantizedKVCache:
        return BatchQuantizedKVCache.merge(caches)


class BatchQuantizedKVCache(_BaseCache):
    """The quantized KV cache of a batch of left-padded sequences: `BatchKVCache`'s layout
    with keys and values as quantized tuples. `_idx` is the batch's write position; each
    sequence's `offset` is `_idx` less its left padding.

    Args:
        left_padding: positions each sequence starts after.
        group_size, bits: the quantization (`mx.quantize`).
    """

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = GROUP_SIZE, bits: int = 8):
        self.keys: Quantized | None = None
        self.values: Quantized | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-p for p in left_padding])
        self._idx = 0
        self._right_padding = None
        self.group_size = group_size
        self.bits = bits

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        prev, n = self._idx, keys.shape[2]
        if self.keys is None:
            _group(self, keys.shape[-1], values.shape[-1])
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            b, h = keys.shape[:2]
            shape = (b, h, (self.step + n - 1) // self.step * self.step)
            new_k = _empty(shape, keys.shape[3], keys.dtype, self.group_size, self.bits)
            new_v = _empty(shape, values.shape[3], values.dtype, self.group_size, self.bits)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                if prev % self.step != 0:
                    self.keys, self.values = _upto((self.keys, self.values), prev)
                self.keys, self.values = tree_map(
                    lambda a, b: mx.concatenate([a, b], axis=2),
                    (self.keys, self.values),
                    (new_k, new_v),
                )
        self.offset = self.offset + n
        self._idx += n
        qk = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        qv = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for i in range(3):
            self.keys[i][..., prev : self._idx, :] = qk[i]
            self.values[i][..., prev : self._idx, :] = qv[i]
        return self.keys_and_values()

    def keys_and_values(self):
        return _upto((self.keys, self.values), self._idx)

    def prepare(self, *, left_padding=None, lengths=None, right_padding=None) -> None:
        """Before a prefill: more left padding (an empty cache only), or the right padding
        of prompts of unequal length, undone by `finalize`."""
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("left padding can only be added to an empty cache")
            left_padding = mx.array(left_padding)
            self.left_padding += left_padding
            self.offset = self.offset - left_padding
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        """After a right-padded prefill: roll each sequence right so the padding is on the
        left again."""
        if self._right_padding is None:
            return
        shift = self._right_padding[:, None]
        self.keys, self.values = tree_map(
            lambda x: dynamic_roll(x, shift, axis=2), (self.keys, self.values)
        )
        self.offset = self.offset - self._right_padding
        self.left_padding += self._right_padding
        self._right_padding = None

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.left_padding, self._idx

    @state.setter
    def state(self, v):
        self.keys, self.values, self.offset, self.left_padding, self._idx = v

    @property
    def meta_state(self):
        return tuple(map(str, (self.group_size, self.bits)))

    @meta_state.setter
    def meta_state(self, v):
        self.group_size, self.bits = map(int, v)

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    def filter(self, batch_indices) -> None:
        """Keep only the sequences at `batch_indices`, dropping padding they all share."""
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices], (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shared = min(self.left_padding.tolist())
        if shared > 0:
            if self.keys is not None:
                self.keys, self.values = tree_map(
                    lambda x: x[..., shared:, :], (self.keys, self.values)
                )
            self._idx -= shared
            self.left_padding -= shared

    def extend(self, other: BatchQuantizedKVCache) -> None:
        """Append `other`'s sequences, both right-aligned at the longer write position."""
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        like = self if self.keys is not None else other
        idx = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)

        def pad(c: BatchQuantizedKVCache):
            kv = c.keys, c.values
            if c.keys is None:
                b = c.offset.shape[0]
                kv = tree_map(lambda x: mx.zeros((b, x.shape[1], 0, x.shape[3]), x.dtype), kv)
            left = idx - c._idx
            right = size - kv[0][0].shape[2] - left
            if right < 0:
                kv = tree_map(lambda x: x[..., :right, :], kv)
                right = 0
            if left or right:
                kv = tree_map(lambda x: mx.pad(x, [(0, 0), (0, 0), (left, right), (0, 0)]), kv)
            return kv, c.offset, c.left_padding + left

        (kv_a, off_a, pad_a), (kv_b, off_b, pad_b) = pad(self), pad(other)
        self.keys, self.values = tree_map(lambda a, b: mx.concatenate([a, b]), kv_a, kv_b)
        self.offset = mx.concatenate([off_a, off_b])
        self.left_padding = mx.concatenate([pad_a, pad_b])
        self._idx = idx
        self.group_size, self.bits = like.group_size, like.bits

    def extract(self, idx: int) -> QuantizedCache:
        """Sequence `idx` alone, without its padding."""
        cache = QuantizedCache(self.group_size, self.bits)
        padding = self.left_padding.tolist()[idx]
        if self.keys is not None:
            cache.keys, cache.values = tree_map(
                lambda x: mx.contiguous(x[idx : idx + 1, :, padding : self._idx]),
                (self.keys, self.values),
            )
            cache.offset = cache.keys[0].shape[2]
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedCache]) -> BatchQuantizedKVCache:
        """One batch cache of single sequences' caches, left-padded to the longest."""
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        first = caches[0]
        if longest == 0:
            return cls([0] * len(caches), first.group_size, first.bits)
        full = next(c for c in caches if c.keys is not None)
        padding = [longest - n for n in lengths]
        b, h = len(caches), full.keys[0].shape[1]
        keys, values = tree_map(
            lambda x: mx.zeros((b, h, longest, x.shape[3]), x.dtype), (full.keys, full.values)
        )
        for i, (p, c) in enumerate(zip(padding, caches, strict=True)):
            if c.keys is None:
                continue
            for part, src in ((keys, c.keys), (values, c.values)):
                for dst, s in zip(part, src, strict=True):
                    dst[i : i + 1, :, p : p + c.offset] = s[..., : c.offset, :]
        cache = cls(padding, full.group_size, full.bits)
        cache.keys, cache.values = keys, values
        cache.offset = cache.offset + longest
        cache._idx = longest
        return cache

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(x.nbytes for part in (self.keys, self.values) for x in part)


def _upto(kv, n: int):
    """The first `n` positions of every array in `kv`."""
    return tree_map(lambda x: x[..., :n, :], kv)
