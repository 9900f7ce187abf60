"""`flatline`: a stuck sensor, whose value stays within `tolerance` of where the run started for at
least `min_samples` usable samples or `min_duration_ns` (either may be 0 = not used).

The run is measured against the value that started it, not sample to sample, so a slow creep in
steps below the tolerance still ends the run. Bad-quality samples and NaN neither end nor extend a
run: a stuck transmitter with an occasional comm timeout is still stuck.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def flatline_kernel(
    ts: np.ndarray, values: np.ndarray, quality: np.ndarray, on: np.ndarray, tolerance: np.ndarray,
    min_samples: np.ndarray, min_duration_ns: np.ndarray, ref_v: np.ndarray, run_start: np.ndarray,
    run_count: np.ndarray, bit: np.uint32, flags: np.ndarray,
) -> int:
    """Sets `bit` on every sample of a run once it is long enough (so the flagged span is the stuck span)."""
    n, k = values.shape
    fired = 0
    for i in range(n):
        for j in range(k):
            v = values[i, j]
            if on[j] == 0 or (quality[i, j] & 0x80) != 0 or not np.isfinite(v):
                continue
            t = ts[i, j]
            if run_count[j] > 0 and abs(v - ref_v[j]) <= tolerance[j]:
                run_count[j] += 1
            else:
                ref_v[j] = v
                run_start[j] = t
                run_count[j] = 1
            if (min_samples[j] > 0 and run_count[j] >= min_samples[j]) or (
                min_duration_ns[j] > 0 and t - run_start[j] >= min_duration_ns[j]
            ):
                flags[i, j] |= bit
                fired += 1
    return fired
