"""OPC UA driver cost at scale, against a server in its own process (so the server's CPU is not
counted): N monitored items at 100 ms sampling, and a batched Read of N nodes per tick.

Two servers: `--server asyncua` (our simulator; its Python server tops out near 12,600 notifications/s
on 2 cores, so 5,000 items at 100 ms cannot all be served) and `--server o6`, open62541 in C through
the `o6` package (benchmarks/opcua_loadgen_o6.py, installed into its own virtualenv on first use, never
needed by the tests), which serves the full 50,000 notifications/s. The figures say which load was
reached; the generator reports the ticks it wrote and any it skipped.

Reported per mode: notifications (or samples) per second handled, agent CPU-seconds per 1,000 samples
(this process: asyncua's decoding plus our driver, filters, batcher and frame encoder), and latency
from source timestamp to the driver's batch and to the encoded frame. Baselines measured in the same
run, on the same server and nodes: asyncua's high-level subscription handler (one callback task per
notification, what a typical Python gateway does) and one Read per node per tick.

    .venv/bin/python benchmarks/opcua_bench.py [--server asyncua|o6] [--nodes 5000] [--seconds 10] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.opcua.config import OpcUaDevice  # noqa: E402
from drivers.opcua.driver import OpcUaDriver  # noqa: E402
from edge_agent.batcher import Batcher  # noqa: E402
from edge_agent.filters.engine import DeviceFilters  # noqa: E402
from edge_agent.frame.codec import encode_frame  # noqa: E402
from edge_agent.frame.model import Frame  # noqa: E402
from edge_agent.samples import Batch  # noqa: E402
from simulators.opcua.server import NAMESPACE_URI  # noqa: E402
from tests.conftest import Proc, wait_for  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Pipeline:
    """The agent's inline stages after the driver: filters, batcher, frame encoding (no MQTT)."""

    def __init__(self, dev: OpcUaDevice):
        self.filters = DeviceFilters(dev, {})
        names = tuple(t.name for t in dev.tags)
        self.batcher = Batcher([(dev.name, names, tuple(t.type for t in dev.tags))], 10_000, 1_000_000_000,
                               self._closed)
        self.samples = 0
        self.to_batch: list[np.ndarray] = []
        self.to_frame: list[np.ndarray] = []
        self.bytes = 0
        self.seq = 0
        self.warm_at = 3 * len(dev.tags)  # connected, subscribed, first notifications through
        self.warm = asyncio.Event()

    def __call__(self, batch: Batch) -> None:
        now = time.time_ns()
        self.to_batch.append((now - batch.ts).ravel())
        self.filters.process(batch)
        self.samples += batch.points
        if self.samples >= self.warm_at:
            self.warm.set()
        self.batcher.add(batch)

    def _closed(self, blocks) -> None:
        self.seq += 1
        data = encode_frame(Frame("bench", b"\0" * 16, self.seq, time.time_ns(), blocks))
        now = time.time_ns()
        self.bytes += len(data)
        self.to_frame.extend((now - b.ts).repeat(b.values.shape[1]) for b in blocks)


def pct(parts: list[np.ndarray], q: float) -> float:
    return float(np.percentile(np.concatenate(parts), q) / 1e6) if parts else float("nan")


