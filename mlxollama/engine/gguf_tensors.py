"""GGUF's header and tensors, decoded one tensor at a time into the MLX form nearest each type.

`mx.load` reads only F32/F16/BF16/Q4_0/Q4_1/Q8_0 GGUF tensors correctly (it refuses Q5_0,
decodes Q4_K wrongly and drops MXFP4), so every tensor is read here from the file, one at a time, and decoded with llama.cpp's own reference, `gguf.quants.dequantize`, a slab of rows at
a time: memory grows with the slab, not with the file. Each type lands in the MLX form that
holds it best (`STORED`):

* exactly, where MLX has the same grid: Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q4_K, Q5_K and the
  ternary TQ2_0 are all `scale * code + bias` over groups of 32, which is MLX's affine quantization. The codes, scales
  and biases are recovered through `dequantize` itself (see `_affine_codes`), so no block layout
  is decoded by hand beyond where the codes sit. MXFP4 and NVFP4 are MLX's `mxfp4`/`nvfp4`.
* approximately, by re-quantizing the decoded floats with `mx.quantize` at the source's bit
  width, group size 32: Q2_K, Q3_K and Q6_K (groups of 16, which MLX lacks), the IQ* codebook
  types and TQ1_0 (base-3 packed). `docs/engine.md` records what each costs in logit accuracy.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from mlxollama.errors import UnsupportedModel


@dataclass(frozen=True)
class Stored:
    """How one GGUF tensor type is held in MLX."""

    bits: int | None  # None: a float array
    exact: bool  # the stored form decodes to exactly what gguf decodes
    mode: str = "affine"
    group_size: int = 32

    def quantization(self) -> dict | None:
        """The entry mlx-lm's `nn.quantize` takes for a module stored this way."""
        if self.bits is None:
            return None
        entry = {"group_size": self.group_size, "bits": self.bits}
        if self.mode != "affine":
            entry["mode"] = self.mode
        return entry

    def label(self) -> str:
        if self.bits is None:
            return "float"
        if self.mode != "affine":
            return self.mode
        return f"{self.bits}-bit affine g{self.group_size}"


_FLOAT = Stored(None, exact=True)
# Every type `gguf.quants.dequantize` decodes -> its MLX form. The IQ1 and ternary types
# (about 1.6-2 bits a weight) go to 2 bits, MLX's smallest grid that holds -1, 0, +1 closely.
STORED: dict[str, Stored] = {
    "F32": _FLOAT,
    "F16": _FLOAT,
    "BF16": _FLOAT,
    "Q4_0": Stored(4, exact=True),
    "Q4_1": Stored(4, exact=True),
    "Q8_0": Stored(8, exact=True),
    "Q5_0": Stored(5, exact=True),
    "Q5_1": Stored(5, exact=True),
    "Q4_K": Stored(4, exact=True),
    "Q5_K": Stored(5, exact=True),
    "Q2_K": Stored(2, exact=False),
    "Q3_K": Stored(3, exact=False),
    "Q6_K": Stored(6, exact=False),
    "IQ1_S": Stored(2, exact=False),
    "IQ1_M": Stored(2, exact=False),
    "IQ2_XXS": Stored(2, exact=False),
    "IQ2_XS": Stored(2, exact=False),
    "IQ2_S": Stored(2, exact=False),
    "IQ3_XXS": Stored(3, exact=False),
    "IQ3_S": Stored(3, exact=False),
    "IQ4_NL": Stored(4, exact=False),
    "IQ4_XS": Stored(4, exact=False),
    "TQ1_0": Stored(2, exact=False),
    "TQ2_0": Stored(2, exact=True),
    "MXFP4": Stored(4, exact=True, mode="mxfp4"),
    "NVFP4": Stored(4, exact=True, mode="nvfp4", group_size=16),
}
SUPPORTED_TYPES = tuple(STORED)

