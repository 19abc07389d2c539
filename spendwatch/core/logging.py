"""structlog configuration: JSON lines on stderr, readable lines when stderr is a terminal.

Two things keep a terminal legible:

- a *status line* (the backtest's progress bar) is cleared before each log line and drawn
  again after it, so log lines never end up glued onto the bar;
- events named in ``drop`` are not logged at all, e.g. ``alert`` when a console receiver
  already prints one line per alert on the same terminal.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

import structlog

_LOCK = threading.Lock()
_STATUS: list[str] = []  # the status line currently drawn on stderr, if any


class _LineWriter:
    """A structlog logger writing one line per event, around the status line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with _LOCK:
            if _STATUS:
                self._stream.write("\r\033[K")
            self._stream.write(message + "\n")
            if _STATUS:
                self._stream.write(_STATUS[0])
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = msg


def status(line: str | None, stream: TextIO | None = None) -> None:
    """Draw ``line`` as the status line on stderr (``None`` clears it)."""
    stream = stream or sys.stderr
    with _LOCK:
        stream.write("\r\033[K")
        _STATUS.clear()
        if line is not None:
            _STATUS.append(line)
            stream.write(line)
        stream.flush()


def _dropper(names: frozenset[str]) -> Any:
    def drop(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("event") in names:
            raise structlog.DropEvent
        return event

    return drop


def configure(level: str = "info", json: bool | None = None, drop: Iterable[str] = ()) -> bool:
    """Configure structlog for this process; JSON unless stderr is a terminal.

    Returns whether the output is JSON."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    stream = sys.stderr
    structlog.configure(
        processors=[
            _dropper(frozenset(drop)),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *args: _LineWriter(stream),
        cache_logger_on_first_use=False,
    )
    return json


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
