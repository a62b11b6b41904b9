"""`create`: turn a BuildSpec into a stored model.

Sources: a GGUF file, an HF-style safetensors folder (MLX-quantized or not), or a model
already in the store. Every parameter becomes its own safetensors blob named as mlx-lm's
modules expect, so two variants share every tensor they have in common, and building the
same recipe twice writes nothing new. The manifest is written last, under the store lock; if
anything fails before it, the blobs this build added are removed again, so a failed create
leaves neither a tag nor an orphan behind. A killed one leaves its journal (the blobs it
added), which the next gc or daemon start-up undoes (`Store.recover`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlxollama import __version__
from mlxollama.errors import UnsupportedModel
from mlxollama.recipes.buildspec import MODEL_FILES, QUANTIZATION_ALIASES, BuildSpec
from mlxollama.store import manifests as mt
from mlxollama.store.info import text_layers
from mlxollama.store.manifests import Descriptor, Manifest
from mlxollama.store.names import parse_name
from mlxollama.store.store import BuildJournal, Store, StoredModel

Progress = Callable[[dict[str, Any]], None]


_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
}


def tensor_bytes(name: str, array) -> bytes:
    """One tensor as a safetensors file, byte for byte the same for the same tensor."""
    import mlx.core as mx

    mx.eval(array)
    data = bytes(memoryview(array))
    header = {
        "__metadata__": {"format": "mlx"},
        name: {
            "dtype": _DTYPES[str(array.dtype).split(".")[-1]],
            "shape": list(array.shape),
            "data_offsets": [0, len(data)],
        },
    }
    head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


@dataclass
class _Parts:
    """What a source yields before it is written."""

    config: dict[str, Any]  # mlx-lm config.json
    model: Any = None  # the mlx-lm module, when the weights must be written
    tensors: list[Descriptor] = field(default_factory=list)  # reused tensor layers
    files: dict[str, bytes] = field(default_factory=dict)
    reused_files: list[Descriptor] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    parent: StoredModel | None = None


class _Builder:
    def __init__(self, store: Store, progress: Progress | None, journal: BuildJournal):
        self.store = store
        self.progress = progress or (lambda event: None)
        self.added: set[str] = set()
        self.journal = journal  # noted before it is written: a kill leaves no unknown orphan

    def say(self, status: str, **fields: Any) -> None:
        self.progress({"status": status, **fields})

    def put(self, data: bytes, announce: bool = True) -> str:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if self.store.blobs.exists(digest):
            if announce:
                self.say(f"using existing layer {digest}")
            return digest
        if announce:
            self.say(f"creating new layer {digest}")
        self.journal.adding(digest)
        self.store.blobs.put_bytes(data, sync=False)
        self.journal.added()
        self.added.add(digest)
        return digest

    def layer(
        self, media_type: str, data: bytes, name: str | None = None, announce: bool = True
    ) -> Descriptor:
        return Descriptor(media_type, self.put(data, announce), len(data), name)

    # -- sources ---------------------------------------------------------------------------

    def from_gguf(self, path: Path) -> _Parts:
        from mlxollama.engine.gguf import read_gguf
        from mlxollama.engine.loader import instantiate

        self.say("parsing GGUF")
        g = read_gguf(path)
        self.say("converting model")
        model = instantiate(g.config, g.weights)
        family = g.metadata.get("general.architecture", g.config["model_type"])
        return _Parts(
            config=g.config,
            model=model,
            files=g.tokenizer_files,
            details={
                "family": family,
                "file_type": g.file_type,
                "model_info": g.metadata,
                "quantization": {
                    "source": g.file_type,
                    "source_tensors": g.tensor_types,
                    "stored": g.stored,
                },
            },
            sources=[_file_source("gguf", path)],
        )

    def from_folder(self, path: Path, tokenizer: Path | None) -> _Parts:
        import mlx.core as mx

        from mlxollama.engine.loader import instantiate

        config_path = path / "config.json"
        if not config_path.is_file():
            raise UnsupportedModel(f"{path} has no config.json: not a Hugging Face model folder")
        weight_files = sorted(path.glob("*.safetensors"))
        if not weight_files:
            raise UnsupportedModel(f"{path} has no *.safetensors weights")
        config = orjson.loads(config_path.read_bytes())
        self.say("converting model")
        weights: dict[str, Any] = {}
        for wf in weight_files:
            weights.update(mx.load(str(wf)))
        model = instantiate(config, weights)
        files = {
            name: (src / name).read_bytes()
            for src in (tokenizer or path,)
            for name in MODEL_FILES
            if (src / name).is_file()
        }
        details = {"family": folder_family(config)}
        if _is_encoder(config):
            details.update(_sentence_transformers(path, config))
        return _Parts(
            config=config,
            model=model,
            files=files,
            details=details,
            sources=[_file_source("safetensors", wf) for wf in weight_files],
        )

    def from_model(self, name: str, need_weights: bool) -> _Parts:
        parent = self.store.get(name)
        info = self.store.config(parent)
        parts = _Parts(
            config=info["model_config"],
            reused_files=parent.manifest.layers_of(mt.FILE_MEDIA_TYPE),
            details={
                "family": info.get("model_family"),
                "file_type": info.get("file_type"),
                "model_info": info.get("model_info", {}),
                "capabilities": info.get("capabilities"),
                "context_length": info.get("context_length"),
                "pooling": info.get("pooling"),
                "quantization": info.get("quantization"),
            },
            sources=[{"type": "model", "name": parent.name.display(), "digest": parent.digest}],
            parent=parent,
        )
        if need_weights:
            from mlxollama.models.load import load

            parts.model = load(self.store, name, weights="stored").model
        else:
            parts.tensors = parent.manifest.layers_of(mt.TENSOR_MEDIA_TYPE)
        return parts

    # -- writing ---------------------------------------------------------------------------

    def tensors(self, model) -> list[Descriptor]:
        from mlx.utils import tree_flatten

        params = sorted(tree_flatten(model.parameters()))
        layers, new = [], 0
        for i, (name, array) in enumerate(params, 1):
            before = len(self.added)
            data = tensor_bytes(name, array)
            layers.append(self.layer(mt.TENSOR_MEDIA_TYPE, data, name, announce=False))
            new += len(self.added) - before
            if i % 50 == 0 or i == len(params):
                self.say("writing tensors", total=len(params), completed=i)
        self.say(f"{len(params)} tensor layers: {new} new, {len(params) - new} existing")
        return layers


def create(
    store: Store, name: str, spec: BuildSpec, progress: Progress | None = None
) -> StoredModel:
    """Build `spec` and tag it `name`.

    Raises:
        InvalidName: `name` is not a valid model name (checked before anything is read).
        ValueError: an unknown quantization.
        FileNotFoundError: the source path does not exist.
        ModelNotFound: the source names no model in the store.
        UnsupportedModel: a source that cannot be imported (architecture, tensor type, ...).
    """
    target = parse_name(name)
    quantize = _quantization(spec.quantize)
    with store.lock(), store.build_journal() as journal:
        builder = _Builder(store, progress, journal)
        try:
            stored = _build(store, builder, target, spec, quantize)
        except BaseException:
            with contextlib.suppress(Exception):
                store.remove_unreferenced(builder.added)
            raise
    builder.say("success")
    return stored


def _build(store: Store, b: _Builder, target, spec: BuildSpec, quantize: str | None) -> StoredModel:
    source = Path(spec.source).expanduser()
    if source.is_file():
        parts = b.from_gguf(source)
    elif source.is_dir():
        parts = b.from_folder(source, Path(spec.tokenizer) if spec.tokenizer else None)
    elif _looks_like_path(spec.source):
        raise FileNotFoundError(f"FROM {spec.source}: no such file or folder")
    else:
        parts = b.from_model(spec.source, need_weights=quantize is not None)
    if spec.tokenizer and parts.parent is not None:
        parts.reused_files = []
        parts.files = _read_files(Path(spec.tokenizer))

    config = parts.config
    if quantize is not None:
        from mlxollama.engine.loader import convert

        b.say(f"quantizing model to {quantize}")
        parts.model, config = convert(parts.model, config, quantize)
        parts.details["file_type"] = {"fp16": "F16", "bf16": "BF16"}.get(quantize, quantize)
        if parts.details.get("quantization"):  # the source stays; what is stored changes
            parts.details["quantization"] = {
                **parts.details["quantization"],
                "stored": _stored_label(config),
            }
    tensor_layers = b.tensors(parts.model) if parts.model is not None else parts.tensors
    file_layers = parts.reused_files + [
        b.layer(mt.FILE_MEDIA_TYPE, data, fname) for fname, data in sorted(parts.files.items())
    ]
    inherited = (
        text_layers(store, parts.parent)
        if parts.parent is not None
        else {"parameters": {}, "template": None, "system": None, "messages": [], "license": []}
    )
    params = {**inherited["parameters"], **spec.parameters}
    extra_layers = []
    template = spec.template if spec.template is not None else inherited["template"]
    system = spec.system if spec.system is not None else inherited["system"]
    messages = spec.messages if spec.messages is not None else inherited["messages"]
    if template is not None:
        from mlxollama.gotemplate import parse

        parse(template)  # a bad template fails the create, as in Ollama
        extra_layers.append(b.layer(mt.TEMPLATE_MEDIA_TYPE, template.encode()))
    if system is not None:
        extra_layers.append(b.layer(mt.SYSTEM_MEDIA_TYPE, system.encode()))
    if params:
        extra_layers.append(
            b.layer(mt.PARAMS_MEDIA_TYPE, orjson.dumps(params, option=orjson.OPT_SORT_KEYS))
        )
    if messages:
        extra_layers.append(b.layer(mt.MESSAGES_MEDIA_TYPE, orjson.dumps(messages)))
    for text in inherited["license"] + list(spec.license):
        extra_layers.append(b.layer(mt.LICENSE_MEDIA_TYPE, text.encode()))

    info = _config_blob(store, target, parts, config, quantize, spec)
    config_layer = b.layer(mt.CONFIG_MEDIA_TYPE, orjson.dumps(info, option=orjson.OPT_SORT_KEYS))
    manifest = Manifest(config=config_layer, layers=(*tensor_layers, *file_layers, *extra_layers))
    b.say("writing manifest")
    store.blobs.sync()
    return store.put_manifest(target, manifest)


def _config_blob(store: Store, target, parts: _Parts, config, quantize, spec: BuildSpec) -> dict:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.utils import get_total_parameters

    details = parts.details
    if parts.model is not None:
        n_params = int(get_total_parameters(parts.model))
    else:
        n_params = int(store.config(parts.parent).get("parameter_count", 0))
    family = details.get("family") or config.get("model_type")
    context_length = (
        details.get("context_length")
        or config.get("max_position_embeddings")
        or details.get("model_info", {}).get(f"{family}.context_length")
    )
    model_info = dict(details.get("model_info") or {})
    model_info.setdefault("general.architecture", family)
    model_info["general.parameter_count"] = n_params
    if context_length:
        model_info.setdefault(f"{family}.context_length", context_length)
    if config.get("hidden_size"):
        model_info.setdefault(f"{family}.embedding_length", config["hidden_size"])
    info = {
        "model_format": "mlx",
        "model_family": family,
        "model_families": [family],
        "model_type": format_parameter_count(n_params),
        "file_type": details.get("file_type") or _file_type(config, parts.model),
        "architecture": config.get("model_type"),
        "capabilities": details.get("capabilities") or ["completion"],
        "context_length": context_length,
        "embedding_length": config.get("hidden_size"),
        "parameter_count": n_params,
        "parent_model": parts.parent.name.display() if parts.parent else "",
        "model_config": config,
        "model_info": model_info,
        "provenance": {
            "sources": ([spec.origin] if spec.origin else []) + parts.sources,
            "parent": store.config(parts.parent).get("provenance") if parts.parent else None,
            "revision": spec.revision,
            "quantization": quantize,
            "recipe": spec.recipe,
            "tools": {
                "mlxollama": __version__,
                "mlx": mx.__version__,
                "mlx_lm": mlx_lm.__version__,
            },
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    }
    if details.get("pooling"):
        info["pooling"] = details["pooling"]
    if details.get("quantization"):
        info["quantization"] = details["quantization"]
    # Rebuilding an unchanged recipe must write nothing new: keep the old creation time.
    existing = store.find(target)
    if existing is not None:
        old = store.config(store.get(existing))
        stamp = old.get("provenance", {}).get("created_at")
        candidate = {**info, "provenance": {**info["provenance"], "created_at": stamp}}
        if candidate == old:
            return old
    return info


def folder_family(config: dict[str, Any]) -> str:
    """The family `show` names for an HF folder: llama.cpp's architecture name where the GGUF
    import maps one onto this mlx-lm model type (`gemma3_text` -> `gemma3`, `qwen2_moe` ->
    `qwen2moe`, `cohere` -> `command-r`), as Ollama names a converted folder, so a model reads
    the same whether it came as GGUF or as safetensors; else the model type itself."""
    from mlxollama.engine.gguf_arch import ARCHITECTURES

    model_type = config.get("model_type", "unknown")
    by_type = {arch.model_type: arch.name for arch in ARCHITECTURES.values()}
    return by_type.get(model_type, model_type)


def _is_encoder(config: dict[str, Any]) -> bool:
    from mlxollama.engine.bert import ENCODER_TYPES

    return config.get("model_type") in ENCODER_TYPES


# sentence-transformers' Pooling settings that name a mode this engine runs
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def _sentence_transformers(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """An encoder's embedding facts: sentence-transformers' pooling mode and `max_seq_length`
    when the folder has them (modules.json), else mean pooling over the whole position table."""
    pooling, context = "mean", config.get("max_position_embeddings")
    modules = path / "modules.json"
    for module in orjson.loads(modules.read_bytes()) if modules.is_file() else []:
        if module.get("type", "").endswith(".Pooling"):
            settings = path / module.get("path", "") / "config.json"
            cfg = orjson.loads(settings.read_bytes()) if settings.is_file() else {}
            modes = [mode for key, mode in _POOLING_KEYS.items() if cfg.get(key)]
            if len(modes) != 1:
                raise UnsupportedModel(
                    f"{settings}: pooling must be exactly one of mean, cls or max tokens"
                )
            pooling = modes[0]
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        context = orjson.loads(st_config.read_bytes()).get("max_seq_length") or context
    return {"capabilities": ["embedding"], "context_length": context, "pooling": pooling}


def _read_files(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    return {n: (folder / n).read_bytes() for n in MODEL_FILES if (folder / n).is_file()}


def _quantization(value: str | None) -> str | None:
    if value is None:
        return None
    key = value.strip().lower()
    if key not in QUANTIZATION_ALIASES:
        raise ValueError(f"unsupported quantization '{value}': use int4, int8, fp16 or bf16")
    return QUANTIZATION_ALIASES[key] or None


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref.lower().endswith(
        (".gguf", ".safetensors", ".bin")
    )


def _file_source(kind: str, path: Path) -> dict[str, Any]:
    from mlxollama.store.blobs import sha256_file

    return {
        "type": kind,
        "path": str(path.resolve()),
        "digest": sha256_file(path),
        "size": path.stat().st_size,
    }


def _file_type(config: dict[str, Any], model) -> str:
    q = config.get("quantization")
    if q:
        return f"int{q['bits']}" if q.get("mode", "affine") == "affine" else q["mode"]
    if model is not None:
        from mlx.utils import tree_flatten

        dtypes = {str(a.dtype).split(".")[-1] for _, a in tree_flatten(model.parameters())}
        for name, label in (("bfloat16", "BF16"), ("float16", "F16"), ("float32", "F32")):
            if name in dtypes:
                return label
    return "unknown"


def _stored_label(config: dict[str, Any]) -> str:
    """The default form of a config's `quantization` as `show` words it ("4-bit affine g64")."""
    q = config.get("quantization")
    if not q:
        return "float"
    mode = q.get("mode", "affine")
    return f"{q['bits']}-bit affine g{q['group_size']}" if mode == "affine" else mode


def format_parameter_count(n: int) -> str:
    """Ollama's parameter_size: `134.52M`, `3.2B`, `8B`."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            if unit in ("M", "K"):
                return f"{value:.2f}{unit}"
            return f"{value:.0f}{unit}" if round(value, 1) == int(value) else f"{value:.1f}{unit}"
    return str(n)
