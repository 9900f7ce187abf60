"""Human units in the TOML file: durations ("100ms", "5s", "2m") and sizes ("512MiB").

Bare numbers are refused on purpose: `timeout = 3` could mean seconds or milliseconds, and a config
that means something other than what the engineer thought is worse than one that does not load.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

# Case matters for durations ("2M" is not "2m"), so the spellings are exact.
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]+)\s*$")


def parse_duration_ns(text: object) -> int:
    """Duration string to integer nanoseconds; ints stay exact, so ticks never accumulate error."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as \"500ms\", \"5s\" or \"2m\", got {text!r}")
    m = _NUMBER_UNIT.match(text)
    if not m or m.group(2) not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration (use a number and one of ns, us, ms, s, m, h, d)")
    ns = _scaled(m.group(1), _DURATION_UNITS[m.group(2)])
    if ns is None:
        raise ValueError(f"{text!r} is not a whole number of nanoseconds")
    return ns


def parse_size_bytes(text: object) -> int:
    """Size string to bytes; both SI (MB) and binary (MiB) units, because both appear on datasheets."""
    if not isinstance(text, str):
        raise ValueError(f"expected a size string such as \"512MiB\" or \"2GB\", got {text!r}")
    m = _NUMBER_UNIT.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (use a number and one of B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = _scaled(m.group(1), _SIZE_UNITS[m.group(2).lower()])
    if size is None:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return size


def _scaled(number: str, factor: int) -> int | None:
    """Exact decimal scaling; None when the result is fractional (never silently truncated)."""
    whole, _, frac = number.partition(".")
    numerator = int(whole + frac) * factor
    denominator = 10 ** len(frac)
    return numerator // denominator if numerator % denominator == 0 else None


def format_duration(ns: int) -> str:
    """Shortest exact spelling, so `check` prints what the engineer would have written."""
    for unit in ("d", "h", "m", "s", "ms", "us"):
        factor = _DURATION_UNITS[unit]
        if ns and ns % factor == 0:
            return f"{ns // factor}{unit}"
    return f"{ns}ns"


def _check_positive(ns: int) -> int:
    if ns <= 0:
        raise ValueError("must be greater than zero")
    return ns


def _at_least_ms(ns: int) -> int:
    if ns < 1_000_000:
        raise ValueError(f"{format_duration(ns)} is too short: the minimum is 1ms")
    return ns


def _whole_seconds(ns: int) -> int:
    if ns < 1_000_000_000 or ns % 1_000_000_000:
        raise ValueError(f"{format_duration(ns)}: must be a whole number of seconds, at least 1s")
    return ns


Duration = Annotated[int, BeforeValidator(parse_duration_ns), PlainSerializer(format_duration)]
PositiveDuration = Annotated[
    int, BeforeValidator(lambda v: _check_positive(parse_duration_ns(v))), PlainSerializer(format_duration)
]
# Poll intervals and timeouts: nothing on a plant network answers in under a millisecond.
MillisDuration = Annotated[
    int, BeforeValidator(lambda v: _at_least_ms(parse_duration_ns(v))), PlainSerializer(format_duration)
]
# MQTT keepalive is whole seconds on the wire.
Seconds = Annotated[
    int, BeforeValidator(lambda v: _whole_seconds(parse_duration_ns(v))), PlainSerializer(format_duration)
]
Size = Annotated[int, BeforeValidator(parse_size_bytes)]
