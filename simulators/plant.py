"""The simulated plant: which point lives where, and the one function that says what it reads.

The profile is protocol-neutral (a unit id and a Modbus table per point are just addressing) so the
Modbus server, a future OPC UA server and the tests all share it. `value_at` is the single source of
truth: the server encodes exactly what it returns, so a test that knows when it asked can check what
it got bit for bit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from simulators import signals as s

DEFAULT_TICK_NS = 100_000_000  # 100 ms

TABLES = ("hr", "ir", "coil", "di")
BIT_TABLES = frozenset({"coil", "di"})
TYPES = ("bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string")
BYTE_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

# Registers (16-bit words) per type; a bool occupies one bit address in a coil/di table.
WORDS = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2,
         "float64": 4}
_STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
           "float32": ">f", "float64": ">d"}
_INT_RANGE = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}

# Counters and meters count from a commissioning date so their magnitudes look like a real plant's
# (a few years of operation), not like a machine running since 1970.
COMMISSIONED_S = 1_577_836_800  # 2020-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Point:
    """One PLC tag. `signal` yields engineering units; `scale` maps them to the raw encoded value.

    `address` is 0-based as on the wire (hr:0 is "40001" in 1-based vendor notation). `name` is also
    the key of the point's noise hash, which is why names are unique across the whole plant.
    """

    device: str
    unit: int
    table: str
    address: int
    type: str
    name: str
    signal: s.Signal
    scale: float = 1.0
    eng_unit: str = ""
    description: str = ""
    byte_order: str = "ABCD"  # how the device lays out multi-register values (ABCD = high word first)
    # string points: the texts the signal selects from (its value, rounded, modulo their number), and
    # the registers the text occupies (2 characters each, NUL-padded)
    texts: tuple[str, ...] = ()
    length: int = 0

    @property
    def words(self) -> int:
        """Addresses occupied: registers for hr/ir, always 1 for a coil/di bit."""
        return self.length if self.type == "string" else WORDS[self.type]

    @property
    def end(self) -> int:
        """First address after this point (exclusive)."""
        return self.address + self.words


# --- the plant ---------------------------------------------------------------------------------

_SUPPLY = s.Sine(mean=70.0, amplitude=12.0, period_s=600.0, noise=0.3)
_MODULATION = s.Follow(_SUPPLY, "temp_supply", gain=-3.5, offset=300.0, noise=2.0, lo=0.0, hi=100.0)
_PRESS_RUNNING = s.SquareWave(period_s=120.0, duty=0.75)
_FLOW_SETPOINT = s.Steps(levels=(12.0, 18.5, 25.0, 32.0, 40.0), hold_s=30.0)
_DOOR_CLOSED = s.SquareWave(period_s=600.0, duty=0.92)

PLANT: tuple[Point, ...] = (
    # boiler, unit 1: holding registers
    Point("boiler", 1, "hr", 0, "float32", "temp_supply", _SUPPLY,
          eng_unit="°C", description="supply water temperature, ~58..82"),
    Point("boiler", 1, "hr", 2, "float32", "temp_return",
          s.Follow(_SUPPLY, "temp_supply", offset=-16.0, lag_s=90.0, noise=0.2),
          eng_unit="°C", description="return temperature: supply lagged 90 s, minus ~16 K"),
    Point("boiler", 1, "hr", 4, "float32", "pressure",
          s.Sawtooth(low=1.6, high=3.2, period_s=300.0, noise=0.02),
          eng_unit="bar", description="sawtooth: builds over 5 min, then relieves"),
    Point("boiler", 1, "hr", 6, "int16", "burner_modulation", _MODULATION,
          eng_unit="%", description="0..100, fires harder when supply is cold"),
    Point("boiler", 1, "hr", 7, "uint16", "flame_status_word",
          s.BitField((
              (0, s.Threshold(_MODULATION, "burner_modulation", 15.0)),
              (1, s.SquareWave(period_s=1200.0, duty=0.85)),
              (2, s.RareEvent(0.001)),
              (15, s.SquareWave(period_s=2.0, duty=0.5)),
          )),
          description="bit0 flame on (modulation>=15), bit1 pump, bit2 lockout (rare), bit15 heartbeat 1 s"),
    # press, unit 2: input registers and coils
    Point("press", 2, "ir", 0, "uint16", "motor_current_raw",
          s.Gated(s.Follow(s.Steps(levels=(4.0, 12.0, 18.0, 24.0, 27.5), hold_s=20.0), "motor_current_raw",
                           noise=0.4, lo=0.0, hi=30.0),
                  _PRESS_RUNNING, "running", off_value=0.0),
          scale=100.0, eng_unit="0.01 A", description="load steps every 20 s, 0 while stopped; 0..3000"),
    Point("press", 2, "ir", 1, "int16", "oil_temp_x10",
          s.Sine(mean=30.0, amplitude=34.0, period_s=900.0, noise=0.2),
          scale=10.0, eng_unit="0.1 °C", description="about -40..640: goes negative on a cold start"),
    Point("press", 2, "ir", 2, "uint32", "stroke_count",
          s.Counter(per_minute=14, epoch_s=COMMISSIONED_S),
          description="14 strokes/min since 2020-01-01 plus seeded offset; wraps at 2**32"),
    Point("press", 2, "ir", 4, "float64", "energy_kwh",
          s.Integrator(power_kw=22.5, epoch_s=COMMISSIONED_S),
          eng_unit="kWh", description="22.5 kW average since 2020-01-01; never decreases"),
    Point("press", 2, "coil", 0, "bool", "running", _PRESS_RUNNING,
          description="on 90 s, off 30 s"),
    Point("press", 2, "coil", 1, "bool", "fault", s.RareEvent(0.002),
          description="true on ~0.2% of ticks (seeded)"),
    # mixer, unit 3: holding registers and a discrete input
    Point("mixer", 3, "hr", 0, "float32", "flow_setpoint", _FLOW_SETPOINT,
          eng_unit="m³/h", description="steps among 12..40 every 30 s"),
    Point("mixer", 3, "hr", 2, "float32", "flow_actual",
          s.FirstOrder(_FLOW_SETPOINT, "flow_setpoint", tau_s=4.0, noise=0.15),
          eng_unit="m³/h", description="follows setpoint, first-order lag tau 4 s"),
    Point("mixer", 3, "hr", 4, "int32", "position",
          s.Sine(mean=0.0, amplitude=180_000.0, period_s=47.0, noise=50.0),
          eng_unit="counts", description="encoder position, ±180000 (signed)"),
    Point("mixer", 3, "hr", 6, "uint16", "speed_rpm",
          s.Gated(s.Sine(mean=1200.0, amplitude=250.0, period_s=180.0, noise=4.0),
                  _DOOR_CLOSED, "door_closed", off_value=0.0),
          eng_unit="rpm", description="~950..1450, 0 while the door is open"),
    Point("mixer", 3, "di", 0, "bool", "door_closed", _DOOR_CLOSED,
          description="open 48 s every 10 min"),
)

DEVICES: tuple[str, ...] = tuple(dict.fromkeys(p.device for p in PLANT))
UNITS: tuple[int, ...] = tuple(dict.fromkeys(p.unit for p in PLANT))


def points_for(device: str) -> tuple[Point, ...]:
    """The device's points in map order; unknown names raise so config typos surface."""
    pts = tuple(p for p in PLANT if p.device == device)
    if not pts:
        raise KeyError(f"unknown device {device!r} (known: {', '.join(DEVICES)})")
    return pts


