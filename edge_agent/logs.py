"""Logging to stderr, one line per event; journald adds its own timestamps, so we do not.

Repeats are rate-limited: a PLC that stays down must not write the same line every second for a
month and rotate away the journal entry that says why it went down.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import ClassVar

REPEAT_WINDOW_S = 60.0


class RepeatFilter(logging.Filter):
    """Lets a message through once per window per (logger, level, format string, first argument).

    Keyed on the format string rather than the final text, so "retrying in 1.2s" and "retrying in
    2.5s" count as the same line; the first argument (usually the device) keeps devices apart. The
    next line let through says how many were held back.
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S):
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "every_attempt", False):
            # Recoveries ("connected") must always show; attempts are already paced by a backoff.
            return True
        first = record.args[0] if isinstance(record.args, tuple) and record.args else None
        key = (record.name, record.levelno, record.msg, str(first))
        now = time.monotonic()
        last, held = self._seen.get(key, (-1e18, 0))
        if now - last < self.window_s:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar lines in the last {self.window_s:.0f}s not shown)"
        if len(self._seen) > 10_000:  # bounded: forget the oldest keys
            for k in sorted(self._seen, key=lambda k: self._seen[k][0])[:5_000]:
                del self._seen[k]
        return True


class JournalFormatter(logging.Formatter):
    """journald reads a `<N>` syslog priority prefix from stdout/stderr, so `journalctl -p warning` works."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries log their internals at debug; an engineer asking for debug wants ours, not numba's compiler.
    for noisy in ("numba", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
