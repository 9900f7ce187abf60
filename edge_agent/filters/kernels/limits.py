"""`limits`: flag samples outside [lo, hi].

One call covers a whole batch of a device (rows x tags); tags without limits carry -inf/+inf and
never fire. NaN compares false both ways, so it never fires either, and bad-quality samples are
skipped: a dead sensor is a quality problem, not a process alarm.
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 512  # tags per tile: the four limits of a tile (16 KB) stay in L1 across the rows


@njit(cache=True, nogil=True)
def limits_kernel(
    values: np.ndarray, quality: np.ndarray, lo: np.ndarray, hi: np.ndarray, bit: np.uint32, flags: np.ndarray
) -> int:
    """Set `bit` in flags where a good/uncertain sample is below lo or above hi; returns how many fired."""
    n, k = values.shape
    fired = 0
    for i in range(n):
        for j in range(k):
            v = values[i, j]
            if (quality[i, j] & 0x80) == 0 and (v < lo[j] or v > hi[j]):
                flags[i, j] |= bit
                fired += 1
    return fired


@njit(cache=True, nogil=True)
def severity_limits_kernel(
    values: np.ndarray, quality: np.ndarray, lo: np.ndarray, hi: np.ndarray, lolo: np.ndarray,
    hihi: np.ndarray, bit: np.uint32, severe_bit: np.uint32, flags: np.ndarray,
) -> int:
    """Both severities in one pass, so a tag with lolo/hihi costs one read of the batch, not two.

    Written without branches (the comparisons become 0/1 multipliers) so that the compiler turns the
    inner loop over tags into SIMD code; tags without limits carry -inf/+inf and never fire. Tags are
    walked in tiles (row views, index from 0: the loop form LLVM vectorises) so that a tile's limits
    stay in L1 across the rows of the batch.
    """
    n, k = values.shape
    fired = 0
    for tile in range((k + TILE - 1) // TILE):
        j0 = tile * TILE
        w = min(TILE, k - j0)
        for i in range(n):
            vi, qi, fi = values[i], quality[i], flags[i]
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                ok = (qi[j] & 0x80) == 0
                out = ok & ((v < lo[j]) | (v > hi[j]))
                severe = ok & ((v < lolo[j]) | (v > hihi[j]))
                fi[j] |= np.uint32(out) * bit | np.uint32(severe) * severe_bit
                fired += out
    return fired