# Where an affine type keeps its codes: (first byte, end byte, byte of the lowest code, byte
# of the next code) per field of a block. Q8_0's codes are int8, so its lowest is 0x80 (-128);
# the 5-bit types keep the top bit in a separate field, left at 0 for both probes.
_CODE_FIELDS: dict[str, list[tuple[int, int, int, int]]] = {
    "Q4_0": [(2, 18, 0x00, 0x11)],
    "Q4_1": [(4, 20, 0x00, 0x11)],
    "Q8_0": [(2, 34, 0x80, 0x81)],
    "Q5_0": [(2, 6, 0, 0), (6, 22, 0x00, 0x11)],
    "Q5_1": [(4, 8, 0, 0), (8, 24, 0x00, 0x11)],
    "Q4_K": [(16, 144, 0x00, 0x11)],
    "Q5_K": [(16, 48, 0, 0), (48, 176, 0x00, 0x11)],
    "TQ2_0": [(0, 64, 0x00, 0x55)],  # 2-bit codes 0, 1, 2 for -d, 0, +d
}
_MX_LOAD = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"}  # what mx.load decodes right
_SLAB = 1 << 22  # elements decoded at once (16 MB of float32)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the GGUF header describes it."""

    name: str
    type: str  # a GGMLQuantizationType name, or "unknown type N"
    shape: tuple[int, ...]  # row-major: the GGUF dimensions reversed
    offset: int  # of its data, from the start of the file

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[self.type]]
        return prod(self.shape) // block * size

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def stored(self) -> Stored:
        """The MLX form: quantized only for a module's weight matrix (2-D or more, as
        mx.load did); anything else that is quantized is decoded to float32."""
        form = STORED[self.type]
        if form.bits is not None and not (len(self.shape) >= 2 and self.name.endswith(".weight")):
            return _FLOAT
        return form


def check_tensors(infos: dict[str, TensorInfo], path: Path) -> None:
    """Refuse, before anything is decoded, a tensor type we cannot decode and a file that
    ends before its tensors do."""
    size = path.stat().st_size
    for name, info in infos.items():
        if info.type not in STORED:
            raise UnsupportedModel(
                f"tensor '{name}' in {path} has type {info.type}, which cannot be decoded; "
                f"supported types are {', '.join(SUPPORTED_TYPES)}"
            )
        block = GGML_QUANT_SIZES[GGMLQuantizationType[info.type]][0]
        if not info.shape or info.shape[-1] % block:
            raise UnsupportedModel(
                f"{path} is corrupt: tensor '{name}' of shape {info.shape} does not fill "
                f"whole {info.type} blocks of {block}"
            )
        if info.end > size:
            raise UnsupportedModel(
                f"{path} is truncated: tensor '{name}' ends at byte {info.end}, the file has {size}"
            )


def load_tensors(path: Path, infos: dict[str, TensorInfo]) -> dict[str, mx.array]:
    """Every tensor in its MLX form, named as `mx.load` names them: `<name>` for a float,
    `<stem>.weight/.scales/.biases` for a quantized weight. Call `check_tensors` first.

    A file of only the types `mx.load` reads right goes through it (forty times faster than
    decoding in numpy; the result is the same, bit for bit, which the tests check)."""
    if all(i.type in _MX_LOAD for i in infos.values()):
        try:
            out = mx.load(str(path))
        except (RuntimeError, ValueError) as e:
            reason = str(e).removeprefix("[load_gguf] ")
            raise UnsupportedModel(f"cannot read {path}: {reason}") from e
        for name, info in infos.items():
            if info.type == "BF16":  # mx.load narrows BF16 to float16; keep the exact bits
                data = np.fromfile(path, np.uint16, prod(info.shape), offset=info.offset)
                out[name] = mx.array(data.reshape(info.shape)).view(mx.bfloat16)
        return out
    out = {}
    with open(path, "rb") as f:
        for name, info in infos.items():
            f.seek(info.offset)
            data = np.frombuffer(f.read(info.nbytes), np.uint8)
            for suffix, array in decode(data, info, path).items():
                out[name.removesuffix(".weight") + suffix if suffix else name] = array
    return out


