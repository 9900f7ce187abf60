"""Every filter kernel against a plain Python / NumPy reference kept here, for any batch hypothesis can
think of: NaN, ±Inf, bad quality, duplicate and backward timestamps, and batches split anywhere (the
state carried between calls must give the same flags as one call over all rows)."""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.filters import flags as F
from edge_agent.filters.kernels.cusum import cusum_kernel
from edge_agent.filters.kernels.deadband import deadband_kernel
from edge_agent.filters.kernels.ewma_zscore import ewma_zscore_kernel
from edge_agent.filters.kernels.flatline import flatline_kernel
from edge_agent.filters.kernels.hampel import MAD_TO_SIGMA, hampel_kernel
from edge_agent.filters.kernels.limits import severity_limits_kernel
from edge_agent.filters.kernels.multivariate import NEVER, Layout, fit_model, multivariate_kernel
from edge_agent.filters.kernels.rate_of_change import rate_of_change_kernel

U32 = np.uint32
BIT, WARM = U32(1 << 3), U32(F.WARMUP)
EXAMPLES = settings(max_examples=120, deadline=None)


def usable(q: int, v: float) -> bool:
    return (q & 0x80) == 0 and math.isfinite(v)


# --------------------------------------------------------------------------------------------------
# Batches: values on a coarse grid (so ties, repeats and flat runs happen), with specials mixed in.
# --------------------------------------------------------------------------------------------------

special = st.sampled_from([math.nan, math.inf, -math.inf])
grid = st.integers(-40, 40).map(lambda x: x / 4)
wide = st.floats(-1e6, 1e6, allow_nan=False)
values_el = st.one_of(grid, grid, grid, wide, special)
quality_el = st.sampled_from([0x00, 0x00, 0x00, 0x40, 0x80, 0x81, 0x84])


@st.composite
def batches(draw, max_rows: int = 40, max_tags: int = 5):
    n = draw(st.integers(0, max_rows))
    k = draw(st.integers(1, max_tags))
    values = draw(hnp.arrays(np.float64, (n, k), elements=values_el))
    quality = draw(hnp.arrays(np.uint8, (n, k), elements=quality_el))
    steps = draw(hnp.arrays(np.int64, (n, k), elements=st.sampled_from([1_000_000_000, 1_000_000_000, 250_000_000,
                                                                          0, -500_000_000, 60_000_000_000])))
    ts = 1_700_000_000_000_000_000 + np.cumsum(steps, axis=0)
    on = draw(hnp.arrays(np.uint8, (k,), elements=st.sampled_from([1, 1, 1, 0])))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    return ts, values, quality, on, cuts


def chunks(n: int, cuts: list[int]):
    edges = [0, *cuts, n]
    return [(a, b) for a, b in itertools.pairwise(edges) if b >= a]


def run_chunked(kernel, ts, values, quality, cuts, before, after, scores=True):
    """Call `kernel` once per chunk: before(a, b) gives the leading args, after(...) the trailing ones."""
    n, k = values.shape
    out_flags = np.zeros((n, k), np.uint32)
    out_scores = np.full((n, k), np.nan, np.float32)
    for a, b in chunks(n, cuts):
        f = out_flags[a:b]
        args = [*before(a, b), *after, f]
        if scores:
            s = np.empty((b - a, k), np.float32)
            kernel(*args, s)
            out_scores[a:b] = s
        else:
            kernel(*args)
    return out_flags, out_scores


def assert_same(got_flags, got_scores, ref_flags, ref_scores):
    np.testing.assert_array_equal(got_flags, ref_flags)
    if ref_scores is not None:
        with np.errstate(over="ignore"):  # a score beyond float32 becomes inf, in the kernel too
            np.testing.assert_array_equal(got_scores, np.asarray(ref_scores, np.float32))


# --------------------------------------------------------------------------------------------------
# limits (with severities)
# --------------------------------------------------------------------------------------------------


def limits_reference(values, quality, lo, hi, lolo, hihi):
    ok = (quality & 0x80) == 0
    with np.errstate(invalid="ignore"):
        out = ok & ((values < lo) | (values > hi))
        severe = ok & ((values < lolo) | (values > hihi))
    return out.astype(np.uint32) * F.LIMITS | severe.astype(np.uint32) * F.LIMITS_SEVERE


