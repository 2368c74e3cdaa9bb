"""Logging for the edge agent's processes: one-time configuration and rate-bounded warnings."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for log shippers)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as compact JSON."""
        entry = {
            "ts": record.created,
            "level": record.levelname,
            "process": record.processName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the root logger of this process (call once, from a process entry point)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("paho").setLevel(logging.WARNING)


class Throttle:
    """Let an event through at most once per ``interval_s`` per key; count the rest.

    ``allow(key)`` returns ``None`` when the event should stay quiet, otherwise the number of
    events for ``key`` suppressed since the last one let through (0 the first time).

    Examples
    --------
    >>> t = Throttle(10.0, clock=lambda: 0.0)
    >>> t.allow("bad_magic"), t.allow("bad_magic"), t.allow("truncated")
    (0, None, 0)
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """Whether to log an event for ``key`` now (see the class docstring)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