def decode(data: np.ndarray, info: TensorInfo, path: Path) -> dict[str, mx.array]:
    """One tensor's bytes -> {"": float array} or {".weight", ".scales"[, ".biases"]}."""
    form, qtype = info.stored(), GGMLQuantizationType[info.type]
    if form.bits is None:
        if info.type == "BF16":  # keep the exact bits
            array = mx.array(data.view(np.uint16).reshape(info.shape)).view(mx.bfloat16)
        elif info.type in ("F32", "F16"):
            array = mx.array(data.view(np.float32 if info.type == "F32" else np.float16))
            array = array.reshape(info.shape)
        else:
            array = mx.concatenate([mx.array(w) for _, w in _slabs(data, info, qtype, path)])
            array = array.reshape(info.shape)
        _check_finite(array, info, path)
        return {"": array}

    parts: list[tuple[mx.array, ...]] = []
    for blocks, w in _slabs(data, info, qtype, path):
        if info.type in _CODE_FIELDS:
            parts.append(_affine_codes(blocks, w, info.type, form.bits))
        elif info.type == "NVFP4":
            parts.append(_nvfp4(blocks, w.shape))
        else:
            q = mx.quantize(mx.array(w), group_size=form.group_size, bits=form.bits, mode=form.mode)
            if form.mode == "affine":
                q = (q[0], q[1].astype(mx.float16), q[2].astype(mx.float16))
            parts.append(q)
        mx.eval(parts[-1])
    arrays = [mx.concatenate(list(column)) for column in zip(*parts, strict=True)]
    lead = info.shape[:-1]
    arrays = [a.reshape(*lead, a.shape[-1]) for a in arrays]
    return dict(zip((".weight", ".scales", ".biases"), arrays, strict=False))


