"""Kernels loaded from NUMBA_CACHE_DIR by the short path (edge_agent/filters/kernels/__init__.py) give
exactly what numba's own loading gives, and the short path really skips numba's registry set-up.

Each start is a fresh process on the tests' shared cache, as the agent's later starts are."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import numpy.ma
import pytest
from numba.core import errors
from numba.core.typing.typeof import Purpose, typeof_impl

from edge_agent.filters.engine import KIND_ORDER, warm_up

START = r"""
import hashlib, json, sys
import numpy as np
from edge_agent.config.models import DeviceBase, TagBase
from edge_agent.filters.bench import SPECS
from edge_agent.filters.engine import KIND_ORDER, DeviceFilters, warm_up
from edge_agent.samples import Batch

warm_up(sys.argv[1].split(","))
specs = {kind: SPECS[kind] for kind in KIND_ORDER}
specs["multivariate"] = specs["multivariate"].model_copy(update={"training": 30})
tags = [TagBase(name=f"t{j}", filters=list(specs)) for j in range(12)]
engine = DeviceFilters(DeviceBase(name="d", protocol="none", tags=tags), specs)
rng = np.random.default_rng(5)
digest = hashlib.sha256()
for call in range(6):
    b = Batch.empty("d", 40, 12)
    b.values[:] = np.cumsum(rng.normal(size=(40, 12)), axis=0)
    b.values[rng.random((40, 12)) < 0.05] = np.nan
    b.quality[:] = np.where(rng.random((40, 12)) < 0.05, 0x81, 0)
    b.ts[:] = (call * 40 + np.arange(40))[:, None] * 1_000_000_000
    scores = engine.process(b)
    digest.update(b.flags.tobytes())
    for kind in sorted(scores):
        digest.update(kind.encode() + scores[kind].tobytes())
from numba.core.registry import CPUDispatcher
import gc
kernels = [o for o in gc.get_objects()
           if isinstance(o, CPUDispatcher) and o.__module__.startswith("edge_agent.filters")]
print(json.dumps({
    "digest": digest.hexdigest(),
    "hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
    "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels),
    "registries": "numba.core.typing.cffi_utils" in sys.modules,
    "numpy_ma": "numpy.ma" in sys.modules,
    "arrayobj": "numba.np.arrayobj" in sys.modules,
}))
"""


def _start(kinds: str, full: bool) -> dict:
    env = {**os.environ, "EDGE_AGENT_NUMBA_FULL_LOAD": "1" if full else "0"}
    run = subprocess.run([sys.executable, "-c", START, kinds], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_short_cache_load_gives_numbas_results_without_its_registry_set_up():
    warm_up()  # every kernel into the shared cache (compiled here if it is not there yet)
    kinds = ",".join(KIND_ORDER)
    short, full = _start(kinds, full=False), _start(kinds, full=True)
    assert short["digest"] == full["digest"]
    for doc in (short, full):
        assert doc["misses"] == 0 and doc["hits"] >= len(KIND_ORDER)  # loaded, not compiled
    assert not short["registries"] and full["registries"]
    assert not short["numpy_ma"] and full["numpy_ma"]  # typing the arguments did not import numpy.ma
    assert not short["arrayobj"] and full["arrayobj"]  # nor did the Environments of numba's np.empty


def test_warm_up_loads_only_the_kinds_asked_for():
    warm_up()
    run = subprocess.run([sys.executable, "-c", (
        "import sys, gc\n"
        "from edge_agent.filters.engine import warm_up\n"
        "warm_up(['ewma_zscore', 'limits'])\n"
        "from numba.core.registry import CPUDispatcher\n"
        "print(sorted(o.py_func.__name__ for o in gc.get_objects() if isinstance(o, CPUDispatcher) and o.overloads))\n"
    )], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "['ewma_zscore_kernel', 'severity_limits_kernel']"


def _arrays() -> list[np.ndarray]:
    base = np.arange(48, dtype=np.float64).reshape(6, 8)
    readonly = base.copy()
    readonly.flags.writeable = False
    record = np.zeros(3, dtype=[("a", np.int32), ("b", np.float64)])
    out = [base, base.T, base[::2], base[:, 1], base[1], np.ones(()), readonly, record,
           np.zeros((0, 4)), np.zeros((2, 3, 4), order="F")]
    for dt in (np.uint8, np.uint32, np.int64, np.float32, np.bool_, np.complex128, "M8[ns]", "m8[s]", "U3", "S2",
               object):
        out.append(np.zeros((3, 2), dtype=dt))
    return out


def test_ndarray_typing_shortcut_types_every_array_as_numba_does():
    ours = typeof_impl.registry[np.ndarray]
    full = getattr(ours, "__wrapped__", None)
    assert full is not None, "the typing shortcut is not installed (numba changed its _typeof_ndarray?)"
    for a in _arrays():
        assert ours(a, Purpose.argument) == full(a, Purpose.argument), (a.dtype, a.shape, a.strides)
    # What numba refuses it still refuses, with its own errors.
    masked = numpy.ma.masked_array([1.0, 2.0], mask=[False, True])
    for bad, error in ((masked, errors.NumbaTypeError), (np.zeros(2, dtype=[("a", object)]), errors.NumbaValueError)):
        with pytest.raises(error):
            ours(bad, Purpose.argument)


ALLOCATES = """
import numpy as np
from numba import njit


