"""The Modbus benchmark as a smoke run: it must run end to end and print every figure. No figure is
asserted on: speed is judged from the benchmark's own report (ratios to its in-run baseline), never
from a timed test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_modbus_benchmark_smoke_run(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "modbus_plant.py"), "--smoke"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for figure in ("points/s", "agent CPU-s per 1000 points", "requests per round", "baseline / coalesced",
                   "poll latency", "p99", "idle: one tag at 1 Hz"):
        assert figure in out, (figure, out)