@EXAMPLES
@given(batches(), st.data())
def test_limits(batch, data):
    _, values, quality, _, _ = batch
    k = values.shape[1]
    lo = data.draw(hnp.arrays(np.float64, (k,), elements=st.one_of(st.just(-np.inf), grid)))
    lolo = lo - data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.5, 3.0, np.inf])))
    hi = np.where(np.isfinite(lo), lo, 0.0) + data.draw(
        hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.25, 2.0, np.inf])))
    hihi = hi + 1.0
    flags = np.zeros(values.shape, np.uint32)
    fired = severity_limits_kernel(values, quality, lo, hi, lolo, hihi, U32(F.LIMITS), U32(F.LIMITS_SEVERE), flags)
    ref = limits_reference(values, quality, lo, hi, lolo, hihi)
    np.testing.assert_array_equal(flags, ref)
    assert fired == int(((ref & F.LIMITS) != 0).sum())


# --------------------------------------------------------------------------------------------------
# rate_of_change
# --------------------------------------------------------------------------------------------------


def roc_reference(ts, values, quality, on, max_rate):
    n, k = values.shape
    fl = np.zeros((n, k), np.uint32)
    sc = np.full((n, k), np.nan)
    for j in range(k):
        last = None
        for i in range(n):
            v, t = float(values[i, j]), int(ts[i, j])
            if not on[j] or not usable(quality[i, j], v):
                continue
            if last is None:
                fl[i, j] |= F.WARMUP
            elif t > last[1]:
                rate = abs(v - last[0]) / ((t - last[1]) / 1e9)
                sc[i, j] = rate
                if rate > max_rate[j]:
                    fl[i, j] |= BIT
            last = (v, t)
    return fl, sc


@EXAMPLES
@given(batches(), st.data())
def test_rate_of_change(batch, data):
    ts, values, quality, on, cuts = batch
    k = values.shape[1]
    max_rate = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.25, 1.0, 5.0, 1e9])))
    state = (np.zeros(k), np.zeros(k, np.int64), np.zeros(k, np.uint8))
    got = run_chunked(rate_of_change_kernel, ts, values, quality, cuts,
                      lambda a, b: (ts[a:b], values[a:b], quality[a:b], on, max_rate, *state), (BIT, WARM))
    assert_same(*got, *roc_reference(ts, values, quality, on, max_rate))


# --------------------------------------------------------------------------------------------------
# ewma_zscore
# --------------------------------------------------------------------------------------------------


def ewma_reference(values, quality, on, alpha, threshold, warmup, min_sigma):
    n, k = values.shape
    fl = np.zeros((n, k), np.uint32)
    sc = np.full((n, k), np.nan)
    for j in range(k):
        mean = var = 0.0
        count = 0
        for i in range(n):
            v = float(values[i, j])
            if not on[j] or not usable(quality[i, j], v):
                continue
            d = v - mean
            if count >= warmup[j]:
                # The documented test (docs/filters.md): squares in float64 for the verdict, the
                # score in float32 with correctly rounded division and square root.
                s2 = max(var, min_sigma[j] * min_sigma[j])
                num, den = np.float32(abs(d)), np.float32(s2)
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    z = np.float32(0.0) if num == 0 and den == 0 else num / np.sqrt(den)
                sc[i, j] = z
                if d * d > threshold[j] * threshold[j] * s2:
                    fl[i, j] |= BIT
            else:
                fl[i, j] |= F.WARMUP
            a = max(alpha[j], 1.0 / (count + 1))
            mean, var = mean + a * d, (1.0 - a) * (var + d * (a * d))
            count += 1
    return fl, sc


