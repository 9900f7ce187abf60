"""Filter kernels against NumPy and the memory-bandwidth bound: `python benchmarks/filters_bench.py [--json]`.

The same measurement as `edge-agent bench filters`, kept here so the benchmarks folder lists every
benchmark (see edge_agent/filters/bench.py for what is measured and why).
"""

from __future__ import annotations

import sys

from edge_agent.filters.bench import run_filter_bench

if __name__ == "__main__":
    raise SystemExit(run_filter_bench(as_json="--json" in sys.argv[1:]))
