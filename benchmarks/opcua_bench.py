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
import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.opcua.config import OpcUaDevice  # noqa: E402
from drivers.opcua.driver import OpcUaDriver  # noqa: E402
from edge_agent.agent import GC_GEN0_THRESHOLD  # noqa: E402
from edge_agent.batcher import Batcher  # noqa: E402
from edge_agent.batcher import warm_up as batcher_warm_up  # noqa: E402
from edge_agent.config.models import EwmaZscoreFilter  # noqa: E402
from edge_agent.filters.engine import DeviceFilters  # noqa: E402
from edge_agent.frame import fastpack  # noqa: E402
from edge_agent.frame.builder import build_frames  # noqa: E402
from edge_agent.frame.model import Frame  # noqa: E402
from edge_agent.samples import Batch  # noqa: E402
from simulators.opcua.server import NAMESPACE_URI  # noqa: E402
from tests.conftest import Proc, wait_for  # noqa: E402


@dataclass(frozen=True)
class Shard:
    """One server process and the share of the nodes it serves (one agent device each)."""

    endpoint: str
    node_fmt: str  # NodeId pattern with {i} (and {ns} for the asyncua simulator's namespace)
    count: int
    status: Path | None  # the o6 generator's status file: ticks it wrote, to state the load offered


def ticks_written(shards: list[Shard]) -> list[tuple[int, float]] | None:
    out = []
    for sh in shards:
        if sh.status is None or not sh.status.exists():
            return None
        written, _, at = sh.status.read_text().split()
        out.append((int(written), float(at)))
    return out


def offered_rate(shards: list[Shard], g0: list[tuple[int, float]] | None, g1: list[tuple[int, float]] | None) -> float:
    """Changes per second the generators really wrote in a window (they fall behind on a busy machine)."""
    if not g0 or not g1 or any(b[1] <= a[1] for a, b in zip(g0, g1, strict=True)):
        return float("nan")
    return sum(sh.count * (b[0] - a[0]) / (b[1] - a[1]) for sh, a, b in zip(shards, g0, g1, strict=True))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Pipeline:
    """The agent's inline stages after the driver: filters, batcher, frame encoding (no MQTT)."""

    def __init__(self, devs: list[OpcUaDevice], batch_points: int = 10_000, driver_only: bool = False,
                 specs: dict | None = None, max_frame_bytes: int = 128 * 1024):
        self.filters = {dev.name: DeviceFilters(dev, specs or {}) for dev in devs}
        self.max_frame_bytes = max_frame_bytes
        self.frames = 0
        self.batcher = Batcher([(dev.name, tuple(t.name for t in dev.tags), tuple(t.type for t in dev.tags))
                                for dev in devs], batch_points, 1_000_000_000, self._closed)
        # CPU split (this thread): everything after the driver (filters, batcher and the frames they
        # close), and of that the frame encoding alone; a frame closed by the batcher's timer is encoded
        # outside a sink call. driver_only: the sink only counts, to see what the driver alone sustains.
        self.cpu_pipeline = 0.0
        self.cpu_encode = 0.0
        self._in_call = False
        self.driver_only = driver_only
        self.samples = 0
        self.to_batch: list[np.ndarray] = []
        self.to_frame: list[np.ndarray] = []
        self.bytes = 0
        self.seq = 0
        self.warm_at = 3 * sum(len(dev.tags) for dev in devs)  # connected, subscribed, first notifications through
        self.warm = asyncio.Event()

    def __call__(self, batch: Batch) -> None:
        c0 = time.thread_time()
        now = time.time_ns()
        self.to_batch.append((now - batch.ts).ravel())
        self.samples += batch.points
        if self.samples >= self.warm_at:
            self.warm.set()
        if self.driver_only:
            return
        self._in_call = True
        self.filters[batch.device].process(batch)
        self.batcher.add(batch)
        self._in_call = False
        self.cpu_pipeline += time.thread_time() - c0

    def _closed(self, blocks) -> None:
        # The agent's own encoder stage (what its spool thread runs): fast path, split at max_frame_bytes.
        c0 = time.thread_time()
        def make(seq: int, part: list) -> Frame:
            return Frame("bench", b"\0" * 16, seq, time.time_ns(), part)

        out = build_frames(blocks, self.seq + 1, make, self.max_frame_bytes)
        spent = time.thread_time() - c0
        self.seq += len(out)
        self.frames += len(out)
        self.cpu_encode += spent
        if not self._in_call:
            self.cpu_pipeline += spent
        now = time.time_ns()
        self.bytes += sum(len(data) for data, _, _ in out)
        self.to_frame.extend((now - b.ts).repeat(b.values.shape[1]) for b in blocks)


def pct(parts: list[np.ndarray], q: float) -> float:
    return float(np.percentile(np.concatenate(parts), q) / 1e6) if parts else float("nan")


