"""One log line per state change, rate limited: a fault that persists is one line, not one per poll.

A plant with a misconfigured tag polled at 10 Hz must not write 36,000 identical lines an hour into
the journal, and a flapping link must not either: each subject (a tag, a request) logs at most one
failure line per `min_interval_s`, plus the recovery of a failure that was logged; changes in between
are counted and the count rides on the next line.
"""

from __future__ import annotations

import logging
import time

OK = "ok"


class StateLog:
    def __init__(self, logger: logging.Logger, where: str, min_interval_s: float = 10.0):
        self._log = logger
        self._where = where
        self._min = min_interval_s
        self._state: dict[str, str] = {}
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._shown_bad: dict[str, bool] = {}

    def bad(self, subject: str) -> bool:
        return self._state.get(subject, OK) != OK

    def report(self, subject: str, state: str, level: int, fmt: str, *args: object) -> bool:
        """Log `fmt % args` if `subject` enters `state` (subjects start in OK); True if a line was written."""
        if self._state.get(subject, OK) == state:
            return False
        self._state[subject] = state
        now = time.monotonic()
        # A recovery is always logged when its failure was: the journal never ends on a stale "bad".
        paired = state == OK and self._shown_bad.pop(subject, False)
        if not paired and now - self._last.get(subject, -1e18) < self._min:
            self._suppressed[subject] = self._suppressed.get(subject, 0) + 1
            self._log.debug("%s: " + fmt, self._where, *args)
            return False
        self._last[subject] = now
        if state != OK:
            self._shown_bad[subject] = True
        n = self._suppressed.pop(subject, 0)
        suffix = f" ({n} earlier change{'s' if n > 1 else ''} not logged)" if n else ""
        self._log.log(level, "%s: " + fmt + "%s", self._where, *args, suffix)
        return True
