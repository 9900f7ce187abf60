"""`edge-agent replay`: run the configured filters over a historian export, exactly as the live agent
would, and write each row's flags and scores beside the values.

This is how an engineer tunes thresholds before deploying: export a month of history, replay it,
look at what would have alarmed, adjust, repeat. The same engine and event logic as the agent run
here (edge_agent.filters), fed with one row per CSV line, so a threshold that is quiet in replay is
quiet on the plant. The file streams in chunks of rows: a year of 1 s data does not need to fit in
memory, and a progress bar shows on a terminal.

Input: a header line, then one line per instant. The first column is the time (unix seconds, ms, us
or ns as a number, or ISO 8601; no zone means UTC); every other column is named `device/tag`. An empty
or non-numeric cell is a missing sample (bad quality, like a comm gap live).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_agent.config.loader import Config
from edge_agent.filters import flags
from edge_agent.filters.engine import SCORING, DeviceFilters
from edge_agent.filters.events import EventDetector
from edge_agent.samples import QUALITY_BAD, QUALITY_GOOD, Batch

EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
CHUNK_ROWS = 4096


class ReplayError(Exception):
    """A problem with the input or output file: one line, naming the file, line and column."""

    def __init__(self, message: str, code: int = EX_DATAERR):
        super().__init__(message)
        self.code = code


@dataclass
class _Device:
    name: str
    engine: DeviceFilters
    events: EventDetector
    csv_cols: np.ndarray  # positions in the CSV value columns
    tag_idx: np.ndarray  # device tag indices, same order
    kinds: list[list[str]]  # per column: the scoring kinds its tag has


@dataclass
class ReplaySummary:
    rows: int
    points: int
    flagged: dict[str, int]
    events: int
    events_held_back: int


def parse_time(text: str) -> int:
    """Unix ns from a historian's time cell; the magnitude of a plain number says its unit."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a time (unix seconds/ms/us/ns, or ISO 8601)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a time")
    if text.lstrip("-").isdigit():
        n = int(text)
        scale = 1 if abs(n) >= 10**17 else 1_000 if abs(n) >= 10**14 else 1_000_000 if abs(n) >= 10**11 else 10**9
        return n * scale
    return round(number * 1e9)


