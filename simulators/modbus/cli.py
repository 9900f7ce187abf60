"""The options of `edge-agent-sim modbus` beyond host/port/seed/tick: profile, labels, RTU, faults.

Kept apart from simulators/cli.py so the shared entry point stays small; it calls `add_options`
when building the parser and `build` and `start` when running (labels: simulators/labels.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simulators.modbus.faults import Faults, parse_unit_latency
from simulators.modbus.server import ModbusSimServer
from simulators.plant import PLANT, Point, ProfileError, load_profile


def _rate(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: use a fraction 0..1, e.g. 0.05")
    return x


def _seconds(text: str) -> float:
    try:
        x = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.removesuffix("s"))
    except ValueError:
        x = -1.0
    if x < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 250ms or 2s")
    return x


def _unit_latency(text: str) -> tuple[int, float]:
    try:
        unit, s = parse_unit_latency(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not s >= 0:
        raise argparse.ArgumentTypeError(f"invalid unit latency {text!r}: use UNIT=DURATION, e.g. 3=2s")
    return unit, s


def add_options(mb: argparse.ArgumentParser) -> None:
    mb.add_argument("--profile", type=Path, help="profile file (TOML) of devices, units, registers, signals, "
                    "anomalies; default: the built-in plant")
    mb.add_argument("--labels", type=Path, help="append the ground truth of injected anomalies here (JSON lines)")
    mb.add_argument("--framing", choices=("tcp", "rtu"), default="tcp",
                    help="on the TCP port: tcp = Modbus TCP (MBAP), rtu = RTU frames over TCP (a serial converter)")
    mb.add_argument("--serial", metavar="PATH", help="serve RTU on this serial port instead of TCP "
                    "(e.g. one end of `socat pty,raw,echo=0,link=/tmp/a pty,raw,echo=0,link=/tmp/b`)")
    mb.add_argument("--baudrate", type=int, default=19200)
    mb.add_argument("--parity", choices=("N", "E", "O"), default="E")
    mb.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    faults = mb.add_argument_group("fault injection (rates are fractions of replies, seeded by --seed)")
    faults.add_argument("--latency", type=_seconds, default=0.0, help="delay before every reply, e.g. 200ms")
    faults.add_argument("--unit-latency", type=_unit_latency, action="append", default=[], metavar="UNIT=DUR",
                        help="extra delay for one unit's replies, e.g. 3=2s (repeatable)")
    faults.add_argument("--drop-every", type=_seconds, default=0.0, metavar="DUR",
                        help="reset every client connection this often")
    faults.add_argument("--exception-rate", type=_rate, default=0.0, help="answer exception 04 instead")
    faults.add_argument("--short-rate", type=_rate, default=0.0, help="reply with one register/byte too few")
    faults.add_argument("--long-rate", type=_rate, default=0.0, help="reply with one register/byte too many")
    faults.add_argument("--malformed-rate", type=_rate, default=0.0,
                        help="reply whose byte count disagrees with its data")
    faults.add_argument("--tid-mismatch-rate", type=_rate, default=0.0,
                        help="TCP: reply with a wrong transaction id; RTU: reply naming another unit")
    faults.add_argument("--crc-error-rate", type=_rate, default=0.0, help="RTU: reply with a corrupt CRC")
    faults.add_argument("--dead-unit", type=int, action="append", default=[], metavar="UNIT",
                        help="a unit of the profile that never answers (repeatable)")


def build(args: argparse.Namespace) -> ModbusSimServer:
    """The server the options describe; ValueError (one line) for a bad profile or fault mix."""
    points: tuple[Point, ...] = PLANT
    if args.profile is not None:
        try:
            points = load_profile(args.profile)
        except ProfileError as e:
            raise ValueError(str(e)) from None
    faults = Faults(
        latency_s=args.latency, unit_latency_s=dict(args.unit_latency), drop_every_s=args.drop_every,
        exception_rate=args.exception_rate, short_rate=args.short_rate, long_rate=args.long_rate,
        malformed_rate=args.malformed_rate, tid_rate=args.tid_mismatch_rate, crc_rate=args.crc_error_rate,
        dead_units=frozenset(args.dead_unit), seed=args.seed,
    )
    return ModbusSimServer(seed=args.seed, tick_ns=args.tick, points=points, faults=faults, framing=args.framing)


async def start(server: ModbusSimServer, args: argparse.Namespace) -> str:
    """Start serving; returns where, for the listening line. OSError when the port or device is unusable."""
    if args.serial:
        await server.start_serial(args.serial, args.baudrate, args.parity, args.stopbits)
        return f"serial {args.serial} (RTU, {args.baudrate} baud, parity {args.parity})"
    await server.start(args.host, args.port)
    return f"{args.host}:{server.port}" + (" (RTU over TCP)" if args.framing == "rtu" else "")


def units_text(server: ModbusSimServer) -> str:
    return ",".join(str(u) for u in dict.fromkeys(p.unit for p in server.points))


