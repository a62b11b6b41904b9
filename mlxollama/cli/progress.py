"""Progress for `pull`, `push` and `create`: Ollama's bars on a terminal, plain lines elsewhere.

The events are Ollama's progress objects: `{"status": ...}` alone is a step (`pulling
manifest`, `writing manifest`, `success`); with `digest`, `total` and `completed` it is one
layer's bytes (`pulling 3f2a1b0c9d8e`, `pushing ...`, `copying file sha256:...`); with
`total` and `completed` but no digest it counts items (`writing tensors`). A missing
`completed` means 0, as Ollama omits it while nothing has arrived.

On a terminal the display is redrawn in place, at most every 0.1 s (at once when a step
begins, and when it is closed). Each layer has a bar, as in Ollama::

    pulling 3f2a1b0c9d8e...  45% ▕███████         ▏ 40 MB/89 MB  12 MB/s 3s

A model of ours has a layer per tensor, so beyond `MAX_BARS` layers the finished ones
collapse into one line for the whole set, and only the layers still moving keep a bar::

    pulling 690/698 layers   93% ▕███████████████ ▏ 1.1 GB/1.2 GB  30 MB/s 2s

Lines that can no longer change are written once and scroll away; only the moving part is
redrawn, so the display never needs more lines than the terminal has.

Anywhere else (a pipe, a file, a CI log) it prints plain lines, no carriage returns: each step
once, each layer once when it finishes (`pulling 3f2a1b0c9d8e 100%`), and a counted step once
when it is complete (`writing tensors 272/272`). Layers that are complete in their first
object (already present, or small enough to arrive between two reports) are gathered, and a
run of them is one line (`pulling 690 layers 100% (1.1 GB)`), so that hundreds of tensor
layers do not make hundreds of lines.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from mlxollama.cli.format import human_bytes

MAX_BARS = 8  # layer bars shown one by one; beyond it finished layers collapse into one line
REDRAW = 0.1  # seconds between redraws on a terminal
RATE_WINDOW = 5.0  # seconds of samples behind a transfer rate
BAR_WIDTH = 16  # Ollama's bar: ▕ + 16 cells + ▏ when the terminal is wide enough

_DIGEST = re.compile(r"(?:sha256[:-])?([0-9a-f]{12})[0-9a-f]*")


def short_label(status: str) -> str:
    """`pulling 3f2a1b0c9d8e` → `pulling 3f2a1b0c9d8e...`; `copying file sha256:<64 hex>` →
    `copying file 3f2a1b0c9d8e...` (a digest shown as its first 12 hex digits)."""
    words = status.split(" ")
    for i in range(len(words) - 1, -1, -1):
        m = _DIGEST.fullmatch(words[i])
        if m:
            words[i] = m.group(1) + "..."
            break
    return " ".join(words)


def verb_of(status: str) -> str:
    """The status without its digest: `pulling`, `pushing`, `copying file`."""
    words = [w for w in status.split(" ") if not _DIGEST.fullmatch(w)]
    return " ".join(words) or status


def eta(seconds: float) -> str:
    """Go's rounded Duration: `3s`, `1m20s`, `2h5m0s`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m{s}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{s}s"


def bar_line(
    label: str,
    completed: int,
    total: int,
    *,
    width: int,
    rate: float | None = None,
    counts: bool = False,
) -> str:
    """One bar, fitted to `width` columns: `label  45% ▕████    ▏ 40 MB/89 MB  12 MB/s 3s`;
    a finished one shows only its size (`label 100% ▕████████▏ 89 MB`). `counts`: the
    numbers are items, not bytes (`120/272`)."""
    done = total <= 0 or completed >= total
    fraction = 1.0 if total <= 0 else min(1.0, max(0.0, completed / total))
    percent = 100 if done else min(99, int(fraction * 100))
    pre = f"{label} {percent:3d}%"
    if counts:
        suf = f"{completed}/{total}"
    elif done:
        suf = human_bytes(max(total, completed))
    else:
        suf = f"{human_bytes(completed)}/{human_bytes(total)}"
        if rate:
            suf += f"  {human_bytes(rate)}/s {eta((total - completed) / rate)}"
    cells = min(BAR_WIDTH, width - len(pre) - len(suf) - 5)  # < width: no wrap
    if cells < 4:  # too narrow for a bar: the numbers alone
        return f"{pre} {suf}"[: max(1, width - 1)]
    filled = int(fraction * cells)
    return f"{pre} ▕{'█' * filled}{' ' * (cells - filled)}▏ {suf}"


