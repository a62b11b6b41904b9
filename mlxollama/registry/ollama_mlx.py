"""Ollama's own MLX models (the `*-mlx`, `nvfp4`, `mxfp8` tags): a manifest whose layers are
safetensors blobs (`application/vnd.ollama.image.tensor`, each named for the tensor it
holds) and the source's JSON files (`application/vnd.ollama.image.json`: `config.json`,
the tokenizer files), beside the usual template/system/params/license layers.

A quantized weight's blob holds `<base>.weight` (MLX's packed words) with its companions
`<base>.weight.scale` and, for affine modes, `<base>.weight.bias`; the blob's safetensors
metadata says how (`quant_type` and `group_size` for the whole blob, or
`<base>.weight.quant_type` per tensor when a blob mixes them). MLX's own names are
`<base>.scales` / `<base>.biases` and an mlx-lm `quantization` block in `config.json`, so
`write_folder` turns the layers into an mlx-lm folder: the same bytes under MLX's names
(headers rewritten, data copied as is, no MLX needed) and the quantization each module has.
`models.create` then builds it like any safetensors folder.
"""

from __future__ import annotations

import shutil
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from mlxollama.errors import UnsupportedModel
from mlxollama.recipes.buildspec import MODEL_FILES
from mlxollama.store.manifests import Descriptor
from mlxollama.store.names import ModelName

# Ollama's quantization types (x/quant): group size, bits and MLX mode of each.
QUANT_TYPES: dict[str, tuple[int, int, str]] = {
    "int4": (64, 4, "affine"),
    "int8": (64, 8, "affine"),
    "nvfp4": (16, 4, "nvfp4"),
    "mxfp4": (32, 4, "mxfp4"),
    "mxfp8": (32, 8, "mxfp8"),
}
# the companions of `<base>.weight` in Ollama's blobs, and MLX's names for them
COMPANIONS = {".weight.scale": ".scales", ".weight.bias": ".biases"}
MAX_HEADER = 64 << 20  # safetensors headers are JSON: anything larger is not one

Quant = tuple[int, int, str]  # group size, bits, mode


def write_folder(
    name: ModelName,
    tensors: list[Descriptor],
    files: list[Descriptor],
    blob_path,
    folder: Path,
) -> int:
    """Write the mlx-lm folder of an Ollama MLX manifest into `folder`; returns the number
    of tensors.

    Raises:
        UnsupportedModel: no `config.json` layer, a tensor blob that is not safetensors, a
            quantization type MLX has no mode for (the supported ones are named), a global
            scale (prequantized NVFP4 from other producers), a companion without its weight.
    """
    by_name = {d.name: d for d in files if d.name}
    if "config.json" not in by_name:
        raise UnsupportedModel(
            f"{name.display()} has tensor layers but no config.json layer "
            "(application/vnd.ollama.image.json named config.json)"
        )
    try:
        config = orjson.loads(blob_path(by_name["config.json"].digest).read_bytes())
    except orjson.JSONDecodeError as e:
        raise UnsupportedModel(f"{name.display()}: its config.json is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise UnsupportedModel(f"{name.display()}: its config.json is not a JSON object")
    for fname in MODEL_FILES:
        if fname in by_name:
            shutil.copyfile(blob_path(by_name[fname].digest), folder / fname)
    quant: dict[str, Quant] = {}
    count = 0
    for i, d in enumerate(tensors):
        where = f"{name.display()}: tensor layer {d.name or d.digest}"
        found, n = _rewrite(where, blob_path(d.digest), folder / f"model-{i:05d}.safetensors")
        quant.update(found)
        count += n
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)  # the source's; the blobs say what these tensors are
    if quant:
        config["quantization"] = _quantization_block(quant)
    (folder / "config.json").write_bytes(orjson.dumps(config))
    return count


def _quantization_block(quant: dict[str, Quant]) -> dict[str, Any]:
    """mlx-lm's `quantization`: the commonest kind for all quantized modules, and an entry
    of its own for each module quantized another way."""
    common = Counter(quant.values()).most_common(1)[0][0]
    block: dict[str, Any] = _as_dict(common)
    for path, q in sorted(quant.items()):
        if q != common:
            block[path] = _as_dict(q)
    return block


def _as_dict(q: Quant) -> dict[str, Any]:
    return {"group_size": q[0], "bits": q[1], "mode": q[2]}


def _rewrite(where: str, src: Path, dst: Path) -> tuple[dict[str, Quant], int]:
    """Copy one tensor blob to `dst` under MLX's names; returns each quantized module's
    (group size, bits, mode) and the number of tensors."""
    with src.open("rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < size <= MAX_HEADER:
            raise UnsupportedModel(f"{where} is not a safetensors file")
        try:
            header = orjson.loads(f.read(size))
        except orjson.JSONDecodeError:
            raise UnsupportedModel(f"{where} is not a safetensors file") from None
        if not isinstance(header, dict):
            raise UnsupportedModel(f"{where} is not a safetensors file")
        meta = header.pop("__metadata__", None) or {}
        renamed: dict[str, Any] = {}
        quant: dict[str, Quant] = {}
        for key, info in header.items():
            if key.endswith(".global_scale"):
                raise UnsupportedModel(
                    f"{where}: {key} is a global scale (NVFP4 with a per-tensor scale), "
                    "which mlxollama cannot run yet"
                )
            suffix = next((s for s in COMPANIONS if key.endswith(s)), None)
            if suffix is None:
                renamed[key] = info
                continue
            weight = key[: -len(suffix)] + ".weight"
            if weight not in header:
                raise UnsupportedModel(f"{where}: {key} has no {weight} beside it")
            base = key[: -len(suffix)]
            renamed[base + COMPANIONS[suffix]] = info
            if suffix == ".weight.scale":
                quant[base] = _quant_of(where, weight, meta)
        new = orjson.dumps({"__metadata__": {"format": "mlx"}, **renamed})
        new += b" " * (-len(new) % 8)
        with dst.open("wb") as out:
            out.write(struct.pack("<Q", len(new)) + new)
            shutil.copyfileobj(f, out, 1 << 20)  # the data section, as it was
    return quant, len(renamed)


def _quant_of(where: str, weight: str, meta: dict[str, Any]) -> Quant:
    kind = str(meta.get(f"{weight}.quant_type") or meta.get("quant_type") or "").lower()
    if kind not in QUANT_TYPES:
        raise UnsupportedModel(
            f"{where}: {weight} is quantized as '{kind or '(not said)'}'; supported are "
            + ", ".join(QUANT_TYPES)
        )
    group, bits, mode = QUANT_TYPES[kind]
    group_size = meta.get(f"{weight}.group_size") or meta.get("group_size") or group
    try:
        return int(group_size), bits, mode
    except ValueError:
        raise UnsupportedModel(f"{where}: group size {group_size!r} is not a number") from None
