"""Deterministic signal math for the simulated plant.

Every signal is a pure function of (tick k, seed, key, tick_ns). There is no state and no stateful
RNG: noise comes from a counter-based hash (splitmix64's finaliser) of (seed, key, k, stream). That
is what lets a test, or the OPC UA simulator in another process, compute the exact value the Modbus
simulator served at any instant without talking to it, and what makes a run replayable from its
seed alone.

Periods are given in seconds but evaluated with integer nanoseconds, so phases stay exact even at
k ~ 1.8e10 (a unix timestamp in 100 ms ticks) where float seconds would lose precision.

A signal whose value depends on another one (return temperature lags supply, flow follows its
setpoint) holds that signal plus the key it is evaluated under (the other point's name), so both
see the same noise draws as the point that serves them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

MASK64 = (1 << 64) - 1
GOLDEN64 = 0x9E3779B97F4A7C15
NS_PER_S = 1_000_000_000

# Independent hash streams: each use of randomness in a signal draws from its own stream so that,
# say, the phase of a sine and its noise are uncorrelated.
STREAM_NOISE_A = 1
STREAM_NOISE_B = 2
STREAM_PHASE = 3
STREAM_EVENT = 4
STREAM_LEVEL = 5
STREAM_OFFSET = 6


def mix64(z: int) -> int:
    """splitmix64's output function: a bijective avalanche mix, so adjacent ticks look unrelated."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@lru_cache(maxsize=1024)
