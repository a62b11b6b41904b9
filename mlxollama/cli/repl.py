"""The interactive chat of `mlxctl run` and `mlxctl chat`, with Ollama's slash commands.

`Conversation` holds what the commands change (model, system message, parameters, format,
history) and streams answers; `repl()` reads lines and dispatches `/set`, `/show`, `/load`,
`/save`, `/clear`, `/bye` and `/?`. Input between `\"\"\"` markers spans lines. Ctrl-C stops an
answer (the stream is closed, which the daemon takes as a cancel) and the turn is dropped;
Ctrl-D or `/bye` leaves. Outside the chat (`mlxctl run MODEL PROMPT`) and on SIGTERM the
interrupt goes on up, and `mlxctl` exits 130 or 143.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from mlxollama.api import OPTION_TYPES, coerce_option
from mlxollama.cli import format as fmt
from mlxollama.cli.interrupt import Terminated
from mlxollama.errors import MlxOllamaError, ModelNotFound
from mlxollama.interface import ModelClient

THINK_LEVELS = ("high", "medium", "low", "max")

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set think [level]     Enable thinking (level: high, medium, low or max)
  /set nothink           Disable thinking
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""

HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit mlxctl (/bye)
"""


class Conversation:
    """A chat with one model, and the session settings the slash commands change.

    Args:
        client: an `interface.ModelClient`: `client.Client` (the daemon) or
            `sdk.Embedded` (in-process).
        model: the model's name.
        system: a system message for every request. Default: None (the model's own).
        options: request options (`/set parameter`). Default: none.
        format: "json" (`--format json`, `/set format json`: the answer is a JSON object,
            by constrained decoding) or a JSON schema. Default: None.
        keep_alive: how long the daemon keeps the model loaded (in-process: checked, no
            effect). Default: the daemon's.
        verbose: print Ollama's timing block after each answer. Default: False.
        think: the requests' `think` (True, False, a level). Default: None (the model's).
        hidethinking: do not show the reasoning. Default: False.
    """

    def __init__(
        self,
        client: ModelClient,
        model: str,
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | None = None,
        keep_alive: str | None = None,
        verbose: bool = False,
        think: bool | str | None = None,
        hidethinking: bool = False,
    ):
        self.client = client
        self.model = model
        self.system = system
        self.options = dict(options or {})
        self.format = format
        self.keep_alive = keep_alive
        self.verbose = verbose
        self.think = think
        self.hidethinking = hidethinking
        self.history: list[dict[str, str]] = []

    def messages(self, *more: dict[str, str]) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, *more]

    def preload(self) -> None:
        """Load the model now (an empty chat), so the first answer does not wait for it."""
        self.client.chat(self.model, [], **self._fields())

    def ask(self, text: str) -> str:
        """Stream the answer to `text` to stdout; the exchange joins the history.

        Raises:
            KeyboardInterrupt: Ctrl-C (or SIGTERM) stopped the answer; the turn is dropped.
        """
        user = {"role": "user", "content": text}
        reply = self._answer(self.messages(user))
        self.history += [user, {"role": "assistant", "content": reply}]
        return reply

    def _answer(self, messages: list[dict[str, str]]) -> str:
        parts: list[str] = []
        stream = None
        final: dict[str, Any] = {}
        try:
            stream = self.client.chat(
                self.model,
                messages,
                options=self.options,
                stream=True,
                think=self.think,
                **self._fields(),
            )
            shown = ThinkingDisplay(hide=self.hidethinking)
            for final in stream:
                piece = final["message"]["content"]
                shown.thinking(final["message"].get("thinking") or "")
                if piece:
                    shown.done()
                parts.append(piece)
                click.echo(piece, nl=False)
            shown.done()
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()  # the daemon cancels on disconnect; a generator stops
            click.echo("\n")
            raise
        click.echo("\n")
        if self.verbose:
            click.echo(fmt.stats(final), err=True)
        return "".join(parts)

    def _fields(self) -> dict[str, Any]:
        """What each request carries besides the messages (both clients take them, and the
        daemon and the embedded SDK constrain a `format` alike)."""
        return {"format": self.format, "keep_alive": self.keep_alive}


class ThinkingDisplay:
    """Reasoning as Ollama's CLI shows it: `Thinking...`, the reasoning, then
    `...done thinking.` and a blank line before the answer; dimmed on a terminal."""

    def __init__(self, hide: bool = False, tty: bool | None = None):
        self.hide = hide
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.open = False
        self.last = ""

    def _style(self, text: str, bold: bool = False) -> str:
        return click.style(text, dim=True, bold=bold or None) if self.tty else text

    def thinking(self, piece: str) -> None:
        if not piece or self.hide:
            return
        if not self.open:
            click.echo(self._style("Thinking...\n", bold=True), nl=False)
            self.open = True
        click.echo(self._style(piece), nl=False)
        self.last = piece

    def done(self) -> None:
        """The reasoning is over (the answer began, or ended)."""
        if not self.open:
            return
        if not self.last.endswith("\n"):
            click.echo()
        click.echo(self._style("...done thinking.\n\n", bold=True), nl=False)
        self.open = False


def repl(conversation: Conversation) -> None:
    """Read and answer lines until `/bye` or Ctrl-D."""
    _enable_line_editing()
    conversation.preload()
    while True:
        try:
            line = read_message()
        except EOFError:
            click.echo()
            return
        except Terminated:
            raise
        except KeyboardInterrupt:  # the typed line (if any) is dropped
            click.echo("\nUse Ctrl + d or /bye to exit.\n")
            continue
        try:
            if line.startswith("/"):
                if not command(conversation, line):
                    return
            elif line.strip():
                conversation.ask(line)
        except Terminated:
            raise
        except KeyboardInterrupt:  # the answer stopped; the chat goes on
            continue
        except MlxOllamaError as e:
            click.echo(f"Error: {e}\n", err=True)


