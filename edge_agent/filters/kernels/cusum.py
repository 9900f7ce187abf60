"""`cusum`: two-sided tabular CUSUM (Page) for slow drifts that a z-score never sees.

The baseline (mean and sample standard deviation) is learned from the first `warmup` usable samples
(Welford's update, exact and stable) and then frozen: a drift is a departure from how the process was,
and a baseline that kept learning would drift along with it. After that, with z the deviation in
baseline sigmas, S+ = max(0, S+ + z - k) and S- = max(0, S- - z - k); an alarm when either exceeds h,
after which both restart from 0 (so a lasting shift alarms every few samples rather than on every
sample, and the statistic returns to normal as soon as the process does).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

TILE = 256  # tags per tile: parameters and state of a tile fit in a 32 KB L1 data cache


@njit(cache=True, nogil=True, error_model="numpy")
def cusum_kernel(
    values: np.ndarray, quality: np.ndarray, on: np.ndarray, k_ref: np.ndarray, h: np.ndarray,
    warmup: np.ndarray, min_sigma: np.ndarray, mean: np.ndarray, m2: np.ndarray, count: np.ndarray,
    s_hi: np.ndarray, s_lo: np.ndarray, bit: np.uint32, warm_bit: np.uint32, flags: np.ndarray,
    scores: np.ndarray,
) -> int:
    """Sets `bit` where max(S+, S-) > h; the statistic (in sigmas, before the restart) goes to scores."""
    n, k = values.shape
    fired = 0
    sig = np.empty(TILE)
    for t in range((k + TILE - 1) // TILE):
        j0 = t * TILE
        w = min(TILE, k - j0)
        steady = True  # every tag of the tile off or past warm-up: no learning during this call
        for jj in range(w):
            j = j0 + jj
            if on[j] != 0 and count[j] < warmup[j]:
                steady = False
            sd = math.sqrt(m2[j] / (count[j] - 1))
            sig[jj] = sd if sd > min_sigma[j] else min_sigma[j]
        for i in range(n):
            # Row views and a tile index from 0: the loop form LLVM vectorises; branch-free bodies
            # (both phases computed, the right one kept by selects) for the same reason.
            vi, qi, fi, si = values[i], quality[i], flags[i], scores[i]
            if steady:
                for jj in range(w):
                    j = j0 + jj
                    v = vi[j]
                    use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                    d = v - mean[j]
                    z = 0.0 if d == 0.0 else d / sig[jj]
                    hi = s_hi[j] + z - k_ref[j]
                    hi = hi if hi > 0.0 else 0.0
                    lo = s_lo[j] - z - k_ref[j]
                    lo = lo if lo > 0.0 else 0.0
                    stat = hi if hi > lo else lo
                    fire = use & (stat > h[j])
                    fired += fire
                    fi[j] |= np.uint32(fire) * bit
                    si[j] = stat if use else np.nan
                    s_hi[j] = (0.0 if fire else hi) if use else s_hi[j]
                    s_lo[j] = (0.0 if fire else lo) if use else s_lo[j]
                continue
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                c = count[j]
                learning = use & (c < warmup[j])
                judged = use & (c >= warmup[j])
                m = mean[j]
                d = v - m
                c1 = c + 1
                new_mean = m + d / c1
                new_m2 = m2[j] + d * (v - new_mean)
                sd = math.sqrt(m2[j] / (c - 1))
                sigma = sd if sd > min_sigma[j] else min_sigma[j]
                z = 0.0 if d == 0.0 else d / sigma
                hi = s_hi[j] + z - k_ref[j]
                hi = hi if hi > 0.0 else 0.0
                lo = s_lo[j] - z - k_ref[j]
                lo = lo if lo > 0.0 else 0.0
                stat = hi if hi > lo else lo
                fire = judged & (stat > h[j])
                fired += fire
                fi[j] |= np.uint32(fire) * bit | np.uint32(learning) * warm_bit
                si[j] = stat if judged else np.nan
                mean[j] = new_mean if learning else m
                m2[j] = new_m2 if learning else m2[j]
                count[j] = c1 if learning else c
                s_hi[j] = (0.0 if fire else hi) if judged else s_hi[j]
                s_lo[j] = (0.0 if fire else lo) if judged else s_lo[j]
    return fired