def key_hash(key: str) -> int:
    """Stable 64-bit hash of a point name; Python's hash() is salted per process, so unusable here."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def hash64(seed: int, key: str, k: int, stream: int = 0) -> int:
    """Counter-based random 64-bit word for (seed, key, tick, stream); negative ints wrap mod 2**64."""
    x = mix64((seed & MASK64) * GOLDEN64 + key_hash(key))
    x = mix64(x + (k & MASK64) * GOLDEN64)
    return mix64(x ^ ((stream & MASK64) * 0xD6E8FEB86659FD93))


def uniform(seed: int, key: str, k: int, stream: int = 0) -> float:
    """Uniform in [0, 1) with 53 random bits, the same on every platform."""
    return (hash64(seed, key, k, stream) >> 11) * (1.0 / (1 << 53))


def noise(seed: int, key: str, k: int, amplitude: float) -> float:
    """Triangular noise in [-amplitude, amplitude]: centre-weighted like sensor noise, but bounded."""
    if amplitude == 0.0:
        return 0.0
    return amplitude * (uniform(seed, key, k, STREAM_NOISE_A) + uniform(seed, key, k, STREAM_NOISE_B) - 1.0)


def _period_ns(period_s: float) -> int:
    ns = round(period_s * NS_PER_S)
    if ns <= 0:
        raise ValueError(f"period must be positive, got {period_s!r} s")
    return ns


def _phase(k: int, tick_ns: int, period_s: float, seed: int, key: str) -> float:
    """Fraction [0, 1) of the period at tick k, with a seeded offset so seeds give different plants."""
    period = _period_ns(period_s)
    offset = int(uniform(seed, key, 0, STREAM_PHASE) * period)
    return ((k * tick_ns + offset) % period) / period


class Signal(Protocol):
    """Anything that yields the engineering value of a point at tick k."""

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float: ...


@dataclass(frozen=True, slots=True)
class Sine:
    """mean + amplitude * sin(2π t / period + seeded phase) + noise: slow thermal swings."""

    mean: float
    amplitude: float
    period_s: float
    noise: float = 0.0

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        frac = _phase(k, tick_ns, self.period_s, seed, key)
        return self.mean + self.amplitude * math.sin(2.0 * math.pi * frac) + noise(seed, key, k, self.noise)


@dataclass(frozen=True, slots=True)
class Sawtooth:
    """Linear ramp from low to high over the period, then a sudden drop (pump builds, relief opens)."""

    low: float
    high: float
    period_s: float
    noise: float = 0.0

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        frac = _phase(k, tick_ns, self.period_s, seed, key)
        return self.low + (self.high - self.low) * frac + noise(seed, key, k, self.noise)


@dataclass(frozen=True, slots=True)
class SquareWave:
    """1.0 for the first `duty` fraction of each period, else 0.0: a machine cycling on and off."""

    period_s: float
    duty: float = 0.5

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        return 1.0 if _phase(k, tick_ns, self.period_s, seed, key) < self.duty else 0.0


@dataclass(frozen=True, slots=True)
class RareEvent:
    """1.0 on a seeded random fraction `probability` of ticks: faults and alarms that flicker."""

    probability: float

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        return 1.0 if uniform(seed, key, k, STREAM_EVENT) < self.probability else 0.0


@dataclass(frozen=True, slots=True)
class Steps:
    """Piecewise-constant level, a seeded pick from `levels` every `hold_s`: load steps, setpoints."""

    levels: tuple[float, ...]
    hold_s: float
    noise: float = 0.0

    def segment(self, k: int, tick_ns: int) -> tuple[int, int]:
        """(segment index, ns elapsed inside it) at tick k; followers need both for their response."""
        return divmod(k * tick_ns, _period_ns(self.hold_s))

    def level(self, segment: int, seed: int, key: str) -> float:
        return self.levels[hash64(seed, key, segment, STREAM_LEVEL) % len(self.levels)]

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        seg, _ = self.segment(k, tick_ns)
        return self.level(seg, seed, key) + noise(seed, key, k, self.noise)


@dataclass(frozen=True, slots=True)
class FirstOrder:
    """First-order lag (time constant tau) tracking a Steps source: the actual following a setpoint.

    Closed form instead of integration: inside each segment the response starts from the previous
    level and decays towards the new one. That assumes the previous step had settled, which holds
    when tau is a few times shorter than the hold time (checked at construction).
    """

    source: Steps
    source_key: str
    tau_s: float
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.tau_s * 4 <= self.source.hold_s:
            raise ValueError("tau_s must be positive and at most a quarter of the source hold time")

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        seg, elapsed_ns = self.source.segment(k, tick_ns)
        target = self.source.level(seg, seed, self.source_key)
        start = self.source.level(seg - 1, seed, self.source_key)
        decay = math.exp(-elapsed_ns / (self.tau_s * NS_PER_S))
        return target + (start - target) * decay + noise(seed, key, k, self.noise)


@dataclass(frozen=True, slots=True)
class Follow:
    """gain * source(k - lag) + offset + noise, clamped: a value physically driven by another one."""

    source: Signal
    source_key: str
    gain: float = 1.0
    offset: float = 0.0
    lag_s: float = 0.0
    noise: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        lag_ticks = round(self.lag_s * NS_PER_S) // tick_ns
        x = self.gain * self.source.at(k - lag_ticks, seed, self.source_key, tick_ns) + self.offset
        return min(self.hi, max(self.lo, x + noise(seed, key, k, self.noise)))


@dataclass(frozen=True, slots=True)
class Gated:
    """inner while the gate signal is on, else a constant: no motor current while the press is off."""

    inner: Signal
    gate: Signal
    gate_key: str
    off_value: float = 0.0

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        if self.gate.at(k, seed, self.gate_key, tick_ns) >= 0.5:
            return self.inner.at(k, seed, key, tick_ns)
        return self.off_value


@dataclass(frozen=True, slots=True)
class Threshold:
    """1.0 when the source is at or above level: a status bit derived from an analogue value."""

    source: Signal
    source_key: str
    level: float

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        return 1.0 if self.source.at(k, seed, self.source_key, tick_ns) >= self.level else 0.0


@dataclass(frozen=True, slots=True)
class BitField:
    """Packs boolean signals into an integer status word; bit b draws its own randomness from key/b."""

    bits: tuple[tuple[int, Signal], ...]

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        word = 0
        for bit, sig in self.bits:
            if sig.at(k, seed, f"{key}/b{bit}", tick_ns) >= 0.5:
                word |= 1 << bit
        return float(word)


@dataclass(frozen=True, slots=True)
class Counter:
    """Monotonic event counter since `epoch_s` at a fixed rate, wrapping at `modulus` like a PLC's.

    Pure integer arithmetic, so the count is exact at any k. A seeded start offset makes the counter
    read as if the machine had history before the epoch.
    """

    per_minute: int
    epoch_s: int = 0
    modulus: int = 1 << 32
    max_offset: int = 1_000_000

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        elapsed_ns = k * tick_ns - self.epoch_s * NS_PER_S
        offset = hash64(seed, key, 0, STREAM_OFFSET) % self.max_offset if self.max_offset else 0
        return float((offset + elapsed_ns * self.per_minute // (60 * NS_PER_S)) % self.modulus)


@dataclass(frozen=True, slots=True)
class Integrator:
    """Energy meter: average power in kW integrated since `epoch_s`, in kWh; never decreases."""

    power_kw: float
    epoch_s: int = 0

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        elapsed_ns = max(0, k * tick_ns - self.epoch_s * NS_PER_S)
        return elapsed_ns * self.power_kw / (3600.0 * NS_PER_S)


STREAM_WALK = 7
STREAM_ANOMALY = 8


@dataclass(frozen=True, slots=True)
class RandomWalk:
    """A wandering level (tank level, ambient temperature) that any process can evaluate at any tick.

    A true random walk needs every earlier step; this sums value noise at octaves of doubling period,
    weighted by the square root of the period, which has a random walk's look (variance growing with
    the time scale) up to the longest octave and stays a pure function of k. Clamped to [lo, hi].
    """

    mean: float
    step: float  # typical change over one base period
    period_s: float = 1.0  # base period: the finest wiggle
    octaves: int = 8
    lo: float = -math.inf
    hi: float = math.inf

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        t = k * tick_ns
        base = _period_ns(self.period_s)
        x = 0.0
        for j in range(self.octaves):
            period = base << j
            seg, within = divmod(t, period)
            a = uniform(seed, key, seg, STREAM_WALK + 16 * j) * 2.0 - 1.0
            b = uniform(seed, key, seg + 1, STREAM_WALK + 16 * j) * 2.0 - 1.0
            f = within / period
            f = f * f * (3.0 - 2.0 * f)  # smoothstep: no kinks at segment edges
            x += (a + (b - a) * f) * math.sqrt(1 << j)
        return min(self.hi, max(self.lo, self.mean + self.step * x))


@dataclass(frozen=True, slots=True)
class Noise:
    """A constant level plus bounded noise: a sensor on a process at rest."""

    mean: float
    noise: float

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        return self.mean + noise(seed, key, k, self.noise)


@dataclass(frozen=True, slots=True)
class Constant:
    value: float

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        return self.value


ANOMALY_KINDS = ("spike", "drift", "stuck", "step", "noise_burst")


@dataclass(frozen=True, slots=True)
class AnomalyWindow:
    """One injected anomaly: ticks [start, end) of a point, for the ground-truth label file."""

    kind: str
    start: int  # first tick
    end: int  # first tick after
    magnitude: float


@dataclass(frozen=True, slots=True)
class Anomalies:
    """Injects anomalies into an inner signal at seeded times.

    Time is cut into windows of `every_s`; in each window, with `probability`, one anomaly of a seeded
    kind starts at a seeded tick and lasts `duration_s` (a spike lasts one tick). Being a pure
    function of (k, seed, key) like every signal, the ground truth can be listed for any time range
    (`windows`) without running the simulator, and the label file is exactly that list.
    """

    inner: Signal
    every_s: float
    duration_s: float
    magnitude: float
    kinds: tuple[str, ...] = ANOMALY_KINDS
    probability: float = 1.0

    def window(self, w: int, seed: int, key: str, tick_ns: int) -> AnomalyWindow | None:
        """The anomaly of window w, if it has one."""
        if uniform(seed, key, w, STREAM_ANOMALY) >= self.probability:
            return None
        span = max(1, _period_ns(self.every_s) // tick_ns)
        kind = self.kinds[hash64(seed, key, w, STREAM_ANOMALY + 1) % len(self.kinds)]
        dur = 1 if kind == "spike" else max(1, min(span, _period_ns(self.duration_s) // tick_ns))
        start = w * span + hash64(seed, key, w, STREAM_ANOMALY + 2) % max(1, span - dur + 1)
        sign = 1.0 if hash64(seed, key, w, STREAM_ANOMALY + 3) & 1 else -1.0
        return AnomalyWindow(kind, start, start + dur, sign * self.magnitude)

    def windows(self, k0: int, k1: int, seed: int, key: str, tick_ns: int) -> list[AnomalyWindow]:
        """Anomalies starting in ticks [k0, k1)."""
        span = max(1, _period_ns(self.every_s) // tick_ns)
        out = []
        for w in range(k0 // span, (k1 - 1) // span + 1):
            a = self.window(w, seed, key, tick_ns)
            if a is not None and k0 <= a.start < k1:
                out.append(a)
        return out

    def at(self, k: int, seed: int, key: str, tick_ns: int) -> float:
        span = max(1, _period_ns(self.every_s) // tick_ns)
        a = self.window(k // span, seed, key, tick_ns)
        if a is None or not a.start <= k < a.end:
            return self.inner.at(k, seed, key, tick_ns)
        if a.kind == "stuck":
            return self.inner.at(a.start, seed, key, tick_ns)
        x = self.inner.at(k, seed, key, tick_ns)
        if a.kind == "drift":
            return x + a.magnitude * (k - a.start + 1) / (a.end - a.start)
        if a.kind == "noise_burst":
            return x + noise(seed, key + "/burst", k, abs(a.magnitude))
        return x + a.magnitude  # spike, step
