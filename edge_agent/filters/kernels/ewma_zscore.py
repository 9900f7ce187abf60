"""`ewma_zscore`: the distance of each sample from an exponentially weighted mean, in exponentially
weighted standard deviations.

Only usable samples (good or uncertain quality, finite value) update the mean and variance, so a
NaN, an Inf or a bad-comm gap never poisons them. During the first `warmup` usable samples the weight
is max(alpha, 1/count): the mean and variance start as the plain running mean and (population)
variance and hand over to the EWMA smoothly, instead of starting from an arbitrary 0. Those samples
are flagged WARMUP and not judged.

Speed (docs/filters.md, "Cost"): the tags are walked in tiles of TILE, all rows of the batch per tile,
so a tile's parameters and state stay in L1 across the rows instead of streaming the whole plant's
state through the cache once per row. Once every tag of a tile has left warm-up and 1/(count+1) can
no longer beat alpha (it only shrinks), the tile takes a loop without that division: what remains per
sample is one square root and one division (|d| / sigma), which is what bounds this filter.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

TILE = 256  # tags per tile: ~15 KB of parameters and state, well inside a 32 KB L1 data cache


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
    for t in range((k + TILE - 1) // TILE):
        j0 = t * TILE
        w = min(TILE, k - j0)
        # Steady tile: no tag can be in warm-up or take a weight above alpha during this call, since
        # count only grows (and a tag that is off never uses a sample).
        steady = True
        for j in range(j0, j0 + w):
            if on[j] != 0 and (count[j] < warmup[j] or 1.0 / (count[j] + 1) > alpha[j]):
                steady = False
        for i in range(n):
            # Row views and a tile index from 0: the form LLVM vectorises (a loop from j0 to j1 over
            # the 2-D arrays is left scalar). Branch-free bodies (selects, not ifs) for the same reason.
            vi, qi, fi, si = values[i], quality[i], flags[i], scores[i]
            if steady:
                for jj in range(w):
                    j = j0 + jj
                    v = vi[j]
                    use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                    m = mean[j]
                    s2 = var[j]
                    d = v - m
                    sd = math.sqrt(s2)
                    sigma = sd if sd > min_sigma[j] else min_sigma[j]
                    z = 0.0 if d == 0.0 else abs(d) / sigma
                    fire = use & (z > threshold[j])
                    fi[j] |= np.uint32(fire) * bit
                    fired += fire
                    a = alpha[j]
                    incr = a * d
                    mean[j] = m + incr if use else m
                    var[j] = (1.0 - a) * (s2 + d * incr) if use else s2
                    count[j] += use
                    si[j] = z if use else np.nan
                continue
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                c = count[j]
                m = mean[j]
                s2 = var[j]
                d = v - m
                judged = use & (c >= warmup[j])
                sd = math.sqrt(s2)
                sigma = sd if sd > min_sigma[j] else min_sigma[j]
                z = 0.0 if d == 0.0 else abs(d) / sigma
                fire = judged & (z > threshold[j])
                fi[j] |= np.uint32(fire) * bit | np.uint32(use & ~judged) * warm_bit
                fired += fire
                inv = 1.0 / (c + 1)
                a = alpha[j] if alpha[j] > inv else inv
                incr = a * d
                mean[j] = m + incr if use else m
                var[j] = (1.0 - a) * (s2 + d * incr) if use else s2
                count[j] = c + use
                si[j] = z if judged else np.nan
    return fired
