"""`ewma_zscore`: the distance of each sample from an exponentially weighted mean, in exponentially
weighted standard deviations.

Only usable samples (good or uncertain quality, finite value) update the mean and variance, so a
NaN, an Inf or a bad-comm gap never poisons them. During the first `warmup` usable samples the weight
is max(alpha, 1/count): the mean and variance start as the plain running mean and (population)
variance and hand over to the EWMA smoothly, instead of starting from an arbitrary 0. Those samples
are flagged WARMUP and not judged.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def ewma_zscore_kernel(
    values: np.ndarray, quality: np.ndarray, on: np.ndarray, alpha: np.ndarray, threshold: np.ndarray,
    warmup: np.ndarray, min_sigma: np.ndarray, mean: np.ndarray, var: np.ndarray, count: np.ndarray,
    bit: np.uint32, warm_bit: np.uint32, flags: np.ndarray, scores: np.ndarray,
) -> int:
    """Sets `bit` where |z| > threshold, writes |z| to scores (NaN where not judged).

    z uses the mean and variance *before* the sample is folded in: a spike is judged against the
    history it breaks from. sigma is floored at min_sigma so that a tag that was perfectly constant
    does not alarm on its first least-significant-bit change (0/0 counts as z = 0, x/0 as infinite).
    """
    n, k = values.shape
    fired = 0
    for i in range(n):
        # Branch-free body (selects instead of ifs), so the loop over tags compiles to SIMD code.
        for j in range(k):
            v = values[i, j]
            use = (on[j] != 0) & ((quality[i, j] & 0x80) == 0) & np.isfinite(v)
            c = count[j]
            m = mean[j]
            s2 = var[j]
            d = v - m
            judged = use & (c >= warmup[j])
            sd = math.sqrt(s2)
            sigma = sd if sd > min_sigma[j] else min_sigma[j]
            z = 0.0 if d == 0.0 else abs(d) / sigma
            fire = judged & (z > threshold[j])
            flags[i, j] |= np.uint32(fire) * bit | np.uint32(use & ~judged) * warm_bit
            fired += fire
            inv = 1.0 / (c + 1)
            a = alpha[j] if alpha[j] > inv else inv
            incr = a * d
            mean[j] = m + incr if use else m
            var[j] = (1.0 - a) * (s2 + d * incr) if use else s2
            count[j] = c + use
            scores[i, j] = z if judged else np.nan
    return fired
