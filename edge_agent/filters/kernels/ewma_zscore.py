"""`ewma_zscore`: the distance of each sample from an exponentially weighted mean, in exponentially
weighted standard deviations.

Only usable samples (good or uncertain quality, finite value) update the mean and variance, so a
NaN, an Inf or a bad-comm gap never poisons them. During the first `warmup` usable samples the weight
is max(alpha, 1/count): the mean and variance start as the plain running mean and (population)
variance and hand over to the EWMA smoothly, instead of starting from an arbitrary 0. Those samples
are flagged WARMUP and not judged.

With d = x - mean and s2 = max(var, min_sigma^2) (both before the sample is folded in), the sample
fires when d^2 > threshold^2 * s2, in float64: the same verdict as |d| / sqrt(s2) > threshold but
without a square root or a division, which is what bounded this filter (docs/filters.md, "Cost").
The score |z| is what the frame carries as float32 anyway, so it is computed in float32:
float32(|d|) / sqrt(float32(s2)); IEEE division and square root are correctly rounded, so a plain
NumPy reference doing the same float32 operations agrees bit for bit, and float32 lanes are twice as
many per vector register and far cheaper in the divider.

Speed: the tags are walked in tiles of TILE, all rows of the batch per tile, so a tile's parameters
and state stay in L1 across the rows. Once every tag of a tile is past warm-up and 1/(count+1) can
no longer beat alpha (it only shrinks), the tile takes a steady loop: no warm-up weight, no count
(it has done its job: a steady tag stays steady), and `on` folded into the tile's squared
threshold and floor (NaN for a tag that is off: it never fires and its score is NaN; its mean and
variance, which nothing reads, follow the data). A tag still in warm-up that has no usable sample in
the batch does not keep its tile out of the steady loop (`_idle_while_warm`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 256  # tags per tile: ~15 KB of parameters and state, well inside a 32 KB L1 data cache

F32 = np.float32


@njit(cache=True, nogil=True, error_model="numpy")
def _idle_while_warm(
    values: np.ndarray, quality: np.ndarray, on: np.ndarray, alpha: np.ndarray, warmup: np.ndarray,
    count: np.ndarray, j0: int, w: int,
) -> bool:
    """Whether every tag of the tile still in warm-up has no usable sample in this batch.

    Such a tag does nothing the steady loop would do differently (an unusable sample is neither
    judged nor flagged WARMUP, and leaves mean, variance and count as they were), so the tile may
    still take the steady loop. Without this, one dead sensor (bad quality for good) would keep its
    tile of 256 tags in the warm-up loop for ever, at half the speed. Scalar, but it only looks at
    the tags in warm-up, and stops at the first usable sample.
    """
    for jj in range(w):
        j = j0 + jj
        if on[j] != 0 and (count[j] < warmup[j] or 1.0 / (count[j] + 1) > alpha[j]):
            for i in range(values.shape[0]):
                if (quality[i, j] & 0x80) == 0 and np.isfinite(values[i, j]):
                    return False
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def ewma_zscore_kernel(
    values: np.ndarray, quality: np.ndarray, on: np.ndarray, alpha: np.ndarray, threshold: np.ndarray,
    warmup: np.ndarray, min_sigma: np.ndarray, mean: np.ndarray, var: np.ndarray, count: np.ndarray,
    bit: np.uint32, warm_bit: np.uint32, flags: np.ndarray, scores: np.ndarray,
) -> int:
    """Sets `bit` where d^2 > threshold^2 * s2, writes |z| to scores (NaN where not judged).

    z uses the mean and variance *before* the sample is folded in: a spike is judged against the
    history it breaks from. The variance is floored at min_sigma^2 so that a tag that was perfectly
    constant does not alarm on its first least-significant-bit change (0/0 counts as z = 0, x/0 as
    infinite).
    """
    n, k = values.shape
    fired = 0
    thr2 = np.empty(TILE)
    floor2 = np.empty(TILE)
    for t in range((k + TILE - 1) // TILE):
        j0 = t * TILE
        w = min(TILE, k - j0)
        # Steady tile: no tag can be in warm-up or take a weight above alpha during this call, since
        # count only grows (and a tag that is off never uses a sample).
        steady = True
        for jj in range(w):
            j = j0 + jj
            # Branch-free and every load unconditional (no `and`/`or` short cuts): the form that
            # vectorises without masked loads, which AVX2 runs slowly.
            c = count[j]
            a = alpha[j]
            o = on[j] != 0
            th = threshold[j]
            ms = min_sigma[j]
            steady &= ~(o & ((c < warmup[j]) | (1.0 / (c + 1) > a)))
            thr2[jj] = th * th if o else np.nan
            floor2[jj] = ms * ms if o else np.nan
        if not steady:
            steady = _idle_while_warm(values, quality, on, alpha, warmup, count, j0, w)
        for i in range(n):
            # Row views and a tile index from 0: the form LLVM vectorises (a loop from j0 to j1 over
            # the 2-D arrays is left scalar). Branch-free bodies (selects, not ifs) for the same reason.
            vi, qi, fi, si = values[i], quality[i], flags[i], scores[i]
            if steady:
                for jj in range(w):
                    j = j0 + jj
                    v = vi[j]
                    use = ((qi[j] & 0x80) == 0) & np.isfinite(v)
                    m = mean[j]
                    s2 = var[j]
                    # An unusable sample gets d = 0: mean + alpha * 0 is the mean unchanged, so
                    # only the variance needs a select (and alpha is loaded unconditionally, which
                    # keeps it out of a slow masked load).
                    d = (v if use else m) - m
                    f2 = floor2[jj]
                    s2f = s2 if s2 > f2 else f2
                    fire = d * d > thr2[jj] * s2f
                    fi[j] |= np.uint32(fire) * bit
                    fired += fire
                    a = alpha[j]
                    incr = a * d
                    mean[j] = m + incr
                    nv = (1.0 - a) * (s2 + d * incr)
                    var[j] = nv if use else s2
                    # NaN for an unused sample chosen before the narrowing: one float64 mask, not two.
                    num = F32(abs(d) if use else np.nan)
                    den = F32(s2f)
                    z = num / np.sqrt(den)
                    si[j] = F32(0.0) if (num == F32(0.0)) & (den == F32(0.0)) else z
                continue
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                c = count[j]
                m = mean[j]
                s2 = var[j]
                # d = 0 for an unusable sample, as in the steady loop: the mean then needs no select
                # and alpha is loaded unconditionally (under a select LLVM made it a masked load).
                d = (v if use else m) - m
                judged = use & (c >= warmup[j])
                f2 = floor2[jj]
                s2f = s2 if s2 > f2 else f2
                fire = judged & (d * d > thr2[jj] * s2f)
                fi[j] |= np.uint32(fire) * bit | np.uint32(use & ~judged) * warm_bit
                fired += fire
                inv = 1.0 / (c + 1)
                al = alpha[j]
                a = al if al > inv else inv
                incr = a * d
                mean[j] = m + incr
                var[j] = (1.0 - a) * (s2 + d * incr) if use else s2
                count[j] = c + use
                num = F32(abs(d) if judged else np.nan)
                den = F32(s2f)
                z = num / np.sqrt(den)
                si[j] = F32(0.0) if (num == F32(0.0)) & (den == F32(0.0)) else z
    return fired
