"""`rate_of_change`: flag a sample that moved faster than `max_rate` (units per second) since the
previous usable sample of its tag.

The rate is taken against the previous *usable* sample (good or uncertain quality, finite value), so a
bad-comm gap or a NaN never becomes a reference; after a gap the change is spread over the whole gap,
which is what the process really did. A timestamp that does not advance (duplicate or a clock step
backwards) cannot give a rate: the sample is not judged but becomes the new reference.

Speed: tags are walked in tiles of TILE with all rows of the batch per tile, so a tile's parameters and
state stay in L1 across rows; state is loaded before and stored after everything else, unconditionally,
so that nothing becomes a masked store (slow on AVX2). What is left is the two float64 divisions per
sample (the time step in seconds, then the rate), which the score needs as they are, and on AVX2 a
scalar int64 -> float64 conversion of the time step (AVX2 has no packed one; an exact vectorised
conversion, the high and low 32 bits apart, measured no faster): docs/filters.md, "Cost".
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 256  # tags per tile: parameters and state of a tile fit in a 32 KB L1 data cache


@njit(cache=True, nogil=True, error_model="numpy")
def rate_of_change_kernel(
    ts: np.ndarray, values: np.ndarray, quality: np.ndarray, on: np.ndarray, max_rate: np.ndarray,
    last_v: np.ndarray, last_t: np.ndarray, has_last: np.ndarray,
    bit: np.uint32, warm_bit: np.uint32, flags: np.ndarray, scores: np.ndarray,
) -> int:
    """Sets `bit` where |dv/dt| > max_rate; the first usable sample of a tag is warm-up (no reference).

    scores gets the rate in units per second (NaN where not judged). State: last usable value and
    time, and whether there is one.
    """
    n, k = values.shape
    fired = 0
    for tile in range((k + TILE - 1) // TILE):
        j0 = tile * TILE
        w = min(TILE, k - j0)
        for i in range(n):
            # Row views, a tile index from 0 and a branch-free body: the form LLVM vectorises.
            ti, vi, qi, fi, si = ts[i], values[i], quality[i], flags[i], scores[i]
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                t = ti[j]
                # State loaded up front and stored unconditionally (a select of two loaded values),
                # after the flag and score stores: written as `last_v[j] = v if use else last_v[j]`,
                # LLVM turns the store into a masked store, which AVX2 (Zen 3) runs so slowly that
                # the two of them cost this loop 15-40 % (0.32 -> 0.37 G samples/s without them).
                lv = last_v[j]
                lt = last_t[j]
                hl = has_last[j]
                use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                known = hl != 0
                dt = t - lt
                judged = use & known & (dt > 0)
                rate = abs(v - lv) / (dt / 1e9)
                fire = judged & (rate > max_rate[j])
                fired += fire
                fi[j] |= np.uint32(fire) * bit | np.uint32(use & ~known) * warm_bit
                si[j] = rate if judged else np.nan
                last_v[j] = v if use else lv
                last_t[j] = t if use else lt
                has_last[j] = hl | np.uint8(use)
    return fired
