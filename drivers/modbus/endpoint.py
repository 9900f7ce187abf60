"""Modbus endpoints: `tcp://HOST:PORT`, `rtu+tcp://HOST:PORT` and
`rtu:///dev/ttyUSB0?baudrate=19200&parity=E&stopbits=1&bytesize=8`.

Parsed strictly once at load time: a serial setting the agent would ignore, or a typo in one
(`parity=even`), is an error, because a wrong parity looks on site exactly like a dead device.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from edge_agent.config.urls import check_endpoint

HINT = ("tcp://HOST:PORT, rtu+tcp://HOST:PORT (a serial-to-Ethernet converter) or "
        "rtu:///dev/ttyUSB0?baudrate=19200&parity=E&stopbits=1&bytesize=8")
SERIAL_DEFAULTS = {"baudrate": 19200, "parity": "E", "stopbits": 1, "bytesize": 8}


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "tcp", "rtu+tcp" or "rtu"
    host: str = ""
    port: int = 502
    path: str = ""  # serial device
    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def rtu(self) -> bool:
        return self.scheme != "tcp"

    @property
    def bus_key(self) -> str:
        """Devices with the same key share one connection: a serial port, or a converter's socket."""
        if self.scheme == "rtu":
            return f"rtu://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"

    def char_time_s(self) -> float:
        """Time one character takes on the line: start bit, data bits, parity bit, stop bits."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def frame_gap_s(self) -> float:
        """The RTU silent interval: 3.5 characters, but 1.75 ms above 19200 baud (Modbus over serial
        line spec, 2.5.1.1). On TCP converters the converter times the line; we only keep a small gap."""
        if self.scheme != "rtu":
            return 0.0
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_time_s()


def parse_endpoint(url: str) -> Endpoint:
    """Raise ValueError naming the one thing wrong with `url`."""
    scheme = urlsplit(url).scheme
    if scheme in ("tcp", "rtu+tcp"):
        check_endpoint(url, ("tcp", "rtu+tcp"), HINT)
        parts = urlsplit(url)
        return Endpoint(scheme, parts.hostname or "", parts.port or 502)
    if scheme != "rtu":
        raise ValueError(f"{url!r}: use {HINT}")
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(f"{url!r}: a serial endpoint has no host: write rtu:///dev/ttyUSB0 (three slashes)")
    if not parts.path.startswith("/") or parts.path == "/":
        raise ValueError(f"{url!r}: give the serial device as an absolute path, e.g. rtu:///dev/ttyUSB0")
    settings: dict[str, object] = dict(SERIAL_DEFAULTS)
    seen = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in SERIAL_DEFAULTS:
            raise ValueError(f"{url!r}: unknown serial setting {key!r} (allowed: {', '.join(SERIAL_DEFAULTS)})")
        if key in seen:
            raise ValueError(f"{url!r}: {key} is given twice")
        seen.add(key)
        settings[key] = _serial_value(url, key, value)
    return Endpoint("rtu", path=parts.path, **settings)  # type: ignore[arg-type]


def _serial_value(url: str, key: str, value: str) -> object:
    if key == "parity":
        if value.upper() not in ("N", "E", "O"):
            raise ValueError(f"{url!r}: parity must be N, E or O, not {value!r}")
        return value.upper()
    allowed = {"stopbits": (1, 2), "bytesize": (7, 8)}.get(key)
    try:
        n = int(value, 10)
    except ValueError:
        raise ValueError(f"{url!r}: {key} must be a whole number, not {value!r}") from None
    if allowed and n not in allowed:
        raise ValueError(f"{url!r}: {key} must be {' or '.join(map(str, allowed))}, not {n}")
    if key == "baudrate" and not 300 <= n <= 4_000_000:
        raise ValueError(f"{url!r}: baudrate {n} is out of range 300..4000000")
    return n