def _slabs(
    data: np.ndarray, info: TensorInfo, qtype: GGMLQuantizationType, path: Path
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(raw rows, their float32 decoding) in slabs of about `_SLAB` elements."""
    cols = info.shape[-1]
    rows = prod(info.shape[:-1])
    raw = data.reshape(rows, -1)
    step = max(1, _SLAB // cols)
    for start in range(0, rows, step):
        blocks = raw[start : start + step]
        with np.errstate(invalid="ignore", over="ignore"):  # a corrupt scale: refused below
            w = dequantize(blocks, qtype).astype(np.float32, copy=False)
        w = w.reshape(len(blocks), cols)
        if not np.isfinite(w).all():
            raise UnsupportedModel(
                f"{path} is corrupt: tensor '{info.name}' decodes to NaN or infinity"
            )
        yield blocks, w


def _check_finite(array: mx.array, info: TensorInfo, path: Path) -> None:
    if not mx.isfinite(array).all().item():
        raise UnsupportedModel(f"{path} is corrupt: tensor '{info.name}' holds NaN or infinity")


def _affine_codes(blocks: np.ndarray, w: np.ndarray, qtype: str, bits: int) -> tuple:
    """MLX affine arrays holding exactly the values gguf decodes from `blocks`.

    Each group of 32 is `scale * code + bias`. Decoding copies of the blocks whose codes are
    all the lowest (code 0), and all the next one (code 1), gives every group's bias and
    bias + scale through gguf's own decoder; the codes follow from the decoded values.
    """
    rows, cols = w.shape
    block_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    low, nxt = blocks.reshape(rows, -1, block_size).copy(), None
    nxt = low.copy()
    for start, end, lo, hi in _CODE_FIELDS[qtype]:
        low[..., start:end] = lo
        nxt[..., start:end] = hi
    kind = GGMLQuantizationType[qtype]
    bias = dequantize(low.reshape(rows, -1), kind).reshape(rows, cols // 32, 32)[..., 0]
    scale = dequantize(nxt.reshape(rows, -1), kind).reshape(rows, cols // 32, 32)[..., 0] - bias
    safe = np.where(scale == 0, 1, scale)[..., None]
    codes = np.rint((w.reshape(rows, cols // 32, 32) - bias[..., None]) / safe)
    codes = np.clip(np.where(scale[..., None] == 0, 0, codes), 0, 2**bits - 1).astype(np.uint8)
    return (
        mx.array(pack(codes.reshape(rows, cols), bits)),
        mx.array(scale.astype(np.float16)),
        mx.array(bias.astype(np.float16)),
    )


def _nvfp4(blocks: np.ndarray, shape: tuple[int, int]) -> tuple:
    """NVFP4 blocks (4 e4m3 scales, then 32 bytes: per 16 values, 8 low nibbles then 8 high)
    as MLX's nvfp4 arrays: the same codes and scales, codes in element order."""
    rows, cols = shape
    b = blocks.reshape(rows, -1, 36)
    scales = b[..., :4].reshape(rows, cols // 16)
    qs = b[..., 4:].reshape(rows, -1, 4, 8)
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(rows, cols)
    return mx.array(pack(codes, 4)), mx.array(np.ascontiguousarray(scales))


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (uint8, < 2**bits) as MLX packs them: a little-endian bit stream read as
    uint32 words, `cols * bits / 32` per row."""
    rows = codes.shape[0]
    if 8 % bits == 0:  # whole codes per byte: shift and add, no bit stream
        per = 8 // bits
        grouped = codes.reshape(rows, -1, per)
        packed = grouped[..., 0].copy()
        for i in range(1, per):
            packed |= grouped[..., i] << np.uint8(bits * i)
        return packed.view(np.uint32)
    stream = (codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(rows, -1), axis=-1, bitorder="little").view(np.uint32)


# -- the header ------------------------------------------------------------------------------

# GGUF value types: 0-7 and 10-12 are fixed-size scalars, 8 a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?"}
_NUMPY |= {10: "<u8", 11: "<i8", 12: "<f8"}
_TYPE_NAMES = {t.value: t.name for t in GGMLQuantizationType}


def read_header(path: Path) -> tuple[dict, dict[str, TensorInfo]]:
    """The metadata (strings as `str`, string arrays as lists, numbers as Python scalars,
    number arrays as numpy arrays) and each tensor's type, shape and offset.

    Raises:
        UnsupportedModel: not a GGUF file, or a header that is truncated or corrupt.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UnsupportedModel(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _Header(buf).read()
            except (struct.error, ValueError, UnicodeDecodeError) as e:
                raise UnsupportedModel(f"{path} is truncated or corrupt: {e}") from None


class _Header:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"a string of {n} bytes runs past the end of the file")
        s = bytes(self.buf[self.pos : self.pos + n]).decode()
        self.pos += n
        return s

    def value(self, kind: int):
        if kind in _SCALARS:
            v = self.unpack(_SCALARS[kind])
            return float(str(np.float32(v))) if kind == 6 else v  # 1e-05, not 9.99999974e-06
        if kind == 8:
            return self.string()
        if kind != 9:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self.unpack("<IQ")
        if item in _NUMPY:
            dtype = np.dtype(_NUMPY[item])
            if self.pos + count * dtype.itemsize > len(self.buf):
                raise ValueError(f"an array of {count} values runs past the end of the file")
            a = np.frombuffer(self.buf, dtype, count, self.pos).copy()
            self.pos += count * dtype.itemsize
            return a
        if count * 8 > len(self.buf) - self.pos:
            raise ValueError(f"an array of {count} values runs past the end of the file")
        return [self.value(item) for _ in range(count)]

    def read(self) -> tuple[dict, dict[str, TensorInfo]]:
        self.pos = 4
        version, n_tensors, n_kv = self.unpack("<IQQ")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (only 2 and 3)")
        metadata = {}
        for _ in range(n_kv):
            key = self.string()
            metadata[key] = self.value(self.unpack("<I"))
        found = []
        for _ in range(n_tensors):
            name = self.string()
            n_dims = self.unpack("<I")
            if n_dims > 8:
                raise ValueError(f"tensor '{name}' has {n_dims} dimensions")
            dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
            self.pos += 8 * n_dims
            kind, offset = self.unpack("<IQ")
            found.append((name, kind, dims, offset))
        alignment = int(metadata.get("general.alignment", 32))
        start = -(-self.pos // alignment) * alignment
        infos = {
            name: TensorInfo(
                name,
                _TYPE_NAMES.get(kind, f"unknown type {kind}"),
                tuple(reversed(dims)),
                start + offset,
            )
            for name, kind, dims, offset in found
        }
        return metadata, infos