async def measure_driver(shards: list[Shard], mode: str, seconds: float,
                         batch_points: int = 10_000, driver_only: bool = False,
                         score: bool = False) -> dict[str, float]:
    fastpack.warm_up()
    batcher_warm_up()
    specs = {"z": EwmaZscoreFilter(kind="ewma_zscore")} if score else {}
    devs = []
    for d, sh in enumerate(shards):
        tags = [{"name": f"b{i}", "node": sh.node_fmt.format(i=i, ns="plant"), "type": "float64",
                 **({"filters": ["z"]} if score else {})} for i in range(sh.count)]
        devs.append(OpcUaDevice.model_validate({
            "name": f"bench{d}", "protocol": "opcua", "endpoint": sh.endpoint, "mode": mode,
            "poll_interval": "100ms", "namespaces": {"plant": NAMESPACE_URI}, "timeout": "10s", "keepalive": "30s",
            "tags": tags}))
    pipe = Pipeline(devs, batch_points, driver_only, specs)
    drvs = [OpcUaDriver(dev, pipe) for dev in devs]
    tasks = [asyncio.create_task(drv.run()) for drv in drvs]
    try:
        await pipe.warm.wait()
        if gc.get_threshold()[0] != 700:
            gc.freeze()  # what start-up allocated (config, node tables, kernels) is never scanned again
        await asyncio.sleep(1.0)
        pipe.to_batch.clear()
        pipe.to_frame.clear()
        s0, c0, t0, b0 = pipe.samples, cpu(), time.monotonic(), sum(d.batches_out for d in drvs)
        f0 = pipe.frames
        p0, e0 = pipe.cpu_pipeline, pipe.cpu_encode
        g0 = ticks_written(shards)
        await asyncio.sleep(seconds)
        g1 = ticks_written(shards)
        samples, cpu_s, wall = pipe.samples - s0, cpu() - c0, time.monotonic() - t0
        batches = sum(d.batches_out for d in drvs) - b0
        frames = pipe.frames - f0
        cpu_pipe, cpu_enc = pipe.cpu_pipeline - p0, pipe.cpu_encode - e0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    per_1000 = 1000 / max(samples, 1)
    return {"offered_per_s": offered_rate(shards, g0, g1), "samples_per_s": samples / wall,
            "cpu_per_1000": cpu_s * per_1000,
            "batches_per_s": batches / wall, "frames_per_s": frames / wall,
            "driver_per_1000": (cpu_s - cpu_pipe) * per_1000, "encode_per_1000": cpu_enc * per_1000,
            "rest_per_1000": (cpu_pipe - cpu_enc) * per_1000,
            "cpu_share": cpu_s / wall, "p50_batch_ms": pct(pipe.to_batch, 50), "p99_batch_ms": pct(pipe.to_batch, 99),
            "p50_frame_ms": pct(pipe.to_frame, 50), "p99_frame_ms": pct(pipe.to_frame, 99),
            "skipped": sum(d.stats.skipped_ticks for d in drvs), "bytes_per_sample": pipe.bytes / max(1, pipe.samples)}


async def baseline_handler(shards: list[Shard], seconds: float) -> dict[str, float]:
    """asyncua's documented way: subscribe_data_change with a handler called once per notification."""
    from asyncua import Client

    count = 0
    warm = asyncio.Event()
    n = sum(sh.count for sh in shards)

    class Handler:
        def datachange_notification(self, node, val, data) -> None:
            nonlocal count
            count += 1
            if count >= 3 * n:
                warm.set()

    clients = []
    try:
        for sh in shards:
            client = Client(sh.endpoint, timeout=10)
            await client.connect()
            clients.append(client)
            ns = await client.get_namespace_index(NAMESPACE_URI) if "{ns}" in sh.node_fmt else 0
            sub = await client.create_subscription(100, Handler())
            nodes = [client.get_node(sh.node_fmt.format(i=i, ns=ns)) for i in range(sh.count)]
            for i in range(0, sh.count, 1000):
                await sub.subscribe_data_change(nodes[i:i + 1000], sampling_interval=100)
        await warm.wait()
        c0, n0, t0 = cpu(), count, time.monotonic()
        g0 = ticks_written(shards)
        await asyncio.sleep(seconds)
        g1 = ticks_written(shards)
        got, cpu_s, wall = count - n0, cpu() - c0, time.monotonic() - t0
    finally:
        for client in clients:
            await client.disconnect()
    return {"samples_per_s": got / wall, "cpu_per_1000": cpu_s / max(got, 1) * 1000, "cpu_share": cpu_s / wall,
            "offered_per_s": offered_rate(shards, g0, g1)}


