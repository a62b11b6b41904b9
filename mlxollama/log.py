"""structlog setup: JSON lines to `<store>/logs/daemon.log`, readable lines on the console.

Standard-library records (waitress, pykka) go through the same processors, so the file holds
one JSON object per line whatever wrote it. Request ids are bound per request in the HTTP
thread and passed inside actor messages (contextvars do not cross threads).

Nothing secret may reach a line: tracebacks are rendered without their frames' locals (a
local may be a registry password), the file is private (0600 in a 0700 folder) and rotates,
and a last processor replaces the values of secret-looking keys (`password`, `token`,
`authorization`, `api_key`, ...) and credentials inside strings (`Basic ...`, `Bearer ...`,
a URL's `user:pass@`) wherever they sit in an event, tracebacks included.

In the daemon (`configure(..., background=True)`) a log call only queues its record; one
thread of its own formats and writes them. Written by the caller, every line took the
handlers' locks: in a burst, twenty handler threads each holding a lock while waiting for
the GIL made one line cost the I/O thread 10-55 ms, and the 503 it was about to send waited
as long (docs/benchmarks.md, "Overload"). A slow disk or a stalled console now delays lines,
never requests. The queue is bounded: past `QUEUE_LINES` waiting, lines are dropped and
counted (one `log.dropped` line says how many), so a log that cannot be written never
grows the daemon without end.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import logging
import logging.handlers
import os
import queue
import re
from pathlib import Path
from typing import Any

import orjson
import structlog

REDACTED = "[redacted]"
LOG_FILE = "daemon.log"
MAX_BYTES = 10 << 20  # per file; 5 rotated files are kept
BACKUPS = 5
QUEUE_LINES = 10_000  # records waiting for the writer thread; more are dropped and counted

# a key names a secret if its last word is one of these (`password`, `registry_token`,
# `Authorization`, `x-api-key`); counts such as `eval_count` are not strings and stay
_SECRET_KEY = re.compile(
    r"(?:^|[_\-. ])(?:password|passwd|pass|token|secret|authorization|cookie|credentials?"
    r"|api[_\-]?key|apikey)$",
    re.IGNORECASE,
)
_SECRET_TEXT = [
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=\-]{6,}"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)\b(authorization|x-api-key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        r"\1\2" + REDACTED,
    ),
    # user:pass@host, the password up to the last "@" (a password may hold one)
    (re.compile(r"(://)[^/\s@:]+:[^/\s]*@"), r"\1" + REDACTED + "@"),
    (
        re.compile(
            r"(?i)(password|token|secret|api[_\-]?key)=(?!None\b)('[^']*'|\"[^\"]*\"|[^\s,)&]+)"
        ),
        r"\1=" + REDACTED,
    ),
]


# what any of _SECRET_TEXT needs: a string without one of these is left alone at once
_MAY_HOLD_SECRET = re.compile(
    r"basic|bearer|authori[sz]ation|api[_\-]?key|password=|token=|secret=|://[^/\s]*@",
    re.IGNORECASE,
)


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` with secrets replaced: under secret keys, and inside strings."""
    kind = type(value)
    if kind is str:
        return _scrub_text(value) if _MAY_HOLD_SECRET.search(value) else value
    if depth > 12:
        return value
    if kind is dict or isinstance(value, dict):
        return {
            k: REDACTED if _is_secret_key(k) and _is_secret_value(v) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if kind is list or kind is tuple:
        return kind(scrub(v, depth + 1) for v in value)
    if isinstance(value, tuple) and hasattr(value, "_make"):  # a namedtuple
        return value._make(scrub(v, depth + 1) for v in value)
    if isinstance(value, (list, tuple)):  # another subclass: its items, as a list
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, str):  # a str subclass
        return _scrub_text(str(value))
    return value


def _scrub_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def _is_secret_value(value: Any) -> bool:
    return value is not None and not isinstance(value, (bool, int, float))


def redact(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The last line of defence, once per event (see the module docstring)."""
    return scrub(event_dict)


def redact_exception(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The same for a traceback, once each handler has rendered it."""
    if "exception" in event_dict:
        event_dict["exception"] = scrub(event_dict["exception"])
    return event_dict


def _dumps(obj, **kw) -> str:
    return orjson.dumps(obj, default=kw.get("default") or str).decode()


_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

# tracebacks as data, never with locals (`show_locals` would print every frame's variables)
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False, use_rich=False)
)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files are created 0600 (rotation renames them, so the
    rotated ones stay 0600 too), and which rotates once the file has reached `maxBytes`:
    the standard one formats every record twice (once to measure it) and stats the file."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return self.maxBytes > 0 and self.stream is not None and self.stream.tell() >= self.maxBytes

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # a file made before this rule, or under a loose umask
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def _private_dir(log_dir: Path) -> None:
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(log_dir, 0o700)
    for old in log_dir.glob(LOG_FILE + "*"):  # files written by an older version
        if old.is_file():
            os.chmod(old, 0o600)


