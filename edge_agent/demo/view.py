"""What the demo shows: a live rich table on a terminal, one plain line per second otherwise (CI, pipes)."""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table


@dataclass
class Snapshot:
    elapsed: float
    duration: float
    phase: str
    devices: list[tuple[str, str, bool, int, int]]  # name, protocol, connected, polls, errors
    points_in: int
    points_received: int
    frames_received: int
    bytes_received: int
    spool_frames: int
    spool_points: int
    uplink_up: bool
    anomalies: list[tuple[int, str, str, str, float]]  # ts, device, tag, filters, value
    rates: tuple[float, float, float]  # points/s, frames/s, bytes/s over the last second
    flagged: int = 0


class View:
    def __init__(self, plain: bool | None = None):
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.console = Console()
        self._live: Live | None = None
        self._last_plain = 0.0

    def __enter__(self) -> View:
        if not self.plain:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, s: Snapshot) -> None:
        if self._live is not None:
            self._live.update(self._render(s))
        elif time.monotonic() - self._last_plain >= 1.0:
            self._last_plain = time.monotonic()
            pps, fps, bps = s.rates
            bpp = bps / pps if pps else 0.0
            up = sum(1 for d in s.devices if d[2])
            print(f"[{s.elapsed:5.1f}s] {s.phase:<28} devices {up}/{len(s.devices)} up  {pps:7.0f} points/s  "
                  f"{fps:5.1f} frames/s  {bps / 1000:7.1f} kB/s  {bpp:5.2f} B/point  spool {s.spool_frames:4d} frames  "
                  f"uplink {'up' if s.uplink_up else 'DOWN'}  flagged {s.flagged}", flush=True)

    def _render(self, s: Snapshot) -> Group:
        pps, fps, bps = s.rates
        head = Table.grid(padding=(0, 2))
        head.add_row(f"[bold]edge-agent demo[/]  {s.elapsed:4.0f}/{s.duration:.0f} s", f"[yellow]{s.phase}[/]")
        devices = Table(title="devices", expand=True)
        for col in ("device", "protocol", "state", "polls", "errors"):
            devices.add_column(col)
        for name, proto, up, polls, errors in s.devices:
            devices.add_row(name, proto, "[green]up[/]" if up else "[red]DOWN[/]", str(polls), str(errors))
        flow = Table(title="data flow", expand=True)
        for col in ("points/s", "frames/s", "bytes/s", "bytes/point", "spool", "uplink"):
            flow.add_column(col)
        flow.add_row(f"{pps:,.0f}", f"{fps:.1f}", f"{bps:,.0f}", f"{bps / pps:.2f}" if pps else "-",
                     f"{s.spool_frames} frames / {s.spool_points} points",
                     "[green]connected[/]" if s.uplink_up else "[red]down[/]")
        anomalies = Table(title="latest anomalies", expand=True)
        for col in ("time", "device", "tag", "filter", "value"):
            anomalies.add_column(col)
        for ts, dev, tag, filters, value in s.anomalies[-6:]:
            when = datetime.datetime.fromtimestamp(ts / 1e9).strftime("%H:%M:%S.%f")[:-3]
            anomalies.add_row(when, dev, tag, filters, f"{value:.3f}")
        totals = (f"polled {s.points_in:,} points · received {s.points_received:,} points in "
                  f"{s.frames_received:,} frames ({s.bytes_received:,} bytes) · {s.flagged:,} samples flagged")
        return Group(head, devices, flow, anomalies, Panel(totals))

    def summary(self, lines: list[str]) -> None:
        if self.plain:
            for line in lines:
                print(line, flush=True)
        else:
            self.console.print(Panel("\n".join(lines), title="summary"))
