"""Bits of a sample's `flags` word: which filters fired. Frame consumers rely on these positions
(docs/frame-format.md), so a bit, once given, is never reused for something else.

The anomaly bits come first (0-7) because the frame encoder sends a varying flags column as one byte
per sample while only bits 0-7 are set: the common alarms must stay cheap on a metered uplink.
"""

LIMITS = 1 << 0  # outside lo / hi
RATE_OF_CHANGE = 1 << 1  # changed faster than max_rate per second since the previous good sample
EWMA_ZSCORE = 1 << 2  # |z| against the exponentially weighted mean and variance above threshold
HAMPEL = 1 << 3  # more than n_sigmas robust sigmas (1.4826 MAD) from the rolling median
FLATLINE = 1 << 4  # no change beyond tolerance for N samples or a duration: a stuck sensor
CUSUM = 1 << 5  # two-sided cumulative sum of deviations from the learned baseline above h
MULTIVARIATE_T2 = 1 << 6  # Hotelling T² of the device's tag vector above its training limit
MULTIVARIATE_SPE = 1 << 7  # Q / SPE residual of the tag vector above its training limit
LIMITS_SEVERE = 1 << 8  # outside lolo / hihi (set together with LIMITS)
DEADBAND = 1 << 9  # not an alarm: the sample is a report (moved beyond the band, or max silence)
WARMUP = 1 << 10  # not an alarm: a stateful filter of this tag has not learned enough to judge yet

ANOMALY = (LIMITS | RATE_OF_CHANGE | EWMA_ZSCORE | HAMPEL | FLATLINE | CUSUM | MULTIVARIATE_T2
           | MULTIVARIATE_SPE | LIMITS_SEVERE)
"""Bits that mean "something is abnormal": these raise events and trigger full-rate reporting."""

NAMES: dict[int, str] = {
    LIMITS: "limits", RATE_OF_CHANGE: "rate_of_change", EWMA_ZSCORE: "ewma_zscore", HAMPEL: "hampel",
    FLATLINE: "flatline", CUSUM: "cusum", MULTIVARIATE_T2: "multivariate_t2",
    MULTIVARIATE_SPE: "multivariate_spe", LIMITS_SEVERE: "limits_severe", DEADBAND: "deadband",
    WARMUP: "warmup",
}


def describe(word: int) -> str:
    """`limits|warmup` for a flags word: what the replay CSV and logs show beside the number."""
    return "|".join(name for bit, name in NAMES.items() if word & bit)
