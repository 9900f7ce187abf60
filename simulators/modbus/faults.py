"""Fault injection for the Modbus simulator: the misbehaviour of real plants, on demand and seeded.

Every fault the driver must survive has a switch here, so a test can inject it through a real socket
or serial line instead of mocking the client: latency (overall or per unit), connections dropped on
a timer, exception replies, replies with too few or too many registers, byte counts that disagree
with the data, wrong transaction ids (TCP) or unit ids (RTU), bad CRCs (RTU), and units that are in
the map but never answer. Draws come from a seeded generator, so a failing run can be replayed.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from dataclasses import dataclass, field

EXC_SERVER_DEVICE_FAILURE = 0x04
RATE_FAULTS = ("exception", "short", "long", "malformed", "tid", "crc")


@dataclass
class Faults:
    latency_s: float = 0.0
    unit_latency_s: dict[int, float] = field(default_factory=dict)
    drop_every_s: float = 0.0
    exception_rate: float = 0.0
    short_rate: float = 0.0
    long_rate: float = 0.0
    malformed_rate: float = 0.0
    tid_rate: float = 0.0  # TCP: wrong transaction id; RTU: a reply naming another unit
    crc_rate: float = 0.0  # RTU only
    dead_units: frozenset[int] = frozenset()
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        for name in RATE_FAULTS:
            rate = getattr(self, f"{name}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} rate {rate} is not within 0..1")
        if sum(getattr(self, f"{n}_rate") for n in RATE_FAULTS) > 1.0:
            raise ValueError("the fault rates add up to more than 1")

    @property
    def active(self) -> bool:
        return bool(self.latency_s or self.unit_latency_s or self.drop_every_s or self.dead_units
                    or any(getattr(self, f"{n}_rate") for n in RATE_FAULTS))

    def delay_s(self, unit: int) -> float:
        return self.latency_s + self.unit_latency_s.get(unit, 0.0)

    def draw(self, rtu: bool) -> str | None:
        """Which fault (if any) this reply gets; one uniform draw against the stacked rates."""
        x = self._rng.random()
        for name in RATE_FAULTS:
            rate = getattr(self, f"{name}_rate")
            if name == "crc" and not rtu:
                continue
            if x < rate:
                self.injected[name] += 1
                return name
            x -= rate
        return None

    @staticmethod
    def mangle(kind: str, request: bytes, reply: bytes) -> bytes:
        """Apply a PDU-level fault to a normal read reply (exception replies pass unchanged)."""
        fc = request[0]
        if kind == "exception":
            return bytes((fc | 0x80, EXC_SERVER_DEVICE_FAILURE))
        if reply[0] & 0x80 or len(reply) < 2:
            return reply
        unit = 1 if fc in (1, 2) else 2
        data = reply[2:]
        if kind == "short":  # consistent byte count, fewer items: what some servers do on a bad range
            data = data[: max(0, len(data) - unit)]
            return bytes((fc, len(data))) + data
        if kind == "long":
            data = data + bytes(unit)
            return bytes((fc, len(data))) + data
        if kind == "malformed":  # the byte count promises more than the frame carries
            return bytes((fc, (len(data) + 2) & 0xFF)) + data
        return reply


def parse_unit_latency(text: str) -> tuple[int, float]:
    """`3=2s` / `3=250ms` -> (3, 2.0): a unit that answers slowly."""
    unit, sep, dur = text.partition("=")
    try:
        seconds = float(dur.removesuffix("ms")) / 1000 if dur.endswith("ms") else float(dur.removesuffix("s"))
        return int(unit), seconds if sep else float("nan")
    except ValueError:
        raise ValueError(f"invalid unit latency {text!r}: use UNIT=DURATION, e.g. 3=2s or 3=250ms") from None


def struct_crc_bad(frame: bytes) -> bytes:
    """The same frame with its CRC inverted: a line hit by noise."""
    return frame[:-2] + struct.pack("<H", struct.unpack("<H", frame[-2:])[0] ^ 0xFFFF)