async def baseline_read_per_node(shards: list[Shard]) -> dict[str, float]:
    """One Read request per node (what one-request-per-tag gateways do), for one pass over all nodes."""
    from asyncua import Client

    cpu_s = wall = 0.0
    for sh in shards:
        client = Client(sh.endpoint, timeout=10)
        await client.connect()
        try:
            ns = await client.get_namespace_index(NAMESPACE_URI) if "{ns}" in sh.node_fmt else 0
            nodes = [client.get_node(sh.node_fmt.format(i=i, ns=ns)) for i in range(sh.count)]
            c0, t0 = cpu(), time.monotonic()
            for node in nodes:
                await node.read_data_value()
            cpu_s, wall = cpu_s + cpu() - c0, wall + time.monotonic() - t0
        finally:
            await client.disconnect()
    return {"pass_s": wall, "cpu_per_1000": cpu_s / sum(sh.count for sh in shards) * 1000}


def o6_python() -> Path:
    """The load generator's interpreter: a virtualenv with `o6`, created once (a cache, not the project's)."""
    venv = Path(os.environ.get("EDGE_AGENT_O6_VENV", Path.home() / ".cache" / "edge-agent" / "o6-venv"))
    python = venv / "bin" / "python"
    if not (python.exists() and subprocess.run([python, "-c", "import o6"], capture_output=True).returncode == 0):
        print(f"installing the o6 load generator into {venv} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "o6"], check=True)
    return python


def start_server(kind: str, n: int, work: Path, name: str) -> tuple[Proc, Shard]:
    """A server process with n nodes changing every 100 ms."""
    ready = work / f"{name}.port"
    status = work / f"{name}.status"
    if kind == "o6":
        cmd = [str(o6_python()), str(ROOT / "benchmarks" / "opcua_loadgen_o6.py"), "--nodes", str(n),
               "--ready-file", str(ready), "--status-file", str(status)]
    else:
        cmd = [sys.executable, "-m", "simulators.cli", "opcua", "--port", "0", "--bench-nodes", str(n),
               "--ready-file", str(ready)]
    proc = Proc(cmd, work, name)
    wait_for(lambda: (ready.exists() and ready.read_text().strip()) or not proc.alive(), 120, f"{kind} server")
    if not proc.alive():
        raise SystemExit(f"the {kind} server did not start: {proc.stderr()[-2000:]}")
    port = int(ready.read_text())
    if kind == "o6":
        return proc, Shard(f"opc.tcp://127.0.0.1:{port}", "ns=1;s=bench.{i}", n, status)
    return proc, Shard(f"opc.tcp://127.0.0.1:{port}/edge-agent/plant", "ns={ns};s=bench.{i}", n, None)


def offered(r: dict[str, float]) -> str:
    x = r.get("offered_per_s", float("nan"))
    return "" if x != x else f" of {x:,.0f} changes/s offered in that window"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--only", choices=("all", "subscribe", "poll"), default="all")
    ap.add_argument("--server", choices=("asyncua", "o6"), default="asyncua")
    ap.add_argument("--batch-points", type=int, default=10_000,
                    help="frames close at this many points (the agent's [batch] max_points, default 10000)")
    ap.add_argument("--shards", type=int, default=1,
                    help="server processes, each serving an equal share of the nodes behind its own device")
    ap.add_argument("--gc-threshold", type=int, default=GC_GEN0_THRESHOLD,
                    help="gc.set_threshold(N, 50, 100) and gc.freeze() once warm, as the agent does "
                         f"(default {GC_GEN0_THRESHOLD}, the agent's; 0: Python's defaults)")
    ap.add_argument("--score", action="store_true",
                    help="an ewma_zscore filter on every tag, so frames carry score columns")
    ap.add_argument("--smoke", action="store_true", help="200 nodes, 2 s windows, asyncua server: CI's quick run")
    args = ap.parse_args()
    if args.smoke:
        args.nodes, args.seconds, args.server = 200, 2.0, "asyncua"
    if args.gc_threshold:
        # The cyclic collector was a third of this process's samples under py-spy with Python's
        # defaults (asyncua allocates objects per notification): the agent tunes it (settle_gc).
        gc.set_threshold(args.gc_threshold, 50, 100)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-opcua-bench-{os.getpid()}"
    work.mkdir()
    shares = [args.nodes // args.shards + (1 if i < args.nodes % args.shards else 0) for i in range(args.shards)]
    sims: list[Proc] = []
    shards: list[Shard] = []
    try:
        for i, count in enumerate(shares):
            proc, shard = start_server(args.server, count, work, f"{args.server}{i}")
            sims.append(proc)
            shards.append(shard)
        n, s = args.nodes, args.seconds
        step = args.only
        bp = args.batch_points
        subs = step in ("all", "subscribe")
        polls = step in ("all", "poll")
        sub = asyncio.run(measure_driver(shards, "subscribe", s, bp, score=args.score)) if subs else {}
        alone = asyncio.run(measure_driver(shards, "subscribe", s, bp, driver_only=True)) if subs else {}
        base = asyncio.run(baseline_handler(shards, s)) if subs else {}
        poll = asyncio.run(measure_driver(shards, "poll", s, bp, score=args.score)) if polls else {}
        poll_alone = asyncio.run(measure_driver(shards, "poll", s, bp, driver_only=True)) if polls else {}
        per_node = asyncio.run(baseline_read_per_node(shards)) if polls else {}
    finally:
        gen_out = []
        for proc in sims:
            proc.terminate()
            gen_out.append(proc.stdout_path.read_text(errors="replace"))
            proc.close()
    server = "open62541 (o6) load generator" if args.server == "o6" else "asyncua simulator"
    where = "in its own process" if args.shards == 1 else f"in {args.shards} processes, one device each"
    print(f"OPC UA driver, {n} nodes changing every 100 ms (nominal {n * 10:,} changes/s), {server} {where}, "
          f"{s:g} s windows")
    if args.server == "o6":
        for i, out in enumerate(gen_out):
            lines = [x for x in out.splitlines() if x.startswith("{")]
            if lines:
                gen = json.loads(lines[-1])
                print(f"   load generator {i}: {gen['ticks']} ticks written, {gen['skipped']} skipped (fell behind), "
                      f"{gen['cpu_s']:.1f} CPU-s")
    scored = ", ewma_zscore scores on every tag" if args.score else ""
    if sub:
        print(f"subscribe: {sub['samples_per_s']:,.0f} notifications/s handled{offered(sub)} "
              f"({sub['batches_per_s']:.1f} batches/s, {sub['frames_per_s']:.1f} frames/s), "
              f"{sub['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 samples ({sub['cpu_share']:.0%} of a core)")
        print(f"   of which driver with asyncua decoding {sub['driver_per_1000'] * 1000:.2f} ms, filters and batcher "
              f"{sub['rest_per_1000'] * 1000:.2f} ms, frame encoding {sub['encode_per_1000'] * 1000:.2f} ms "
              f"(frames close at {args.batch_points:,} points{scored})")
        print(f"   latency source ts -> driver batch p50 {sub['p50_batch_ms']:.0f} ms "
              f"p99 {sub['p99_batch_ms']:.0f} ms; "
              f"-> encoded frame p50 {sub['p50_frame_ms']:.0f} ms p99 {sub['p99_frame_ms']:.0f} ms; "
              f"{sub['bytes_per_sample']:.2f} frame bytes/sample")
        print(f"   driver alone (sink only counts): {alone['samples_per_s']:,.0f} notifications/s{offered(alone)}, "
              f"{alone['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 ({alone['cpu_share']:.0%} of a core), "
              f"source ts -> driver batch p50 {alone['p50_batch_ms']:.0f} ms p99 {alone['p99_batch_ms']:.0f} ms -> "
              f"{alone['cpu_per_1000'] / base['cpu_per_1000']:.2f}x the baseline's CPU per sample")
        print(f"   baseline asyncua handler per notification: {base['samples_per_s']:,.0f}/s{offered(base)}, "
              f"{base['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 -> ours costs "
              f"{sub['cpu_per_1000'] / base['cpu_per_1000']:.2f}x the baseline's CPU per sample")
    if poll:
        print(f"poll (one Read of {n} nodes per 100 ms tick): {poll['samples_per_s']:,.0f} samples/s{offered(poll)}, "
              f"{poll['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 ({poll['cpu_share']:.0%} of a core), "
              f"{poll['skipped']} ticks skipped, source ts -> batch p50 {poll['p50_batch_ms']:.0f} ms")
        print(f"   of which driver with asyncua decoding {poll['driver_per_1000'] * 1000:.2f} ms, filters and batcher "
              f"{poll['rest_per_1000'] * 1000:.2f} ms, frame encoding {poll['encode_per_1000'] * 1000:.2f} ms")
        print(f"   driver alone (sink only counts): {poll_alone['samples_per_s']:,.0f} samples/s, "
              f"{poll_alone['cpu_per_1000'] * 1000:.2f} ms CPU per 1000 ({poll_alone['cpu_share']:.0%} of a core), "
              f"{poll_alone['skipped']} ticks skipped")
        print(f"   baseline one Read per node: one pass over {n} nodes takes {per_node['pass_s']:.2f} s, "
              f"{per_node['cpu_per_1000'] * 1000:.1f} ms CPU per 1000 -> batched Read is "
              f"{per_node['cpu_per_1000'] / poll['cpu_per_1000']:.1f}x cheaper per sample")

if __name__ == "__main__":
    main()
