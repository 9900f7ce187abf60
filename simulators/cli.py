"""`edge-agent-sim`: run the plant simulator, or print its map to write an agent config from.

Made for scripts and CI: `--port 0 --ready-file F` gives a race-free ephemeral port, readiness is a
file appearing (not a log line to scrape), SIGTERM ends with a one-line JSON summary on stdout
and exit 0, and failures are one line on stderr with exit 1 (runtime) or 2 (usage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import TextIO

from simulators.labels import label_writer
from simulators.modbus import cli as modbus_cli
from simulators.opcua import cli as opcua_cli
from simulators.plant import DEFAULT_TICK_NS, PLANT

_TICK = re.compile(r"^(\d+)(ms|s|m)$")
_TICK_UNITS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}


def parse_tick(text: str) -> int:
    """"100ms" / "1s" / "2m" -> ns. Kept to whole units so the tick is an exact integer of ns."""
    m = _TICK.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid tick {text!r}: use a positive whole Nms, Ns or Nm, e.g. 100ms")
    return int(m.group(1)) * _TICK_UNITS[m.group(2)]


def format_tick(tick_ns: int) -> str:
    """Inverse of parse_tick, for the listening line."""
    for unit in ("m", "s", "ms"):
        if tick_ns % _TICK_UNITS[unit] == 0:
            return f"{tick_ns // _TICK_UNITS[unit]}{unit}"
    return f"{tick_ns}ns"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use 0..65535 (0 = any free port)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent-sim", description="Software PLC serving a deterministic, seeded plant for tests and demos.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{modbus,opcua,list}")
    mb = sub.add_parser("modbus", help="serve the plant over Modbus TCP (units 1,2,3 on one port)")
    mb.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    mb.add_argument("--port", type=_port, default=5020, help="TCP port, 0 = any free port (default 5020)")
    mb.add_argument("--seed", type=int, default=1, help="plant seed: same seed, same values (default 1)")
    mb.add_argument("--tick", type=parse_tick, default=DEFAULT_TICK_NS,
                    help="plant update period: Nms, Ns or Nm (default 100ms)")
    mb.add_argument("--ready-file", type=Path, help="write the bound port here once listening")
    modbus_cli.add_options(mb)
    opcua_cli.add_parser(sub, _port, parse_tick)
    sub.add_parser("list", help="print the plant map (device, unit, address, type, name)")
    return parser


def print_map(out: TextIO | None = None) -> None:
    """Plant map as an aligned table; the address column reads like the agent config's addresses."""
    rows = [("DEVICE", "UNIT", "ADDRESS", "TYPE", "NAME", "ENG UNIT", "NOTES")]
    for p in PLANT:
        addr = f"{p.table}:{p.address}" if p.words == 1 else f"{p.table}:{p.address}-{p.end - 1}"
        rows.append((p.device, str(p.unit), addr, p.type, p.name, p.eng_unit or "-", p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
        print(line.rstrip(), file=out or sys.stdout)


def _write_ready_file(path: Path, port: int | str) -> None:
    # Write then rename, so a poller never reads a half-written (empty) file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


async def _run_modbus(args: argparse.Namespace) -> int:
    try:
        server = modbus_cli.build(args)
    except ValueError as e:
        print(f"edge-agent-sim: {e}", file=sys.stderr)
        return 2
    try:
        where = await modbus_cli.start(server, args)
    except OSError as e:
        target = args.serial or f"{args.host}:{args.port}"
        print(f"cannot {'open' if args.serial else 'listen on'} {target}: {e.strerror or e}", file=sys.stderr)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    labels = asyncio.create_task(label_writer(server, args.labels)) if args.labels else None
    try:
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, args.serial or server.port)
        print(f"modbus simulator listening on {where} "
              f"(units {modbus_cli.units_text(server)}, seed {args.seed}, tick {format_tick(args.tick)})",
              file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        if labels is not None:
            labels.cancel()
            await asyncio.gather(labels, return_exceptions=True)
        await server.stop(grace_s=0.3)
        if args.ready_file is not None:
            with contextlib.suppress(OSError):
                args.ready_file.unlink()
    print(json.dumps(server.stats_summary()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `edge-agent-sim`; returns the exit code (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print_map()
        return 0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "opcua":
            return asyncio.run(opcua_cli.run(args))
        return asyncio.run(_run_modbus(args))
    except OSError as e:  # e.g. the ready file's directory does not exist
        print(f"edge-agent-sim: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
