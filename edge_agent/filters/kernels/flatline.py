"""`flatline`: a stuck sensor, whose value stays within `tolerance` of where the run started for at
least `min_samples` usable samples or `min_duration_ns` (either may be 0 = not used).

The run is measured against the value that started it, not sample to sample, so a slow creep in
steps below the tolerance still ends the run. Bad-quality samples and NaN neither end nor extend a
run: a stuck transmitter with an occasional comm timeout is still stuck.

Speed: branch-free (selects) over tiles of TILE tags with all rows of the batch per tile, so the loop
over tags compiles to SIMD code and a tile's parameters and state stay in L1 across the rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 256  # tags per tile: parameters and state of a tile fit in a 32 KB L1 data cache


@njit(cache=True, nogil=True, error_model="numpy")
def flatline_kernel(
    ts: np.ndarray, values: np.ndarray, quality: np.ndarray, on: np.ndarray, tolerance: np.ndarray,
    min_samples: np.ndarray, min_duration_ns: np.ndarray, ref_v: np.ndarray, run_start: np.ndarray,
    run_count: np.ndarray, bit: np.uint32, flags: np.ndarray,
) -> int:
    """Sets `bit` on every sample of a run once it is long enough (so the flagged span is the stuck span)."""
    n, k = values.shape
    fired = 0
    for tile in range((k + TILE - 1) // TILE):
        j0 = tile * TILE
        w = min(TILE, k - j0)
        for i in range(n):
            ti, vi, qi, fi = ts[i], values[i], quality[i], flags[i]
            for jj in range(w):
                j = j0 + jj
                v = vi[j]
                t = ti[j]
                use = (on[j] != 0) & ((qi[j] & 0x80) == 0) & np.isfinite(v)
                # State loaded before any store and stored unconditionally after the flags: with
                # the loads next to the stores, `x[j] = a if c else x[j]` became a masked store,
                # which AVX2 (Zen 3) runs far slower than a plain one (0.50 -> 0.64 G samples/s
                # without the two there were).
                rc = run_count[j]
                ref = ref_v[j]
                start = run_start[j]
                same = (rc > 0) & (abs(v - ref) <= tolerance[j])
                rc1 = rc + 1 if same else 1
                start1 = start if same else t
                fire = use & (((min_samples[j] > 0) & (rc1 >= min_samples[j]))
                              | ((min_duration_ns[j] > 0) & (t - start1 >= min_duration_ns[j])))
                fi[j] |= np.uint32(fire) * bit
                fired += fire
                run_count[j] = rc1 if use else rc
                ref_v[j] = v if use & ~same else ref
                run_start[j] = start1 if use else start
    return fired
