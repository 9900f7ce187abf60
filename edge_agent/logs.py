"""Logging to stderr, one line per event; journald adds its own timestamps, so we do not."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info") -> None:
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries log their internals at debug; an engineer asking for debug wants ours, not numba's compiler.
    for noisy in ("numba", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