async def measure_driver(endpoint: str, node_fmt: str, n: int, mode: str, seconds: float) -> dict[str, float]:
    tags = [{"name": f"b{i}", "node": node_fmt.format(i=i, ns="plant"), "type": "float64"} for i in range(n)]
    dev = OpcUaDevice.model_validate({
        "name": "bench", "protocol": "opcua", "endpoint": endpoint, "mode": mode, "poll_interval": "100ms",
        "namespaces": {"plant": NAMESPACE_URI}, "timeout": "10s", "keepalive": "30s", "tags": tags})
    pipe = Pipeline(dev)
    drv = OpcUaDriver(dev, pipe)
    task = asyncio.create_task(drv.run())
    try:
        await pipe.warm.wait()
        await asyncio.sleep(1.0)
        pipe.to_batch.clear()
        pipe.to_frame.clear()
        s0, c0, t0, b0 = pipe.samples, cpu(), time.monotonic(), drv.batches_out
        await asyncio.sleep(seconds)
        samples, cpu_s, wall = pipe.samples - s0, cpu() - c0, time.monotonic() - t0
        batches = drv.batches_out - b0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {"samples_per_s": samples / wall, "cpu_per_1000": cpu_s / samples * 1000, "batches_per_s": batches / wall,
            "cpu_share": cpu_s / wall, "p50_batch_ms": pct(pipe.to_batch, 50), "p99_batch_ms": pct(pipe.to_batch, 99),
            "p50_frame_ms": pct(pipe.to_frame, 50), "p99_frame_ms": pct(pipe.to_frame, 99),
            "skipped": drv.stats.skipped_ticks, "bytes_per_sample": pipe.bytes / max(1, pipe.samples)}


async def baseline_handler(endpoint: str, node_fmt: str, n: int, seconds: float) -> dict[str, float]:
    """asyncua's documented way: subscribe_data_change with a handler called once per notification."""
    from asyncua import Client

    count = 0
    warm = asyncio.Event()

    class Handler:
        def datachange_notification(self, node, val, data) -> None:
            nonlocal count
            count += 1
            if count >= 3 * n:
                warm.set()

    client = Client(endpoint, timeout=10)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE_URI) if "{ns}" in node_fmt else 0
        sub = await client.create_subscription(100, Handler())
        nodes = [client.get_node(node_fmt.format(i=i, ns=ns)) for i in range(n)]
        for i in range(0, n, 1000):
            await sub.subscribe_data_change(nodes[i:i + 1000], sampling_interval=100)
        await warm.wait()
        c0, n0, t0 = cpu(), count, time.monotonic()
        await asyncio.sleep(seconds)
        got, cpu_s, wall = count - n0, cpu() - c0, time.monotonic() - t0
        await sub.delete()
    finally:
        await client.disconnect()
    return {"samples_per_s": got / wall, "cpu_per_1000": cpu_s / max(got, 1) * 1000, "cpu_share": cpu_s / wall}


async def baseline_read_per_node(endpoint: str, node_fmt: str, n: int) -> dict[str, float]:
    """One Read request per node (what one-request-per-tag gateways do), for one pass over all nodes."""
    from asyncua import Client

    client = Client(endpoint, timeout=10)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE_URI) if "{ns}" in node_fmt else 0
        nodes = [client.get_node(node_fmt.format(i=i, ns=ns)) for i in range(n)]
        c0, t0 = cpu(), time.monotonic()
        for node in nodes:
            await node.read_data_value()
        cpu_s, wall = cpu() - c0, time.monotonic() - t0
    finally:
        await client.disconnect()
    return {"pass_s": wall, "cpu_per_1000": cpu_s / n * 1000}


