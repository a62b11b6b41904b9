"""`mlxctl`: Ollama's verbs. One short function per verb: pick the client (the daemon when one
answers, else the store in-process: `cli/connect.py`), call one method, print Ollama's
formats, and turn our errors into `Error: <message>` with exit status 1; Ctrl-C exits 130
and SIGTERM 143 (`cli/interrupt.py`).

MLX, transformers and the server stack (Falcon, waitress, Pykka) are imported only by the
verbs that need them, so `mlxctl --help`, `list` and `ps` start in a fraction of a second
(tests/test_scripts.py checks what they import).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

import click
import orjson

from mlxollama import __version__
from mlxollama.cli import format as fmt
from mlxollama.cli import repl
from mlxollama.cli.connect import check_address, connect, daemon, is_daemon, local, occupant
from mlxollama.cli.interrupt import exit_status, signals_seen, sigterm_raises
from mlxollama.cli.progress import ProgressView
from mlxollama.config import settings_table
from mlxollama.errors import MlxOllamaError, ModelNotFound
from mlxollama.interface import ModelClient


class _Group(click.Group):
    """Shows domain errors as `Error: ...` (exit 1) instead of tracebacks; an interrupt
    exits 130 (Ctrl-C) or 143 (SIGTERM) once the verb has cleaned up."""

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_raises():
                return super().invoke(ctx)
        except KeyboardInterrupt as e:
            click.echo(err=True)
            ctx.exit(exit_status(e))
        except (MlxOllamaError, FileNotFoundError, ValueError, PermissionError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(
                f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
            ) from None


def _version(ctx: click.Context, _param, value: bool) -> None:
    """Ollama's `-v`: the daemon's version, with a warning when this client's differs."""
    if not value or ctx.resilient_parsing:
        return
    try:
        found = occupant().daemon
        server = found.get("version") if found else None
    except ValueError:  # a bad MLXOLLAMA_HOST
        server = None
    if server:
        click.echo(f"mlxctl version is {server}")
        if server != __version__:
            click.echo(f"Warning: client version is {__version__}", err=True)
    else:
        click.echo("Warning: could not connect to a running mlxctl daemon", err=True)
        click.echo(f"Warning: client version is {__version__}", err=True)
    ctx.exit()


ENVIRONMENT = "Environment:\n\n" + settings_table().replace("\n", "\n\n")


