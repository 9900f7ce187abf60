"""Runs the configured filters over each device batch: one kernel call per filter kind per batch.

Per-tag parameters and state are laid out as arrays over the device's tags at start-up (tags that do
not use a kind are switched off by an `on` mask or carry neutral values), so the kernels vectorise
across tags and never branch on configuration per sample. A batch that holds a subset of the tags
(a subscription delivering only what changed) gets its columns' parameters and state gathered, and
the state scattered back after the call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.config.models import (
    CusumFilter,
    DeadbandFilter,
    DeviceBase,
    EwmaZscoreFilter,
    FilterSpec,
    FlatlineFilter,
    HampelFilter,
    LimitsFilter,
    MultivariateFilter,
    RateOfChangeFilter,
)
from edge_agent.filters import flags
from edge_agent.filters.kernels.cusum import cusum_kernel
from edge_agent.filters.kernels.deadband import deadband_kernel
from edge_agent.filters.kernels.ewma_zscore import ewma_zscore_kernel
from edge_agent.filters.kernels.flatline import flatline_kernel
from edge_agent.filters.kernels.hampel import hampel_kernel
from edge_agent.filters.kernels.limits import severity_limits_kernel
from edge_agent.filters.kernels.multivariate import NEVER, Layout, fit_model, model_problem, multivariate_kernel
from edge_agent.filters.kernels.rate_of_change import rate_of_change_kernel
from edge_agent.samples import Batch

log = logging.getLogger("edge_agent.filters")

U32 = np.uint32
KIND_ORDER = ("limits", "rate_of_change", "ewma_zscore", "hampel", "flatline", "cusum", "deadband", "multivariate")
SCORING = frozenset({"rate_of_change", "ewma_zscore", "hampel", "cusum", "multivariate"})
BIT_KIND = {
    flags.LIMITS: "limits", flags.LIMITS_SEVERE: "limits", flags.RATE_OF_CHANGE: "rate_of_change",
    flags.EWMA_ZSCORE: "ewma_zscore", flags.HAMPEL: "hampel", flags.FLATLINE: "flatline",
    flags.CUSUM: "cusum", flags.MULTIVARIATE_T2: "multivariate", flags.MULTIVARIATE_SPE: "multivariate",
}


@dataclass
class Slot:
    """One filter kind on one device: its per-tag parameters and state, and how to call its kernel."""

    kind: str
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    call: Callable[[Batch, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None], int]
    fingerprint: str = ""

    @property
    def scoring(self) -> bool:
        return self.kind in SCORING


@dataclass
class Group:
    """A multivariate filter on one device: the tags it scores as one vector, and its model.

    The model and the last batch's row statistics live in the device's Layout (position `pos`), where
    the kernel scores all groups in one call; setting `model` (fit, snapshot, baseline) lays it out.
    """

    name: str
    spec: MultivariateFilter
    cols: np.ndarray  # device tag indices, in config order
    train: np.ndarray  # (training, p) rows collected so far
    layout: Layout
    pos: int
    filled: int = 0
    fingerprint: str = ""

    @property
    def model(self) -> dict[str, np.ndarray] | None:
        return self.layout.models[self.pos]

    @model.setter
    def model(self, model: dict[str, np.ndarray] | None) -> None:
        self.layout.set_model(self.pos, model)

    @property
    def last_t2(self) -> np.ndarray:
        """Hotelling T² per row of the last batch (NaN: not scored); valid until the next batch."""
        return self.layout.t2[self.pos, :self.layout.rows]

    @property
    def last_spe(self) -> np.ndarray:
        return self.layout.spe[self.pos, :self.layout.rows]


def _on(mask: list[bool]) -> np.ndarray:
    return np.asarray(mask, dtype=np.uint8)


class DeviceFilters:
    """The filters of one device, with their per-tag parameter and state arrays."""

    def __init__(self, device: DeviceBase, specs: dict[str, FilterSpec]):
        k = len(device.tags)
        self.device = device.name
        self.tags = tuple(t.name for t in device.tags)
        self.fired: dict[str, int] = {kind: 0 for kind in KIND_ORDER}
        # Per kind, per tag: the filter (name, spec) that applies, for events and for `send_scores`.
        self.assigned: dict[str, list[tuple[str, Any] | None]] = {kind: [None] * k for kind in KIND_ORDER}
        self.lo_name: list[str | None] = [None] * k
        self.hi_name: list[str | None] = [None] * k
        per_kind: dict[str, list[Any]] = {kind: [None] * k for kind in KIND_ORDER}
        groups: dict[str, list[int]] = {}
        lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
        lolo, hihi = np.full(k, -np.inf), np.full(k, np.inf)
        for j, tag in enumerate(device.tags):
            for ref in tag.filters:
                spec = specs[ref]
                if isinstance(spec, LimitsFilter):
                    # Several limits filters on one tag combine to the tightest bounds.
                    if spec.lo is not None and spec.lo > lo[j]:
                        lo[j], self.lo_name[j] = spec.lo, ref
                    if spec.hi is not None and spec.hi < hi[j]:
                        hi[j], self.hi_name[j] = spec.hi, ref
                    if spec.lolo is not None:
                        lolo[j] = max(lolo[j], spec.lolo)
                    if spec.hihi is not None:
                        hihi[j] = min(hihi[j], spec.hihi)
                    per_kind["limits"][j] = spec
                    if self.assigned["limits"][j] is None:
                        self.assigned["limits"][j] = (ref, spec)
                elif isinstance(spec, MultivariateFilter):
                    groups.setdefault(ref, []).append(j)
                    self.assigned["multivariate"][j] = (ref, spec)
                else:
                    per_kind[spec.kind][j] = spec
                    self.assigned[spec.kind][j] = (ref, spec)
        self.slots: list[Slot] = []
        if any(s is not None for s in per_kind["limits"]):
            self.slots.append(_limits_slot(lo, hi, lolo, hihi))
        for kind, make in _MAKERS.items():
            tag_specs = per_kind[kind]
            if any(s is not None for s in tag_specs):
                slot = make(tag_specs)
                self.slots.append(slot)
        for slot in self.slots:
            slot.fingerprint = _fingerprint(self.tags, [self.assigned[slot.kind][j] for j in range(k)])
        self.mv = Layout([np.asarray(cols, dtype=np.intp) for cols in groups.values()])
        self.groups = [
            Group(name, specs[name], np.asarray(cols, dtype=np.intp),  # type: ignore[arg-type]
                  np.empty((specs[name].training, len(cols))), self.mv, pos)  # type: ignore[union-attr]
            for pos, (name, cols) in enumerate(groups.items())
        ]
        for g in self.groups:
            g.fingerprint = _fingerprint(tuple(self.tags[j] for j in g.cols), [(g.name, g.spec)] * len(g.cols))
            if g.spec.baseline is not None:
                g.model = load_baseline(g.spec.baseline, [self.tags[j] for j in g.cols])
        # Columns whose scores stay out of the frame (send_scores = false), per scoring kind.
        self.hidden_scores = {
            kind: np.asarray([a is not None and not getattr(a[1], "send_scores", True) for a in self.assigned[kind]])
            for kind in SCORING
        }

    @property
    def active(self) -> bool:
        return bool(self.slots or self.groups)

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        """Set flag bits on the batch in place; returns every computed score, per kind, (n, k) float32.

        batch.scores gets the same minus the columns whose filter has send_scores = false: the frame
        carries those, while events and replay see them all.
        """
        cols = batch.columns
        scores: dict[str, np.ndarray] = {}
        n, kb = batch.values.shape
        for slot in self.slots:
            if cols is None:
                params, state = slot.params, slot.state
            else:
                params = {key: a[cols] for key, a in slot.params.items()}
                if "on" in params and not params["on"].any():
                    continue
                state = {key: a[cols] for key, a in slot.state.items()}
            out = np.empty((n, kb), dtype=np.float32) if slot.scoring else None
            self.fired[slot.kind] += slot.call(batch, params, state, out)
            if cols is not None:
                for key, a in state.items():
                    slot.state[key][cols] = a
            if out is not None:
                scores[slot.kind] = out
        if self.groups:
            mv = self._multivariate(batch)
            if mv is not None:
                scores["multivariate"] = mv
        sent = scores
        if any(self.hidden_scores[kind].any() for kind in scores):
            sent = {}
            for kind, s in scores.items():
                hidden = self.hidden_scores[kind] if cols is None else self.hidden_scores[kind][cols]
                if hidden.any():
                    s = s.copy()
                    s[:, hidden] = np.nan
                sent[kind] = s
        batch.scores = sent or None
        return scores

    def _multivariate(self, batch: Batch) -> np.ndarray | None:
        """All groups in one kernel call; Python per group only for those still training."""
        mv = self.mv
        cols = batch.columns
        n, kb = batch.values.shape
        if cols is None:
            idx, complete = mv.idx, None
        else:  # batch positions of the groups' tags, -1 where the batch lacks one
            where = np.full(len(self.tags), -1, dtype=np.intp)
            where[cols] = np.arange(kb)
            idx = where[mv.idx]
            complete = np.minimum.reduceat(idx, mv.col_off[:-1]) >= 0
        mv.refresh()  # a model restored or loaded since the last batch
        fitted: dict[int, int] = {}
        for pos in mv.training:
            if complete is not None and not complete[pos]:
                continue  # a subset batch without the whole vector: nothing to train on
            g = self.groups[pos]
            start = self._train(g, batch, idx[mv.col_off[pos]:mv.col_off[pos + 1]])
            if g.model is not None:  # fitted in this batch: score the rows after the last training row
                fitted[pos] = start
        first = mv.first
        if fitted:
            mv.refresh()
            first = mv.first.copy()
            for pos, start in fitted.items():
                first[pos] = start
        if complete is not None:
            first = np.where(complete, first, NEVER)
        t2, spe = mv.outputs(n)
        if not (first < NEVER).any():
            t2[:, :n] = np.nan
            spe[:, :n] = np.nan
            return None
        out = np.full((n, kb), np.nan, dtype=np.float32)
        self.fired["multivariate"] += multivariate_kernel(
            batch.values, batch.quality, idx, mv.col_off, mv.mean, mv.scale, mv.loadings, mv.eig_off,
            mv.eigenvalues, mv.t2_limit, mv.spe_limit, first, U32(flags.MULTIVARIATE_T2),
            U32(flags.MULTIVARIATE_SPE), batch.flags, out, t2, spe, mv.xs, mv.resid, mv.share,
        )
        return out

    def _train(self, g: Group, batch: Batch, idx: np.ndarray) -> int:
        """Collect complete rows until the training set is full, then fit; returns the first row to score."""
        values = batch.values[:, idx]
        usable = ((batch.quality[:, idx] & 0x80) == 0).all(axis=1) & np.isfinite(values).all(axis=1)
        rows = np.flatnonzero(usable)
        need = g.train.shape[0] - g.filled
        take = rows[:need]
        g.train[g.filled:g.filled + len(take)] = values[take]
        g.filled += len(take)
        sub = batch.flags[:, idx]
        sub[take] |= U32(flags.WARMUP)
        batch.flags[:, idx] = sub
        if g.filled < g.train.shape[0]:
            return batch.rows
        g.model = fit_model(g.train, g.spec.components, g.spec.variance, g.spec.confidence)
        log.info("%s: multivariate filter %r trained on %d rows of %d tags: %d components, "
                 "T² limit %.3g, SPE limit %.3g", self.device, g.name, g.filled, len(g.cols),
                 g.model["loadings"].shape[1], float(g.model["t2_limit"]), float(g.model["spe_limit"]))
        return int(take[-1]) + 1

    # ---------------------------------------------------------------------------------------------
    # Snapshots: learned state survives a restart, so the agent does not spend minutes re-learning.
    # ---------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of every state array, keyed for np.savez, each kind tagged with its config fingerprint."""
        out: dict[str, np.ndarray] = {}
        for slot in self.slots:
            out[f"fp/{slot.kind}"] = np.asarray(slot.fingerprint)
            for key, a in slot.state.items():
                out[f"state/{slot.kind}/{key}"] = a.copy()
        for g in self.groups:
            out[f"fp/mv/{g.name}"] = np.asarray(g.fingerprint)
            out[f"mv/{g.name}/filled"] = np.asarray(g.filled)
            out[f"mv/{g.name}/train"] = g.train[:g.filled].copy()
            for key, a in (g.model or {}).items():
                out[f"mv/{g.name}/model/{key}"] = np.asarray(a).copy()
        return out

    def restore(self, saved: dict[str, np.ndarray]) -> list[str]:
        """Take over the state of every kind whose configuration is unchanged; returns the kinds restored.

        A kind whose parameters or tags changed starts afresh: state learned under other parameters
        would judge with the wrong baseline.
        """
        restored = []
        for slot in self.slots:
            if str(saved.get(f"fp/{slot.kind}", "")) != slot.fingerprint:
                continue
            arrays = {key: saved.get(f"state/{slot.kind}/{key}") for key in slot.state}
            if any(a is None or a.shape != slot.state[key].shape or a.dtype != slot.state[key].dtype
                   for key, a in arrays.items()):
                continue
            for key, a in arrays.items():
                slot.state[key][...] = a
            restored.append(slot.kind)
        for g in self.groups:
            if str(saved.get(f"fp/mv/{g.name}", "")) != g.fingerprint or g.spec.baseline is not None:
                continue
            filled = int(saved.get(f"mv/{g.name}/filled", 0))
            train = saved.get(f"mv/{g.name}/train")
            if train is None or train.shape != (filled, len(g.cols)) or filled > g.train.shape[0]:
                continue
            prefix = f"mv/{g.name}/model/"
            model = {key[len(prefix):]: a for key, a in saved.items() if key.startswith(prefix)}
            if model and model_problem(model, len(g.cols)) is not None:
                continue  # a model the kernel cannot score this group with: learn afresh
            g.train[:filled] = train
            g.filled = filled
            g.model = model or None  # enters the layout before the next batch
            restored.append(f"multivariate:{g.name}")
        return restored


