"""Settings from the environment: one documented table feeding one frozen dataclass.

Each `MLXOLLAMA_*` variable mirrors the `OLLAMA_*` variable of the same meaning. `docs/`
lists every entry of SETTINGS (a test checks it), and `mlxctl --help` prints the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str


SETTINGS = (
    Setting("MLXOLLAMA_MODELS", "~/.mlxollama", "Store root: blobs, manifests, logs."),
    Setting(
        "MLXOLLAMA_CONTEXT_LENGTH",
        "4096",
        "Default context length (num_ctx) when neither the request nor the model sets one; "
        "never more than the model's own.",
    ),
    Setting(
        "MLXOLLAMA_BLAS",
        "auto",
        "CPU backend only: a BLAS library to load before MLX (auto: the system's libblas.so.3 "
        "when it is OpenBLAS; off: never).",
    ),
)


@dataclass(frozen=True)
class Config:
    models: Path
    context_length: int
    blas: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        get = {s.name: env.get(s.name) or s.default for s in SETTINGS}
        try:
            context_length = int(get["MLXOLLAMA_CONTEXT_LENGTH"])
        except ValueError:
            raise ValueError(
                f"MLXOLLAMA_CONTEXT_LENGTH must be an integer, got {get['MLXOLLAMA_CONTEXT_LENGTH']!r}"
            ) from None
        return cls(
            models=Path(get["MLXOLLAMA_MODELS"]).expanduser(),
            context_length=context_length,
            blas=get["MLXOLLAMA_BLAS"],
        )


def settings_table() -> str:
    """The settings as aligned text, for `--help` epilogues."""
    width = max(len(s.name) for s in SETTINGS)
    return "\n".join(f"{s.name:<{width}}  {s.help} (default: {s.default})" for s in SETTINGS)