def _record_context(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A stdlib record's request context and time as they were when it was logged: in the
    background it is formatted later, in another thread (`BackgroundHandler.prepare`)."""
    context = getattr(event_dict["_record"], "mlxollama_context", None)
    if context is None:
        return structlog.contextvars.merge_contextvars(logger, method, event_dict)
    event_dict.update({k: v for k, v in context.items() if k not in event_dict})
    return event_dict


def _record_time(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """TimeStamper's ISO UTC form, of the record's creation, not of its formatting."""
    stamp = datetime.datetime.fromtimestamp(event_dict["_record"].created, datetime.UTC)
    event_dict["timestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return event_dict


# stdlib records (waitress, pykka, httpx), scrubbed per handler
_FOREIGN = [
    _record_context,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _record_time,
    redact,
]


class BackgroundHandler(logging.handlers.QueueHandler):
    """Queues each record as it is, for `Writer` (the module docstring says why). No lock is
    taken: a `SimpleQueue`'s put is one C call (a `queue.Queue` has a Python lock, and a
    thread that loses the GIL holding it stalls every other logger behind it), and nothing
    is formatted in the caller's thread."""

    def __init__(self, capacity: int = QUEUE_LINES):
        super().__init__(queue.SimpleQueue())
        self.capacity = capacity
        self.dropped = 0

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.enqueue(self.prepare(record))
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if not isinstance(record.msg, dict):  # a stdlib record: keep the caller's context
            record.mlxollama_context = structlog.contextvars.get_contextvars()
        return record

    def enqueue(self, record: Any) -> None:
        if self.queue.qsize() >= self.capacity:
            self.dropped += 1  # no lock: a count that is off by one under a race is fine
        else:
            self.queue.put(record)


class Writer(logging.handlers.QueueListener):
    """The thread that formats and writes what `BackgroundHandler` queued."""

    def __init__(self, handler: BackgroundHandler, *targets: logging.Handler):
        super().__init__(handler.queue, *targets, respect_handler_level=True)
        self.source = handler

    def handle(self, record: Any) -> None:
        if self.source.dropped:
            dropped, self.source.dropped = self.source.dropped, 0
            warning = logging.LogRecord(
                "mlxollama.log", logging.WARNING, __file__, 0, "log.dropped", None, None
            )
            warning.mlxollama_context = {"count": dropped}
            super().handle(warning)
        super().handle(record)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, end the thread and close its handlers (they are not on the
        root logger, so nothing else would); a writer stuck on a stalled stream is left
        behind after `timeout` (it is a daemon thread), handlers open, rather than hang the
        exit."""
        thread = self._thread
        if thread is None:
            return
        self.enqueue_sentinel()
        thread.join(timeout)
        self._thread = None
        if not thread.is_alive():
            for handler in self.handlers:
                handler.close()


_writer: Writer | None = None


def stop() -> None:
    """Write what is queued and end the writer thread (the daemon, on its way out)."""
    global _writer
    if _writer is not None:
        writer, _writer = _writer, None
        writer.stop()  # writes what is queued, then ends the thread


def configure(
    log_dir: Path | None,
    console: bool = True,
    level: int = logging.INFO,
    max_bytes: int = MAX_BYTES,
    backups: int = BACKUPS,
    background: bool = False,
) -> None:
    """Route every log event to a JSONL file in `log_dir` (if given) and to stderr.

    Args:
        log_dir: the folder for `daemon.log` (made 0700); it rotates at `max_bytes`,
            keeping `backups` older files.
        console: also write readable lines (plain tracebacks, no colours) to stderr.
        background: a thread of its own writes the lines (the daemon; see the module
            docstring); `stop()` writes what is queued. Else each caller writes its own.
    """
    structlog.configure(
        processors=[*_SHARED, redact, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    stop()
    for handler in list(root.handlers):
        if getattr(handler, "_mlxollama", False):
            root.removeHandler(handler)
            handler.close()
    targets: list[logging.Handler] = []
    if log_dir is not None:
        _private_dir(log_dir)
        file_handler = PrivateRotatingFileHandler(
            log_dir / LOG_FILE, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_FOREIGN,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _DICT_TRACEBACKS,
                    redact_exception,
                    structlog.processors.JSONRenderer(serializer=_dumps),
                ],
            )
        )
        targets.append(file_handler)
    if console:
        console_handler = logging.StreamHandler()
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_FOREIGN,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,  # plain text, no locals, no rich
                    redact_exception,
                    structlog.dev.ConsoleRenderer(
                        colors=False, exception_formatter=structlog.dev.plain_traceback
                    ),
                ],
            )
        )
        targets.append(console_handler)
    if background and targets:
        global _writer
        queued = BackgroundHandler()
        _writer = Writer(queued, *targets)
        _writer.start()
        targets = [queued]
    for handler in targets:
        handler._mlxollama = True
        root.addHandler(handler)
    root.setLevel(level)
    # Pykka logs every exception an ask returns to its caller, with its traceback, at INFO;
    # the caller handles (and logs) it, so only Pykka's warnings and errors are kept.
    logging.getLogger("pykka").setLevel(max(level, logging.WARNING))


atexit.register(stop)  # the last lines of a daemon that exits are written
