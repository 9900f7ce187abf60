"""The floor under benchmarks/modbus_plant.py: what a bare asyncio Modbus TCP client costs when it
sends exactly the agent's requests (same planner, same simulator, same event loop) and does nothing
else: no fault handling, no timeouts, no quality, no batches, filters, frames, spool or MQTT.

Why it exists: the agent's CPU per 1,000 points is mostly per-request cost (a loopback send, a wake-up
and a receive per request when one request is in flight at a time), and that part does not depend on
our code. Measured in the same run as the agent, the ratio agent / floor says how much of the agent's
CPU is ours; the floor alone says what any asyncio client pays on this machine.

    .venv/bin/python benchmarks/modbus_floor.py --port P --devices 50 --tags 200 --interval 1s --seconds 15

Prints one JSON line: points read and CPU-seconds of this process over the steady-state window.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.modbus.config import ModbusDevice  # noqa: E402
from drivers.modbus.plan import plan_device  # noqa: E402
from edge_agent.config.units import parse_duration_ns  # noqa: E402
from edge_agent.eventloop import loop_factory  # noqa: E402

REQUEST = struct.Struct(">HHHBBHH")
LENGTH = struct.Struct(">H")


class Client(asyncio.Protocol):
    """One device: its requests one at a time, each sent from the previous reply's callback."""

    def __init__(self, unit: int, reads: list[tuple[int, int, int]], tags: int, done: list[int]):
        self.unit, self.reads, self.tags, self.done = unit, reads, tags, done
        self.buf = bytearray()
        self.i = 0
        self.tid = 0
        self.row = np.empty(tags)
        self.busy = False
        self.skipped = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def poll(self) -> None:
        if self.busy:  # as the agent does: an overrun skips the tick
            self.skipped += 1
            return
        self.busy = True
        self.row = np.empty(self.tags)
        self.i = 0
        self._send()

    def _send(self) -> None:
        fc, start, count = self.reads[self.i]
        self.tid = (self.tid + 1) & 0xFFFF
        assert self.transport is not None
        self.transport.write(REQUEST.pack(self.tid, 0, 6, self.unit, fc, start, count))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 9:
            length = LENGTH.unpack_from(self.buf, 4)[0]
            if len(self.buf) < 6 + length:
                return
            pdu = bytes(self.buf[7 : 6 + length])
            del self.buf[: 6 + length]
            _, start, count = self.reads[self.i]
            self.row[start // 2 : (start + count) // 2] = np.frombuffer(pdu, ">f4", offset=2)
            self.i += 1
            if self.i < len(self.reads):
                self._send()
            else:
                self.busy = False
                self.done[0] += self.tags


async def run(port: int, devices: int, tags: int, interval: str, seconds: float) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from modbus_plant import device_table

    interval_s = parse_duration_ns(interval) / 1e9
    loop = asyncio.get_running_loop()
    done = [0]
    clients = []
    for d in range(devices):
        dev = ModbusDevice.model_validate(device_table(d, tags, port, interval, False))
        reads = [(r.function, r.start, r.count) for r in plan_device(dev)]
        _, client = await loop.create_connection(lambda u=d + 1, r=reads: Client(u, r, tags, done), "127.0.0.1", port)
        clients.append(client)
    t0 = loop.time() + 0.1

    def tick(client: Client, k: int) -> None:
        client.poll()
        loop.call_at(t0 + (k + 1) * interval_s, tick, client, k + 1)

    for c in clients:
        loop.call_at(t0, tick, c, 0)
    await asyncio.sleep(2.0)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)  # as the agent does (Agent.settle_gc)
    n0, c0 = done[0], time.process_time()
    await asyncio.sleep(seconds)
    return {"points": done[0] - n0, "cpu_s": time.process_time() - c0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--tags", type=int, required=True)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    with asyncio.Runner(loop_factory=loop_factory("auto")[0]) as runner:
        result = runner.run(run(args.port, args.devices, args.tags, args.interval, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
