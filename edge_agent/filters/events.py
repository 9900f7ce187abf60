"""Turns flag bits into anomaly events for the events topic, with per-tag rate limiting.

An event marks the *start* of an alarm (a tag's filter going from quiet to firing), not every flagged
sample: a stuck alarm raises one event, not one per poll. A flapping alarm is held to one event per
`event_interval` per tag and filter; the next event that gets through says how many were held back,
so the consumer knows it is looking at a summary. Samples a filter could not judge (bad quality, NaN)
keep the alarm state as it was: a comm dropout in the middle of an excursion is not a new alarm.
Timing uses the samples' own timestamps, so replaying history gives the same events as live.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge_agent.filters import flags
from edge_agent.filters.engine import BIT_KIND, DeviceFilters
from edge_agent.samples import Batch

_STAT = {flags.MULTIVARIATE_T2: ("t2", "t2_limit"), flags.MULTIVARIATE_SPE: ("spe", "spe_limit")}


def _num(x: Any) -> float | None:
    """JSON has no NaN or Inf: a missing number is null."""
    x = float(x)
    return x if math.isfinite(x) else None


class EventDetector:
    def __init__(self, filters: DeviceFilters):
        self.filters = filters
        k = len(filters.tags)
        self.bits: list[int] = []
        self.enabled: dict[int, np.ndarray] = {}
        self.interval: dict[int, np.ndarray] = {}
        group_heads = {int(g.cols[0]) for g in filters.groups}
        for bit, kind in BIT_KIND.items():
            assigned = filters.assigned[kind]
            on = np.array([a is not None and a[1].events for a in assigned], dtype=bool)
            if kind == "multivariate":  # one event per row of the vector, not one per tag
                on &= np.isin(np.arange(k), list(group_heads))
            if on.any():
                self.bits.append(bit)
                self.enabled[bit] = on
                self.interval[bit] = np.array([a[1].event_interval if a is not None else 0 for a in assigned],
                                              dtype=np.int64)
        self.active = {bit: np.zeros(k, dtype=bool) for bit in self.bits}
        self.last_event = {bit: np.full(k, np.iinfo(np.int64).min, dtype=np.int64) for bit in self.bits}
        self.suppressed = {bit: np.zeros(k, dtype=np.int64) for bit in self.bits}
        self.raised = 0
        self.held_back = 0

    def detect(self, batch: Batch, scores: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Events for the alarms that started in this batch (call after DeviceFilters.process)."""
        if not self.bits or batch.rows == 0:
            return []
        cols = batch.columns
        n = batch.rows
        judged = ((batch.quality & 0x80) == 0) & np.isfinite(batch.values)
        # Row of the last judged sample at or before each row (-1: none in this batch).
        last_row = np.maximum.accumulate(np.where(judged, np.arange(n)[:, None], -1), axis=0)
        out: list[dict[str, Any]] = []
        for bit in self.bits:
            enabled = self.enabled[bit] if cols is None else self.enabled[bit][cols]
            if not enabled.any():
                continue
            firing = (batch.flags & np.uint32(bit)) != 0
            prev_active = self.active[bit] if cols is None else self.active[bit][cols]
            # State after each row: the judgement of the last judged row, else what it was before.
            state = np.where(last_row >= 0, np.take_along_axis(firing, np.maximum(last_row, 0), axis=0),
                             prev_active[None, :])
            before = np.vstack([prev_active[None, :], state[:-1]])
            starts = firing & judged & ~before & enabled[None, :]
            if cols is None:
                self.active[bit] = state[-1].copy()
            else:
                self.active[bit][cols] = state[-1]
            for i, jb in zip(*np.nonzero(starts), strict=True):
                j = int(jb if cols is None else cols[jb])
                t = int(batch.ts[i, jb])
                if t - int(self.last_event[bit][j]) < int(self.interval[bit][j]):
                    self.suppressed[bit][j] += 1
                    self.held_back += 1
                    continue
                out.append(self._event(batch, scores, bit, int(i), int(jb), j, t))
                self.last_event[bit][j] = t
                self.suppressed[bit][j] = 0
                self.raised += 1
        out.sort(key=lambda e: e["ts"])
        return out

    def _event(self, batch: Batch, scores: dict[str, np.ndarray], bit: int, i: int, jb: int, j: int,
               t: int) -> dict[str, Any]:
        f = self.filters
        kind = BIT_KIND[bit]
        name, spec = f.assigned[kind][j]  # type: ignore[misc]
        value = float(batch.values[i, jb])
        tag = f.tags[j]
        score: float | None = None
        threshold: float | None = None
        if kind == "limits":
            p = f.slots[0].params  # the limits slot is always the first
            lo_key, hi_key = ("lolo", "hihi") if bit == flags.LIMITS_SEVERE else ("lo", "hi")
            low = value < p[lo_key][j]
            name = (f.lo_name[j] if low else f.hi_name[j]) or name
            threshold = float(p[lo_key if low else hi_key][j])
        elif kind == "multivariate":
            g = next(g for g in f.groups if int(g.cols[0]) == j)
            stat, limit = _STAT[bit]
            score = _num((g.last_t2 if stat == "t2" else g.last_spe)[i])
            threshold = _num(g.model[limit]) if g.model else None  # type: ignore[index]
            share = scores.get("multivariate")
            if share is not None:  # name the tag that broke the pattern most
                cols = batch.columns
                where = {} if cols is None else {int(c): p for p, c in enumerate(cols)}
                pos = g.cols if cols is None else np.asarray([where[int(c)] for c in g.cols])
                top = int(g.cols[int(np.nanargmax(share[i, pos]))]) if np.isfinite(share[i, pos]).any() else j
                tag = f.tags[top]
                value = float(batch.values[i, pos[list(g.cols).index(top)]])
        else:
            if kind in scores:
                score = _num(scores[kind][i, jb])
            threshold = {
                "rate_of_change": lambda: spec.max_rate, "ewma_zscore": lambda: spec.threshold,
                "hampel": lambda: spec.n_sigmas, "cusum": lambda: spec.h,
                "flatline": lambda: spec.samples if spec.samples else spec.duration / 1e9,
            }[kind]()
        return {
            "kind": "anomaly", "device": f.device, "tag": tag, "filter": name, "filter_kind": kind,
            "flag": flags.NAMES[bit], "value": _num(value), "score": score, "threshold": _num(threshold)
            if threshold is not None else None, "quality": int(batch.quality[i, jb]), "ts": t,
            "suppressed": int(self.suppressed[bit][j]),
        }
