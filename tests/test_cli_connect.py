"""The CLI's daemon side: hybrid fallback, `ps`/`stop`, verbs over a stand-in daemon, and the
interactive chat's slash commands (on a stand-in, and in-process on the real SmolLM2)."""

from __future__ import annotations

import datetime as dt
import re
import time

import orjson
import pytest
from click.testing import CliRunner

from mlxollama.cli import format as fmt
from mlxollama.cli.main import cli
from mlxollama.cli.repl import read_message

try:
    from tests.test_client import closed_port, stand_in
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from test_client import closed_port, stand_in


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch):
    """Point MLXOLLAMA_HOST at a closed port, so a daemon running here changes nothing."""
    host = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLXOLLAMA_HOST", host)
    return host


def mlxctl(*args, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


# -- without a daemon ----------------------------------------------------------------------


def test_ps_and_stop_need_the_daemon(no_daemon):
    for args in (["ps"], ["stop", "smollm2"]):
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 1
        assert out.output == (
            f"Error: no mlxctl daemon is running at http://{no_daemon}: "
            "start one with 'mlxctl serve'\n"
        )


def test_store_verbs_fall_back_to_the_local_store_quietly():
    out = mlxctl("list")
    assert out.exit_code == 0 and out.output == "NAME    ID    SIZE    MODIFIED\n"
    out = CliRunner().invoke(cli, ["show", "ghost"])
    assert out.exit_code == 1 and out.output == "Error: model 'ghost' not found\n"


def test_version_without_a_daemon_warns():
    out = mlxctl("-v")
    assert "Warning: could not connect to a running mlxctl daemon" in out.output
    assert "Warning: client version is " in out.output


def test_bad_host_is_one_error_line(monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", "box:99999")
    out = CliRunner().invoke(cli, ["list"])
    assert out.exit_code == 1 and out.output.startswith("Error: MLXOLLAMA_HOST: port 99999")


@pytest.mark.model
def test_run_without_a_daemon_runs_in_process(store_root, no_daemon):
    out = mlxctl("run", "smollm2", "Say hi.", "-p", "num_predict=5", input="")
    assert out.exit_code == 0
    assert out.output.startswith(f"no daemon at http://{no_daemon}: running in-process\n")
    out = mlxctl("run", "smollm2", "Say hi.", "-p", "num_predict=5", "--embedded", input="")
    assert out.exit_code == 0 and "no daemon" not in out.output


@pytest.mark.model
def test_chat_commands_in_process(store_root):
    lines = [
        "/set parameter temperature 0",
        "/set parameter num_predict 40",
        "/set parameter stop <|im_end|> <|endoftext|>",
        "What is the capital of France? Answer in one sentence.",
        "/save me/paris",
        "/show parameters",
        "/show system",
        "/clear",
        "/set format json",
        "Hello",
        "/set noformat",
        "/bye",
        "never read",
    ]
    out = mlxctl("chat", "smollm2", input="\n".join(lines) + "\n")
    assert out.exit_code == 0, out.output
    text = out.output
    assert "Set parameter 'temperature' to '0'" in text
    assert "Set parameter 'stop' to '<|im_end|>, <|endoftext|>'" in text
    assert "Paris" in text
    assert "Created new model 'me/paris'" in text
    assert "Model defined parameters:\n  stop " in text
    assert re.search(r"User defined parameters:\n  temperature\s+0\.0\n", text)
    assert "No system message was specified for this model." in text
    assert "Cleared session context" in text
    answer = text.split("Set format to 'json' mode.\n")[1].split("\n")[0].removeprefix(">>> ")
    assert isinstance(orjson.loads(answer), dict)  # "Hello" answered as a JSON object
    assert "never read" not in text
    modelfile = mlxctl("show", "me/paris", "--modelfile").output
    assert "PARAMETER temperature 0" in modelfile
    assert "MESSAGE user What is the capital of France?" in modelfile
    assert re.search(r"MESSAGE assistant .*Paris", modelfile)


# -- over a stand-in daemon ----------------------------------------------------------------


@pytest.fixture
def daemon(monkeypatch):
    with stand_in() as app:
        monkeypatch.setenv("MLXOLLAMA_HOST", app.host)
        # how mlxctl knows an mlxollama daemon from any other server
        app.routes[("GET", "/api/version")] = lambda body: (200, VERSION)
        # `run` asks first what the model can do (an embedding model prints a vector)
        app.routes[("POST", "/api/show")] = lambda body: (200, {"capabilities": ["completion"]})
        yield app


VERSION = {"version": "9.9.9", "mlxollama": {"backend": "cpu", "blas": "none", "mlx": "0"}}


def echo_chat(body):
    """A chat route: loads, or streams back 'echo: <last message>' in two pieces."""
    if not body["messages"]:
        return 200, {"model": body["model"], "done": True, "done_reason": "load", "message": {}}
    last = body["messages"][-1]["content"]
    if body.get("format") == "json":  # the answer as a JSON object, in one piece
        done = {"message": {"content": ""}, "done": True, "done_reason": "stop"}
        piece = {"message": {"content": orjson.dumps({"echo": last}).decode()}, "done": False}
        return 200, [piece, done]
    final = {"message": {"content": ""}, "done": True, "done_reason": "stop"}
    final.update(eval_count=3, eval_duration=1_500_000_000, total_duration=2_000_000_000)
    return 200, [
        {"message": {"content": "echo: "}, "done": False},
        {
            "message": {"content": last},
            "done": False,
        },
        final,
    ]


def test_ps_prints_ollama_table(daemon):
    now = dt.datetime.now(dt.UTC).timestamp()
    models = [
        {
            "name": "smollm2:latest",
            "digest": "ab12" * 16,
            "size": 98_000_000,
            "size_vram": 98_000_000,
            "context_length": 4096,
            "expires_at": rfc3339(now + 245),
        },
        {
            "name": "me/forever:v1",
            "digest": "cd34" * 16,
            "size": 1_500_000_000,
            "size_vram": 0,
            "context_length": 8192,
            "expires_at": "2318-04-11T23:47:16.854775807Z",
        },
        {
            "name": "other:latest",
            "digest": "ef56" * 16,
            "size": 2_000_000,
            "size_vram": 2_000_000,
            "context_length": 2048,
            "expires_at": rfc3339(now - 1),
        },
    ]
    daemon.routes[("GET", "/api/ps")] = lambda body: (200, {"models": models})
    out = mlxctl("ps")
    assert out.exit_code == 0
    assert out.stderr == f"mlxollama at http://{daemon.host}: MLX 0 on cpu, BLAS none\n"
    assert out.stdout.splitlines() == [
        "NAME              ID              SIZE      PROCESSOR    CONTEXT    UNTIL",
        "smollm2:latest    ab12ab12ab12    98 MB     100% GPU     4096       4 minutes from now",
        "me/forever:v1     cd34cd34cd34    1.5 GB    100% CPU     8192       Forever",
        "other:latest      ef56ef56ef56    2 MB      100% GPU     2048       Stopping...",
    ]
    assert mlxctl("ps", "me/").stdout.splitlines()[1].startswith("me/forever:v1")


def test_stop_unloads_and_names_unknown_models(daemon):
    def stop(body):
        if body["model"] == "ghost":
            return 404, {"error": "model 'ghost' not found"}
        return 200, {"model": body["model"], "status": "not_loaded", "running": 0}

    daemon.routes[("POST", "/api/stop")] = stop
    assert mlxctl("stop", "smollm2").output == ""
    assert daemon.bodies("/api/stop") == [{"model": "smollm2"}]
    out = CliRunner().invoke(cli, ["stop", "ghost"])
    assert out.exit_code == 1 and out.output == 'Error: couldn\'t find model "ghost" to stop\n'


def test_store_verbs_go_through_the_daemon(daemon, tmp_path):
    tags = {
        "models": [
            {
                "name": "remote:latest",
                "digest": "9f" * 32,
                "size": 5_000_000,
                "modified_at": rfc3339(dt.datetime.now(dt.UTC).timestamp() - 7200),
            }
        ]
    }
    daemon.routes[("GET", "/api/tags")] = lambda body: (200, tags)
    daemon.routes[("POST", "/api/stop")] = lambda body: (404, {"error": "not found"})
    daemon.routes[("DELETE", "/api/delete")] = lambda body: (200, b"")
    daemon.routes[("POST", "/api/copy")] = lambda body: (200, b"")
    daemon.routes[("POST", "/api/create")] = lambda body: (
        200,
        [{"status": "parsing GGUF"}, {"status": "success"}],
    )
    assert re.fullmatch(
        r"NAME\s+ID\s+SIZE\s+MODIFIED\nremote:latest\s+9f9f9f9f9f9f\s+5 MB\s+2 hours ago\n",
        mlxctl("list").output,
    )
    assert mlxctl("cp", "remote", "copy").output == "copied 'remote' to 'copy'\n"
    assert mlxctl("rm", "copy").output == "deleted 'copy'\n"
    paths = [(r["method"], r["path"]) for r in daemon.requests if r["method"] != "HEAD"]
    assert paths[-2:] == [("POST", "/api/stop"), ("DELETE", "/api/delete")]
    (tmp_path / "w.gguf").write_bytes(b"GGUF fake")
    (tmp_path / "Modelfile").write_text("FROM ./w.gguf\nPARAMETER temperature 0\n")
    out = mlxctl("create", "fake", "-f", str(tmp_path / "Modelfile"))
    assert out.exit_code == 0
    assert out.output.splitlines() == [
        "gathering model components",
        f"copying file {fmt_digest(b'GGUF fake')} 100%",
        "parsing GGUF",
        "success",
    ]
    body = daemon.bodies("/api/create")[0]
    assert body["files"] == {"w.gguf": fmt_digest(b"GGUF fake")}
    assert body["parameters"] == {"temperature": 0.0}


def fmt_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_run_one_shot_over_the_daemon(daemon):
    daemon.routes[("POST", "/api/chat")] = echo_chat
    out = mlxctl("run", "m", "world", "--verbose", "--keepalive", "1h", input="piped")
    assert out.exit_code == 0
    assert out.output.startswith("echo: piped\n\nworld\n\n")
    assert "eval rate:            2.00 tokens/s" in out.output
    body = daemon.bodies("/api/chat")[-1]
    assert body["keep_alive"] == "1h" and body["stream"] is True
    mlxctl("run", "m", "hi", "--keepalive", "-1", input="")
    assert daemon.bodies("/api/chat")[-1]["keep_alive"] == -1


def test_chat_commands_over_the_daemon(daemon):
    daemon.routes[("POST", "/api/chat")] = echo_chat
    daemon.routes[("POST", "/api/show")] = lambda body: (
        200,
        {"license": "", "system": "", "template": "{{ .Prompt }}", "parameters": ""},
    )
    lines = [
        "/?",
        "/? set",
        "/nope",
        "/set",
        "/set wat",
        "/set parameter",
        "/set parameter temperature hot",
        "/set system You are terse.",
        '"""first',
        'second"""',
        "/set format json",
        "again",
        "/set noformat",
        "/set verbose",
        "third",
        "/show template",
        "/show license",
        "/show system",
        "/load ghost",
        "/exit",
    ]
    out = mlxctl("chat", "m", input="\n".join(lines) + "\n")
    assert out.exit_code == 0, out.output
    text = out.output
    assert "/load <model>   Load a session or model" in text
    assert "/set system <string>   Set system message" in text
    assert "Unknown command '/nope'. Type /? for help" in text
    assert "Unknown command '/set wat'. Type /? for help" in text
    assert "Available Parameters:" in text
    assert 'Couldn\'t set parameter: option "temperature" must be of type float32' in text
    assert "... echo: first\nsecond\n" in text
    assert '>>> {"echo":"again"}\n' in text
    assert "echo: third" in text and "eval count:           3 token(s)" in text
    assert "{{ .Prompt }}" in text and "No license was specified for this model." in text
    assert "You are terse." in text
    assert "Loading model 'ghost'" in text
    chats = daemon.bodies("/api/chat")
    assert chats[0]["messages"] == []  # the preload
    asked = [c for c in chats if c["messages"]]
    assert asked[0]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first\nsecond"},
    ]
    assert asked[1]["format"] == "json"
    assert [m["content"] for m in asked[2]["messages"]] == [
        "You are terse.",
        "first\nsecond",
        "echo: first\nsecond",
        "again",
        '{"echo":"again"}',  # the JSON turn joined the history
        "third",
    ]
    assert "format" not in asked[2] or asked[2]["format"] is None  # /set noformat
    assert chats[-1] == {"model": "ghost", "messages": [], "stream": False}


def test_a_missing_model_on_load_is_reported(daemon):
    def chat(body):
        if body["model"] == "ghost":
            return 404, {"error": "model 'ghost' not found"}
        return echo_chat(body)

    daemon.routes[("POST", "/api/chat")] = chat
    out = mlxctl("chat", "m", input="/load ghost\n/bye\n")
    assert "Couldn't find model 'ghost'" in out.output
    out = CliRunner().invoke(cli, ["chat", "ghost"], input="")
    assert out.exit_code == 1 and out.output == "Error: model 'ghost' not found\n"


# -- pieces --------------------------------------------------------------------------------


def test_read_message_joins_triple_quoted_lines():
    def reader(lines):
        it = iter(lines)
        return lambda prompt: next(it)

    assert read_message(reader(["hello"])) == "hello"
    assert read_message(reader(['"""one"""'])) == "one"
    assert read_message(reader(['"""', "a", "b", '"""'])) == "a\nb"
    assert read_message(reader(['/set system """You', 'are terse."""'])) == (
        "/set system You\nare terse."
    )


def test_until_and_processor_columns():
    now = 1_000_000.0
    assert fmt.human_until(rfc3339(now + 300), now) == "5 minutes from now"
    assert fmt.human_until(rfc3339(now + 30), now) == "30 seconds from now"
    assert fmt.human_until("2318-04-11T23:47:16.854775807Z", now) == "Forever"
    assert fmt.human_until(rfc3339(now), now) == "Stopping..."
    assert fmt.human_until("0001-01-01T00:00:00Z", now) == "Never"
    assert fmt.parse_time("2026-01-01T00:00:00.5+01:00") == 1767222000.5
    assert fmt.processor(100, 100) == "100% GPU"
    assert fmt.processor(100, 0) == "100% CPU"
    assert fmt.processor(100, 25) == "75%/25% CPU/GPU"


class _Interrupted:
    """A stream that yields one piece, then gets Ctrl-C; records that it was closed."""

    def __init__(self):
        self.closed = False
        self.pieces = iter([{"message": {"content": "Par"}}])

    def __iter__(self):
        return self

    def __next__(self):
        piece = next(self.pieces, None)
        if piece is None:
            raise KeyboardInterrupt
        return piece

    def close(self):
        self.closed = True


def test_ctrl_c_closes_the_stream_and_drops_the_turn(capsys):
    from mlxollama.cli.repl import Conversation

    stream = _Interrupted()

    class Stub:
        def chat(self, model, messages, **kw):
            return stream

    conv = Conversation(Stub(), "m")
    with pytest.raises(KeyboardInterrupt):  # mlxctl exits 130; the chat goes on
        conv.ask("capital of France?")
    assert stream.closed and conv.history == []
    assert capsys.readouterr().out == "Par\n\n"


# -- end to end: the real daemon -----------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory, smollm2_store):
    """The real daemon in this process: the actor Runtime and the Falcon app on waitress
    (port 0), on a copy of the SmolLM2 store. One generating slot, so a stream that is not
    cancelled would hold up the next request."""
    import shutil
    import threading
    from types import SimpleNamespace

    import structlog

    from mlxollama.actors.runtime import Runtime
    from mlxollama.config import Config
    from mlxollama.http.app import create_app
    from mlxollama.http.server import make_server, shutdown

    root = tmp_path_factory.mktemp("live") / "store"
    shutil.copytree(smollm2_store, root, symlinks=True)
    config = Config.from_env({"MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_NUM_PARALLEL": "1"})
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # keep output clean
    runtime = Runtime(config).start()
    srv = make_server(create_app(runtime, config), "127.0.0.1", 0, threads=16)
    threading.Thread(target=srv.run, name="waitress", daemon=True).start()
    try:
        yield SimpleNamespace(host=f"127.0.0.1:{srv.effective_port}", root=root)
    finally:
        shutdown(srv, runtime)
        structlog.configure(**saved)


@pytest.fixture
def on_live(live, monkeypatch):
    monkeypatch.setenv("MLXOLLAMA_HOST", live.host)
    monkeypatch.setenv("MLXOLLAMA_MODELS", str(live.root))
    return live


QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.mark.model
def test_live_run_ps_stop(on_live):
    out = mlxctl("run", "smollm2", QUESTION, "-p", "temperature=0", "--verbose", input="")
    assert out.exit_code == 0 and "no daemon" not in out.output
    assert "Paris" in out.output and re.search(r"load duration:\s+\S+", out.output)
    header, *rows = mlxctl("ps").stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert re.fullmatch(
        r"smollm2:latest {4,}[0-9a-f]{12} {4,}\d+ MB {4,}100% [CG]PU {4,}\d+ {4,}\d+ minutes from now",
        rows[0],
    )
    assert mlxctl("stop", "smollm2").exit_code == 0
    deadline = time.time() + 10
    while "smollm2" in mlxctl("ps").stdout and time.time() < deadline:
        time.sleep(0.1)
    assert mlxctl("ps").stdout == "NAME    ID    SIZE    PROCESSOR    CONTEXT    UNTIL\n"
    out = CliRunner().invoke(cli, ["stop", "ghost"])
    assert out.exit_code == 1 and out.output == 'Error: couldn\'t find model "ghost" to stop\n'


@pytest.mark.model
def test_live_create_then_cp_rm(on_live, smollm2_gguf, tmp_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_gguf}\nPARAMETER temperature 0\nSYSTEM Be brief.\n")
    first = mlxctl("create", "brief", "-f", str(modelfile))
    assert first.exit_code == 0 and first.output.endswith("success\n")
    assert re.search(r"copying file sha256:[0-9a-f]{64} 100%", first.output)
    # the upload became per-tensor blobs and was dropped (no second copy of the GGUF on disk),
    # so a second create sends the file again
    again = mlxctl("create", "brief2", "-f", str(modelfile))
    assert again.exit_code == 0 and "copying file" in again.output
    assert "    Be brief." in mlxctl("show", "brief").output
    assert mlxctl("cp", "brief", "me/brief:v1").output == "copied 'brief' to 'me/brief:v1'\n"
    names = [line.split()[0] for line in mlxctl("list").output.splitlines()[1:]]
    assert {"brief:latest", "brief2:latest", "me/brief:v1"} <= set(names)
    out = mlxctl("rm", "me/brief:v1", "brief2")
    assert out.output == "deleted 'me/brief:v1'\ndeleted 'brief2'\n"
    assert "brief2" not in mlxctl("list").output
    out = CliRunner().invoke(cli, ["rm", "ghost"])
    assert out.exit_code == 1 and out.output == "Error: model 'ghost' not found\n"


@pytest.mark.model
def test_live_chat_commands(on_live):
    lines = [
        "/set parameter temperature 0",
        "/set parameter num_predict 40",
        QUESTION,
        "/save me/paris",
        "/set format json",
        "Hello",
        "/bye",
    ]
    out = mlxctl("chat", "smollm2", input="\n".join(lines) + "\n")
    assert out.exit_code == 0 and "no daemon" not in out.output
    assert "Paris" in out.output and "Created new model 'me/paris'" in out.output
    answer = out.output.split("Set format to 'json' mode.\n")[1].split("\n")[0]
    assert isinstance(orjson.loads(answer.removeprefix(">>> ")), dict)
    modelfile = mlxctl("show", "me/paris", "--modelfile").output
    assert (
        "PARAMETER temperature 0" in modelfile and "MESSAGE user What is the capital" in modelfile
    )


@pytest.mark.model
def test_live_closing_a_stream_cancels_it(on_live):
    from mlxollama.client import Client

    client = Client(timeout=60)
    long = client.generate(  # counting on without a template: it never stops by itself
        "smollm2",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        raw=True,
        options={"num_predict": 100_000, "temperature": 0},
        stream=True,
    )
    assert [next(long)["done"] for _ in range(3)] == [False, False, False]
    long.close()  # what Ctrl-C does in the REPL
    # One generating slot: this answer only comes once the first stream was cancelled.
    answer = client.chat(
        "smollm2",
        [{"role": "user", "content": QUESTION}],
        options={"num_predict": 20, "temperature": 0},
    )
    assert "Paris" in answer["message"]["content"]


@pytest.mark.model
def test_serve_runs_the_daemon_until_sigint(store_root):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from mlxollama.client import Client

    host = f"127.0.0.1:{closed_port()}"
    env = {**os.environ, "MLXOLLAMA_HOST": host, "MLXOLLAMA_MODELS": str(store_root)}
    mlxserve = Path(sys.executable).parent / "mlxserve"
    proc = subprocess.Popen([str(mlxserve)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        client = Client(host)
        deadline = time.time() + 60
        while not client.heartbeat() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert client.heartbeat(), "the daemon did not answer"
        assert [m["name"] for m in client.list()["models"]] == ["smollm2:latest"]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr  # 128 + SIGINT, as shells expect
    assert "server.listening" in stderr and "server.stopped" in stderr
    assert (store_root / "logs" / "daemon.log").is_file()