def _values(rows: list[list[str]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Float values and quality (bad where a cell is empty or not a number) for a chunk of rows."""
    n = len(rows)
    values = np.full((n, width), np.nan)
    quality = np.full((n, width), QUALITY_BAD, dtype=np.uint8)
    for i, row in enumerate(rows):
        for c in range(width):
            cell = row[c + 1] if c + 1 < len(row) else ""
            try:
                values[i, c] = float(cell)
                quality[i, c] = QUALITY_GOOD
            except ValueError:
                pass
    return values, quality


def run_replay(cfg: Config, csv_in: Path, csv_out: Path, *, events_out: Path | None = None,
               progress: bool | None = None, save_baselines: Path | None = None) -> ReplaySummary:
    """Replay csv_in through the configured filters into csv_out; raises ReplayError for bad input."""
    try:
        fh = open(csv_in, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ReplayError(f"{csv_in}: cannot read: {exc.strerror or exc}", EX_NOINPUT) from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ReplayError(f"{csv_in}: empty file (expected a header: time, device/tag, ...)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ReplayError(f"{csv_in}: line 1: {exc}") from None
        devices = _plan(cfg, csv_in, header)
        try:
            out = open(csv_out, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
            ev_fh = open(events_out, "w", encoding="utf-8") if events_out else None  # noqa: SIM115
        except OSError as exc:
            raise ReplayError(f"{exc.filename}: cannot write: {exc.strerror or exc}", EX_CANTCREAT) from None
        with out, (ev_fh or _Null()):
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(_out_header(header, devices))
            size = max(csv_in.stat().st_size, 1)
            show = sys.stderr.isatty() if progress is None else progress
            summary = ReplaySummary(0, 0, {}, 0, 0)
            with _progress(show, size, csv_in.name) as advance:
                line = 1
                chunk: list[list[str]] = []
                try:
                    for row in reader:
                        line += 1
                        if not row:
                            continue
                        chunk.append(row)
                        if len(chunk) == CHUNK_ROWS:
                            _chunk(csv_in, line - len(chunk) + 1, chunk, header, devices, writer, ev_fh, summary)
                            chunk = []
                            advance(fh.buffer.tell())
                except (csv.Error, UnicodeDecodeError) as exc:
                    raise ReplayError(f"{csv_in}: line {line + 1}: {exc}") from None
                if chunk:
                    _chunk(csv_in, line - len(chunk) + 1, chunk, header, devices, writer, ev_fh, summary)
                advance(size)
    for d in devices:
        summary.events += d.events.raised
        summary.events_held_back += d.events.held_back
        for kind, count in d.engine.fired.items():
            if count:
                summary.flagged[kind] = summary.flagged.get(kind, 0) + count
    if save_baselines is not None:
        save_baselines.mkdir(parents=True, exist_ok=True)
        for d in devices:
            for g in d.engine.groups:
                if g.model is not None:
                    np.savez(save_baselines / f"{d.name}.{g.name}.npz",
                             tags=np.array([d.engine.tags[j] for j in g.cols]), **g.model)
    return summary


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _progress:
    """rich's progress bar on a terminal, nothing otherwise (a log file must not fill with bars)."""

    def __init__(self, show: bool, total: int, label: str):
        self.show, self.total, self.label = show, total, label

    def __enter__(self) -> Any:
        if not self.show:
            return lambda done: None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        # On stderr, the terminal that was checked: rich's default is stdout, which may be a file.
        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             "[progress.percentage]{task.percentage:>3.0f}%", TransferSpeedColumn(),
                             TimeRemainingColumn(), transient=False, console=Console(stderr=True))
        self._bar.__enter__()
        task = self._bar.add_task(f"replay {self.label}", total=self.total)
        return lambda done: self._bar.update(task, completed=min(done, self.total))

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self._bar.__exit__(None, None, None)


def _plan(cfg: Config, path: Path, header: list[str]) -> list[_Device]:
    by_device: dict[str, list[tuple[int, int]]] = {}
    problems = []
    seen: dict[str, int] = {}
    for c, name in enumerate(header[1:]):
        col = c + 2  # 1-based, as a spreadsheet shows it
        device, sep, tag = name.strip().partition("/")
        if name in seen:
            problems.append(f"{path}: column {col} {name!r}: duplicate of column {seen[name]}")
            continue
        seen[name] = col
        if not sep:
            problems.append(f"{path}: column {col} {name!r}: expected a device/tag name")
            continue
        dev = next((d for d in cfg.devices if d.name == device), None)
        if dev is None:
            known = ", ".join(repr(d.name) for d in cfg.devices)
            problems.append(f"{path}: column {col} {name!r}: no device {device!r} in {cfg.path} (devices: {known})")
            continue
        names = [t.name for t in dev.tags]
        if tag not in names:
            problems.append(f"{path}: column {col} {name!r}: device {device!r} has no tag {tag!r}")
            continue
        by_device.setdefault(device, []).append((c, names.index(tag)))
    if problems:
        raise ReplayError("\n".join(problems))
    if not by_device:
        raise ReplayError(f"{path}: no device/tag columns after the time column")
    out = []
    for dev in cfg.devices:
        pairs = by_device.get(dev.name)
        if not pairs:
            continue
        engine = DeviceFilters(dev, cfg.filters)
        csv_cols = np.array([c for c, _ in pairs], dtype=np.intp)
        tag_idx = np.array([j for _, j in pairs], dtype=np.intp)
        kinds = [[k for k in sorted(SCORING) if engine.assigned[k][j] is not None] for j in tag_idx]
        out.append(_Device(dev.name, engine, EventDetector(engine), csv_cols, tag_idx, kinds))
    return out


def _out_header(header: list[str], devices: list[_Device]) -> list[str]:
    cols = [header[0]]
    names = header[1:]
    per_col: dict[int, list[str]] = {}
    for d in devices:
        for p, c in enumerate(d.csv_cols):
            per_col[int(c)] = [f"{names[c]}:flags", f"{names[c]}:alarms",
                               *(f"{names[c]}:{kind}" for kind in d.kinds[p])]
    for c, name in enumerate(names):
        cols += [name, *per_col.get(c, [])]
    return cols


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _chunk(path: Path, first_line: int, rows: list[list[str]], header: list[str], devices: list[_Device],
           writer: Any, ev_fh: TextIO | None, summary: ReplaySummary) -> None:
    n = len(rows)
    ts = np.empty(n, dtype=np.int64)
    for i, row in enumerate(rows):
        try:
            ts[i] = parse_time(row[0])
        except ValueError as exc:
            raise ReplayError(f"{path}: line {first_line + i}: column 1: {exc}") from None
    width = len(header) - 1
    values, quality = _values(rows, width)
    per_col: dict[int, list[str]] = {}
    cells = [[] for _ in range(n)]  # type: list[list[str]]
    for d in devices:
        k = len(d.csv_cols)
        full = len(d.tag_idx) == len(d.engine.tags) and (d.tag_idx == np.arange(k)).all()
        batch = Batch(d.name, np.repeat(ts[:, None], k, axis=1), values[:, d.csv_cols].copy(),
                      quality[:, d.csv_cols].copy(), np.zeros((n, k), np.uint32), None if full else d.tag_idx)
        scores = d.engine.process(batch)
        for event in d.events.detect(batch, scores):
            if ev_fh is not None:
                ev_fh.write(json.dumps(event, allow_nan=False) + "\n")
        for p, c in enumerate(d.csv_cols):
            per_col[int(c)] = [p, batch, scores]  # type: ignore[list-item]
    for i in range(n):
        out = [rows[i][0]]
        for c in range(width):
            cell = rows[i][c + 1] if c + 1 < len(rows[i]) else ""
            out.append(cell)
            entry = per_col.get(c)
            if entry is None:
                continue
            p, batch, scores = entry
            word = int(batch.flags[i, p])
            kinds = next(d.kinds[p] for d in devices if d.name == batch.device)
            out += [str(word), flags.describe(word), *(_fmt(scores[k][i, p]) if k in scores else "" for k in kinds)]
        cells[i] = out
    writer.writerows(cells)
    summary.rows += n
    summary.points += n * sum(len(d.csv_cols) for d in devices)
