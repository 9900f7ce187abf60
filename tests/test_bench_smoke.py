"""The benchmarks as smoke runs: each must run end to end and print every figure. No figure is
asserted on: speed is judged from a benchmark's own report (ratios to its in-run baselines), never
from a timed test. The OPC UA smoke run uses the asyncua simulator (200 nodes, 2 s windows); the
open62541 load generator (`--server o6`) is the benchmark's own and is not needed here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_agent.filters.engine import KIND_ORDER
from tests.conftest import ROOT

FIGURES = {
    "modbus_plant.py": ("points/s", "agent CPU-s per 1000 points", "requests per round", "baseline / coalesced",
                        "poll latency", "p99", "idle: one tag at 1 Hz"),
    "opcua_bench.py": ("nominal 2,000 changes/s", "notifications/s handled", "ms CPU per 1000 samples",
                       "latency source ts -> driver batch", "-> encoded frame", "baseline asyncua handler",
                       "x the baseline's CPU per sample", "poll (one Read of 200 nodes", "baseline one Read per node",
                       "driver alone (sink only counts)", "of which driver with asyncua decoding",
                       "cheaper per sample"),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_benchmark_smoke_run(script: str, tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for figure in FIGURES[script]:
        assert figure in proc.stdout, (figure, proc.stdout)


@pytest.mark.slow
def test_startup_bench_smoke_run(tmp_path) -> None:
    """`edge-agent bench startup`: a fresh process timed from its spawn, every step and kernel there."""
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "bench", "startup", "--runs", "2", "--json"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = json.loads(proc.stdout)["startup_s"]["cached"]
    assert set(cached["steps"]) == {"interpreter", "import_numpy", "import_numba", "import_engine", "warm_up",
                                    "frame_encoder"}
    assert set(cached["kernels"]) == set(KIND_ORDER)
    steps = cached["steps"]
    # From the spawn: the interpreter's own start is in, and the marks come in the order of the start.
    assert 0 < steps["interpreter"][0] < cached["first_kernel_ready"] < cached["total"] < cached["with_frame_encoder"]
