"""`mlxctl`: Ollama's verbs. One short function per verb: build the client, call one method,
print Ollama's formats, and turn our errors into `Error: <message>` with exit status 1.

MLX is imported only by the verbs that run a model, so `mlxctl --help` and `mlxctl list`
stay fast.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click

from mlxollama import __version__
from mlxollama.cli import format as fmt
from mlxollama.config import settings_table
from mlxollama.errors import MlxOllamaError


class _Group(click.Group):
    """Shows domain errors as `Error: ...` (exit 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (MlxOllamaError, FileNotFoundError, ValueError, PermissionError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(
                f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
            ) from None


def _client():
    from mlxollama.sdk import Embedded

    return Embedded()


@click.group(cls=_Group, epilog="Environment:\n\n" + settings_table().replace("\n", "\n\n"))
@click.version_option(__version__, "-v", "--version", message="mlxctl version is %(version)s")
def cli() -> None:
    """Run MLX models with Ollama's workflow: create, run, list, show, cp, rm."""


@cli.command()
@click.argument("model")
@click.option(
    "-f",
    "--file",
    "path",
    default="Modelfile",
    show_default=True,
    help="Modelfile, or ModelSpec (.yaml), to build from.",
)
@click.option("-q", "--quantize", help="Quantize the weights: int4, int8, fp16 or bf16.")
def create(model: str, path: str, quantize: str | None) -> None:
    """Create a model from a Modelfile or ModelSpec."""
    from mlxollama.store.modelfile import load_recipe

    spec = load_recipe(Path(path))
    if quantize:
        spec.quantize = quantize
    _client().create(model, spec=spec, progress=_Progress())


class _Progress:
    """Prints create/pull progress to stderr: one line per status, tensor counts in place."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.inline = False

    def __call__(self, event: dict) -> None:
        status = event["status"]
        if "completed" in event and "total" in event:
            line = f"{status} {event['completed']}/{event['total']}"
            if self.tty:
                click.echo(f"\r{line}", nl=False, err=True)
                self.inline = True
                return
            if event["completed"] != event["total"]:
                return
            click.echo(line, err=True)
            return
        if self.inline:
            click.echo(err=True)
            self.inline = False
        click.echo(status, err=True)


@cli.command("list")
@click.argument("prefix", required=False)
def list_(prefix: str | None) -> None:
    """List models."""
    models = _client().list()["models"]
    now = time.time()
    rows = [
        [
            m["name"],
            m["digest"][:12],
            fmt.human_bytes(m["size"]),
            fmt.human_time_ago(datetime.fromisoformat(m["modified_at"]).timestamp(), now),
        ]
        for m in models
        if not prefix or m["name"].startswith(prefix)
    ]
    click.echo(fmt.table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


cli.add_command(list_, "ls")


@cli.command()
@click.argument("model")
@click.option("--modelfile", "part", flag_value="modelfile", help="Show the Modelfile.")
@click.option("--parameters", "part", flag_value="parameters", help="Show the parameters.")
@click.option("--template", "part", flag_value="template", help="Show the template.")
@click.option("--system", "part", flag_value="system", help="Show the system message.")
@click.option("--license", "part", flag_value="license", help="Show the license.")
@click.option("--verbose", is_flag=True, help="Also show metadata and provenance.")
def show(model: str, part: str | None, verbose: bool) -> None:
    """Show information about a model."""
    body = _client().show(model, verbose=verbose)
    if part:
        click.echo(body[part])
        return
    info, details = body["model_info"], body["details"]
    family = info.get("general.architecture", details["family"])
    model_rows = [
        ("architecture", family),
        ("parameters", details["parameter_size"]),
        ("context length", str(info.get(f"{family}.context_length", ""))),
        ("embedding length", str(info.get(f"{family}.embedding_length", ""))),
        ("quantization", details["quantization_level"]),
    ]
    sections = [("Model", [r for r in model_rows if r[1]])]
    sections.append(("Capabilities", [(c, "") for c in body["capabilities"]]))
    if body["parameters"]:
        rows = [tuple(line.split(None, 1)) for line in body["parameters"].splitlines()]
        sections.append(("Parameters", [(k, v) for k, v in rows]))
    if body["system"]:
        sections.append(("System", [(line, "") for line in body["system"].splitlines()[:2]]))
    if body["license"]:
        sections.append(("License", [(line, "") for line in body["license"].splitlines()[:2]]))
    if verbose:
        sections.append(("Metadata", [(k, str(v)) for k, v in sorted(info.items())]))
        prov = body.get("provenance") or {}
        sections.append(("Provenance", [(k, str(v)) for k, v in sorted(prov.items()) if v]))
    out = []
    for title, rows in sections:
        out.append(f"  {title}")
        width = max((len(k) for k, v in rows if v), default=0)
        out += [f"    {k:<{width}}    {v}".rstrip() if v else f"    {k}" for k, v in rows]
        out.append("")
    click.echo("\n".join(out))


@cli.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove models (and the blobs no other model uses)."""
    client = _client()
    for model in models:
        client.delete(model)
        click.echo(f"deleted '{model}'")


@cli.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model (a new tag sharing every blob)."""
    _client().copy(source, destination)
    click.echo(f"copied '{source}' to '{destination}'")


@cli.command()
@click.argument("model")
def verify(model: str) -> None:
    """Re-hash every blob of a model against its digest."""
    problems = _client().verify(model)
    for p in problems:
        click.echo(f"{p.digest}: {p.error}", err=True)
    if problems:
        raise click.ClickException(
            f"{len(problems)} blob(s) of '{model}' failed verification: create or pull it again"
        )
    click.echo(f"verified '{model}': every blob matches its digest")


@cli.command()
def gc() -> None:
    """Delete blobs that no model references."""
    count, freed = _client().gc()
    click.echo(f"removed {count} unreferenced blob(s), freed {fmt.human_bytes(freed)}")


@cli.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--verbose", is_flag=True, help="Print timings after each answer.")
@click.option("--system", help="System message for this run.")
@click.option(
    "-p",
    "--parameter",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="An option for this run, e.g. -p temperature=0 (repeatable).",
)
def run(model: str, prompt: tuple[str, ...], verbose: bool, system: str | None, params) -> None:
    """Run a model: answer PROMPT (or stdin), or chat interactively without one.

    The model runs in this process on the local store.
    """
    from mlxollama.api import coerce_option

    options: dict = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}': use NAME=VALUE", param_hint="--parameter")
        value = coerce_option(key, value)
        options[key] = options.get(key, []) + value if key == "stop" else value
    text = " ".join(prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped}\n\n{text}" if text and piped else (piped or text)
    client = _client()
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    if text:
        messages.append({"role": "user", "content": text})
        _answer(client, model, messages, options, verbose)
        return
    client.chat(model, [])  # load now, so the first answer does not wait
    while True:
        try:
            line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
        except (EOFError, click.Abort):
            click.echo()
            return
        if line.strip() in ("/bye", "/exit"):
            return
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        messages.append(
            {"role": "assistant", "content": _answer(client, model, messages, options, verbose)}
        )


def _answer(client, model: str, messages: list[dict], options: dict, verbose: bool) -> str:
    parts, final = [], {}
    for final in client.chat(model, messages, options=options, stream=True):
        piece = final["message"]["content"]
        parts.append(piece)
        click.echo(piece, nl=False)
    click.echo("\n")
    if verbose:
        click.echo(fmt.stats(final), err=True)
    return "".join(parts)


if __name__ == "__main__":
    cli()