def _fingerprint(tags: tuple[str, ...], assigned: list[tuple[str, Any] | None]) -> str:
    doc = [[t, None if a is None else [a[0], a[1].model_dump(mode="json")]]
           for t, a in zip(tags, assigned, strict=True)]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_baseline(path: Any, tags: list[str]) -> dict[str, np.ndarray]:
    """A stored multivariate model (`edge-agent replay --save-baselines`); ValueError names the problem."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {key: z[key] for key in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read baseline {path}: {exc}") from None
    need = ("tags", "mean", "scale", "loadings", "eigenvalues", "t2_limit", "spe_limit")
    missing = [key for key in need if key not in data]
    if missing:
        raise ValueError(f"baseline {path} lacks {', '.join(missing)}")
    stored = [str(t) for t in data.pop("tags")]
    if stored != tags:
        raise ValueError(f"baseline {path} was trained on tags {stored}, the filter has {tags}")
    problem = model_problem(data, len(tags))
    if problem is not None:
        raise ValueError(f"baseline {path} {problem}")
    return data


# ------------------------------------------------------------------------------------------------
# One maker per kind: parameters from the tags' specs (neutral where a tag does not use the kind).
# ------------------------------------------------------------------------------------------------


def _limits_slot(lo: np.ndarray, hi: np.ndarray, lolo: np.ndarray, hihi: np.ndarray) -> Slot:
    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return severity_limits_kernel(b.values, b.quality, p["lo"], p["hi"], p["lolo"], p["hihi"],
                                      U32(flags.LIMITS), U32(flags.LIMITS_SEVERE), b.flags)

    return Slot("limits", {"lo": lo, "hi": hi, "lolo": lolo, "hihi": hihi}, {}, call)


def _arr(specs: list[Any], get: Callable[[Any], Any], neutral: Any, dtype: Any = np.float64) -> np.ndarray:
    return np.asarray([neutral if s is None else get(s) for s in specs], dtype=dtype)


def _roc_slot(specs: list[RateOfChangeFilter | None]) -> Slot:
    k = len(specs)
    params = {"on": _on([s is not None for s in specs]), "max_rate": _arr(specs, lambda s: s.max_rate, np.inf)}
    state = {"last_v": np.zeros(k), "last_t": np.zeros(k, np.int64), "has_last": np.zeros(k, np.uint8)}

    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return rate_of_change_kernel(b.ts, b.values, b.quality, p["on"], p["max_rate"], s["last_v"], s["last_t"],
                                     s["has_last"], U32(flags.RATE_OF_CHANGE), U32(flags.WARMUP), b.flags, out)

    return Slot("rate_of_change", params, state, call)


def _ewma_slot(specs: list[EwmaZscoreFilter | None]) -> Slot:
    k = len(specs)
    params = {
        "on": _on([s is not None for s in specs]), "alpha": _arr(specs, lambda s: s.alpha, 0.5),
        "threshold": _arr(specs, lambda s: s.threshold, np.inf),
        "warmup": _arr(specs, lambda s: s.warmup, 0, np.int64), "min_sigma": _arr(specs, lambda s: s.min_sigma, 0.0),
    }
    state = {"mean": np.zeros(k), "var": np.zeros(k), "count": np.zeros(k, np.int64)}

    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return ewma_zscore_kernel(b.values, b.quality, p["on"], p["alpha"], p["threshold"], p["warmup"],
                                  p["min_sigma"], s["mean"], s["var"], s["count"], U32(flags.EWMA_ZSCORE),
                                  U32(flags.WARMUP), b.flags, out)

    return Slot("ewma_zscore", params, state, call)


def _hampel_slot(specs: list[HampelFilter | None]) -> Slot:
    k = len(specs)
    window = _arr(specs, lambda s: s.window, 3, np.int64)
    wmax = int(window.max())
    params = {
        "on": _on([s is not None for s in specs]), "window": window,
        "n_sigmas": _arr(specs, lambda s: s.n_sigmas, np.inf), "min_sigma": _arr(specs, lambda s: s.min_sigma, 0.0),
    }
    state = {"ring": np.zeros((k, wmax)), "srt": np.zeros((k, wmax)), "head": np.zeros(k, np.int64),
             "fill": np.zeros(k, np.int64)}

    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return hampel_kernel(b.values, b.quality, p["on"], p["window"], p["n_sigmas"], p["min_sigma"], s["ring"],
                             s["srt"], s["head"], s["fill"], U32(flags.HAMPEL), U32(flags.WARMUP), b.flags, out)

    return Slot("hampel", params, state, call)


def _flatline_slot(specs: list[FlatlineFilter | None]) -> Slot:
    k = len(specs)
    params = {
        "on": _on([s is not None for s in specs]), "tolerance": _arr(specs, lambda s: s.tolerance, 0.0),
        "samples": _arr(specs, lambda s: s.samples or 0, 0, np.int64),
        "duration": _arr(specs, lambda s: s.duration or 0, 0, np.int64),
    }
    state = {"ref_v": np.zeros(k), "run_start": np.zeros(k, np.int64), "run_count": np.zeros(k, np.int64)}

    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return flatline_kernel(b.ts, b.values, b.quality, p["on"], p["tolerance"], p["samples"], p["duration"],
                               s["ref_v"], s["run_start"], s["run_count"], U32(flags.FLATLINE), b.flags)

    return Slot("flatline", params, state, call)


def _cusum_slot(specs: list[CusumFilter | None]) -> Slot:
    k = len(specs)
    params = {
        "on": _on([s is not None for s in specs]), "k": _arr(specs, lambda s: s.k, 0.0),
        "h": _arr(specs, lambda s: s.h, np.inf), "warmup": _arr(specs, lambda s: s.warmup, 2, np.int64),
        "min_sigma": _arr(specs, lambda s: s.min_sigma, 0.0),
    }
    state = {"mean": np.zeros(k), "m2": np.zeros(k), "count": np.zeros(k, np.int64), "s_hi": np.zeros(k),
             "s_lo": np.zeros(k)}

    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return cusum_kernel(b.values, b.quality, p["on"], p["k"], p["h"], p["warmup"], p["min_sigma"], s["mean"],
                            s["m2"], s["count"], s["s_hi"], s["s_lo"], U32(flags.CUSUM), U32(flags.WARMUP),
                            b.flags, out)

    return Slot("cusum", params, state, call)


def _deadband_slot(specs: list[DeadbandFilter | None]) -> Slot:
    k = len(specs)
    params = {
        "on": _on([s is not None for s in specs]), "absolute": _arr(specs, lambda s: s.absolute or 0.0, 0.0),
        "percent": _arr(specs, lambda s: s.percent or 0.0, 0.0),
        "max_silence": _arr(specs, lambda s: s.max_silence or 0, 0, np.int64),
    }
    state = {"last_v": np.zeros(k), "last_t": np.zeros(k, np.int64), "last_state": np.zeros(k, np.uint8)}

    def call(b: Batch, p: dict, s: dict, out: np.ndarray | None) -> int:
        return deadband_kernel(b.ts, b.values, b.quality, p["on"], p["absolute"], p["percent"], p["max_silence"],
                               s["last_v"], s["last_t"], s["last_state"], U32(flags.DEADBAND), b.flags)

    return Slot("deadband", params, state, call)


_MAKERS: dict[str, Callable[[list[Any]], Slot]] = {
    "rate_of_change": _roc_slot, "ewma_zscore": _ewma_slot, "hampel": _hampel_slot, "flatline": _flatline_slot,
    "cusum": _cusum_slot, "deadband": _deadband_slot,
}


def kinds_in_use(devices: Iterable[DeviceBase], specs: dict[str, FilterSpec]) -> set[str]:
    """The filter kinds some tag of `devices` references: the kernels the agent will call."""
    return {specs[ref].kind for d in devices for t in d.tags for ref in t.filters if ref in specs}


def warm_up(kinds: Iterable[str] | None = None) -> None:
    """Compile (or load from NUMBA_CACHE_DIR) the kernels of `kinds` (all eight by default) before the
    first poll, not during it: a poll must never wait for a compiler.

    The agent passes the kinds its config uses: each kernel costs a cache load (~5 ms) or, on the first
    start, a compilation (seconds), and the ones it never calls need neither.
    """
    from edge_agent.config.models import TagBase

    t0 = time.perf_counter()
    want = set(KIND_ORDER if kinds is None else kinds)
    unknown = want - set(KIND_ORDER)
    if unknown:
        raise ValueError(f"unknown filter kinds {sorted(unknown)}")
    specs: dict[str, FilterSpec] = {name: spec for name, spec in _warm_up_specs().items() if spec.kind in want}
    if not specs:
        return
    tags = [TagBase(name=f"t{j}", filters=list(specs)) for j in range(2)]
    dev = DeviceBase(name="warm-up", protocol="none", tags=tags)
    engine = DeviceFilters(dev, specs)
    rng = np.random.default_rng(0)
    for _ in range(2):
        b = Batch.empty("warm-up", 12, 2)
        b.values[:] = rng.normal(size=(12, 2))
        b.quality[:] = 0
        b.ts[:] = np.arange(12)[:, None] * 1_000_000
        engine.process(b)
    log.info("filter kernels ready (%s) in %.2f s", ", ".join(k for k in KIND_ORDER if k in want),
             time.perf_counter() - t0)


def _warm_up_specs() -> dict[str, FilterSpec]:
    return {
        "l": LimitsFilter(kind="limits", lo=0.0, hi=1.0),
        "r": RateOfChangeFilter(kind="rate_of_change", max_rate=1.0),
        "e": EwmaZscoreFilter(kind="ewma_zscore"),
        "h": HampelFilter(kind="hampel", window=3),
        "f": FlatlineFilter(kind="flatline", samples=2),
        "c": CusumFilter(kind="cusum"),
        "d": DeadbandFilter(kind="deadband", absolute=1.0),
        "m": MultivariateFilter(kind="multivariate", training=10),
    }