def point(device: str, name: str) -> Point:
    """Look a point up by device and name, the way tests and configs refer to them."""
    for p in points_for(device):
        if p.name == name:
            return p
    raise KeyError(f"device {device!r} has no point {name!r}")


# --- value and encoding ------------------------------------------------------------------------


def _quantise(p: Point, x: float) -> float:
    """Raw engineering value -> exactly what the type can carry (saturating ints, float32 rounding)."""
    if p.type == "string":
        return float(round(x) % len(p.texts))  # the index of the text served
    if p.type == "bool":
        return 1.0 if x >= 0.5 else 0.0
    if p.type == "float32":
        return struct.unpack(">f", struct.pack(">f", x))[0]
    if p.type == "float64":
        return float(x)
    lo, hi = _INT_RANGE[p.type]
    return float(min(hi, max(lo, round(x))))  # 64-bit values beyond 2**53 are what float64 can carry


def value_at_tick(p: Point, k: int, seed: int, tick_ns: int = DEFAULT_TICK_NS) -> float:
    """Value served during tick k; tests scan the ticks a request could have landed in with this."""
    return _quantise(p, p.signal.at(k, seed, p.name, tick_ns) * p.scale)


def value_at(p: Point, t_ns: int, seed: int, tick_ns: int = DEFAULT_TICK_NS) -> float:
    """Exactly the value the server encodes for point p when a request arrives at unix time t_ns.

    float32 points come back float32-rounded, integer types as int-valued floats (scaled and
    saturated to the type's range), bools as 0.0/1.0.
    """
    return value_at_tick(p, t_ns // tick_ns, seed, tick_ns)


def text_of(p: Point, value: float) -> str:
    """The text a string point serves for a value from value_at (an index into its texts)."""
    return p.texts[int(value)]


def text_at(p: Point, t_ns: int, seed: int, tick_ns: int = DEFAULT_TICK_NS) -> str:
    """Exactly the text a string point serves when a request arrives at unix time t_ns."""
    return text_of(p, value_at(p, t_ns, seed, tick_ns))


def encode(p: Point, value: float) -> tuple[int, ...]:
    """Register words for a value from value_at in the point's byte order (ABCD: big-endian, high word
    first; CDAB swaps words, BADC swaps the bytes of each word, DCBA both); bools -> (0|1,).
    A string is its Latin-1 bytes NUL-padded to `length` registers, first character in the high byte
    of the first register (BADC and DCBA swap the two characters of each register)."""
    if p.type == "bool":
        return (1 if value else 0,)
    if p.type == "string":
        raw = text_of(p, value).encode("latin-1").ljust(2 * p.length, b"\0")
        pairs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
        if p.byte_order in ("BADC", "DCBA"):
            pairs = [w[::-1] for w in pairs]
        return tuple(int.from_bytes(w, "big") for w in pairs)
    fmt = _STRUCT[p.type]
    lo, hi = _INT_RANGE.get(p.type, (0, 0))
    raw = struct.pack(fmt, value if p.type.startswith("float") else min(hi, max(lo, int(value))))
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if p.byte_order in ("CDAB", "DCBA"):
        words.reverse()
    if p.byte_order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return tuple(int.from_bytes(w, "big") for w in words)


@cache
def address_index(points: tuple[Point, ...] = PLANT) -> dict[tuple[int, str], dict[int, tuple[Point, int]]]:
    """(unit, table) -> {address: (point, word offset inside the point)}; absence means illegal address."""
    index: dict[tuple[int, str], dict[int, tuple[Point, int]]] = {}
    for p in points:
        table = index.setdefault((p.unit, p.table), {})
        for off in range(p.words):
            table[p.address + off] = (p, off)
    return index


def validate(points: Iterable[Point]) -> None:
    """Refuse a profile a real PLC could not have: overlaps, bools in registers, bad tables or types."""
    seen: dict[tuple[int, str, int], str] = {}
    names: set[str] = set()
    units: dict[int, str] = {}
    for p in points:
        if p.byte_order not in BYTE_ORDERS:
            raise ValueError(f"{p.device}.{p.name}: byte order {p.byte_order!r} is not one of {', '.join(BYTE_ORDERS)}")
        if p.table not in TABLES or p.type not in TYPES:
            raise ValueError(f"{p.device}.{p.name}: bad table {p.table!r} or type {p.type!r}")
        if p.type == "string":
            if p.length < 1 or not p.texts:
                raise ValueError(f"{p.device}.{p.name}: a string point needs length (registers) and texts")
            for t in p.texts:
                try:
                    ok = len(t.encode("latin-1")) <= 2 * p.length
                except UnicodeEncodeError:
                    ok = False
                if not ok:
                    raise ValueError(f"{p.device}.{p.name}: text {t!r} does not fit {p.length} registers of Latin-1")
        elif p.texts or p.length:
            raise ValueError(f"{p.device}.{p.name}: texts and length are for string points only")
        if (p.type == "bool") != (p.table in BIT_TABLES):
            raise ValueError(f"{p.device}.{p.name}: bools live in coil/di tables, numbers in hr/ir")
        if p.address < 0 or p.end > 65536:
            raise ValueError(f"{p.device}.{p.name}: address range {p.address}..{p.end - 1} out of 0..65535")
        if not 1 <= p.unit <= 247:
            raise ValueError(f"{p.device}.{p.name}: unit id {p.unit} out of 1..247")
        if units.setdefault(p.unit, p.device) != p.device:
            raise ValueError(f"unit {p.unit} is claimed by both {units[p.unit]!r} and {p.device!r}")
        if p.name in names:  # names key the noise hash, so they must be unique plant-wide
            raise ValueError(f"{p.device}.{p.name}: point name already used in this plant")
        names.add(p.name)
        for a in range(p.address, p.end):
            other = seen.setdefault((p.unit, p.table, a), p.name)
            if other != p.name:
                raise ValueError(f"{p.device}.{p.name} overlaps {other} at {p.table}:{a}")


validate(PLANT)


# --- profile files -------------------------------------------------------------------------------

class ProfileError(ValueError):
    """A profile file problem, already formatted as one line: `FILE: where: what`."""


_DURATION = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_SIGNAL_KEYS: dict[str, tuple[type, dict[str, str]]] = {
    # kind: (class, {toml key: constructor argument}); durations are converted to seconds
    "sine": (s.Sine, {"mean": "mean", "amplitude": "amplitude", "period": "period_s", "noise": "noise"}),
    "ramp": (s.Sawtooth, {"low": "low", "high": "high", "period": "period_s", "noise": "noise"}),
    "random_walk": (s.RandomWalk, {"mean": "mean", "step": "step", "period": "period_s", "lo": "lo", "hi": "hi"}),
    "counter": (s.Counter, {"per_minute": "per_minute", "modulus": "modulus"}),
    "steps": (s.Steps, {"levels": "levels", "hold": "hold_s", "noise": "noise"}),
    "square": (s.SquareWave, {"period": "period_s", "duty": "duty"}),
    "noise": (s.Noise, {"mean": "mean", "noise": "noise"}),
    "constant": (s.Constant, {"value": "value"}),
    "rare_event": (s.RareEvent, {"probability": "probability"}),
}
_ANOMALY_KEYS = {"every": "every_s", "duration": "duration_s", "magnitude": "magnitude", "kinds": "kinds",
                 "probability": "probability"}


def _seconds(v: object, where: str) -> float:
    if isinstance(v, str):
        for unit in ("ms", "s", "m", "h"):
            num = v.strip().removesuffix(unit)
            if num != v.strip() and num.replace(".", "", 1).isdigit():
                return float(num) * _DURATION[unit] / 1e9
    raise ValueError(f"{where}: {v!r} is not a duration such as \"500ms\", \"30s\", \"5m\"")


def _build(cls: type, keys: dict[str, str], spec: dict, where: str, **kwargs: object) -> object:
    for key, value in spec.items():
        if key == "kind":
            continue
        if key not in keys:
            raise ValueError(f"{where}.{key}: unknown key (allowed: {', '.join(keys)})")
        arg = keys[key]
        if arg.endswith("_s"):
            value = _seconds(value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[arg] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = str(exc).split("argument", 1)[-1].strip(": ")
        raise ValueError(f"{where}: missing {missing}") from None


def _signal(spec: object, where: str) -> s.Signal:
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"{where}: needs a table with kind = one of {', '.join(_SIGNAL_KEYS)}")
    kind = spec["kind"]
    if kind not in _SIGNAL_KEYS:
        raise ValueError(f"{where}.kind: {kind!r} is not one of {', '.join(_SIGNAL_KEYS)}")
    cls, keys = _SIGNAL_KEYS[kind]
    return _build(cls, keys, spec, where)  # type: ignore[return-value]


def load_profile(path: str | Path) -> tuple[Point, ...]:
    """Read a profile file (see simulators/README.md) into Points; ProfileError names file and key."""
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: TOML syntax error: {exc}") from None
    try:
        points = _points(doc)
        validate(points)
    except (ValueError, KeyError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return points


def _points(doc: dict) -> tuple[Point, ...]:
    unknown = set(doc) - {"devices"}
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown key (allowed: devices)")
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ValueError("devices: a profile needs at least one [[devices]] table")
    out = []
    for i, dev in enumerate(devices):
        where = f"devices[{i}]"
        extra = set(dev) - {"name", "unit", "byte_order", "points"}
        if extra:
            raise ValueError(f"{where}.{sorted(extra)[0]}: unknown key (allowed: name, unit, byte_order, points)")
        for key in ("name", "unit", "points"):
            if key not in dev:
                raise ValueError(f"{where}.{key}: required key is missing")
        for j, pt in enumerate(dev["points"]):
            pw = f"{where}.points[{j}]"
            allowed = {"name", "address", "type", "signal", "scale", "eng_unit", "description", "byte_order",
                       "anomalies", "texts", "length"}
            extra = set(pt) - allowed
            if extra:
                raise ValueError(f"{pw}.{sorted(extra)[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
            for key in ("name", "address", "type", "signal"):
                if key not in pt:
                    raise ValueError(f"{pw}.{key}: required key is missing")
            table, _, index = str(pt["address"]).partition(":")
            if table not in TABLES or not index.isdigit():
                raise ValueError(f"{pw}.address: {pt['address']!r} is not table:N (hr, ir, coil, di; 0-based)")
            signal = _signal(pt["signal"], f"{pw}.signal")
            if "anomalies" in pt:
                spec = pt["anomalies"]
                if not isinstance(spec, dict):
                    raise ValueError(f"{pw}.anomalies: needs a table (every, duration, magnitude, kinds)")
                bad = [k for k in spec.get("kinds", ()) if k not in s.ANOMALY_KINDS]
                if bad:
                    raise ValueError(f"{pw}.anomalies.kinds: {bad[0]!r} is not one of {', '.join(s.ANOMALY_KINDS)}")
                signal = _build(s.Anomalies, _ANOMALY_KEYS, spec, f"{pw}.anomalies", inner=signal)
            out.append(Point(str(dev["name"]), int(dev["unit"]), table, int(index), str(pt["type"]),
                             str(pt["name"]), signal, float(pt.get("scale", 1.0)), str(pt.get("eng_unit", "")),
                             str(pt.get("description", "")), str(pt.get("byte_order", dev.get("byte_order", "ABCD"))),
                             tuple(str(t) for t in pt.get("texts", ())), int(pt.get("length", 0))))
    return tuple(out)


def anomaly_labels(points: Iterable[Point], seed: int, k0: int, k1: int,
                   tick_ns: int = DEFAULT_TICK_NS) -> list[dict[str, object]]:
    """Ground truth: every anomaly starting in ticks [k0, k1), as label-file records, by start time."""
    out = []
    for p in points:
        if isinstance(p.signal, s.Anomalies):
            for a in p.signal.windows(k0, k1, seed, p.name, tick_ns):
                out.append({"device": p.device, "point": p.name, "kind": a.kind, "start_ns": a.start * tick_ns,
                            "end_ns": a.end * tick_ns, "magnitude": a.magnitude})
    return sorted(out, key=lambda r: (r["start_ns"], r["point"]))
