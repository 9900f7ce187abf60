"""The filter kernels. Importing the package first shortens how numba loads a kernel from its cache.

numba's `Cache.load_overload` starts by refreshing the whole target context: it imports and registers
every implementation numba has (typed containers, random generators, polynomials, linear algebra, the
cffi C parser, ...): what compiling needs, 0.2-0.3 s of CPU, a quarter to a third of a cached start of
the agent. Loading object code from the cache needs none of it, only numba's runtime (NRT,
which the kernels' array allocations use). So a load initialises the NRT and loads; a miss (nothing
cached, a stale or foreign cache) returns None and numba compiles as usual, and its compiler
refreshes both contexts itself before compiling. If the short path fails in any way, numba's own path
runs. `EDGE_AGENT_NUMBA_FULL_LOAD=1` keeps numba's own path (tests compare the two bit for bit).

The first call of each kernel types its arguments in Python, and numba's typing of an ndarray begins
with `isinstance(val, np.ma.MaskedArray)`, whose `np.ma` imports numpy.ma: 10-20 ms of a start
that never sees a masked array. An argument whose type is exactly np.ndarray is no MaskedArray (that
is a subclass), so such arguments are typed without the check, with numba's own functions; every
other value, and any dtype numba refuses, goes through numba's function. Installed only where that
function is the one this was written against (the names it uses), and off with the short load.

A kernel's cached code links numba's own implementations (np.empty's lives in numba.np.arrayobj),
and unpickling it rebuilds each one's Environment, which imports that implementation's module only
to hand its namespace to the Environment: importing numba.np.arrayobj (and what it imports) costs
25-45 ms, the largest part of loading every kernel. Code compiled in nopython mode never reads an
Environment's namespace (only object mode does, which numba's implementations never use); what
it reads is the Environment's constants, which the cache carries. So, during a short load only, the
Environment of a numba module not imported yet, with no constants, gets a namespace holding only
its module's name; anything else (our own modules, an imported module, any constants) is rebuilt
by numba's function. Also only where that function is the one this was written against.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_MARK = "_edge_agent_short_load"
# What numba's ndarray typing (numba.core.typing.typeof._typeof_ndarray, 0.60-0.68) refers to: a
# function that refers to anything else is not the one the shortcut below reproduces.
_TYPEOF_NDARRAY_NAMES = (
    "isinstance", "np", "ma", "MaskedArray", "errors", "NumbaTypeError", "numpy_support", "from_dtype", "dtype",
    "NumbaNotImplementedError", "NumbaValueError", "map_layout", "flags", "writeable", "types", "Array", "ndim",
)
# The same for numba.core.environment._rebuild_env (0.60-0.68).
_REBUILD_ENV_NAMES = ("lookup_environment", "importlib", "import_module", "Environment", "__dict__", "consts",
                      "env_name", "_memo")


def _install() -> None:
    if os.environ.get("EDGE_AGENT_NUMBA_FULL_LOAD", "") not in ("", "0"):
        return
    try:
        from numba.core import caching
        from numba.core.runtime.nrt import rtsys
    except ImportError:  # a numba whose layout we do not know: its own path
        return
    cls = caching.Cache
    full = cls.load_overload
    if getattr(full, _MARK, False) or not hasattr(cls, "_load_overload") \
            or not hasattr(cls, "_guard_against_spurious_io_errors"):
        return

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        try:
            rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors(), _environments_without_imports():
                return self._load_overload(sig, target_context)
            return None  # the guard swallowed a spurious I/O error: a miss, numba compiles
        except Exception:
            return full(self, sig, target_context)

    setattr(load_overload, _MARK, True)
    cls.load_overload = load_overload
    _install_typeof()


@contextmanager
def _environments_without_imports() -> Iterator[None]:
    """numba's _rebuild_env swapped for the one below while a short load unpickles a kernel.

    Only for that while: numba loads and saves cached code under its compiler lock, held here, so
    nothing else rebuilds or pickles an Environment meanwhile, and pickling one (saving a freshly
    compiled kernel) always finds numba's own function under its own name.
    """
    from numba.core import environment

    full = environment._rebuild_env
    code = getattr(full, "__code__", None)
    if code is None or code.co_names != _REBUILD_ENV_NAMES:
        yield
        return
    env_cls, lookup = environment.Environment, environment.lookup_environment

    def rebuild_env(modname: str, consts: Any, env_name: str) -> Any:
        if consts or not modname.startswith("numba.") or modname in sys.modules:
            return full(modname, consts, env_name)
        env = lookup(env_name)
        if env is None:
            env = env_cls({"__name__": modname})
            env.env_name = env_name
            env_cls._memo[env_name] = env
        return env

    environment._rebuild_env = rebuild_env
    try:
        yield
    finally:
        environment._rebuild_env = full


def _install_typeof() -> None:
    try:
        import numpy as np
        from numba.core import types
        from numba.core.typing.typeof import typeof_impl
        from numba.np import numpy_support
    except ImportError:
        return
    full = typeof_impl.registry.get(np.ndarray)
    code = getattr(full, "__code__", None)
    if full is None or getattr(full, _MARK, False) or code is None or code.co_names != _TYPEOF_NDARRAY_NAMES:
        return

    def typeof_ndarray(val: Any, c: Any) -> Any:
        if type(val) is not np.ndarray:  # a subclass, a MaskedArray among them: numba's own check
            return full(val, c)
        try:
            dtype = numpy_support.from_dtype(val.dtype)
        except Exception:  # a dtype numba does not support: its own function raises its own error
            return full(val, c)
        return types.Array(dtype, val.ndim, numpy_support.map_layout(val), readonly=not val.flags.writeable)

    setattr(typeof_ndarray, _MARK, True)
    typeof_ndarray.__wrapped__ = full  # type: ignore[attr-defined]
    typeof_impl.register(np.ndarray)(typeof_ndarray)


_install()
