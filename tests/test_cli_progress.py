"""The progress renderer of pull, push and create (mlxollama/cli/progress.py), on fake events:
plain lines for pipes and logs, and Ollama's bars redrawn in place on a terminal."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from mlxollama.cli.progress import MAX_BARS, ProgressView, bar_line, eta, short_label, verb_of

MB = 1_000_000


def digest(i: int) -> str:
    return f"sha256:{i:012x}" + "0" * 52


def layer(i: int, total: int, completed: int | None = None, verb: str = "pulling") -> dict:
    event = {"status": f"{verb} {i:012x}", "digest": digest(i), "total": total}
    if completed is not None:  # Ollama omits `completed` while it is 0
        event["completed"] = completed
    return event


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def view(tty: bool, width: int = 100):
    out, clock = io.StringIO(), Clock()
    return ProgressView(out, tty=tty, width=width, clock=clock), out, clock


def screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: a tiny emulator of the codes the view writes
    (carriage return, cursor up, clear to the end of the screen, hide/show cursor)."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[\?25[lh]|\x1b\[\d*A|\x1b\[J|\r|\n|[^\x1b\r\n]+", raw):
        if token.startswith("\x1b[?25"):
            continue
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\x1b[J":
            lines[row] = lines[row][:col]
            del lines[row + 1 :]
        elif token.endswith("A"):
            row -= int(token[2:-1] or 1)
        else:
            lines[row] = lines[row][:col] + token + lines[row][col + len(token) :]
            col += len(token)
    return lines


# -- pieces ----------------------------------------------------------------------------------


def test_labels_and_durations():
    assert short_label("pulling 3f2a1b0c9d8e") == "pulling 3f2a1b0c9d8e..."
    assert short_label("copying file sha256:" + "ab" * 32) == "copying file abababababab..."
    assert short_label("writing tensors") == "writing tensors"
    assert verb_of("pushing 3f2a1b0c9d8e") == "pushing"
    assert verb_of("copying file sha256:" + "ab" * 32) == "copying file"
    assert [eta(s) for s in (0, 3.4, 59.6, 80, 3725)] == ["0s", "3s", "1m0s", "1m20s", "1h2m5s"]


def test_a_bar_looks_like_ollamas():
    line = bar_line("pulling 3f2a1b0c9d8e...", 40 * MB, 89 * MB, width=100, rate=12 * MB)
    assert line == "pulling 3f2a1b0c9d8e...  44% ▕███████         ▏ 40 MB/89 MB  12 MB/s 4s"
    done = bar_line("pulling 3f2a1b0c9d8e...", 89 * MB, 89 * MB, width=100)
    assert done == "pulling 3f2a1b0c9d8e... 100% ▕████████████████▏ 89 MB"
    counted = bar_line("writing tensors", 120, 272, width=100, counts=True)
    assert counted.startswith("writing tensors  44% ▕") and counted.endswith("▏ 120/272")


def test_a_narrow_terminal_shrinks_the_bar_then_drops_it():
    line = bar_line("pulling 3f2a1b0c9d8e...", 40 * MB, 89 * MB, width=50)
    assert len(line) < 50 and "▕" in line
    assert "▕" not in bar_line("pulling 3f2a1b0c9d8e...", 40 * MB, 89 * MB, width=30)


# -- plain mode --------------------------------------------------------------------------------


def test_plain_pull_prints_each_step_once_and_each_layer_when_it_finishes():
    show, out, clock = view(tty=False)
    show({"status": "pulling manifest"})
    show(layer(1, 89 * MB))
    for step in range(1, 4):
        clock.now = step
        show(layer(1, 89 * MB, 20 * MB * step))
    show(layer(1, 89 * MB, 89 * MB))
    show(layer(1, 89 * MB, 89 * MB))  # a repeated final object adds nothing
    show({"status": "verifying sha256 digest"})
    show({"status": "verifying sha256 digest"})
    show({"status": "writing manifest"})
    show({"status": "success"})
    show.close()
    assert out.getvalue() == (
        "pulling manifest\n"
        "pulling 000000000001 100%\n"
        "verifying sha256 digest\n"
        "writing manifest\n"
        "success\n"
    )
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_plain_gathers_layers_complete_at_first_sight():
    show, out, _ = view(tty=False)
    show({"status": "pulling manifest"})
    for i in range(1, 691):  # a diff pull: most tensors are in the store already
        show(layer(i, 1_000_000, 1_000_000))
    show(layer(900, 5 * MB))
    show(layer(900, 5 * MB, 5 * MB))
    show(layer(901, 10, 10))  # one alone is printed as itself
    show({"status": "success"})
    show.close()
    assert out.getvalue().splitlines() == [
        "pulling manifest",
        "pulling 690 layers 100% (690 MB)",
        "pulling 000000000384 100%",
        "pulling 000000000385 100%",
        "success",
    ]


def test_plain_create_progress_keeps_its_lines():
    show, out, _ = view(tty=False)
    show({"status": "gathering model components"})
    upload = "copying file " + digest(7)
    show({"status": upload, "digest": digest(7), "total": 9, "completed": 9})
    show({"status": "parsing GGUF"})
    for done in (50, 100, 150, 200, 250, 272):
        show({"status": "writing tensors", "total": 272, "completed": done})
    show({"status": "272 tensor layers: 272 new, 0 existing"})
    show({"status": "success"})
    show.close()
    assert out.getvalue().splitlines() == [
        "gathering model components",
        f"{upload} 100%",
        "parsing GGUF",
        "writing tensors 272/272",
        "272 tensor layers: 272 new, 0 existing",
        "success",
    ]


def test_plain_push_and_an_empty_file():
    show, out, _ = view(tty=False)
    show({"status": "retrieving manifest"})
    show(layer(1, 0, 0, verb="pushing"))
    show(layer(2, 3 * MB, 0, verb="pushing"))
    show(layer(2, 3 * MB, 3 * MB, verb="pushing"))
    show({"status": "pushing manifest"})
    show({"status": "success"})
    show.close()
    assert out.getvalue().splitlines() == [
        "retrieving manifest",
        "pushing 000000000001 100%",
        "pushing 000000000002 100%",
        "pushing manifest",
        "success",
    ]


def test_plain_is_the_default_off_a_terminal(capsys):
    show = ProgressView()  # stderr, which pytest captures: not a terminal
    assert show.tty is False
    show({"status": "success"})
    show.close()
    assert capsys.readouterr().err == "success\n"


# -- on a terminal ---------------------------------------------------------------------------


def test_tty_draws_bars_in_place_and_leaves_the_final_picture():
    show, out, clock = view(tty=True)
    show({"status": "pulling manifest"})
    show(layer(1, 89 * MB))
    show(layer(2, 5 * MB, 5 * MB))
    clock.now = 1.0
    show(layer(1, 89 * MB, 40 * MB))
    assert screen(out.getvalue()) == [
        "pulling manifest",
        "pulling 000000000001...  44% ▕███████         ▏ 40 MB/89 MB  40 MB/s 1s",
        "pulling 000000000002... 100% ▕████████████████▏ 5 MB",
    ]
    clock.now = 1.05
    show(layer(1, 89 * MB, 50 * MB))  # within 0.1 s of the last drawing: not drawn yet
    assert "50 MB" not in out.getvalue()
    clock.now = 2.0
    show(layer(1, 89 * MB, 89 * MB))
    show({"status": "verifying sha256 digest"})
    show({"status": "writing manifest"})
    show({"status": "success"})
    show.close()
    raw = out.getvalue()
    assert screen(raw) == [
        "pulling manifest",
        "pulling 000000000001... 100% ▕████████████████▏ 89 MB",
        "pulling 000000000002... 100% ▕████████████████▏ 5 MB",
        "verifying sha256 digest",
        "writing manifest",
        "success",
        "",
    ]
    assert raw.count("\x1b[?25l") == 1 and raw.endswith("\x1b[?25h")


def test_tty_collapses_finished_layers_beyond_max_bars():
    show, out, clock = view(tty=True)
    show({"status": "pulling manifest"})
    for i in range(1, 100):
        show(layer(i, MB, MB))
    show(layer(500, 100 * MB))
    show(layer(501, 100 * MB))
    clock.now = 2.0
    show(layer(500, 100 * MB, 50 * MB))
    clock.now = 2.5
    show(layer(501, 100 * MB, 10 * MB))
    lines = screen(out.getvalue())
    assert lines[0] == "pulling manifest"
    assert lines[1].startswith("pulling 99/101 layers  53% ▕")
    assert lines[1].endswith("159 MB/299 MB  20 MB/s 7s")  # 10 MB in the last 0.5 s
    assert lines[2].startswith("pulling 0000000001f4...  50% ▕")
    assert lines[3].startswith("pulling 0000000001f5...  10% ▕")
    assert len(lines) == 4
    clock.now = 3.0
    show(layer(500, 100 * MB, 100 * MB))
    show(layer(501, 100 * MB, 100 * MB))
    show({"status": "success"})
    show.close()
    assert screen(out.getvalue()) == [
        "pulling manifest",
        "pulling 101 layers 100% ▕████████████████▏ 299 MB",
        "success",
        "",
    ]


def test_tty_shows_a_few_layers_one_by_one():
    show, out, _ = view(tty=True)
    for i in range(MAX_BARS):
        show(layer(i, MB, MB))
    show.close()
    assert len(screen(out.getvalue())) == MAX_BARS + 1  # and the final newline


def test_tty_lines_never_wrap():
    show, out, clock = view(tty=True, width=40)
    show({"status": "copying file " + digest(3), "digest": digest(3), "total": 9 * MB})
    clock.now = 1
    show(
        {
            "status": "copying file " + digest(3),
            "digest": digest(3),
            "total": 9 * MB,
            "completed": MB,
        }
    )
    show({"status": "a status line much longer than forty columns, cut to fit"})
    show.close()
    assert all(len(line) < 40 for line in screen(out.getvalue()))


@pytest.mark.parametrize("fail", [True, False])
def test_closing_ends_the_line_even_after_a_failure(fail):
    show, out, _ = view(tty=True)
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext(), show:
        show(layer(1, 89 * MB, 10 * MB))
        if fail:
            raise RuntimeError("registry went away")
    assert out.getvalue().endswith("\n\x1b[?25h")
    assert screen(out.getvalue())[0].startswith("pulling 000000000001...  11%")