@EXAMPLES
@given(batches(), st.data())
def test_ewma_zscore(batch, data):
    ts, values, quality, on, cuts = batch
    k = values.shape[1]
    alpha = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.01, 0.1, 0.3, 0.9])))
    threshold = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.5, 2.0, 4.0])))
    warmup = data.draw(hnp.arrays(np.int64, (k,), elements=st.integers(2, 8)))
    min_sigma = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.0, 0.1])))
    state = (np.zeros(k), np.zeros(k), np.zeros(k, np.int64))
    got = run_chunked(ewma_zscore_kernel, ts, values, quality, cuts,
                      lambda a, b: (values[a:b], quality[a:b], on, alpha, threshold, warmup, min_sigma, *state),
                      (BIT, WARM))
    assert_same(*got, *ewma_reference(values, quality, on, alpha, threshold, warmup, min_sigma))


@EXAMPLES
@given(batches(), st.data())
def test_ewma_zscore_steady(batch, data):
    """Past warm-up the kernel takes its steady loop (no count, `on` folded into the tile's
    parameters): a clean prefix long enough for every alpha puts the later calls on it."""
    _ts, values, quality, on, cuts = batch
    n, k = values.shape
    alpha = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.02, 0.1, 0.3, 0.9])))
    threshold = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.5, 2.0, 4.0])))
    warmup = data.draw(hnp.arrays(np.int64, (k,), elements=st.integers(2, 8)))
    min_sigma = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.0, 0.1, 1.0])))
    pre = 60
    spread = data.draw(st.sampled_from([0.0, 0.05, 2.0]))  # a constant tag; with min_sigma 0.1 or 1 the floor binds
    prefix = np.round(np.random.default_rng(n * 7 + k).normal(0, spread, (pre, k)) * 4) / 4
    values = np.concatenate([prefix, values])
    quality = np.concatenate([np.zeros((pre, k), np.uint8), quality])
    state = (np.zeros(k), np.zeros(k), np.zeros(k, np.int64))
    got = run_chunked(ewma_zscore_kernel, None, values, quality, [pre, *[pre + c for c in cuts]],
                      lambda a, b: (values[a:b], quality[a:b], on, alpha, threshold, warmup, min_sigma, *state),
                      (BIT, WARM))
    count = np.where(on != 0, pre, 0)  # the steady loop stops counting: the count after the prefix
    assert ((on == 0) | ((count >= warmup) & (1.0 / (count + 1) <= alpha))).all()
    np.testing.assert_array_equal(state[2], count)  # so every later call did take the steady loop
    assert_same(*got, *ewma_reference(values, quality, on, alpha, threshold, warmup, min_sigma))


def with_dead_tag(values, quality, on, pre: int, seed: int):
    """A clean prefix of `pre` rows before the batch, and in front of its tags one more tag that is on
    but all bad quality through the prefix (a dead sensor, for ever in warm-up); in the batch part it
    gets whatever hypothesis drew for tag 0, so it may come back to life."""
    k = values.shape[1]
    prefix = np.round(np.random.default_rng(seed).normal(0, 2.0, (pre, k + 1)) * 4) / 4
    values = np.concatenate([prefix, np.concatenate([values[:, :1], values], axis=1)])
    q = np.zeros((pre, k + 1), np.uint8)
    q[:, 0] = 0x80
    quality = np.concatenate([q, np.concatenate([quality[:, :1], quality], axis=1)])
    return values, quality, np.concatenate([[1], on]).astype(np.uint8)


