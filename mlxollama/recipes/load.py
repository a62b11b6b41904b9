"""`load_recipe`: read a build recipe file, whichever of the two syntaxes it is written in."""

from __future__ import annotations

from pathlib import Path

from mlxollama.errors import InvalidModelfile
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.recipes.modelfile import parse_modelfile
from mlxollama.recipes.modelspec import parse_modelspec


def load_recipe(path: Path) -> BuildSpec:
    """Read a build recipe: a ModelSpec for `.yaml`/`.yml` files, a Modelfile otherwise.

    A folder stands for the `Modelfile` inside it.

    Raises:
        InvalidModelfile: the file is missing, unreadable or invalid.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / "Modelfile").is_file():
        path = path / "Modelfile"
    if not path.is_file():
        what = "is a folder without a Modelfile" if path.is_dir() else "does not exist"
        raise InvalidModelfile(
            f"{path} {what}: write a Modelfile (its first line is `FROM <model or path>`) "
            "or a ModelSpec .yaml file, and pass its path with -f"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidModelfile(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise InvalidModelfile(f"cannot read {path}: {e.strerror}") from None
    base_dir = path.absolute().parent
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_modelspec(text, base_dir)
    return parse_modelfile(text, base_dir)
