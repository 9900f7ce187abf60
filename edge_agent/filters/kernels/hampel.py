"""`hampel`: distance of each sample from the rolling median of the tag's previous `window` usable
samples, in robust standard deviations (1.4826 x the median absolute deviation, MAD).

Causal (the window holds the samples *before* the one judged), because an edge agent must decide
when the sample arrives, not `window/2` samples later. Each tag keeps its window twice: in arrival
order (a ring, to know which value leaves) and sorted (so the median is one read and the MAD a
merge of the two halves, O(window) per sample with no sort and no allocation). NaN, Inf and bad
quality never enter the window; until it is full, samples are flagged WARMUP and not judged.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): makes the MAD estimate sigma for Gaussian noise


@njit(cache=True, nogil=True, error_model="numpy")
def _median_and_mad(s: np.ndarray, w: int) -> tuple[float, float]:
    """Median and MAD of the sorted window s[:w], with numpy.median's even-length convention."""
    lo_mid = (w - 1) // 2
    hi_mid = w // 2
    med = s[lo_mid] if lo_mid == hi_mid else (s[lo_mid] + s[hi_mid]) / 2
    # Deviations grow outwards from the middle on both sides: merge the two runs to rank them.
    li = lo_mid
    ri = lo_mid + 1
    d0 = 0.0
    d1 = 0.0
    for t in range(hi_mid + 1):
        dl = med - s[li] if li >= 0 else np.inf
        dr = s[ri] - med if ri < w else np.inf
        if dl <= dr:
            d = dl
            li -= 1
        else:
            d = dr
            ri += 1
        if t == lo_mid:
            d0 = d
        if t == hi_mid:
            d1 = d
    mad = d0 if lo_mid == hi_mid else (d0 + d1) / 2
    return med, mad


@njit(cache=True, nogil=True, error_model="numpy")
def hampel_kernel(
    values: np.ndarray, quality: np.ndarray, on: np.ndarray, window: np.ndarray, n_sigmas: np.ndarray,
    min_sigma: np.ndarray, ring: np.ndarray, srt: np.ndarray, head: np.ndarray, fill: np.ndarray,
    bit: np.uint32, warm_bit: np.uint32, flags: np.ndarray, scores: np.ndarray,
) -> int:
    """Sets `bit` where |v - median| / max(1.4826 MAD, min_sigma) > n_sigmas; the ratio goes to scores.

    ring and srt are (tags, max window) with each tag using its first window[j] slots.
    """
    n, k = values.shape
    fired = 0
    for i in range(n):
        for j in range(k):
            v = values[i, j]
            scores[i, j] = np.nan
            if on[j] == 0 or (quality[i, j] & 0x80) != 0 or not np.isfinite(v):
                continue
            w = window[j]
            f = fill[j]
            s = srt[j]
            if f == w:
                med, mad = _median_and_mad(s, w)
                sigma = max(MAD_TO_SIGMA * mad, min_sigma[j])
                dev = abs(v - med)
                if sigma > 0.0:
                    z = dev / sigma
                elif dev == 0.0:
                    z = 0.0
                else:
                    z = np.inf
                scores[i, j] = z
                if z > n_sigmas[j]:
                    flags[i, j] |= bit
                    fired += 1
                # Evict the oldest value: find it in the sorted copy, then slide v into its place.
                h = head[j]
                old = ring[j, h]
                ring[j, h] = v
                head[j] = (h + 1) % w
                p = np.searchsorted(s[:w], old)
                if v >= old:
                    while p + 1 < w and s[p + 1] < v:
                        s[p] = s[p + 1]
                        p += 1
                else:
                    while p > 0 and s[p - 1] > v:
                        s[p] = s[p - 1]
                        p -= 1
                s[p] = v
            else:
                flags[i, j] |= warm_bit
                ring[j, (head[j] + f) % w] = v
                p = f
                while p > 0 and s[p - 1] > v:
                    s[p] = s[p - 1]
                    p -= 1
                s[p] = v
                fill[j] = f + 1
    return fired
