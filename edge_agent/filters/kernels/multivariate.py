"""`multivariate`: a group of a device's tags scored as one vector against a PCA model of how they
moved together during training.

Hotelling T² measures how far a sample is inside the model (an unusual combination of normal
movements); Q / SPE measures how far it is off the model (a correlation that broke, e.g. a flow that
no longer follows its setpoint). Both limits come from the training data only. The model is fitted
once, in Python (`fit_model`), from the first complete rows; this kernel scores every later row.
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
    values: np.ndarray, quality: np.ndarray, idx: np.ndarray, mean: np.ndarray, scale: np.ndarray,
    loadings: np.ndarray, eigenvalues: np.ndarray, t2_limit: float, spe_limit: float,
    t2_bit: np.uint32, spe_bit: np.uint32, flags: np.ndarray, scores: np.ndarray,
    t2_out: np.ndarray, spe_out: np.ndarray,
) -> int:
    """Scores rows over the batch columns idx (p,); loadings (p, a). Returns the number of alarmed rows.

    Per tag, scores gets its share of the SPE, e_j^2 / spe_limit (they add up to SPE / limit, so the
    biggest share points at the tag that broke the pattern). t2_out and spe_out get the row statistics
    (NaN for rows not scored).
    """
    n = values.shape[0]
    p, a = loadings.shape
    xs = np.empty(p)
    fired = 0
    for i in range(n):
        ok = True
        for jj in range(p):
            j = idx[jj]
            if (quality[i, j] & 0x80) != 0 or not np.isfinite(values[i, j]):
                ok = False
        if not ok:
            t2_out[i] = np.nan
            spe_out[i] = np.nan
            for jj in range(p):
                scores[i, idx[jj]] = np.nan
            continue
        for jj in range(p):
            xs[jj] = (values[i, idx[jj]] - mean[jj]) / scale[jj]
        t2 = 0.0
        resid = xs.copy()
        for c in range(a):
            t = 0.0
            for jj in range(p):
                t += loadings[jj, c] * xs[jj]
            t2 += t * t / eigenvalues[c]
            for jj in range(p):
                resid[jj] -= loadings[jj, c] * t
        spe = 0.0
        for jj in range(p):
            spe += resid[jj] * resid[jj]
        t2_out[i] = t2
        spe_out[i] = spe
        word = np.uint32(0)
        if t2 > t2_limit:
            word |= t2_bit
        if spe > spe_limit:
            word |= spe_bit
        if word:
            fired += 1
        for jj in range(p):
            j = idx[jj]
            flags[i, j] |= word
            scores[i, j] = resid[jj] * resid[jj] / spe_limit
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
