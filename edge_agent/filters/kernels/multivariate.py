"""`multivariate`: a group of a device's tags scored as one vector against a PCA model of how they
moved together during training.

Hotelling T² measures how far a sample is inside the model (an unusual combination of normal
movements); Q / SPE measures how far it is off the model (a correlation that broke, e.g. a flow that
no longer follows its setpoint). Both limits come from the training data only. The model is fitted
once, in Python (`fit_model`), from the first complete rows; the kernel scores every later row, of
all of a device's groups in one call over the flat `Layout` of their models.
A row where any tag of the group is unusable is not scored: one dead sensor must not read as a broken
correlation (its quality already says what happened).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def multivariate_kernel(
    values: np.ndarray, quality: np.ndarray, idx: np.ndarray, col_off: np.ndarray, mean: np.ndarray,
    scale: np.ndarray, loadings: np.ndarray, eig_off: np.ndarray, eigenvalues: np.ndarray, t2_limit: np.ndarray,
    spe_limit: np.ndarray, first: np.ndarray, t2_bit: np.uint32, spe_bit: np.uint32, flags: np.ndarray,
    scores: np.ndarray, t2_out: np.ndarray, spe_out: np.ndarray, xs: np.ndarray, resid: np.ndarray,
    share: np.ndarray,
) -> int:
    """Scores every group of a device over one batch; returns the number of alarmed (row, group) pairs.

    Group g is the batch columns idx[col_off[g]:col_off[g + 1]] (p_g of them), with mean and scale at the
    same offsets and a_g = eig_off[g + 1] - eig_off[g] components, whose loadings follow the groups'
    before it transposed, (a_g, p_g): each component's weights contiguous. Rows from first[g] on are
    scored: first[g] >= rows skips a group still training, or one whose columns the batch lacks (idx -1).
    Groups outer, rows inner: a group's model stays in L1 for all rows of the batch instead of the whole
    device's models streaming through once per row.

    Per tag, scores (NaN-filled by the caller) gets its share of the SPE, e_j^2 / spe_limit (they add up
    to SPE / limit, so the biggest share points at the tag that broke the pattern). t2_out and spe_out
    (groups, >= rows) get every group's row statistics, NaN where not scored. xs, resid and share are
    scratch of at least the largest p_g: nothing is allocated per row.

    Every sum runs in the textbook order (over tags, then over components), so the figures are bit for
    bit those of scoring one group at a time; within that order: four components' projections are
    summed side by side (four independent chains, not one long one), each residual takes their four
    updates in one pass that vectorises over tags, and a group on consecutive columns (the usual case)
    is read and written as slices, which vectorise too, instead of through idx.
    """
    n = values.shape[0]
    groups = col_off.shape[0] - 1
    fired = 0
    l0 = 0  # where group g's loadings start: the sum of p_h * a_h before it
    for g in range(groups):
        c0 = col_off[g]
        p = col_off[g + 1] - c0
        e0 = eig_off[g]
        a = eig_off[g + 1] - e0
        start = first[g]
        t2_lim = t2_limit[g]
        spe_lim = spe_limit[g]
        gidx = idx[c0:c0 + p]
        gmean = mean[c0:c0 + p]
        gscale = scale[c0:c0 + p]
        gl = loadings[l0:l0 + p * a]
        geig = eigenvalues[e0:e0 + a]
        l0 += p * a
        for i in range(min(start, n)):
            t2_out[g, i] = np.nan
            spe_out[g, i] = np.nan
        j0 = gidx[0]
        contiguous = True
        for jj in range(p):
            contiguous &= gidx[jj] == j0 + jj
        for i in range(start, n):
            vi = values[i]
            qi = quality[i]
            si = scores[i]
            bad = 0
            if contiguous:
                gv = vi[j0:j0 + p]
                gq = qi[j0:j0 + p]
                for jj in range(p):
                    bad |= (gq[jj] & 0x80) | (not np.isfinite(gv[jj]))
            else:
                for jj in range(p):
                    j = gidx[jj]
                    v = vi[j]
                    bad |= (qi[j] & 0x80) | (not np.isfinite(v))
                    xs[jj] = v
                gv = xs
            if bad:
                t2_out[g, i] = np.nan
                spe_out[g, i] = np.nan
                for jj in range(p):
                    si[gidx[jj]] = np.nan
                continue
            for jj in range(p):
                x = (gv[jj] - gmean[jj]) / gscale[jj]
                xs[jj] = x
                resid[jj] = x
            t2 = 0.0
            c = 0
            while c + 4 <= a:
                w0 = gl[c * p:(c + 1) * p]
                w1 = gl[(c + 1) * p:(c + 2) * p]
                w2 = gl[(c + 2) * p:(c + 3) * p]
                w3 = gl[(c + 3) * p:(c + 4) * p]
                u0 = u1 = u2 = u3 = 0.0
                for jj in range(p):
                    x = xs[jj]
                    u0 += w0[jj] * x
                    u1 += w1[jj] * x
                    u2 += w2[jj] * x
                    u3 += w3[jj] * x
                t2 += u0 * u0 / geig[c]
                t2 += u1 * u1 / geig[c + 1]
                t2 += u2 * u2 / geig[c + 2]
                t2 += u3 * u3 / geig[c + 3]
                for jj in range(p):
                    resid[jj] = (((resid[jj] - w0[jj] * u0) - w1[jj] * u1) - w2[jj] * u2) - w3[jj] * u3
                c += 4
            while c < a:
                w0 = gl[c * p:(c + 1) * p]
                u0 = 0.0
                for jj in range(p):
                    u0 += w0[jj] * xs[jj]
                t2 += u0 * u0 / geig[c]
                for jj in range(p):
                    resid[jj] -= w0[jj] * u0
                c += 1
            for jj in range(p):  # squares and shares apart from the sum: this loop vectorises
                e = resid[jj] * resid[jj]
                resid[jj] = e
                share[jj] = e / spe_lim
            spe = 0.0
            for jj in range(p):
                spe += resid[jj]
            t2_out[g, i] = t2
            spe_out[g, i] = spe
            word = np.uint32(0)
            if t2 > t2_lim:
                word |= t2_bit
            if spe > spe_lim:
                word |= spe_bit
            if word:
                fired += 1
            fi = flags[i]
            if contiguous:
                gf = fi[j0:j0 + p]
                gs = si[j0:j0 + p]
                for jj in range(p):
                    gf[jj] |= word
                    gs[jj] = share[jj]
            else:
                for jj in range(p):
                    j = gidx[jj]
                    fi[j] |= word
                    si[j] = share[jj]
    return fired


def chi2_quantile(q: float, dof: float) -> float:
    """Wilson-Hilferty: good to a few per cent for dof >= 1, and needs nothing beyond the stdlib."""
    z = NormalDist().inv_cdf(q)
    c = 2.0 / (9.0 * dof)
    return dof * max(1.0 - c + z * math.sqrt(c), 0.0) ** 3


def fit_model(
    rows: np.ndarray, components: int | None, variance: float, confidence: float
) -> dict[str, np.ndarray]:
    """PCA of the standardised training rows (N, p) and the T² / SPE limits at `confidence`.

    T² limit: chi-square with `a` degrees of freedom (the large-sample form of the F limit). SPE limit:
    Box's g·chi²(h) with g = θ2/θ1, h = θ1²/θ2 from the discarded eigenvalues (Nomikos & MacGregor).
    A variable that was constant in training keeps scale 1, so any change of it shows in the SPE.
    """
    n, p = rows.shape
    mean = rows.mean(axis=0)
    scale = rows.std(axis=0, ddof=1)
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    z = (rows - mean) / scale
    cov = z.T @ z / (n - 1)
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, vec = np.maximum(lam[order], 0.0), vec[:, order]
    if components is None:
        share = np.cumsum(lam) / max(lam.sum(), 1e-300)
        a = int(np.searchsorted(share, variance) + 1)
    else:
        a = components
    a = max(1, min(a, p - 1 if p > 1 else 1))
    kept = np.maximum(lam[:a], 1e-12 * max(lam[0], 1e-300))
    t2_limit = chi2_quantile(confidence, a)
    rest = lam[a:]
    theta1, theta2 = float(rest.sum()), float((rest**2).sum())
    if theta1 <= 1e-12 * max(float(lam.sum()), 1e-300) or theta2 <= 0:
        spe_limit = np.inf  # no residual space (p == 1 or perfectly collinear training data)
    else:
        g, h = theta2 / theta1, theta1**2 / theta2
        spe_limit = g * chi2_quantile(confidence, h)
    return {
        "mean": mean, "scale": scale, "loadings": np.ascontiguousarray(vec[:, :a]), "eigenvalues": kept,
        "t2_limit": np.float64(t2_limit), "spe_limit": np.float64(spe_limit),
    }


NEVER = np.iinfo(np.int64).max  # the first row to score of a group the kernel skips
MODEL_KEYS = ("mean", "scale", "loadings", "eigenvalues", "t2_limit", "spe_limit")


def model_problem(model: dict[str, np.ndarray], p: int) -> str | None:
    """What keeps a model from scoring a group of p tags (None: it fits).

    The kernel runs without bounds checks, so a snapshot or baseline whose arrays do not match the group
    must be turned away before it enters the layout, not read past its end.
    """
    missing = [key for key in MODEL_KEYS if key not in model]
    if missing:
        return f"lacks {', '.join(missing)}"
    loadings = np.asarray(model["loadings"])
    if loadings.ndim != 2 or loadings.shape[0] != p or not 1 <= loadings.shape[1] <= p:
        return f"has loadings of shape {loadings.shape} for {p} tags"
    a = loadings.shape[1]
    for key, size in (("mean", p), ("scale", p), ("eigenvalues", a), ("t2_limit", 1), ("spe_limit", 1)):
        if np.asarray(model[key]).size != size:
            return f"has {np.asarray(model[key]).size} values of {key}, {size} expected"
    return None


class Layout:
    """All multivariate groups of one device laid out flat, for one kernel call per batch.

    Concatenated batch columns with per-group offsets, means, scales, transposed loadings and eigenvalues,
    and per-group limits: rebuilt only when a model arrives (fitted, restored from a snapshot, loaded from
    a baseline), so a batch costs one kernel call and no allocation besides its score array. A group
    still training has no model and is skipped (first row NEVER); its columns are still laid out, so
    nothing moves when it is fitted. The row statistics of the last batch stay in t2 / spe (groups,
    capacity) and are overwritten by the next: read them before processing the next batch.
    """

    def __init__(self, cols: list[np.ndarray]):
        sizes = np.asarray([len(c) for c in cols], dtype=np.int64)
        self.count = len(cols)
        self.col_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.idx = np.concatenate(cols).astype(np.intp) if cols else np.empty(0, np.intp)
        self.models: list[dict[str, np.ndarray] | None] = [None] * self.count
        pmax = int(sizes.max()) if self.count else 0
        self.xs, self.resid, self.share = np.empty(pmax), np.empty(pmax), np.empty(pmax)  # the kernel's scratch
        self.t2 = np.empty((self.count, 0))
        self.spe = np.empty((self.count, 0))
        self.rows = 0
        self.stale = True
        self.refresh()

    def size(self, pos: int) -> int:
        return int(self.col_off[pos + 1] - self.col_off[pos])

    def set_model(self, pos: int, model: dict[str, np.ndarray] | None) -> None:
        """Give group pos its model (None: back to training); ValueError if it does not fit the group."""
        if model is not None:
            problem = model_problem(model, self.size(pos))
            if problem is not None:
                raise ValueError(f"the model {problem}")
        self.models[pos] = model
        self.stale = True

    def refresh(self) -> None:
        """Lay the models out again (after set_model): once per model that arrives, never per batch."""
        if not self.stale:
            return
        mean, scale, loadings, eig, a = [], [], [], [], []
        t2_limit, spe_limit = np.full(self.count, np.nan), np.full(self.count, np.nan)
        for pos, m in enumerate(self.models):
            p = self.size(pos)
            if m is None:
                mean.append(np.zeros(p))
                scale.append(np.ones(p))
                a.append(0)
                continue
            f64 = {key: np.asarray(m[key], dtype=np.float64) for key in MODEL_KEYS}
            mean.append(f64["mean"].ravel())
            scale.append(f64["scale"].ravel())
            loadings.append(f64["loadings"].T.ravel())  # (a, p): a component's weights contiguous
            eig.append(f64["eigenvalues"].ravel())
            a.append(eig[-1].size)
            t2_limit[pos], spe_limit[pos] = f64["t2_limit"].ravel()[0], f64["spe_limit"].ravel()[0]
        cat = lambda parts: np.ascontiguousarray(np.concatenate(parts)) if parts else np.empty(0)  # noqa: E731
        self.mean, self.scale, self.loadings, self.eigenvalues = cat(mean), cat(scale), cat(loadings), cat(eig)
        self.eig_off = np.concatenate([[0], np.cumsum(a)]).astype(np.int64)
        self.t2_limit, self.spe_limit = t2_limit, spe_limit
        fitted = np.asarray([m is not None for m in self.models], dtype=bool)
        self.first = np.where(fitted, 0, NEVER).astype(np.int64)
        self.training = [int(pos) for pos in np.flatnonzero(~fitted)]
        self.stale = False

    def outputs(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The t2 / spe arrays for a batch of `rows` (grown, never shrunk: no allocation per batch)."""
        if rows > self.t2.shape[1]:
            self.t2 = np.empty((self.count, rows))
            self.spe = np.empty((self.count, rows))
        self.rows = rows
        return self.t2, self.spe
