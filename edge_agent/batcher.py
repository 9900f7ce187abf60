"""Collects filtered device batches and closes them into frame contents.

A batch closes on `max_points` or when its oldest row is `max_interval` old, whichever comes first.
The age close is a timer armed by the first row, not a polling loop: an idle agent stays idle.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit

from edge_agent.frame.model import Block
from edge_agent.samples import Batch, concat_status, concat_text, take_text


class Batcher:
    def __init__(
        self,
        devices: Sequence[tuple[str, tuple[str, ...], tuple[str, ...]]],  # (device, tag names, tag types)
        max_points: int,
        max_interval_ns: int,
        on_close: Callable[[list[Block]], None],
    ):
        self._meta = {name: (tags, types) for name, tags, types in devices}
        # Batches concatenate only with batches of the same tag columns; key: (device, columns).
        self._pending: dict[tuple[str, tuple[int, ...] | None], list[Batch]] = {}
        self._blocks: dict[tuple[str, tuple[str, ...]], list[Block]] = {}  # add_blocks, by (device, tags)
        self._points = 0
        self.max_points = max_points
        self.max_interval_s = max_interval_ns / 1e9
        self.on_close = on_close
        self._timer: asyncio.TimerHandle | None = None
        self._layouts: dict[tuple[str, tuple[int, ...] | None], _Layout] = {}
        self._interned: dict[tuple[str, ...], tuple[str, ...]] = {}  # one object per distinct tuple
        self.points_in = 0
        self.batches_closed = 0

    @property
    def open_points(self) -> int:
        return self._points

    def add(self, batch: Batch) -> None:
        if batch.rows == 0:
            return
        if batch.device not in self._meta:
            raise KeyError(f"batch for unknown device {batch.device!r}")
        key = (batch.device, None if batch.columns is None else tuple(batch.columns.tolist()))
        self._pending.setdefault(key, []).append(batch)
        self._points += batch.points
        self.points_in += batch.points
        if self._points >= self.max_points:
            self.close()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_interval_s, self.close)

    def add_blocks(self, blocks: list[Block]) -> None:
        """Reduced output of adaptive reporting (edge_agent/filters/reporting.py), ready-made blocks.

        Blocks with the same device and tags are merged at close (one per reported tag or aggregate
        set per batch, not one per sample), so a deadband report costs its sample, not a block header.
        """
        for block in blocks:
            if not block.points:
                continue
            self._blocks.setdefault((block.device, block.tags), []).append(block)
            self._points += block.points
            self.points_in += block.points
        if self._points >= self.max_points:
            self.close()
        elif self._points and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_interval_s, self.close)

    def reconfigure(
        self, devices: Sequence[tuple[str, tuple[str, ...], tuple[str, ...]]], max_points: int, max_interval_ns: int
    ) -> None:
        """New device layout and bounds (config reload). The open batch is closed first, under the old layout."""
        self.close()
        self._meta = {name: (tags, types) for name, tags, types in devices}
        self._layouts.clear()
        self._interned.clear()
        self.max_points = max_points
        self.max_interval_s = max_interval_ns / 1e9

    def _layout(self, device: str, columns: tuple[int, ...] | None) -> _Layout:
        """The tag and type tuples of a column set, the same objects every close.

        The frame encoder finds a layout's packed headers by the identity of these tuples: a new
        tuple per block per frame cost it a hash and compare of every tag name (a 50x200 plant closes
        200 blocks a second). Equal tuples are one object across devices too (devices of one model
        share tag names), since the encoder keys its cache by the first object it saw of a layout.
        """
        key = (device, columns)
        got = self._layouts.get(key)
        if got is None:
            tags, types = self._meta[device]
            if columns is not None:
                tags, types = tuple(tags[j] for j in columns), tuple(types[j] for j in columns)
            if len(self._layouts) >= MAX_LAYOUTS:  # subscriptions deliver ever new subsets: start over
                self._layouts.clear()
                self._interned.clear()
            got = self._layouts[key] = _Layout(tags, types, self._interned)
        return got

    def close(self) -> None:
        """Hand whatever is open to on_close (nothing happens when empty)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._points:
            return
        blocks: list[Block] = []
        for (device, columns), parts in self._pending.items():
            layout = self._layout(device, columns)
            blocks += split_by_timestamps(device, layout.tags, layout.types, _concat(parts), layout)
        blocks += [_merge_blocks(parts) for parts in self._blocks.values()]
        self._pending.clear()
        self._blocks.clear()
        self._points = 0
        self.batches_closed += 1
        self.on_close(blocks)


