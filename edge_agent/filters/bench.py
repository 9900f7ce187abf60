"""`edge-agent bench filters`: samples/s of every kernel beside a NumPy implementation timed in the same
run, and as a share of the machine's memory-bandwidth bound (a streaming read of a large array).

Absolute figures do not travel between machines; the ratios (numba / NumPy, kernel / bandwidth) do.
Two shapes: 10,000 tags x 10 rows (a big plant, one poll per second, one batch per 10 s) and 100 tags x
1,000 rows (a fast line). Also the start-up cost: compiling every kernel into an empty NUMBA_CACHE_DIR
and loading them from it, each in a fresh process, as the agent's first and later starts do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from edge_agent.config.models import (
    CusumFilter,
    DeadbandFilter,
    DeviceBase,
    EwmaZscoreFilter,
    FlatlineFilter,
    HampelFilter,
    LimitsFilter,
    MultivariateFilter,
    RateOfChangeFilter,
    TagBase,
)
from edge_agent.filters.engine import DeviceFilters, warm_up
from edge_agent.filters.kernels.hampel import MAD_TO_SIGMA
from edge_agent.samples import Batch

SHAPES = ((10, 10_000), (1_000, 100))  # (rows, tags)
SPECS: dict[str, Any] = {
    "limits": LimitsFilter(kind="limits", lo=-3.0, hi=3.0, lolo=-4.0, hihi=4.0),
    "rate_of_change": RateOfChangeFilter(kind="rate_of_change", max_rate=5.0),
    "ewma_zscore": EwmaZscoreFilter(kind="ewma_zscore", alpha=0.05, threshold=4.0, warmup=2),
    "cusum": CusumFilter(kind="cusum", warmup=2),
    "deadband": DeadbandFilter(kind="deadband", absolute=0.5, max_silence="1m"),
    "flatline": FlatlineFilter(kind="flatline", samples=30),
    "hampel": HampelFilter(kind="hampel", window=32, n_sigmas=3.5),
    "multivariate": MultivariateFilter(kind="multivariate", training=200, components=4),
}
MULTIVARIATE_TAGS = 16  # a vector is one machine's tags, not a whole plant's


def _batch(rows: int, tags: int, rng: np.random.Generator, t0: int = 0) -> Batch:
    b = Batch.empty("bench", rows, tags)
    b.values[:] = rng.normal(size=(rows, tags))
    b.quality[:] = 0
    b.ts[:] = t0 + np.arange(rows)[:, None] * 1_000_000_000
    return b


def _best(fn: Callable[[], object], budget_s: float = 0.25) -> float:
    """Best seconds per call over several timed runs (the least disturbed one)."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    while True:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return best


@njit(cache=True, nogil=True)
def _stream_sum(a: np.ndarray) -> float:
    s0 = s1 = s2 = s3 = 0.0
    n = a.shape[0] - a.shape[0] % 4
    for i in range(0, n, 4):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
    return s0 + s1 + s2 + s3