@click.group(cls=_Group, epilog=ENVIRONMENT)
@click.option(
    "-v",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Show the version (the daemon's, when one runs) and exit.",
)
def cli() -> None:
    """Run MLX models with Ollama's workflow: serve, pull, push, create, run, ps, stop, list,
    show, cp, rm; import-ollama brings over the models of an Ollama store; bench measures
    tokens/s.

    Verbs talk to the daemon at MLXOLLAMA_HOST when one answers; otherwise they work on the
    local store in this process (ps and stop need the daemon; pack, import-ollama and verify
    always work on the local store).
    """


embedded_option = click.option(
    "--embedded", is_flag=True, help="Work in this process, even when a daemon is running."
)


@cli.command(epilog=ENVIRONMENT)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Start the daemon (Ollama's API on MLXOLLAMA_HOST) in the foreground.

    It checks first that the address is free (and says what holds it when not) and that
    MLXOLLAMA_BLAS loads, then logs the engine's backend and BLAS. SIGINT or SIGTERM stop
    it cleanly (exit status 130 or 143).
    """
    from mlxollama.config import Config

    config = Config.from_env()
    where = check_address(config.host)  # before anything heavy loads: one line, at once
    # engine first: a MLXOLLAMA_BLAS that cannot load fails here, before the runtime starts
    import structlog

    from mlxollama import engine, log
    from mlxollama.actors.runtime import Runtime
    from mlxollama.http.server import serve as serve_http

    log.configure(config.models / "logs", background=True)
    structlog.get_logger("mlxollama.cli").info("server.engine", **engine.describe())
    runtime = Runtime(config).start()
    with signals_seen() as seen:
        try:
            serve_http(config, runtime)  # until SIGINT/SIGTERM; it stops the runtime itself
        except OSError as e:  # taken since the check
            raise click.ClickException(f"cannot listen on {where}: {e.strerror}") from None
        finally:
            runtime.stop()  # again, harmlessly, or after a failure to bind
            log.stop()
    stops = [s for s in seen if s in (signal.SIGINT, signal.SIGTERM)]
    if stops:
        ctx.exit(128 + stops[0])


def serve_entry() -> None:
    """The `mlxserve` console script: `mlxctl serve`."""
    cli.main(["serve", *sys.argv[1:]], prog_name="mlxctl")


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
@embedded_option
def create(model: str, path: str, quantize: str | None, embedded: bool) -> None:
    """Create a model from a Modelfile or ModelSpec (local files are sent to the daemon)."""
    from mlxollama.recipes.load import load_recipe

    spec = load_recipe(Path(path))
    if quantize:
        spec.quantize = quantize
    with ProgressView() as progress:
        connect(embedded).create(model, spec=spec, progress=progress)


def _quiet(client: ModelClient) -> ModelClient:
    """In-process, the registry's info events would land in the middle of the progress bars:
    only warnings reach stderr (a daemon logs everything to its own file)."""
    import logging

    from mlxollama import log

    log.configure(None, console=True, level=logging.WARNING)
    return client


insecure_option = click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain HTTP to the registry (needed on this machine too).",
)


@cli.command()
@click.argument("model")
@insecure_option
@embedded_option
def pull(model: str, insecure: bool, embedded: bool) -> None:
    """Pull a model from a registry: host[:port]/namespace/model:tag, or
    hf.co/ORG/REPO[:REVISION] from Hugging Face.

    Layers already in the store are not fetched again, and an interrupted pull resumes where
    it stopped. A daemon pulls with the registry credentials of its own environment
    (MLXOLLAMA_REGISTRY_USERNAME, _PASSWORD, _TOKEN); without one, this shell's are used.
    """
    client = _quiet(connect(embedded))
    with ProgressView() as progress:
        client.pull(model, insecure=insecure, progress=progress)


@cli.command()
@click.argument("model")
@insecure_option
@embedded_option
def push(model: str, insecure: bool, embedded: bool) -> None:
    """Push a model to the registry its name points at (host[:port]/namespace/model:tag);
    copy it to such a name first (mlxctl cp). Layers the registry has are not sent again."""
    client = _quiet(connect(embedded))
    with ProgressView() as progress:
        client.push(model, insecure=insecure, progress=progress)


@cli.command(options_metavar="[--import]")
@click.argument("first", metavar="NAME|SRC")
@click.argument("second", metavar="[DEST|NAME]", required=False)
@click.option(
    "--import",
    "import_",
    is_flag=True,
    help="Read the OCI image layout at SRC into the store (as NAME, else the name it holds).",
)
def pack(first: str, second: str | None, import_: bool) -> None:
    """Write a model as an OCI image layout (mlxctl pack NAME DEST: a folder, or a tar file
    when DEST ends with .tar), or read one back (mlxctl pack --import SRC [NAME]): models
    carried without a registry. skopeo, oras and crane read and write the layout too. Works
    on the local store, in this process.
    """
    from mlxollama.registry.pack import export_layout, import_layout

    store = _quiet(local()).store
    if import_:
        with ProgressView() as progress:
            stored = import_layout(store, Path(first), name=second, progress=progress)
        click.echo(f"imported '{stored.name.display()}' from {first}")
        return
    if second is None:
        raise click.UsageError("give the folder (or .tar file) to write: mlxctl pack NAME DEST")
    with ProgressView() as progress:
        export_layout(store, first, Path(second), progress=progress)
    click.echo(f"packed '{first}' into {second}")


@cli.command("import-ollama")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "all_", is_flag=True, help="Import every model of the Ollama store.")
@click.option(
    "--from",
    "root",
    envvar="OLLAMA_MODELS",
    default="~/.ollama/models",
    show_default=True,
    metavar="DIR",
    help="The Ollama store to read (default: OLLAMA_MODELS, else ~/.ollama/models).",
)
def import_ollama(names: tuple[str, ...], all_: bool, root: str) -> None:
    """Bring over models from an Ollama store: each NAME (Ollama's names, e.g. llama3.2 or
    qwen3:8b) is converted into this store under the same name, with its template, system
    prompt, parameters, messages and license. Without NAME or --all, list the Ollama store's
    models and whether each is imported.

    No network: the layers (a GGUF, or Ollama's MLX safetensors tensors) are read where
    Ollama keeps them, hashed, and converted; a model already converted from the same
    manifest is skipped. Works on the local store, in
    this process (a running daemon sees the new models at once).
    """
    from mlxollama.registry.ollama_store import OllamaStore, import_model

    ollama = OllamaStore(root)
    store = _quiet(local()).store
    if not names and not all_:
        from mlxollama.registry.ollama import already_converted

        rows = []
        for m in ollama.models():
            try:
                digest, layers = ollama.read(m)
            except MlxOllamaError as e:
                rows.append([m.display(), "", "", f"unreadable: {e}"])
                continue
            done = already_converted(store, m.name, digest) is not None
            size = fmt.human_bytes(sum(d.size for d in layers))
            rows.append([m.display(), digest[7:19], size, "imported" if done else "not imported"])
        click.echo(fmt.table(["NAME", "ID", "SIZE", "STATUS"], rows))
        return
    chosen = ollama.models() if all_ else [ollama.find(n) for n in names]
    failed = 0
    for m in chosen:
        try:
            with ProgressView() as progress:
                done = import_model(store, ollama, m, progress)
        except MlxOllamaError as e:
            if not all_:
                raise
            failed += 1
            click.echo(f"Error: {e}", err=True)
            continue
        verb = "already imported" if done.skipped else "imported"
        click.echo(f"{verb} '{m.display()}'")
    if failed:
        raise click.ClickException(f"{failed} of {len(chosen)} model(s) could not be imported")


@cli.command("list")
@click.argument("prefix", required=False)
def list_(prefix: str | None) -> None:
    """List models."""
    models = connect().list()["models"]
    now = time.time()
    rows = [
        [
            m["name"],
            m["digest"][:12],
            fmt.human_bytes(m["size"]),
            fmt.human_time_ago(fmt.parse_time(m["modified_at"]) or 0, now),
        ]
        for m in models
        if not prefix or m["name"].startswith(prefix)
    ]
    click.echo(fmt.table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


cli.add_command(list_, "ls")


@cli.command()
@click.argument("prefix", required=False)
def ps(prefix: str | None) -> None:
    """List running models (needs the daemon); stderr says what runs them (MLX's backend
    and BLAS). CONTEXT names a quantized KV cache: `4096 (q8_0)`."""
    client = daemon()
    engine = client.version().get("mlxollama") or {}
    click.echo(
        f"mlxollama at {client.host}: MLX {engine.get('mlx')} on {engine.get('backend')}, "
        f"BLAS {engine.get('blas')}",
        err=True,
    )
    models = client.ps()["models"]
    now = time.time()
    rows = [
        [
            m["name"],
            m["digest"][:12],
            fmt.human_bytes(m["size"]),
            fmt.processor(m["size"], m.get("size_vram", 0)),
            fmt.context(m.get("context_length"), m.get("kv_cache_type")),
            fmt.human_until(m["expires_at"], now),
        ]
        for m in models
        if not prefix or m["name"].startswith(prefix)
    ]
    click.echo(fmt.table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))


@cli.command()
@click.argument("model")
def stop(model: str) -> None:
    """Stop a running model (unload it now; needs the daemon)."""
    try:
        daemon().unload(model)
    except ModelNotFound:
        raise click.ClickException(f'couldn\'t find model "{model}" to stop') from None


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
    body = connect().show(model, verbose=verbose)
    click.echo(body.get(part) or "" if part else fmt.show_text(body, verbose))


@cli.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove models (stopping them first) and the blobs no other model uses."""
    client = connect()
    for model in models:
        if is_daemon(client):  # a daemon keeps the model loaded; Embedded.delete drops it
            with contextlib.suppress(ModelNotFound):
                client.unload(model)
        client.delete(model)
        click.echo(f"deleted '{model}'")


@cli.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model (a new tag sharing every blob)."""
    connect().copy(source, destination)
    click.echo(f"copied '{source}' to '{destination}'")


@cli.command()
@click.argument("model")
def verify(model: str) -> None:
    """Re-hash every blob of a model against its digest (on the local store)."""
    problems = local().verify(model)
    for p in problems:
        click.echo(f"{p.digest}: {p.error}", err=True)
    if problems:
        raise click.ClickException(
            f"{len(problems)} blob(s) of '{model}' failed verification: create or pull it again"
        )
    click.echo(f"verified '{model}': every blob matches its digest")


@cli.command()
def gc() -> None:
    """Delete blobs no model references, older than an hour (on the local store)."""
    count, freed = local().gc()
    click.echo(f"removed {count} unreferenced blob(s), freed {fmt.human_bytes(freed)}")


def chat_options(f):
    """The options `run` and `chat` share."""
    for option in reversed(
        [
            click.option("--verbose", is_flag=True, help="Print timings after each answer."),
            click.option("--system", help="System message for this session."),
            click.option(
                "-p",
                "--parameter",
                "params",
                multiple=True,
                metavar="NAME=VALUE",
                help="An option for this session, e.g. -p temperature=0 (repeatable).",
            ),
            click.option(
                "--format", "format_", type=click.Choice(["json"]), help="Answer in JSON."
            ),
            click.option(
                "--keepalive",
                metavar="DURATION",
                help="How long the daemon keeps the model loaded: 10m, 1h30m, 300 (seconds), -1 (forever).",
            ),
            embedded_option,
            *think_options,
        ]
    ):
        f = option(f)
    return f


THINK_VALUES = ("true", "false", "high", "medium", "low", "max")


def _think_value(ctx, param, value: str | None) -> bool | str | None:
    """`--think` (true), `--think=false`, `--think=high`...: the request's `think`."""
    if value is None:
        return None
    if value not in THINK_VALUES:
        raise click.BadParameter(
            f'invalid value for --think: "{value}" (must be true, false, high, medium, low, '
            "or max; give a level as --think=LEVEL)"
        )
    return {"true": True, "false": False}.get(value, value)


think_options = [
    click.option(
        "--think",
        is_flag=False,
        flag_value="true",
        default=None,
        callback=_think_value,
        metavar="[=LEVEL]",
        help="Think before answering: --think, --think=false, or a level "
        "(--think=high|medium|low|max). Default: the model's (thinking models think).",
    ),
    click.option(
        "--hidethinking", is_flag=True, help="Do not show the reasoning of a thinking model."
    ),
]


def _parameters(params) -> dict:
    """`--parameter NAME=VALUE` items as typed options (`stop` may repeat)."""
    from mlxollama.api import coerce_option

    options: dict = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}': use NAME=VALUE", param_hint="--parameter")
        value = coerce_option(key, value)
        options[key] = options.get(key, []) + value if key == "stop" else value
    return options


@cli.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@chat_options
def run(model: str, prompt: tuple[str, ...], params, embedded: bool, **settings) -> None:
    """Run a model: answer PROMPT (or stdin), or chat interactively without one. An
    embedding model prints the vector of PROMPT as JSON.

    The daemon runs the model when one answers at MLXOLLAMA_HOST; otherwise (or with
    --embedded) it runs in this process on the local store.
    """
    text = " ".join(prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped}\n\n{text}" if text and piped else (piped or text)
    options = _parameters(params)  # bad flags fail before anything loads
    settings = _settings(settings)
    client = connect(embedded, announce=True)
    if "embedding" in client.show(model).get("capabilities", []):
        if not text:
            raise click.UsageError(
                f"{model} is an embedding model: give it text, e.g. mlxctl run {model} "
                '"some text", or pipe it on stdin'
            )
        keep_alive = settings.get("keep_alive")
        result = client.embed(model, text, options=options or None, keep_alive=keep_alive)
        click.echo(orjson.dumps(result["embeddings"][0]).decode())
        return
    conversation = repl.Conversation(client, model, options=options, **settings)
    if text:
        conversation.ask(text)
    else:
        repl.repl(conversation)


@cli.command()
@click.argument("model")
@chat_options
def chat(model: str, params, embedded: bool, **settings) -> None:
    """Chat with a model interactively (type /? for the commands)."""
    options, settings = _parameters(params), _settings(settings)
    client = connect(embedded, announce=True)
    repl.repl(repl.Conversation(client, model, options=options, **settings))


def _settings(settings: dict) -> dict:
    """Click's option names → `Conversation`'s keywords; a bare number of seconds for
    --keepalive is sent as a number (the API reads a string as a Go duration)."""
    renamed = {"format_": "format", "keepalive": "keep_alive"}
    out = {renamed.get(k, k): v for k, v in settings.items()}
    with contextlib.suppress(TypeError, ValueError):
        out["keep_alive"] = float(out["keep_alive"])
    return out


if __name__ == "__main__":
    cli()


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """A comma list of positive integers (llama-bench's `-p 128,512`)."""
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of integers") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: every size must be at least 1")
    return sizes


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("-p", "--n-prompt", "prompts", default="512", callback=_sizes, show_default=True, metavar="N[,N...]",
              help="Prompt sizes to prefill (pp), a comma list.")  # fmt: skip
@click.option("-n", "--n-gen", "gens", default="128", callback=_sizes, show_default=True, metavar="N[,N...]",
              help="Token counts to generate (tg), a comma list.")  # fmt: skip
@click.option("-r", "--repetitions", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Runs of each test (after one warm-up).")  # fmt: skip
@click.option("-c", "--concurrency", "streams", default="1,4,8", callback=_sizes, metavar="N[,N...]",
              show_default=True, help="Concurrent streams of the sweep, a comma list.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@embedded_option
def bench(models, prompts, gens, repetitions, streams, as_json, as_csv, embedded) -> None:
    """Measure prompt processing (pp) and generation (tg) tokens/s, llama-bench style, and
    a concurrency sweep (aggregate tok/s, TTFT, inter-token latency); through the daemon
    when one runs, else in this process (which runs one stream at a time)."""
    from mlxollama import bench as b

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    client = connect(embedded, announce=True)
    via = f"daemon at {client.host}" if is_daemon(client) else "embedded"
    if not is_daemon(client) and max(streams) > 1:
        click.echo("in-process runs one stream at a time: sweeping 1 stream only", err=True)
        streams = (1,)
    system, memory = b.system_of(client, via)
    say = (lambda line: click.echo(line, err=True)) if sys.stderr.isatty() else (lambda _: None)
    report = b.run(client, models, system, prompts, gens, repetitions, streams, memory, say)
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    elif as_csv:
        click.echo(b.to_csv(report), nl=False)
    else:
        click.echo(b.to_table(report))
