"""The key/value metadata of a GGUF file as plain Python values, read from its header alone.

`mx.load(path, return_metadata=True)` refuses a whole file when it cannot convert one tensor
(the gemma3-270m Q4_K_M file: `gguf_tensor_to_f16 failed`), and gguf's `GGUFReader` builds a
NumPy view per string (12 s for gemma3's 262,144-token vocabulary). This reader walks the
header once: strings become `str`, number arrays one `numpy` read each, string arrays lists of
`str`. The values are what `engine/gguf_tokenizer.tokenizer_files` takes.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mlxollama.errors import UnsupportedModel

# GGUF value types -> (struct format, NumPy dtype) for the fixed-size ones; 8 string, 9 array.
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<?", "?"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_STRING, _ARRAY = 8, 9


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file (not the tensor table).

    Returns:
        Key -> value: `str`, `int`, `float`, `bool`, or a list of them for arrays (float32
        numbers as the nearest Python float of the stored value).

    Raises:
        FileNotFoundError: There is no file at `path`.
        UnsupportedModel: The file is not GGUF (version 2 or 3), or its header is truncated or
            holds a value type GGUF does not define.
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UnsupportedModel(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _walk(buf)
            except (struct.error, ValueError, UnicodeDecodeError) as e:
                raise UnsupportedModel(f"{path} is truncated or corrupt: {e}") from None


def _walk(buf) -> dict[str, Any]:
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (only 2 and 3)")
    pos, out = 24, {}
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        out[key], pos = _value(buf, pos + 4, kind)
    return out


def _value(buf, pos: int, kind: int) -> tuple[Any, int]:
    if kind in _SCALARS:
        fmt = _SCALARS[kind][0]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(buf, pos)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in _SCALARS:
        dtype = np.dtype(_SCALARS[item][1])
        end = pos + count * dtype.itemsize
        if end > len(buf):
            raise ValueError(f"an array of {count} values runs past the end of the file")
        return np.frombuffer(buf, dtype, count, pos).tolist(), end
    values = []
    for _ in range(count):
        value, pos = _value(buf, pos, item)
        values.append(value)
    return values, pos


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + n
    if end > len(buf):
        raise ValueError(f"a string of {n} bytes runs past the end of the file")
    return bytes(buf[pos + 8 : end]).decode(), end