def bandwidth_bytes_per_s(size: int = 256 * 1024 * 1024) -> float:
    """Streaming read of an array far larger than any cache: what one core can pull from memory."""
    a = np.ones(size // 8)
    return a.nbytes / _best(lambda: _stream_sum(a), 1.0)


# NumPy implementations: the best plain NumPy can do, one vector operation across tags per row.


def _np_limits(b: Batch, s: dict) -> None:
    ok = (b.quality & 0x80) == 0
    b.flags |= (ok & ((b.values < -3.0) | (b.values > 3.0))).astype(np.uint32)
    b.flags |= (ok & ((b.values < -4.0) | (b.values > 4.0))).astype(np.uint32) << 8


def _np_roc(b: Batch, s: dict) -> None:
    for i in range(b.rows):
        v, t = b.values[i], b.ts[i]
        use = ((b.quality[i] & 0x80) == 0) & np.isfinite(v)
        rate = np.abs(v - s["v"]) / ((t - s["t"]) / 1e9)
        b.flags[i] |= (use & (rate > 5.0)).astype(np.uint32) << 1
        s["v"] = np.where(use, v, s["v"])
        s["t"] = np.where(use, t, s["t"])


def _np_ewma(b: Batch, s: dict) -> None:
    a = 0.05
    for i in range(b.rows):
        v = b.values[i]
        use = ((b.quality[i] & 0x80) == 0) & np.isfinite(v)
        d = v - s["m"]
        z = np.abs(d) / np.sqrt(s["v"])
        b.flags[i] |= (use & (z > 4.0)).astype(np.uint32) << 2
        incr = a * d
        s["m"] = np.where(use, s["m"] + incr, s["m"])
        s["v"] = np.where(use, (1 - a) * (s["v"] + d * incr), s["v"])


def _np_cusum(b: Batch, s: dict) -> None:
    for i in range(b.rows):
        v = b.values[i]
        use = ((b.quality[i] & 0x80) == 0) & np.isfinite(v)
        z = (v - s["m"]) / s["sd"]
        hi = np.maximum(0.0, s["hi"] + z - 0.5)
        lo = np.maximum(0.0, s["lo"] - z - 0.5)
        fire = use & (np.maximum(hi, lo) > 5.0)
        b.flags[i] |= fire.astype(np.uint32) << 5
        s["hi"] = np.where(use & ~fire, hi, np.where(fire, 0.0, s["hi"]))
        s["lo"] = np.where(use & ~fire, lo, np.where(fire, 0.0, s["lo"]))


def _np_deadband(b: Batch, s: dict) -> None:
    for i in range(b.rows):
        v, t = b.values[i], b.ts[i]
        use = ((b.quality[i] & 0x80) == 0) & np.isfinite(v)
        report = use & ((np.abs(v - s["v"]) > 0.5) | (t - s["t"] >= 60_000_000_000))
        b.flags[i] |= report.astype(np.uint32) << 9
        s["v"] = np.where(report, v, s["v"])
        s["t"] = np.where(report, t, s["t"])


def _np_flatline(b: Batch, s: dict) -> None:
    for i in range(b.rows):
        v = b.values[i]
        use = ((b.quality[i] & 0x80) == 0) & np.isfinite(v)
        same = use & (np.abs(v - s["ref"]) <= 0.0)
        s["n"] = np.where(same, s["n"] + 1, np.where(use, 1, s["n"]))
        s["ref"] = np.where(use & ~same, v, s["ref"])
        b.flags[i] |= (use & (s["n"] >= 30)).astype(np.uint32) << 4


def _np_hampel(b: Batch, s: dict) -> None:
    w = 32
    hist = np.concatenate([s["hist"], b.values])
    win = np.lib.stride_tricks.sliding_window_view(hist, w, axis=0)[: b.rows]  # (rows, tags, w)
    med = np.median(win, axis=2)
    mad = np.median(np.abs(win - med[..., None]), axis=2)
    z = np.abs(b.values - med) / (MAD_TO_SIGMA * mad)
    b.flags |= (z > 3.5).astype(np.uint32) << 3
    s["hist"] = hist[-w:]


def _np_multivariate(b: Batch, s: dict) -> None:
    """The kernel's whole job, each group with its own model (stacked: the bench's groups share a shape):
    usable rows, T², SPE, both flags and every tag's share of the SPE, NaN where a row is not scored."""
    mean, scale, load, load_t, eig = s["mean"], s["scale"], s["loadings"], s["loadings_t"], s["eigenvalues"]
    groups, p = mean.shape
    x = b.values.reshape(b.rows, groups, p)
    ok = (((b.quality.reshape(x.shape) & 0x80) == 0) & np.isfinite(x)).all(axis=2)  # (rows, groups)
    xs = (x.transpose(1, 0, 2) - mean[:, None]) / scale[:, None]  # (groups, rows, p)
    t = xs @ load  # (groups, rows, a)
    t2 = (t**2 / eig[:, None]).sum(axis=2).T
    e2 = (xs - t @ load_t) ** 2
    spe = e2.sum(axis=2).T
    t2[~ok] = np.nan
    spe[~ok] = np.nan
    word = (t2 > s["t2_limit"]).astype(np.uint32) << 6 | (spe > s["spe_limit"]).astype(np.uint32) << 7
    b.flags.reshape(x.shape)[:] |= word[:, :, None]
    scores = (e2 / s["spe_limit"][:, None, None]).transpose(1, 0, 2).astype(np.float32)
    scores[~ok] = np.nan
    s["out"] = (t2, spe, scores.reshape(b.values.shape))


NUMPY: dict[str, Callable[[Batch, dict], None]] = {
    "limits": _np_limits, "rate_of_change": _np_roc, "ewma_zscore": _np_ewma, "cusum": _np_cusum,
    "deadband": _np_deadband, "flatline": _np_flatline, "hampel": _np_hampel, "multivariate": _np_multivariate,
}


def _np_state(kind: str, tags: int, engine: DeviceFilters) -> dict:
    z, o = np.zeros(tags), np.ones(tags)
    return {
        "limits": {}, "rate_of_change": {"v": z.copy(), "t": np.zeros(tags, np.int64) - 10**9},
        "ewma_zscore": {"m": z.copy(), "v": o.copy()}, "cusum": {"m": z.copy(), "sd": o.copy(), "hi": z.copy(),
                                                                 "lo": z.copy()},
        "deadband": {"v": z.copy(), "t": np.zeros(tags, np.int64)}, "flatline": {"ref": z.copy(), "n": z.copy()},
        "hampel": {"hist": np.zeros((32, tags))},
        "multivariate": _np_models(engine),
    }[kind]


def _np_models(engine: DeviceFilters) -> dict[str, np.ndarray]:
    models = [g.model for g in engine.groups if g.model is not None]
    if not models:
        return {}
    out = {key: np.stack([np.asarray(m[key], dtype=np.float64) for m in models])
           for key in ("mean", "scale", "loadings", "eigenvalues", "t2_limit", "spe_limit")}
    out["loadings_t"] = np.ascontiguousarray(out["loadings"].transpose(0, 2, 1))
    return out


def measure_kernel(kind: str, rows: int, tags: int, rng: np.random.Generator) -> dict[str, float]:
    """Samples/s of the kernel (its engine call, state carried across calls) and of the NumPy version."""
    if kind == "multivariate":
        groups = tags // MULTIVARIATE_TAGS
        names = [f"m{g}" for g in range(groups)]
        specs = {n: SPECS[kind] for n in names}
        dev = DeviceBase(name="bench", protocol="bench", tags=[
            TagBase(name=f"t{j}", filters=[names[j // MULTIVARIATE_TAGS]]) for j in range(groups * MULTIVARIATE_TAGS)])
        tags = groups * MULTIVARIATE_TAGS
    else:
        specs = {"f": SPECS[kind]}
        dev = DeviceBase(name="bench", protocol="bench", tags=[TagBase(name=f"t{j}", filters=["f"])
                                                               for j in range(tags)])
    engine = DeviceFilters(dev, specs)
    # Learn first (warm-up, training), so the timed calls are the steady state.
    t = 0
    while t < 300 * 1_000_000_000:
        b = _batch(100, tags, rng, t)
        engine.process(b)
        t += 100 * 1_000_000_000
    b = _batch(rows, tags, rng, t)

    def kernel() -> None:
        # No reset of the flags between calls: the kernels OR their bits in without branching on
        # them, so the work is the same, and a reset (~8 us for 10k x 10) is no part of filtering.
        engine.process(b)

    nb = _batch(rows, tags, rng, t)
    state = _np_state(kind, tags, engine)

    def numpy_version() -> None:
        nb.flags[:] = 0
        with np.errstate(all="ignore"):
            NUMPY[kind](nb, state)

    points = rows * tags
    return {"numba": points / _best(kernel), "numpy": points / _best(numpy_version)}


# A cached start as the agent makes it, in a fresh interpreter: the clock starts in the parent just
# before it spawns the child (CLOCK_MONOTONIC is one clock for every process), so the interpreter's
# own start and site-packages are counted. CPU is the child's process_time (since its exec, all
# threads). The frame encoder (edge_agent/frame/fastpack.py), which the agent warms up after the
# kernels, is timed as a last step of its own.
_STARTUP = """
import json, sys, time
spawned = float(sys.argv[1])
clock = lambda: (time.clock_gettime(time.CLOCK_MONOTONIC) - spawned, time.process_time())
marks = {"interpreter": clock()}
import numpy
marks["import_numpy"] = clock()
import numba
marks["import_numba"] = clock()
from edge_agent.filters.engine import KIND_ORDER, warm_up
marks["import_engine"] = clock()
kernels = {}
for kind in KIND_ORDER:
    a = clock()
    warm_up([kind])
    b = clock()
    kernels[kind] = [b[0] - a[0], b[1] - a[1]]
marks["warm_up"] = clock()
from edge_agent.frame import fastpack
fastpack.warm_up()
marks["frame_encoder"] = clock()
print(json.dumps({"marks": marks, "kernels": kernels, "first_kernel": KIND_ORDER[0]}))
"""
STARTUP_STEPS = ("interpreter", "import_numpy", "import_numba", "import_engine", "warm_up", "frame_encoder")


def _startup_run(env: dict[str, str]) -> dict[str, Any]:
    from edge_agent.cli import BLAS_THREADS

    env = {BLAS_THREADS[0]: BLAS_THREADS[1], **env}  # as `edge-agent` itself sets it before importing numpy
    spawned = time.clock_gettime(time.CLOCK_MONOTONIC)
    run = subprocess.run([sys.executable, "-c", _STARTUP, repr(spawned)], env=env, capture_output=True, text=True,
                         check=True)
    raw = json.loads(run.stdout.strip().splitlines()[-1])
    marks: dict[str, list[float]] = raw["marks"]
    first = raw["kernels"][raw["first_kernel"]]
    steps = {}
    prev = [0.0, 0.0]
    for step in STARTUP_STEPS:
        steps[step] = [marks[step][0] - prev[0], marks[step][1] - prev[1]]
        prev = marks[step]
    return {
        "total": marks["warm_up"][0], "total_cpu": marks["warm_up"][1],
        "with_frame_encoder": marks["frame_encoder"][0], "with_frame_encoder_cpu": marks["frame_encoder"][1],
        "first_kernel_ready": marks["import_engine"][0] + first[0],
        "first_kernel_ready_cpu": marks["import_engine"][1] + first[1],
        "steps": steps, "kernels": raw["kernels"],
        # the keys of earlier versions, for readers of --json
        "import_numpy": steps["import_numpy"][0], "import_numba": steps["import_numba"][0],
        "import_engine": steps["import_engine"][0], "warm_up": steps["warm_up"][0],
    }


def startup_seconds(runs: int = 5, cold: bool = True) -> dict[str, Any]:
    """Cold (empty NUMBA_CACHE_DIR: compile everything) and cached start-up, each in a fresh process.

    Seconds from the spawn of the process (the interpreter's own start is in) to every kernel loaded
    (`total`), and to the frame encoder loaded too (`with_frame_encoder`): the whole process up to
    where the agent's start has its compiled code, not only the kernel loading. Split into steps,
    because most of it is not the kernels: the interpreter, the numpy and numba imports, the engine's
    own imports (pydantic config models), then each kernel as warm_up loads it (the first one paying
    numba's one-time runtime set-up). Wall and CPU seconds: on a busy machine the CPU figure is the
    steadier one. Cached: `total` is the best of `runs` starts, each step and kernel the best of its
    own, so they need not add up to the total exactly.
    """
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        first = _startup_run(env)  # compiles everything into the empty cache
        if cold:
            out["cold"] = first
        docs = [_startup_run(env) for _ in range(runs)]
    best = min(docs, key=lambda d: d["total"])
    out["cached"] = {
        **best, "runs": runs, "total_median": sorted(d["total"] for d in docs)[runs // 2],
        "total_cpu_min": min(d["total_cpu"] for d in docs),
        "steps": {s: [min(d["steps"][s][i] for d in docs) for i in (0, 1)] for s in STARTUP_STEPS},
        "kernels": {k: [min(d["kernels"][k][i] for d in docs) for i in (0, 1)] for k in best["kernels"]},
    }
    return out


def print_startup(start: dict[str, Any]) -> None:
    for label, what in (("cold", "compiling into an empty NUMBA_CACHE_DIR"), ("cached", "loading from it")):
        if label not in start:
            continue
        st = start[label]
        runs = f", best of {st['runs']}, median {st['total_median']:.2f} s" if "runs" in st else ""
        print(f"start-up, {label} ({what}; a fresh process, from its spawn{runs}): every kernel loaded at "
              f"{st['total']:.2f} s ({st['total_cpu']:.2f} s CPU), the first at {st['first_kernel_ready']:.2f} s; "
              f"and the frame encoder at {st['with_frame_encoder']:.2f} s ({st['with_frame_encoder_cpu']:.2f} s CPU)")
        best = ", each the best of the runs" if "runs" in st else ""
        print(f"  steps (wall/CPU ms{best}): " + ", ".join(
            f"{step.replace('_', ' ')} {w * 1e3:.0f}/{c * 1e3:.0f}" for step, (w, c) in st["steps"].items()))
        print("  per kernel (wall/CPU ms): " + ", ".join(
            f"{kind} {w * 1e3:.0f}/{c * 1e3:.0f}" for kind, (w, c) in st["kernels"].items()))


def run_startup_bench(runs: int = 9, as_json: bool = False, cold: bool = False) -> int:
    """`edge-agent bench startup`: the start-up figures alone, without the kernels' throughput."""
    start = startup_seconds(runs, cold=cold)
    if as_json:
        print(json.dumps({"startup_s": start, "cpu": _cpu()}, indent=2))
        return 0
    print(_cpu())
    print_startup(start)
    return 0


def run_filter_bench(as_json: bool = False, kinds: tuple[str, ...] | None = None) -> int:
    warm_up()
    rng = np.random.default_rng(1)
    bw = bandwidth_bytes_per_s()
    bound = bw / 8  # one float64 value read per sample: no kernel can go faster than this
    results: list[dict[str, Any]] = []
    for rows, tags in SHAPES:
        for kind in kinds or tuple(SPECS):
            r = measure_kernel(kind, rows, tags, rng)
            results.append({"kernel": kind, "rows": rows, "tags": tags, "numba_samples_per_s": r["numba"],
                            "numpy_samples_per_s": r["numpy"], "speedup_vs_numpy": r["numba"] / r["numpy"],
                            "share_of_bandwidth_bound": r["numba"] / bound})
    start = startup_seconds()
    doc = {"memory_bandwidth_bytes_per_s": bw, "bound_samples_per_s": bound, "results": results,
           "startup_s": start, "cpu": _cpu()}
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"memory bandwidth (streaming read, 1 core): {bw / 1e9:.1f} GB/s = bound {bound / 1e9:.2f} G samples/s "
          f"(8 bytes of value per sample); {doc['cpu']}")
    print(f"{'kernel':<16}{'shape':>14}{'numba':>14}{'numpy':>14}{'x numpy':>9}{'% bound':>9}")
    for r in results:
        print(f"{r['kernel']:<16}{r['tags']:>7} x {r['rows']:<5}{_rate(r['numba_samples_per_s']):>14}"
              f"{_rate(r['numpy_samples_per_s']):>14}{r['speedup_vs_numpy']:>8.1f}x"
              f"{100 * r['share_of_bandwidth_bound']:>8.1f}%")
    print_startup(start)
    return 0


def _rate(x: float) -> str:
    return f"{x / 1e9:.2f} G/s" if x >= 1e9 else f"{x / 1e6:.1f} M/s"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
