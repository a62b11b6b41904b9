"""structlog setup: JSON lines to `<store>/logs/daemon.log`, readable lines on the console.

Standard-library records (waitress, pykka) go through the same processors, so the file holds
one JSON object per line whatever wrote it. Request ids are bound per request in the HTTP
thread and passed inside actor messages (contextvars do not cross threads).
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import structlog


def _dumps(obj, **kw) -> str:
    return orjson.dumps(obj, default=kw.get("default") or str).decode()


_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(log_dir: Path | None, console: bool = True, level: int = logging.INFO) -> None:
    """Route every log event to a JSONL file in `log_dir` (if given) and to stderr."""
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mlxollama", False):
            root.removeHandler(handler)
            handler.close()
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / "daemon.log", encoding="utf-8")
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_SHARED,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.dict_tracebacks,
                    structlog.processors.JSONRenderer(serializer=_dumps),
                ],
            )
        )
        file_handler._mlxollama = True
        root.addHandler(file_handler)
    if console:
        console_handler = logging.StreamHandler()
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_SHARED,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
            )
        )
        console_handler._mlxollama = True
        root.addHandler(console_handler)
    root.setLevel(level)
