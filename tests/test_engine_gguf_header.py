"""`engine.gguf_tensors.read_header`: a GGUF header's metadata, read without mx.load (which
refuses files with K-quants) and without GGUFReader (12 s on gemma3's 262,144 tokens)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from mlxollama.engine.gguf_tensors import read_header
from mlxollama.errors import UnsupportedModel


def read_metadata(path):
    """The metadata, number arrays as lists (read_header keeps them as numpy arrays)."""
    return {k: _plain(v) for k, v in read_header(Path(path))[0].items()}


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _write(path, **extra) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("t.u32", 7)
    writer.add_int8("t.i8", -3)
    writer.add_uint64("t.u64", 2**40)
    writer.add_float32("t.f32", 0.5)
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "naïve 🦙")
    writer.add_array("t.strs", ["a", "", "  ", "<0x41>"])
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.25, -1000.0])
    writer.add_array("t.nested", [[1, 2], [3]])
    for key, value in extra.items():
        writer.add_string(key, value)
    writer.add_tensor("w", np.zeros((2, 3), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_every_value_type_reads_back_as_python(tmp_path):
    _write(tmp_path / "m.gguf")
    meta = read_metadata(tmp_path / "m.gguf")
    assert meta["general.architecture"] == "llama"
    assert (meta["t.u32"], meta["t.i8"], meta["t.u64"]) == (7, -3, 2**40)
    assert (meta["t.f32"], meta["t.f64"], meta["t.bool"]) == (0.5, 1e-300, True)
    assert meta["t.str"] == "naïve 🦙"
    assert meta["t.strs"] == ["a", "", "  ", "<0x41>"]
    assert meta["t.ints"] == [1, -2, 3]
    assert meta["t.floats"] == [0.25, -1000.0]
    assert meta["t.nested"] == [[1, 2], [3]]
    assert all(type(v) is int for v in meta["t.ints"])


def test_agrees_with_gguf_reader_on_the_tokenizer_fixture():
    path = Path(__file__).parent / "fixtures" / "tiny_spm.gguf"
    meta = read_metadata(path)
    reader = gguf.GGUFReader(path)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            # float32 values read as their shortest decimal (1e-05, not 9.99999974e-06)
            expected = field.contents()
            if isinstance(expected, float):
                expected = pytest.approx(expected, rel=1e-6)
            assert meta[key] == expected, key
    assert len(meta["tokenizer.ggml.tokens"]) == 600


def test_not_gguf_and_truncated_headers_are_clear_errors(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UnsupportedModel, match="is not a GGUF file"):
        read_metadata(tmp_path / "x.gguf")
    _write(tmp_path / "m.gguf", **{"t.long": "x" * 5000})
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:400])
    with pytest.raises(UnsupportedModel, match=r"cut\.gguf is truncated or corrupt"):
        read_metadata(tmp_path / "cut.gguf")
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.gguf")
