"""`deadband`: report by exception. A sample is a report (DEADBAND bit set) when it moved more than
the band from the last *reported* value, or when the tag has been silent for `max_silence_ns`.

The band is max(absolute, percent/100 x |last reported value|). Measured from the last report, not
the previous sample, so a slow creep in small steps is still reported once it adds up to the band.
A sample that turns unusable (bad quality, NaN, Inf) is reported once, when it turns, and the next
usable one is always reported: the consumer must see the sensor die and come back.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NONE, GOOD, BAD = 0, 1, 2  # what the last report was


@njit(cache=True, nogil=True, error_model="numpy")
def deadband_kernel(
    ts: np.ndarray, values: np.ndarray, quality: np.ndarray, on: np.ndarray, band_abs: np.ndarray,
    band_pct: np.ndarray, max_silence_ns: np.ndarray, last_v: np.ndarray, last_t: np.ndarray,
    last_state: np.ndarray, bit: np.uint32, flags: np.ndarray,
) -> int:
    """Sets `bit` on the samples to report; returns how many. max_silence_ns 0 = never forced."""
    n, k = values.shape
    reported = 0
    for i in range(n):
        for j in range(k):
            if on[j] == 0:
                continue
            v = values[i, j]
            t = ts[i, j]
            st = last_state[j]
            silent = max_silence_ns[j] > 0 and st != 0 and t - last_t[j] >= max_silence_ns[j]
            if (quality[i, j] & 0x80) != 0 or not np.isfinite(v):
                report = st != 2 or silent
                if report:
                    last_state[j] = 2
                    last_t[j] = t
            else:
                if st != 1:
                    report = True
                else:
                    lv = last_v[j]
                    band = max(band_abs[j], band_pct[j] * abs(lv) / 100.0)
                    report = abs(v - lv) > band or silent
                if report:
                    last_state[j] = 1
                    last_v[j] = v
                    last_t[j] = t
            if report:
                flags[i, j] |= bit
                reported += 1
    return reported