@EXAMPLES
@given(batches(), st.data())
def test_dead_tag_in_warm_up_keeps_the_tile_steady(batch, data):
    """A tag in warm-up with no usable sample in a batch lets its tile take the steady loop (ewma_zscore
    and cusum): same flags and scores as the references, and while the dead tag stays dead, ewma's
    steady loop (which keeps no count) is what the live tags took."""
    _ts, values, quality, on, cuts = batch
    n, k = values.shape
    pre = 60
    values, quality, on = with_dead_tag(values, quality, on, pre, n * 7 + k)
    k += 1
    pick = lambda xs, dtype=np.float64: data.draw(hnp.arrays(dtype, (k,), elements=st.sampled_from(xs)))  # noqa: E731
    alpha, threshold = pick([0.02, 0.1, 0.3]), pick([0.5, 2.0, 4.0])
    warmup, min_sigma = pick([2, 5, 8], np.int64), pick([0.0, 0.1])
    cut_rows = [pre, *[pre + c for c in cuts]]
    state = (np.zeros(k), np.zeros(k), np.zeros(k, np.int64))
    got = run_chunked(ewma_zscore_kernel, None, values, quality, cut_rows,
                      lambda a, b: (values[a:b], quality[a:b], on, alpha, threshold, warmup, min_sigma, *state),
                      (BIT, WARM))
    assert_same(*got, *ewma_reference(values, quality, on, alpha, threshold, warmup, min_sigma))
    dead_throughout = not any(usable(q, v) for q, v in zip(quality[pre:, 0], values[pre:, 0], strict=True))
    if dead_throughout:  # otherwise the sensor came back, and the calls from then on did warm up
        np.testing.assert_array_equal(state[2][(on != 0) & (np.arange(k) > 0)], pre)
    kref, h = pick([0.0, 0.5]), pick([1.0, 4.0])
    state = tuple(np.zeros(k) if i != 2 else np.zeros(k, np.int64) for i in range(5))
    got = run_chunked(cusum_kernel, None, values, quality, cut_rows,
                      lambda a, b: (values[a:b], quality[a:b], on, kref, h, warmup, min_sigma, *state), (BIT, WARM))
    assert_same(*got, *cusum_reference(values, quality, on, kref, h, warmup, min_sigma))


# --------------------------------------------------------------------------------------------------
# hampel: the reference keeps a plain deque window and asks numpy for median and MAD
# --------------------------------------------------------------------------------------------------


def hampel_reference(values, quality, on, window, n_sigmas, min_sigma):
    n, k = values.shape
    fl = np.zeros((n, k), np.uint32)
    sc = np.full((n, k), np.nan)
    for j in range(k):
        win: deque[float] = deque(maxlen=int(window[j]))
        for i in range(n):
            v = float(values[i, j])
            if not on[j] or not usable(quality[i, j], v):
                continue
            if len(win) == window[j]:
                w = np.array(win)
                med = float(np.median(w))
                mad = float(np.median(np.abs(w - med)))
                sigma = max(MAD_TO_SIGMA * mad, min_sigma[j])
                dev = abs(v - med)
                z = dev / sigma if sigma > 0 else (0.0 if dev == 0 else math.inf)
                sc[i, j] = z
                if z > n_sigmas[j]:
                    fl[i, j] |= BIT
            else:
                fl[i, j] |= F.WARMUP
            win.append(v)
    return fl, sc


@EXAMPLES
@given(batches(max_rows=60), st.data())
def test_hampel(batch, data):
    ts, values, quality, on, cuts = batch
    k = values.shape[1]
    window = data.draw(hnp.arrays(np.int64, (k,), elements=st.one_of(st.integers(3, 9), st.sampled_from([16, 31, 32]))))
    n_sigmas = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([1.0, 3.0])))
    min_sigma = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.0, 0.2])))
    wmax = int(window.max())
    state = (np.zeros((k, wmax)), np.zeros((k, wmax)), np.zeros(k, np.int64), np.zeros(k, np.int64))
    got = run_chunked(hampel_kernel, ts, values, quality, cuts,
                      lambda a, b: (values[a:b], quality[a:b], on, window, n_sigmas, min_sigma, *state), (BIT, WARM))
    assert_same(*got, *hampel_reference(values, quality, on, window, n_sigmas, min_sigma))


# --------------------------------------------------------------------------------------------------
# flatline
# --------------------------------------------------------------------------------------------------


def flatline_reference(ts, values, quality, on, tolerance, samples, duration):
    n, k = values.shape
    fl = np.zeros((n, k), np.uint32)
    for j in range(k):
        run: list[tuple[float, int]] = []  # the usable samples of the current run
        for i in range(n):
            v, t = float(values[i, j]), int(ts[i, j])
            if not on[j] or not usable(quality[i, j], v):
                continue
            if run and abs(v - run[0][0]) <= tolerance[j]:
                run.append((v, t))
            else:
                run = [(v, t)]
            if (samples[j] and len(run) >= samples[j]) or (duration[j] and t - run[0][1] >= duration[j]):
                fl[i, j] |= BIT
    return fl