class _Bar:
    """One layer's (or one counted step's) progress and its recent samples."""

    def __init__(self, status: str, total: int, completed: int, now: float, counts: bool):
        self.status = status
        self.counts = counts
        self.total = total
        self.completed = completed
        self.first_done = self.done  # complete at first sight: nothing was transferred
        self.samples: deque[tuple[float, int]] = deque([(now, completed)])
        self.reported = False

    @property
    def done(self) -> bool:
        return self.completed >= self.total

    def update(self, total: int, completed: int, now: float) -> None:
        self.total, self.completed = total, completed
        self.samples.append((now, completed))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Bytes a second over the last few seconds; None until there is enough to say."""
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        if t1 - t0 < 0.2 or c1 <= c0:
            return None
        return (c1 - c0) / (t1 - t0)

    def line(self, width: int) -> str:
        label = self.status if self.counts else short_label(self.status)
        return bar_line(
            label,
            self.completed,
            self.total,
            width=width,
            rate=None if self.done else self.rate(),
            counts=self.counts,
        )


class _Step:
    """A status line."""

    def __init__(self, text: str):
        self.text = text

    def settled(self, last: bool) -> bool:
        return True

    def lines(self, width: int, now: float) -> list[str]:
        return [self.text[: max(1, width - 1)]]


class _Counted:
    """A counted step (`writing tensors`): one bar of items."""

    def __init__(self, bar: _Bar):
        self.bar = bar

    def settled(self, last: bool) -> bool:
        return self.bar.done and not last

    def lines(self, width: int, now: float) -> list[str]:
        return [self.bar.line(width)]


class _Layers:
    """Consecutive layer bars: one line each, or, beyond MAX_BARS, one line for them all and
    a bar for each layer still moving."""

    def __init__(self):
        self.bars: list[_Bar] = []
        self.samples: deque[tuple[float, int]] = deque()  # (time, bytes) at each drawing

    def settled(self, last: bool) -> bool:
        return not last and all(b.done for b in self.bars)

    def lines(self, width: int, now: float) -> list[str]:
        if len(self.bars) <= MAX_BARS:
            return [b.line(width) for b in self.bars]
        finished = sum(b.done for b in self.bars)
        moving = [b for b in self.bars if not b.done]
        total = sum(b.total for b in self.bars)
        completed = sum(min(b.completed, b.total) for b in self.bars)
        # the set's own rate (small layers arrive whole, between their reports), else the
        # moving layers' rates added up
        self.samples.append((now, completed))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        rate = (completed - c0) / (now - t0) if now - t0 >= 0.2 and completed > c0 else None
        if rate is None:
            rate = sum(r for b in moving if (r := b.rate())) or None
        verb = verb_of(self.bars[0].status)
        label = (
            f"{verb} {len(self.bars)} layers"
            if not moving
            else f"{verb} {finished}/{len(self.bars)} layers"
        )
        summary = bar_line(label, completed, total, width=width, rate=rate)
        return [summary] + [b.line(width) for b in moving[:MAX_BARS]]


class ProgressView:
    """A progress callback that draws Ollama's progress objects (see the module docstring).

    Args:
        stream: where to write. Default: stderr (as Ollama does).
        tty: draw bars in place; default: when `stream` is a terminal (and TERM is not dumb).
        width: columns; default: the terminal's.
        clock: seconds, for rates and redraw pacing (tests pass a fake one).

    Use it as a context manager (or call `close()`), so that the display is finished, the
    cursor shown again and a pending line written, even when the transfer fails.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        width: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            import os

            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
        self.tty = tty
        self._width = width
        self.clock = clock
        self._bars: dict[str, _Bar] = {}  # by digest, or by status for counted steps
        self._entries: list[Any] = []  # _Step, _Layers, _Counted; not yet written for good
        self._live = 0  # lines of the redrawn area on screen
        self._drawn_at = float("-inf")
        self._cursor_hidden = False
        self._closed = False
        self._lock = threading.Lock()
        # plain mode
        self._last_step: str | None = None
        self._run: list[_Bar] = []  # layers complete at first sight, not printed yet

    # -- the callback ------------------------------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:  # callers may report from several threads
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        status = str(event.get("status", ""))
        now = self.clock()
        if "total" not in event:
            self._step(status)
            return
        total = int(event.get("total") or 0)
        completed = int(event.get("completed") or 0)
        digest = event.get("digest")
        key = digest or status
        bar = self._bars.get(key)
        if bar is None:
            bar = self._bars[key] = _Bar(status, total, completed, now, counts=not digest)
            if self.tty:
                self._add_bar(bar)
            else:
                self._plain_new(bar)
            return
        bar.update(total, completed, now)
        if self.tty:
            self._draw()
        elif bar.done and not bar.reported:
            self._plain_done(bar)

    def close(self) -> None:
        """Finish the display: every line written for good, the cursor shown again."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self._draw(force=True, final=True)
            if self._cursor_hidden:
                self._write("\x1b[?25h")
            self.stream.flush()
        else:
            self._flush_run()

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plain lines -------------------------------------------------------------------------

    def _step(self, status: str) -> None:
        if self.tty:
            self._entries.append(_Step(status))
            self._draw(force=True)
            return
        self._flush_run()
        if status != self._last_step:
            self._print(status)
        self._last_step = status

    def _plain_new(self, bar: _Bar) -> None:
        if bar.counts or not bar.done:
            if bar.done:
                self._plain_done(bar)
            return
        bar.reported = True  # complete at first sight: one line for the run of them
        verb = verb_of(bar.status)
        if self._run and verb_of(self._run[0].status) != verb:
            self._flush_run()
        self._run.append(bar)

    def _plain_done(self, bar: _Bar) -> None:
        bar.reported = True
        self._flush_run()
        if bar.counts:
            self._print(f"{bar.status} {bar.completed}/{bar.total}")
        else:
            self._print(f"{bar.status} 100%")
        self._last_step = None

    def _flush_run(self) -> None:
        run, self._run = self._run, []
        if len(run) == 1:
            self._print(f"{run[0].status} 100%")
        elif run:
            size = human_bytes(sum(b.total for b in run))
            self._print(f"{verb_of(run[0].status)} {len(run)} layers 100% ({size})")
        if run:
            self._last_step = None

    def _print(self, line: str) -> None:
        self._write(line + "\n")
        self.stream.flush()

    # -- bars in place -----------------------------------------------------------------------

    def _add_bar(self, bar: _Bar) -> None:
        if bar.counts:
            self._entries.append(_Counted(bar))
        else:
            last = self._entries[-1] if self._entries else None
            if not isinstance(last, _Layers):
                last = _Layers()
                self._entries.append(last)
            last.bars.append(bar)
        self._draw()

    def width(self) -> int:
        if self._width is not None:
            return self._width
        return shutil.get_terminal_size((80, 24)).columns

    def _draw(self, force: bool = False, final: bool = False) -> None:
        now = self.clock()
        if not force and now - self._drawn_at < REDRAW:
            return
        self._drawn_at = now
        width = self.width()
        fixed: list[str] = []  # lines that can no longer change: written once, scroll away
        while self._entries and (final or self._entries[0].settled(last=len(self._entries) == 1)):
            fixed += self._entries.pop(0).lines(width, now)
        live = [line for entry in self._entries for line in entry.lines(width, now)]
        out = []
        if not self._cursor_hidden and live:
            out.append("\x1b[?25l")
            self._cursor_hidden = True
        if self._live:  # back to the start of the area drawn last time, and clear it
            out.append("\r" + (f"\x1b[{self._live - 1}A" if self._live > 1 else "") + "\x1b[J")
        out += [line + "\n" for line in fixed]
        out.append("\n".join(live))
        self._live = len(live)
        self._write("".join(out))
        self.stream.flush()

    def _write(self, text: str) -> None:
        self.stream.write(text)
