"""A C OPC UA server (open62541, through the `o6` package) as a load generator for benchmarks/opcua_bench.py.

asyncua's server tops out near 12,600 notifications/s on our 2-core machine: every write and every
notification runs its Python code. open62541 samples, queues, encodes and publishes in C, so the only
Python left is writing the values: one native write per node per tick, about 7 us each.

Runs under its own virtualenv (opcua_bench.py --server o6 creates it; the project never imports o6, and
no test needs it). Serves N Double variables ns=1;s=bench.0 ... that all change every tick; open62541
stamps each write's SourceTimestamp, so latency is measured from the moment the value was produced.
Writes the bound port to --ready-file; SIGTERM ends it and prints one JSON line (ticks written, ticks
skipped because the writer fell behind, CPU seconds).

    python opcua_loadgen_o6.py --port 0 --nodes 5000 --tick-ms 100 --ready-file F

o6 without a licence key runs in "script mode" (its banner says so): the server shuts down after 10
minutes, far longer than a benchmark run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path

import o6  # type: ignore[import-not-found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(args: argparse.Namespace) -> None:
    port = args.port or free_port()
    server = o6.Server(port=port, loop=asyncio.get_running_loop())
    native = type(server).__mro__[1]  # the C server: its write does not go through a coroutine per call
    server.start()
    for i in range(args.nodes):
        node = server.addVariable(f"b{i}", server.objectsNode, 0.0, nodeId=f"ns=1;s=bench.{i}")
        if asyncio.isfuture(node) or asyncio.iscoroutine(node):
            await node
    ids = [o6.NodeId(f"ns=1;s=bench.{i}") for i in range(args.nodes)]
    # A bare value write: open62541 stamps SourceTimestamp with the moment of the write (when the value
    # was produced), and skipping a DataValue object per write saves a third of the generator's CPU.
    write = native._write_value
    tick_ns = args.tick_ms * 1_000_000
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, args.ready_file)
    written = skipped = 0
    k = time.time_ns() // tick_ns + 1
    while not stop.is_set():
        delay = (k * tick_ns - time.time_ns()) / 1e9
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        now_k = time.time_ns() // tick_ns
        if now_k > k:
            skipped += now_k - k
            k = now_k
        base = float(k % 1_000_000)
        for start in range(0, len(ids), 500):  # let the server's network loop run between slices
            for i in range(start, min(start + 500, len(ids))):
                write(server, ids[i], base + i * 1e-3)
            await asyncio.sleep(0)
        written += 1
        k += 1
        if args.status_file is not None and written % 10 == 0:  # about once a second: what was offered
            tmp_status = args.status_file.with_name(args.status_file.name + ".tmp")
            tmp_status.write_text(f"{written} {skipped} {time.monotonic()}\n")
            os.replace(tmp_status, args.status_file)
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"ticks": written, "skipped": skipped, "cpu_s": r.ru_utime + r.ru_stime}), flush=True)
    result = server.stop()
    if result is not None:
        await result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--tick-ms", type=int, default=100)
    ap.add_argument("--ready-file", type=Path, required=True)
    ap.add_argument("--status-file", type=Path, help="ticks written so far, rewritten about once a second")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    asyncio.run(main(ap.parse_args()))