@EXAMPLES
@given(batches(), st.data())
def test_flatline(batch, data):
    ts, values, quality, on, cuts = batch
    k = values.shape[1]
    tolerance = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.25, 1.0])))
    samples = data.draw(hnp.arrays(np.int64, (k,), elements=st.sampled_from([0, 2, 3, 5])))
    duration = data.draw(hnp.arrays(np.int64, (k,), elements=st.sampled_from([0, 2_000_000_000, 30_000_000_000])))
    state = (np.zeros(k), np.zeros(k, np.int64), np.zeros(k, np.int64))
    got, _ = run_chunked(flatline_kernel, ts, values, quality, cuts,
                         lambda a, b: (ts[a:b], values[a:b], quality[a:b], on, tolerance, samples, duration, *state),
                         (BIT,), scores=False)
    np.testing.assert_array_equal(got, flatline_reference(ts, values, quality, on, tolerance, samples, duration))


# --------------------------------------------------------------------------------------------------
# cusum
# --------------------------------------------------------------------------------------------------


def cusum_reference(values, quality, on, kref, h, warmup, min_sigma):
    n, k = values.shape
    fl = np.zeros((n, k), np.uint32)
    sc = np.full((n, k), np.nan)
    for j in range(k):
        mean = m2 = 0.0
        count = 0
        s_hi = s_lo = 0.0
        for i in range(n):
            v = float(values[i, j])
            if not on[j] or not usable(quality[i, j], v):
                continue
            if count < warmup[j]:  # Welford
                fl[i, j] |= F.WARMUP
                count += 1
                d = v - mean
                mean += d / count
                m2 += d * (v - mean)
                continue
            sigma = max(math.sqrt(m2 / (count - 1)), min_sigma[j])
            d = v - mean
            z = d / sigma if sigma > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
            s_hi, s_lo = max(0.0, s_hi + z - kref[j]), max(0.0, s_lo - z - kref[j])
            sc[i, j] = max(s_hi, s_lo)
            if max(s_hi, s_lo) > h[j]:
                fl[i, j] |= BIT
                s_hi = s_lo = 0.0
    return fl, sc


@EXAMPLES
@given(batches(max_rows=60), st.data())
def test_cusum(batch, data):
    ts, values, quality, on, cuts = batch
    k = values.shape[1]
    kref = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.5, 1.0])))
    h = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([1.0, 4.0])))
    warmup = data.draw(hnp.arrays(np.int64, (k,), elements=st.integers(2, 10)))
    min_sigma = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.0, 0.1])))
    state = tuple(np.zeros(k) if i != 2 else np.zeros(k, np.int64) for i in range(5))
    got = run_chunked(cusum_kernel, ts, values, quality, cuts,
                      lambda a, b: (values[a:b], quality[a:b], on, kref, h, warmup, min_sigma, *state), (BIT, WARM))
    assert_same(*got, *cusum_reference(values, quality, on, kref, h, warmup, min_sigma))


# --------------------------------------------------------------------------------------------------
# deadband
# --------------------------------------------------------------------------------------------------


def deadband_reference(ts, values, quality, on, band_abs, band_pct, max_silence):
    n, k = values.shape
    fl = np.zeros((n, k), np.uint32)
    for j in range(k):
        last = None  # ("good", value, t) or ("bad", None, t)
        for i in range(n):
            if not on[j]:
                continue
            v, t = float(values[i, j]), int(ts[i, j])
            silent = bool(max_silence[j]) and last is not None and t - last[2] >= max_silence[j]
            if not usable(quality[i, j], v):
                report = last is None or last[0] != "bad" or silent
                if report:
                    last = ("bad", None, t)
            else:
                if last is None or last[0] != "good":
                    report = True
                else:
                    band = max(band_abs[j], band_pct[j] * abs(last[1]) / 100.0)
                    report = abs(v - last[1]) > band or silent
                if report:
                    last = ("good", v, t)
            if report:
                fl[i, j] |= BIT
    return fl


