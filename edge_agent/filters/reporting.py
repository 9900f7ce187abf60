"""Adaptive reporting: a group of tags is reduced while the process is normal and sent at full rate
around an anomaly, from `pre_trigger` before it until `post_trigger` after the last flagged sample.

This is how bandwidth drops without losing the data that matters: the samples an engineer wants
after an alarm are exactly the ones a plain deadband or an average would have thrown away. Rows wait
`pre_trigger` in a small buffer before they are reduced, so that when an anomaly comes, the rows
leading up to it are still there to be sent whole. Reduced output:

* mode "deadband": each tag's samples that its deadband filter marked as reports (DEADBAND bit);
* mode "aggregate": per `interval` (aligned to the clock) and tag, `TAG@min`, `TAG@max`, `TAG@mean`,
  `TAG@last` and `TAG@count` of the usable samples, one row stamped with the interval's start ('@'
  cannot appear in a configured name, so these never collide with a real tag).

An anomaly on any tag of the group sends the whole group at full rate: the neighbours of a failing
tag are the context needed to understand it.

String tags (serial numbers, recipe names) are never reduced to numbers: in both modes, and around
an anomaly too, a string tag's sample is sent, as is and at once, when its text or quality differs
from the last one sent for it; an unchanged string is dropped (repeating it at full rate would add
bytes, not information). An average of recipe names means nothing, and a text change is exactly the
event an engineer wants to see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_agent.config.models import DeviceBase, ReportingSpec
from edge_agent.filters import flags
from edge_agent.frame.model import Block
from edge_agent.samples import Batch, take_text

AGGREGATES = ("min", "max", "mean", "last", "count")


def take(batch: Batch, rows: np.ndarray | slice | None = None, pos: np.ndarray | None = None) -> Batch:
    """Rows and/or columns of a batch (columns as positions in the batch), scores and device columns kept."""
    r = slice(None) if rows is None else rows
    c = slice(None) if pos is None else pos
    columns = batch.columns
    if pos is not None:
        columns = pos if columns is None else columns[pos]
    return Batch(
        device=batch.device, ts=batch.ts[r][:, c], values=batch.values[r][:, c], quality=batch.quality[r][:, c],
        flags=batch.flags[r][:, c], columns=None if columns is None else np.asarray(columns, dtype=np.intp),
        scores=None if not batch.scores else {kind: a[r][:, c] for kind, a in batch.scores.items()},
        text=take_text(batch.text, rows=rows, pos=pos),
        status=None if batch.status is None else batch.status[r][:, c],
    )


@dataclass
class _Group:
    name: str
    spec: ReportingSpec
    cols: np.ndarray  # device tag indices
    pending: list[Batch] = field(default_factory=list)  # rows not yet sent whole nor reduced
    full_until: int = np.iinfo(np.int64).min  # rows up to this time go at full rate
    # aggregate mode: the open interval, per device tag
    interval_id: int | None = None
    agg: dict[str, np.ndarray] = field(default_factory=dict)
    # string tags: (text, quality) last sent, per device tag index
    last_text: dict[int, tuple[str | None, int]] = field(default_factory=dict)


class Reporter:
    """Routes one device's filtered batches: full-rate batches for the batcher, reduced blocks beside them."""

    def __init__(self, device: DeviceBase, policies: dict[str, ReportingSpec], types: tuple[str, ...]):
        self.device = device.name
        self.tags = tuple(t.name for t in device.tags)
        self.types = types
        k = len(self.tags)
        self.is_text = np.asarray([t == "string" for t in types], dtype=bool)
        by_policy: dict[str, list[int]] = {}
        for j, tag in enumerate(device.tags):
            if tag.reporting is not None:
                by_policy.setdefault(tag.reporting, []).append(j)
        self.groups = [_Group(name, policies[name], np.asarray(cols, dtype=np.intp))
                       for name, cols in by_policy.items()]
        self.group_of = np.full(k, -1, dtype=np.intp)
        for g_index, g in enumerate(self.groups):
            self.group_of[g.cols] = g_index
        self.points_in = 0
        self.points_out = 0
        for g in self.groups:
            g.agg = _empty_agg(k)

    def route(self, batch: Batch) -> tuple[list[Batch], list[Block]]:
        """Full-rate batches (for Batcher.add) and reduced blocks (for Batcher.add_blocks)."""
        columns = np.arange(batch.values.shape[1]) if batch.columns is None else batch.columns
        owner = self.group_of[columns]
        out: list[Batch] = []
        blocks: list[Block] = []
        plain = np.flatnonzero(owner < 0)
        if len(plain) == len(columns):
            return [batch], []
        if len(plain):
            out.append(take(batch, pos=plain))
        text = self.is_text[columns]
        for g_index, g in enumerate(self.groups):
            pos = np.flatnonzero((owner == g_index) & ~text)
            if len(pos):
                self._group(g, take(batch, pos=pos), out, blocks)
            pos = np.flatnonzero((owner == g_index) & text)
            if len(pos):  # strings: on change, at once and in arrival order, never held or aggregated
                sub = take(batch, pos=pos)
                self._text_on_change(g, sub, sub.columns, np.arange(len(pos)), blocks)
        self.points_in += batch.points
        self.points_out += sum(b.points for b in out) + sum(b.points for b in blocks)
        return out, blocks

    def flush(self) -> list[Block]:
        """At shutdown: reduce whatever still waits and close open aggregates, so nothing is left behind."""
        blocks: list[Block] = []
        for g in self.groups:
            for b in g.pending:
                self._reduce(g, b, blocks)
            g.pending = []
            if g.spec.mode == "aggregate":
                self._emit_aggregate(g, blocks)
        return blocks

    def _group(self, g: _Group, sub: Batch, out: list[Batch], blocks: list[Block]) -> None:
        spec = g.spec
        t = sub.ts.max(axis=1)
        anomalous = ((sub.flags & np.uint32(flags.ANOMALY)) != 0).any(axis=1)
        triggers = np.sort(t[anomalous])
        full = t <= g.full_until
        if len(triggers):
            first = np.searchsorted(triggers, t - spec.post_trigger, side="left")
            near = first < len(triggers)
            full |= near & (triggers[np.minimum(first, len(triggers) - 1)] <= t + spec.pre_trigger)
            # Rows still waiting from earlier batches that fall in the first trigger's pre-window.
            keep: list[Batch] = []
            for b in g.pending:
                bt = b.ts.max(axis=1)
                send = bt >= triggers[0] - spec.pre_trigger
                if send.any():
                    out.append(take(b, rows=send))
                if not send.all():
                    keep.append(take(b, rows=~send))
            g.pending = keep
            g.full_until = max(g.full_until, int(triggers[-1]) + spec.post_trigger)
        if full.any():
            out.append(take(sub, rows=full) if not full.all() else sub)
        if not full.all():
            g.pending.append(take(sub, rows=~full) if full.any() else sub)
        # Rows older than the pre-trigger window can no longer be wanted whole: reduce them.
        horizon = int(t.max()) - spec.pre_trigger
        keep = []
        for b in g.pending:
            bt = b.ts.max(axis=1)
            old = bt < horizon if spec.pre_trigger else np.ones(len(bt), dtype=bool)
            if old.any():
                self._reduce(g, take(b, rows=old) if not old.all() else b, blocks)
            if not old.all():
                keep.append(take(b, rows=~old))
        g.pending = keep

    def _reduce(self, g: _Group, b: Batch, blocks: list[Block]) -> None:
        cols = np.arange(b.values.shape[1]) if b.columns is None else b.columns
        if g.spec.mode == "deadband":
            report = (b.flags & np.uint32(flags.DEADBAND)) != 0
            for p in np.flatnonzero(report.any(axis=0)):
                rows = np.flatnonzero(report[:, p])
                j = int(cols[p])
                blocks.append(Block(
                    self.device, (self.tags[j],), (self.types[j],), np.ascontiguousarray(b.ts[rows, p]),
                    b.values[rows, p:p + 1].copy(), b.quality[rows, p:p + 1].copy(), b.flags[rows, p:p + 1].copy(),
                    {kind: a[rows, p:p + 1].copy() for kind, a in (b.scores or {}).items()},
                    None if b.status is None else b.status[rows, p:p + 1].copy(),
                ))
            return
        interval = g.spec.interval or 1
        ids = b.ts.max(axis=1) // interval
        for iid in np.unique(ids):  # rows arrive in time order; usually one interval per batch
            if g.interval_id is not None and iid != g.interval_id:
                self._emit_aggregate(g, blocks)
            g.interval_id = int(iid)
            rows = ids == iid
            v = b.values[rows]
            ok = ((b.quality[rows] & 0x80) == 0) & np.isfinite(v)
            a = g.agg
            a["min"][cols] = np.fmin(a["min"][cols], np.where(ok, v, np.inf).min(axis=0))
            a["max"][cols] = np.fmax(a["max"][cols], np.where(ok, v, -np.inf).max(axis=0))
            a["sum"][cols] += np.where(ok, v, 0.0).sum(axis=0)
            a["count"][cols] += ok.sum(axis=0)
            last_ok = ok.any(axis=0)
            last_row = ok.shape[0] - 1 - np.argmax(ok[::-1], axis=0)
            a["last"][cols] = np.where(last_ok, v[last_row, np.arange(v.shape[1])], a["last"][cols])
            a["flags"][cols] |= np.bitwise_or.reduce(b.flags[rows], axis=0)
            a["seen"][cols] = True

    def _text_on_change(self, g: _Group, b: Batch, cols: np.ndarray, text_pos: np.ndarray,
                        blocks: list[Block]) -> None:
        for p in text_pos.tolist():
            j = int(cols[p])
            txt = (b.text or {}).get(p)
            quality = b.quality[:, p].tolist()
            rows = []
            last = g.last_text.get(j)
            for i, q in enumerate(quality):
                now = (None if txt is None else txt[i], q)
                if now != last:
                    rows.append(i)
                    last = now
            if last is not None:
                g.last_text[j] = last
            if not rows:
                continue
            r = np.asarray(rows, dtype=np.intp)
            blocks.append(Block(
                self.device, (self.tags[j],), (self.types[j],), np.ascontiguousarray(b.ts[r, p]),
                b.values[r, p:p + 1].copy(), b.quality[r, p:p + 1].copy(), b.flags[r, p:p + 1].copy(),
                {}, None if b.status is None else b.status[r, p:p + 1].copy(),
                {0: txt[r]} if txt is not None else {},
            ))

    def _emit_aggregate(self, g: _Group, blocks: list[Block]) -> None:
        a = g.agg
        seen = np.flatnonzero(a["seen"])
        if g.interval_id is None or not len(seen):
            return
        tags, types, vals, qual, fl = [], [], [], [], []
        for j in seen:
            count = a["count"][j]
            mean = a["sum"][j] / count if count else np.nan
            stats = {"min": a["min"][j], "max": a["max"][j], "mean": mean, "last": a["last"][j], "count": count}
            for name in AGGREGATES:
                tags.append(f"{self.tags[j]}@{name}")
                types.append("uint32" if name == "count" else "float64")
                value = float(stats[name])
                vals.append(value if count or name == "count" else np.nan)
                qual.append(0 if count or name == "count" else 0x80)
                fl.append(int(a["flags"][j]))
        blocks.append(Block(
            self.device, tuple(tags), tuple(types), np.array([g.interval_id * g.spec.interval], dtype=np.int64),
            np.array([vals], dtype=np.float64), np.array([qual], dtype=np.uint8), np.array([fl], dtype=np.uint32),
        ))
        g.agg = _empty_agg(len(self.tags))
        g.interval_id = None


def _empty_agg(k: int) -> dict[str, np.ndarray]:
    return {
        "min": np.full(k, np.nan), "max": np.full(k, np.nan), "sum": np.zeros(k), "count": np.zeros(k, np.int64),
        "last": np.full(k, np.nan), "flags": np.zeros(k, np.uint32), "seen": np.zeros(k, dtype=bool),
    }