def read_message(read=input) -> str:
    """One message: a line, or the lines between `\"\"\"` markers (continued with `... `)."""
    text = read(">>> ")
    if text.count('"""') % 2 == 1:
        while True:
            more = read("... ")
            text += "\n" + more
            if '"""' in more:
                break
    if '"""' in text:
        start, end = text.index('"""'), text.rindex('"""')
        text = text[:start] + text[start + 3 : end].strip("\n") + text[end + 3 :]
    return text


def command(conversation: Conversation, line: str) -> bool:
    """Run one slash command; False means leave."""
    name = line.split(None, 1)[0]
    if name in ("/bye", "/exit"):
        return False
    handler = COMMANDS.get(name)
    if handler is None:
        click.echo(f"Unknown command '{name}'. Type /? for help")
    else:
        handler(conversation, line)
    return True


def _set(conv: Conversation, line: str) -> None:
    words = line.split(None, 2)
    sub = words[1] if len(words) > 1 else ""
    rest = words[2].strip() if len(words) > 2 else ""
    if sub == "parameter":
        _set_parameter(conv, rest)
    elif sub == "system":
        conv.system = rest or None
        click.echo("Set system message.")
    elif sub == "format":
        if rest != "json":
            click.echo("Invalid or missing format. For 'json' mode use '/set format json'")
            return
        conv.format = "json"
        click.echo("Set format to 'json' mode.")
    elif sub == "noformat":
        conv.format = None
        click.echo("Disabled format.")
    elif sub == "think":
        if rest and rest not in THINK_LEVELS:
            click.echo(f"Invalid think level '{rest}': use one of {', '.join(THINK_LEVELS)}")
            return
        conv.think = rest or True
        click.echo(f"Set 'think' mode to '{rest}'." if rest else "Set 'think' mode.")
    elif sub == "nothink":
        conv.think = False
        click.echo("Set 'nothink' mode.")
    elif sub in ("verbose", "quiet"):
        conv.verbose = sub == "verbose"
        click.echo(f"Set '{sub}' mode.")
    elif not sub:
        click.echo(HELP_SET)
    else:
        click.echo(f"Unknown command '/set {sub}'. Type /? for help")


def _set_parameter(conv: Conversation, rest: str) -> None:
    words = rest.split()
    if len(words) < 2:
        click.echo("Usage: /set parameter <name> <value>" if words else HELP_PARAMETERS)
        return
    name, values = words[0], words[1:]
    try:
        value = coerce_option(name, values if OPTION_TYPES.get(name) is list else " ".join(values))
    except MlxOllamaError as e:
        click.echo(f"Couldn't set parameter: {e}")
        return
    conv.options[name] = value
    click.echo(f"Set parameter '{name}' to '{', '.join(values)}'")


def _show(conv: Conversation, line: str) -> None:
    words = line.split()
    part = words[1] if len(words) > 1 else ""
    if part not in ("info", "license", "modelfile", "parameters", "system", "template"):
        click.echo(HELP_SHOW if not part else f"Unknown command '/show {part}'. Type /? for help")
        return
    body = conv.client.show(conv.model)
    if part == "info":
        click.echo(fmt.show_text(body))
    elif part == "parameters":
        click.echo(_parameters_text(conv, body))
    elif part == "modelfile":
        click.echo(body["modelfile"])
    else:
        value = (conv.system if part == "system" else None) or body.get(part)
        missing = {"license": "license", "system": "system message", "template": "prompt template"}
        click.echo(value or f"No {missing[part]} was specified for this model.")


def _parameters_text(conv: Conversation, body: dict[str, Any]) -> str:
    lines = ["Model defined parameters:"]
    model_params = body.get("parameters") or ""
    lines += [f"  {p}" for p in model_params.splitlines()] or [
        "  No additional parameters were specified for this model."
    ]
    if conv.options:
        lines += ["", "User defined parameters:"]
        for key, value in conv.options.items():
            shown = " ".join(value) if isinstance(value, list) else value
            lines.append(f"  {key:<30} {shown}")
    return "\n".join(lines) + "\n"


def _load(conv: Conversation, line: str) -> None:
    words = line.split()
    if len(words) != 2:
        click.echo("Usage:\n  /load <modelname>")
        return
    click.echo(f"Loading model '{words[1]}'")
    try:
        conv.client.chat(words[1], [], **conv._fields())
    except ModelNotFound:
        click.echo(f"Couldn't find model '{words[1]}'")
        return
    conv.model = words[1]
    conv.history = []


def _save(conv: Conversation, line: str) -> None:
    words = line.split()
    if len(words) != 2:
        click.echo("Usage:\n  /save <modelname>")
        return
    conv.client.create(
        words[1],
        from_=conv.model,
        system=conv.system,
        parameters=conv.options or None,
        messages=conv.history or None,
    )
    click.echo(f"Created new model '{words[1]}'")


def _clear(conv: Conversation, line: str) -> None:
    conv.history = []
    click.echo("Cleared session context")


def _help(conv: Conversation, line: str) -> None:
    words = line.split()
    topic = words[1] if len(words) > 1 else ""
    text = {"set": HELP_SET, "show": HELP_SHOW, "shortcuts": HELP_SHORTCUTS}.get(topic, HELP)
    click.echo(text)


COMMANDS = {
    "/set": _set,
    "/show": _show,
    "/load": _load,
    "/save": _save,
    "/clear": _clear,
    "/?": _help,
    "/help": _help,
}


def _enable_line_editing() -> None:
    """Arrow keys and history for a terminal (`input()` uses readline once it is imported)."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):  # Windows has no readline
            import readline  # noqa: F401