@EXAMPLES
@given(batches(), st.data())
def test_deadband(batch, data):
    ts, values, quality, on, cuts = batch
    k = values.shape[1]
    band_abs = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 0.5, 2.0])))
    band_pct = data.draw(hnp.arrays(np.float64, (k,), elements=st.sampled_from([0.0, 10.0])))
    max_silence = data.draw(hnp.arrays(np.int64, (k,), elements=st.sampled_from([0, 2_000_000_000])))
    state = (np.zeros(k), np.zeros(k, np.int64), np.zeros(k, np.uint8))
    got, _ = run_chunked(deadband_kernel, ts, values, quality, cuts,
                         lambda a, b: (ts[a:b], values[a:b], quality[a:b], on, band_abs, band_pct, max_silence,
                                       *state), (BIT,), scores=False)
    np.testing.assert_array_equal(got, deadband_reference(ts, values, quality, on, band_abs, band_pct, max_silence))


# --------------------------------------------------------------------------------------------------
# multivariate: the reference is the matrix form; the kernel sums in another order, so flags may only
# differ on rows whose statistic is within rounding of its limit.
# --------------------------------------------------------------------------------------------------


def multivariate_reference(values, quality, idx, m):
    x = values[:, idx]
    ok = ((quality[:, idx] & 0x80) == 0).all(axis=1) & np.isfinite(x).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        xs = (x - m["mean"]) / m["scale"]
        t = xs @ m["loadings"]
        t2 = (t**2 / m["eigenvalues"]).sum(axis=1)
        r = xs - t @ m["loadings"].T
        spe = (r**2).sum(axis=1)
    t2[~ok] = np.nan
    spe[~ok] = np.nan
    return t2, spe, ok


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(2, 7), st.sampled_from([None, 1, 2, 4, 5]),
                                                   st.sampled_from(["fitted", "fitted", "training", "from_row"])),
                                         min_size=1, max_size=5),
       st.integers(0, 30), st.booleans(), st.data())