def o6_python() -> Path:
    """The load generator's interpreter: a virtualenv with `o6`, created once (a cache, not the project's)."""
    venv = Path(os.environ.get("EDGE_AGENT_O6_VENV", Path.home() / ".cache" / "edge-agent" / "o6-venv"))
    python = venv / "bin" / "python"
    if not (python.exists() and subprocess.run([python, "-c", "import o6"], capture_output=True).returncode == 0):
        print(f"installing the o6 load generator into {venv} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "o6"], check=True)
    return python


def start_server(kind: str, n: int, work: Path) -> tuple[Proc, str, str]:
    """(process, endpoint, node id pattern) of a server with n nodes changing every 100 ms."""
    ready = work / f"{kind}.port"
    if kind == "o6":
        cmd = [str(o6_python()), str(ROOT / "benchmarks" / "opcua_loadgen_o6.py"), "--nodes", str(n),
               "--ready-file", str(ready)]
    else:
        cmd = [sys.executable, "-m", "simulators.cli", "opcua", "--port", "0", "--bench-nodes", str(n),
               "--ready-file", str(ready)]
    proc = Proc(cmd, work, kind)
    wait_for(lambda: (ready.exists() and ready.read_text().strip()) or not proc.alive(), 120, f"{kind} server")
    if not proc.alive():
        raise SystemExit(f"the {kind} server did not start: {proc.stderr()[-2000:]}")
    port = int(ready.read_text())
    if kind == "o6":
        return proc, f"opc.tcp://127.0.0.1:{port}", "ns=1;s=bench.{i}"
    return proc, f"opc.tcp://127.0.0.1:{port}/edge-agent/plant", "ns={ns};s=bench.{i}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--only", choices=("all", "subscribe", "poll"), default="all")
    ap.add_argument("--server", choices=("asyncua", "o6"), default="asyncua")
    ap.add_argument("--smoke", action="store_true", help="200 nodes, 2 s windows, asyncua server: CI's quick run")
    args = ap.parse_args()
    if args.smoke:
        args.nodes, args.seconds, args.server = 200, 2.0, "asyncua"
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-opcua-bench-{os.getpid()}"
    work.mkdir()
    sim, endpoint, fmt = start_server(args.server, args.nodes, work)
    try:
        n, s = args.nodes, args.seconds
        step = args.only
        sub = asyncio.run(measure_driver(endpoint, fmt, n, "subscribe", s)) if step in ("all", "subscribe") else {}
        base = asyncio.run(baseline_handler(endpoint, fmt, n, s)) if step in ("all", "subscribe") else {}
        poll = asyncio.run(measure_driver(endpoint, fmt, n, "poll", s)) if step in ("all", "poll") else {}
        per_node = asyncio.run(baseline_read_per_node(endpoint, fmt, n)) if step in ("all", "poll") else {}
    finally:
        sim.terminate()
        gen_out = sim.stdout_path.read_text(errors="replace")
        sim.close()
    server = "open62541 (o6) load generator" if args.server == "o6" else "asyncua simulator"
    print(f"OPC UA driver, {n} nodes changing every 100 ms (offered {n * 10:,} changes/s), {server} in its own "
          f"process, {s:g} s windows")
    if args.server == "o6":
        lines = [x for x in gen_out.splitlines() if x.startswith("{")]
        if lines:
            gen = json.loads(lines[-1])
            print(f"   load generator: {gen['ticks']} ticks written, {gen['skipped']} skipped (fell behind), "
                  f"{gen['cpu_s']:.1f} CPU-s")
    if sub:
        print(f"subscribe: {sub['samples_per_s']:,.0f} notifications/s handled ({sub['batches_per_s']:.1f} batches/s), "
              f"{sub['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 samples ({sub['cpu_share']:.0%} of a core)")
        print(f"   latency source ts -> driver batch p50 {sub['p50_batch_ms']:.0f} ms "
              f"p99 {sub['p99_batch_ms']:.0f} ms; "
              f"-> encoded frame p50 {sub['p50_frame_ms']:.0f} ms p99 {sub['p99_frame_ms']:.0f} ms; "
              f"{sub['bytes_per_sample']:.2f} frame bytes/sample")
        print(f"   baseline asyncua handler per notification: {base['samples_per_s']:,.0f}/s, "
              f"{base['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 -> ours costs "
              f"{sub['cpu_per_1000'] / base['cpu_per_1000']:.2f}x the baseline's CPU per sample")
    if poll:
        print(f"poll (one Read of {n} nodes per 100 ms tick): {poll['samples_per_s']:,.0f} samples/s, "
              f"{poll['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 ({poll['cpu_share']:.0%} of a core), "
              f"{poll['skipped']} ticks skipped, source ts -> batch p50 {poll['p50_batch_ms']:.0f} ms")
        print(f"   baseline one Read per node: one pass over {n} nodes takes {per_node['pass_s']:.2f} s, "
              f"{per_node['cpu_per_1000'] * 1000:.1f} ms CPU per 1000 -> batched Read is "
              f"{per_node['cpu_per_1000'] / poll['cpu_per_1000']:.1f}x cheaper per sample")

if __name__ == "__main__":
    main()