@njit(cache=True)
def ones(n):
    a = np.empty(n)
    a[:] = 1.0
    return a
"""

LOAD = r"""
import json, sys
import edge_agent.filters.kernels  # the short load, as the agent has it
import allocates
out = {"sum": float(allocates.ones(3).sum())}
try:
    allocates.ones(-1)
except ValueError as exc:
    out["error"] = str(exc)
out["hits"] = sum(allocates.ones.stats.cache_hits.values())
out["arrayobj"] = "numba.np.arrayobj" in sys.modules
print(json.dumps(out))
"""


@pytest.mark.parametrize("full", [False, True])
def test_code_using_numbas_own_implementations_loads_and_raises_through_the_short_load(tmp_path, full):
    """A cached function whose np.empty (numba.np.arrayobj) returns an array and raises from inside."""
    (tmp_path / "allocates.py").write_text(ALLOCATES)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path),
           "EDGE_AGENT_NUMBA_FULL_LOAD": "1" if full else "0"}
    runs = []
    for _ in range(2):  # the first compiles into the empty cache, the second loads from it
        run = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    compiled, loaded = runs
    assert compiled["hits"] == 0 and loaded["hits"] == 1
    for doc in runs:
        assert doc["sum"] == 3.0 and "negative dimensions" in doc["error"]
    assert loaded["arrayobj"] == full


ALLOCATES_TOO = ALLOCATES.replace("def ones", "def twos").replace("1.0", "2.0")  # a second such module

LOAD_THEN_COMPILE = r"""
import json, sys
import edge_agent.filters.kernels
import allocates
first = float(allocates.ones(4).sum())  # from the cache, numba.np.arrayobj not imported
import allocates_too
second = float(allocates_too.twos(4).sum())  # compiled here (the first time), after that load
print(json.dumps({"sums": [first, second], "hits": [sum(allocates.ones.stats.cache_hits.values()),
                  sum(allocates_too.twos.stats.cache_hits.values())]}))
"""


def test_a_kernel_compiled_after_a_short_load_is_cached_and_loads_again(tmp_path):
    """As a reload that brings a new filter kind does: compile next to short-loaded code, cache it, load it."""
    (tmp_path / "allocates.py").write_text(ALLOCATES)
    (tmp_path / "allocates_too.py").write_text(ALLOCATES_TOO)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path),
           "EDGE_AGENT_NUMBA_FULL_LOAD": "0"}

    def start(script: str) -> dict:
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout.strip().splitlines()[-1])

    start(LOAD)  # compiles `ones` into the cache
    mixed = start(LOAD_THEN_COMPILE)
    assert mixed == {"sums": [4.0, 8.0], "hits": [1, 0]}
    again = start(LOAD_THEN_COMPILE)
    assert again == {"sums": [4.0, 8.0], "hits": [1, 1]}