def test_multivariate(seed, groups, n, consecutive, data):
    """Several groups of different sizes and components in one call, some still training (skipped) and
    some fitted in the middle of the batch (scored from a row on), on consecutive columns (read as
    slices) or on columns in any order (through the index)."""
    rng = np.random.default_rng(seed)
    k = sum(p for p, _, _ in groups) + 2  # two columns no group uses
    perm = np.arange(1, k + 1) % k if consecutive else rng.permutation(k)
    cols, models, firsts, off = [], [], [], 0
    for p, comps, state in groups:
        cols.append(np.asarray(perm[off:off + p], dtype=np.intp))
        off += p
        mix = rng.normal(size=(p, p))
        train = rng.normal(size=(200, p)) @ mix + rng.normal(size=p) * 10
        model = fit_model(train, comps, data.draw(st.sampled_from([0.5, 0.9])), 0.99)
        models.append((model, mix, train.mean(axis=0)))
        firsts.append({"fitted": 0, "training": NEVER, "from_row": int(rng.integers(0, n + 1))}[state])
    layout = Layout(cols)
    for pos, (model, _, _) in enumerate(models):
        if firsts[pos] != NEVER:
            layout.set_model(pos, model)
    layout.refresh()
    first = layout.first.copy()
    first[:] = firsts
    full = rng.normal(size=(n, k))
    for c, (_, mix, centre) in zip(cols, models, strict=True):
        full[:, c] = rng.normal(size=(n, len(c))) @ mix * data.draw(st.sampled_from([1.0, 3.0])) + centre
    quality = np.where(rng.random((n, k)) < 0.05, 0x81, 0).astype(np.uint8)
    odd = rng.random((n, k)) < 0.04
    full[odd] = rng.choice([np.nan, np.inf, -np.inf], size=int(odd.sum()))  # an Inf would score as an alarm
    fl = np.zeros((n, k), np.uint32)
    sc = np.full((n, k), np.nan, np.float32)
    t2, spe = layout.outputs(n)
    fired = multivariate_kernel(full, quality, layout.idx, layout.col_off, layout.mean, layout.scale,
                                layout.loadings, layout.eig_off, layout.eigenvalues, layout.t2_limit,
                                layout.spe_limit, first, U32(F.MULTIVARIATE_T2), U32(F.MULTIVARIATE_SPE), fl, sc,
                                t2, spe, layout.xs, layout.resid, layout.share)
    expect_fired = 0
    for pos, (c, (model, _, _)) in enumerate(zip(cols, models, strict=True)):
        p = len(c)
        rt2, rspe, ok = multivariate_reference(full, quality, c, model)
        ok &= np.arange(n) >= firsts[pos]
        rt2[~ok] = np.nan
        rspe[~ok] = np.nan
        np.testing.assert_allclose(t2[pos, :n], rt2, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(spe[pos, :n], rspe, rtol=1e-9, atol=1e-12)
        word = np.zeros(n, np.uint32)
        for stat, lim, bit in ((rt2, model["t2_limit"], F.MULTIVARIATE_T2),
                               (rspe, model["spe_limit"], F.MULTIVARIATE_SPE)):
            near = np.abs(stat - lim) <= 1e-9 * max(1.0, float(lim))
            got = (fl[:, c[0]] & bit) != 0
            assert np.array_equal(got[~near], (ok & (stat > lim))[~near])
            word |= np.where(got, U32(bit), U32(0))
        # every tag of the group carries the row's bits, and its share of the SPE where scored
        assert np.array_equal(fl[:, c], np.repeat(word[:, None], p, axis=1))
        expect_fired += int((word != 0).sum())
        with np.errstate(invalid="ignore", over="ignore"):
            xs = (full[:, c] - model["mean"]) / model["scale"]
            r = xs - (xs @ model["loadings"]) @ model["loadings"].T
        share = np.where(ok[:, None], r**2 / float(model["spe_limit"]), np.nan).astype(np.float32)
        np.testing.assert_allclose(sc[:, c], share, rtol=1e-6, atol=1e-12)
    assert fired == expect_fired
    others = np.setdiff1d(np.arange(k), np.concatenate(cols))
    assert not fl[:, others].any() and np.isnan(sc[:, others]).all()


# --------------------------------------------------------------------------------------------------
# Behaviour worth a name of its own
# --------------------------------------------------------------------------------------------------


def test_hampel_catches_a_spike_and_warm_up_is_visible():
    rng = np.random.default_rng(3)
    x = 20 + rng.normal(0, 0.1, (100, 1))
    x[60, 0] = 25.0
    fl = np.zeros(x.shape, np.uint32)
    sc = np.empty(x.shape, np.float32)
    state = (np.zeros((1, 31)), np.zeros((1, 31)), np.zeros(1, np.int64), np.zeros(1, np.int64))
    hampel_kernel(x, np.zeros(x.shape, np.uint8), np.ones(1, np.uint8), np.array([31]), np.array([5.0]), np.zeros(1),
                  *state, BIT, WARM, fl, sc)
    assert (fl[:31, 0] == WARM).all() and not (fl[31:, 0] & WARM).any()
    assert np.flatnonzero(fl[:, 0] & BIT).tolist() == [60]
    assert sc[60, 0] > 20


def test_nan_inf_and_bad_quality_never_poison_ewma_state():
    clean = np.array([[1.0], [2.0], [1.5], [1.7], [1.6], [1.4]])
    dirty = np.array([[1.0], [np.nan], [2.0], [np.inf], [1.5], [1e300], [1.7], [1.6], [-np.inf], [1.4]])
    dq = np.zeros(dirty.shape, np.uint8)
    dq[5, 0] = 0x81  # bad-comm with a garbage value
    results = []
    for x, q in ((clean, np.zeros(clean.shape, np.uint8)), (dirty, dq)):
        state = (np.zeros(1), np.zeros(1), np.zeros(1, np.int64))
        fl = np.zeros(x.shape, np.uint32)
        ewma_zscore_kernel(x, q, np.ones(1, np.uint8), np.array([0.2]), np.array([3.0]), np.array([3]), np.zeros(1),
                           *state, BIT, WARM, fl, np.empty(x.shape, np.float32))
        results.append(state)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