MAX_LAYOUTS = 4096  # column sets (and, per set, column runs) kept before starting over


class _Layout:
    """A column set's tags and types, and their slices by column run, kept across closes."""

    __slots__ = ("interned", "runs", "tags", "types")

    def __init__(self, tags: tuple[str, ...], types: tuple[str, ...], interned: dict[tuple[str, ...], tuple[str, ...]]):
        self.interned = interned
        self.tags, self.types = interned.setdefault(tags, tags), interned.setdefault(types, types)
        self.runs: dict[tuple[int, int], tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def run(self, start: int, stop: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        got = self.runs.get((start, stop))
        if got is None:
            if len(self.runs) >= MAX_LAYOUTS:
                self.runs.clear()
            if len(self.interned) >= 4 * MAX_LAYOUTS:
                self.interned.clear()  # only sharing is lost: tuples already handed out stay valid
            tags, types = self.tags[start:stop], self.types[start:stop]
            got = self.runs[(start, stop)] = (self.interned.setdefault(tags, tags),
                                              self.interned.setdefault(types, types))
        return got


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(
        device=parts[0].device,
        ts=np.concatenate([p.ts for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        quality=np.concatenate([p.quality for p in parts]),
        flags=np.concatenate([p.flags for p in parts]),
        columns=parts[0].columns,
        scores=_concat_scores(parts),
        text=concat_text([(p.text, p.rows) for p in parts]),
        status=concat_status([(p.status, p.values.shape) for p in parts]),
    )


def _merge_blocks(parts: list[Block]) -> Block:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    kinds = sorted({kind for p in parts for kind in p.scores})

    def column(p: Block, kind: str) -> np.ndarray:
        got = p.scores.get(kind)
        return got if got is not None else np.full(p.values.shape, np.nan, dtype=np.float32)

    return Block(
        first.device, first.tags, first.types, np.concatenate([p.ts for p in parts]),
        np.concatenate([p.values for p in parts]), np.concatenate([p.quality for p in parts]),
        np.concatenate([p.flags for p in parts]),
        {kind: np.concatenate([column(p, kind) for p in parts]) for kind in kinds},
        concat_status([(p.status, p.values.shape) for p in parts]),
        concat_text([(p.text, p.values.shape[0]) for p in parts]) or {},
    )


def _concat_scores(parts: list[Batch]) -> dict[str, np.ndarray] | None:
    kinds = sorted({kind for p in parts for kind in (p.scores or {})})
    if not kinds:
        return None

    def column(p: Batch, kind: str) -> np.ndarray:
        got = (p.scores or {}).get(kind)
        return got if got is not None else np.full(p.values.shape, np.nan, dtype=np.float32)

    return {kind: np.concatenate([column(p, kind) for p in parts]) for kind in kinds}


def split_by_timestamps(
    device: str, tags: tuple[str, ...], types: tuple[str, ...], batch: Batch, layout: _Layout | None = None
) -> list[Block]:
    """Group tags whose timestamp columns are identical so each group shares one encoded time column.

    With OPC UA source timestamps every tag is its own group, so this runs once per tag: the time
    columns are transposed once (each group's is then a contiguous row of it), and the other columns
    of a one-tag group are views (a one-column slice of a C array is contiguous), not copies.
    """
    groups = timestamp_groups(batch.ts)
    if len(groups) == 1:
        cols = groups[0]
        return [_block(device, tags, types, batch, cols, np.ascontiguousarray(batch.ts[:, 0]), layout)]
    if (batch.values.shape[0] == 1 and layout is not None and not batch.scores and batch.status is None
            and not batch.text and batch.values.flags.c_contiguous and batch.quality.flags.c_contiguous
            and batch.flags.flags.c_contiguous and all(type(g) is slice for g in groups)):
        return _one_row_runs(device, batch, groups, layout)
    ts_t = np.ascontiguousarray(batch.ts.T)
    return [_block(device, tags, types, batch, cols, ts_t[cols.start if isinstance(cols, slice) else cols[0]], layout)
            for cols in groups]


def _one_row_runs(device: str, batch: Batch, groups: list[slice], layout: _Layout) -> list[Block]:
    """The blocks of one poll of a device read in several requests (the usual Modbus batch).

    Every column slice of a one-row C array is itself contiguous, so each block is views only; a
    50-device plant makes 200 of these a second, where each numpy call counts.
    """
    ts, values, quality, flags = batch.ts[0], batch.values, batch.quality, batch.flags
    out = []
    for g in groups:
        a, b = g.start, g.stop
        run_tags, run_types = layout.run(a, b)
        out.append(Block(device, run_tags, run_types, ts[a:a + 1], values[:, a:b], quality[:, a:b], flags[:, a:b],
                         {}, None, {}))
    return out


def _block(device: str, tags: tuple[str, ...], types: tuple[str, ...], batch: Batch,
           cols: slice | np.ndarray, ts: np.ndarray, layout: _Layout | None = None) -> Block:
    # A one-column slice of a C array is already contiguous, so this copies only multi-column runs.
    c = np.ascontiguousarray
    scores, status, text = batch.scores, batch.status, batch.text
    if isinstance(cols, slice):
        run_tags, run_types = (tags[cols], types[cols]) if layout is None else layout.run(cols.start, cols.stop)
        return Block(
            device, run_tags, run_types, ts, c(batch.values[:, cols]), c(batch.quality[:, cols]),
            c(batch.flags[:, cols]), {kind: c(a[:, cols]) for kind, a in scores.items()} if scores else {},
            None if status is None else c(status[:, cols]),
            (take_text(text, pos=cols, k=len(tags)) or {}) if text else {},
        )
    return Block(
        device=device,
        tags=tuple(tags[j] for j in cols),
        types=tuple(types[j] for j in cols),
        ts=ts,
        values=c(batch.values[:, cols]),
        quality=c(batch.quality[:, cols]),
        flags=c(batch.flags[:, cols]),
        scores={kind: c(a[:, cols]) for kind, a in (scores or {}).items()},
        status=None if status is None else c(status[:, cols]),
        text=take_text(text, pos=cols) or {},
    )


def timestamp_groups(ts: np.ndarray) -> list[slice | np.ndarray]:
    """Columns with identical timestamp columns, groups in order of their first column, columns ascending.

    A slice where a group is a contiguous run (the usual case: one request reads neighbouring tags),
    so that splitting costs views and tuple slices, not a gather per tag. Runs are found by comparing
    neighbouring columns and merged by the bytes of their timestamps: a poll has a few requests, and
    np.unique over (tags x rows) costs far more than that on every batch of every device.
    """
    n, k = ts.shape
    if k <= 1 or n == 0:
        return [slice(0, k)]
    if n == 1 and ts.dtype == np.int64 and ts.flags.c_contiguous:  # one poll (the usual batch)
        row = ts[0]
        ends, distinct = _row_runs(row)
        bounds = ends.tolist()
        if len(bounds) == 2:
            return [slice(0, k)]
        if distinct:
            return [slice(a, b) for a, b in itertools.pairwise(bounds)]
        keys: list[object] = row[bounds[:-1]].tolist()
    else:
        change = np.flatnonzero((ts[:, 1:] != ts[:, :-1]).any(axis=0)) + 1
        if not change.size:
            return [slice(0, k)]
        bounds = [0, *change.tolist(), k]
        keys = [ts[:, a].tobytes() for a in bounds[:-1]]
    if len(set(keys)) == len(keys):  # every run its own group (requests answered at different times)
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]
    runs: dict[object, list[tuple[int, int]]] = {}
    for key, (a, b) in zip(keys, itertools.pairwise(bounds), strict=True):
        runs.setdefault(key, []).append((a, b))
    return [
        slice(*parts[0]) if len(parts) == 1 else np.concatenate([np.arange(a, b) for a, b in parts])
        for parts in runs.values()
    ]


@njit(cache=True, nogil=True)
def _row_runs(row: np.ndarray) -> tuple[np.ndarray, bool]:  # pragma: no cover - compiled
    """Run bounds of a one-row timestamp vector (0, starts..., k) and whether no two runs share a
    timestamp. One compiled call: the same in numpy was five calls and two lists, per device per poll."""
    k = row.size
    bounds = np.empty(k + 1, np.int64)
    bounds[0] = 0
    m = 1
    for j in range(1, k):
        if row[j] != row[j - 1]:
            bounds[m] = j
            m += 1
    bounds[m] = k
    keys = np.sort(row[bounds[:m]])
    distinct = True
    for i in range(1, m):
        if keys[i] == keys[i - 1]:
            distinct = False
            break
    return bounds[:m + 1], distinct


def warm_up() -> None:
    """Compile (or load from NUMBA_CACHE_DIR) the grouping kernel before the first close needs it."""
    timestamp_groups(np.array([[1, 2]], dtype=np.int64))
