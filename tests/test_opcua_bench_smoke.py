"""The OPC UA benchmark as a smoke run (asyncua simulator, 200 nodes, 2 s windows): it must run end to
end and print every figure. No figure is asserted on: speed is judged from the benchmark's own report
(ratios to its in-run baselines), never from a timed test. The open62541 load generator
(`--server o6`) is the benchmark's own and is not needed here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_opcua_benchmark_smoke_run(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "opcua_bench.py"), "--smoke"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for figure in ("nominal 2,000 changes/s", "notifications/s handled", "ms CPU per 1000 samples",
                   "latency source ts -> driver batch", "-> encoded frame", "baseline asyncua handler",
                   "x the baseline's CPU per sample", "poll (one Read of 200 nodes", "baseline one Read per node",
                   "driver alone (sink only counts)", "of which driver with asyncua decoding",
                   "cheaper per sample"):
        assert figure in out, (figure, out)
