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
def _idle_while_warm(
    values: np.ndarray, quality: np.ndarray, on: np.ndarray, warmup: np.ndarray, count: np.ndarray, j0: int,
    w: int,
) -> bool:
    """Whether every tag of the tile still learning its baseline has no usable sample in this batch.

    Such a tag does nothing the steady loop would do differently (an unusable sample is neither
    judged nor flagged WARMUP and changes no state), so the tile may still take the steady loop:
    without this, one dead sensor (bad quality for good) would keep its tile of 256 tags in the
    learning loop, with its square root and three divisions per sample, for ever. Scalar, but it
    only looks at the tags still learning, and stops at the first usable sample.
    """
    for jj in range(w):
        j = j0 + jj
        if on[j] != 0 and count[j] < warmup[j]:
            for i in range(values.shape[0]):
                if (quality[i, j] & 0x80) == 0 and np.isfinite(values[i, j]):
                    return False
    return True


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
            c = count[j]
            ms = min_sigma[j]
            steady &= (on[j] == 0) | (c >= warmup[j])
            sd = math.sqrt(m2[j] / (c - 1))
            sig[jj] = sd if sd > ms else ms
        if not steady:
            steady = _idle_while_warm(values, quality, on, warmup, count, j0, w)
        for i in range(n):
            # Row views and a tile index from 0: the loop form LLVM vectorises; branch-free bodies
            # (both phases computed, the right one kept by selects) for the same reason.
            vi, qi, fi, si = values[i], quality[i], flags[i], scores[i]
            if steady:
                for jj in range(w):
                    j = j0 + jj
                    v = vi[j]
                    # Every load up front, every store unconditional (a select between loaded
                    # values) and none inside a conditional expression: `x[j] = a if c else x[j]`
                    # or a load in one arm of a select becomes a masked store or load, which AVX2
                    # (Zen 3) runs several times slower than plain ones (without them the loop went
                    # from 0.28 to 0.52 G samples/s).
                    sg = sig[jj]
                    shi = s_hi[j]
                    slo = s_lo[j]
                    kr = k_ref[j]
                    use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                    d = v - mean[j]
                    z = 0.0 if d == 0.0 else d / sg
                    hi = shi + z - kr
                    hi = hi if hi > 0.0 else 0.0
                    lo = slo - z - kr
                    lo = lo if lo > 0.0 else 0.0
                    stat = hi if hi > lo else lo
                    fire = use & (stat > h[j])
                    fired += fire
                    fi[j] |= np.uint32(fire) * bit
                    si[j] = stat if use else np.nan
                    keep = fire | ~use
                    s_hi[j] = (0.0 if fire else shi) if keep else hi
                    s_lo[j] = (0.0 if fire else slo) if keep else lo
                continue
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                c = count[j]
                m = mean[j]
                m2j = m2[j]
                shi = s_hi[j]
                slo = s_lo[j]
                kr = k_ref[j]
                wu = warmup[j]
                ms = min_sigma[j]
                use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                learning = use & (c < wu)
                judged = use & (c >= wu)
                d = v - m
                c1 = c + 1
                new_mean = m + d / c1
                new_m2 = m2j + d * (v - new_mean)
                sd = math.sqrt(m2j / (c - 1))
                sigma = sd if sd > ms else ms
                z = 0.0 if d == 0.0 else d / sigma
                hi = shi + z - kr
                hi = hi if hi > 0.0 else 0.0
                lo = slo - z - kr
                lo = lo if lo > 0.0 else 0.0
                stat = hi if hi > lo else lo
                fire = judged & (stat > h[j])
                fired += fire
                fi[j] |= np.uint32(fire) * bit | np.uint32(learning) * warm_bit
                si[j] = stat if judged else np.nan
                mean[j] = new_mean if learning else m
                m2[j] = new_m2 if learning else m2j
                count[j] = c + learning
                s_hi[j] = (0.0 if fire else hi) if judged else shi
                s_lo[j] = (0.0 if fire else lo) if judged else slo
    return fired
