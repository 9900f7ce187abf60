"""The filter kernels. Importing the package first shortens how numba loads a kernel from its cache.

numba's `Cache.load_overload` starts by refreshing the whole target context: it imports and registers
every implementation numba has (typed containers, random generators, polynomials, linear algebra, the
cffi C parser, ...): what compiling needs, 0.2-0.3 s of CPU, a quarter to a third of a cached start of
the agent. Loading object code from the cache needs none of it, only numba's runtime (NRT,
which the kernels' array allocations use). So a load initialises the NRT and loads; a miss (nothing
cached, a stale or foreign cache) returns None and numba compiles as usual, and its compiler
refreshes both contexts itself before compiling. If the short path fails in any way, numba's own path
runs. `EDGE_AGENT_NUMBA_FULL_LOAD=1` keeps numba's own path (tests compare the two bit for bit).
"""

from __future__ import annotations

import os
from typing import Any

_MARK = "_edge_agent_short_load"


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
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
            return None  # the guard swallowed a spurious I/O error: a miss, numba compiles
        except Exception:
            return full(self, sig, target_context)

    setattr(load_overload, _MARK, True)
    cls.load_overload = load_overload


_install()
