"""A TCP relay between the agent and the broker that a test can cut, blackhole or kill.

In-process (`Relay`): `blackhole()` keeps every socket open but forwards nothing, the silently dead
link (TCP up, no traffic) that made a peer gateway lose 42-44 s of data; `cut()` resets every
connection. As a process (`python -m tests.relay`), it can be killed with -9 for real; SIGUSR1
blackholes, SIGUSR2 restores.

With `journal`, the relay also reads the MQTT packets it forwards and writes a line for every frame
the broker acknowledged (`acked <seq>`), before passing the PUBACK on. A frame missing at the
consumer but journalled as acknowledged was lost by the broker (kill -9 of a broker loses what it
acknowledged but had not yet delivered); one that was never acknowledged and is missing would be ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import IO

import msgpack


class MqttWatch:
    """Follows one connection's MQTT stream: PUBLISH packet ids to frame seqs, and their PUBACKs."""

    def __init__(self, journal: IO[str]):
        self.journal = journal
        self.v5 = False
        self.pid_seq: dict[int, int] = {}
        self._up = bytearray()
        self._down = bytearray()

    def upstream(self, data: bytes) -> None:
        self._up += data
        for ptype, flags, body in _packets(self._up):
            if ptype == 1:  # CONNECT: protocol level tells whether properties follow packet ids
                name_len = int.from_bytes(body[0:2], "big")
                self.v5 = body[2 + name_len] == 5
            elif ptype == 3 and (flags >> 1) & 3 == 1:  # PUBLISH QoS 1
                tlen = int.from_bytes(body[0:2], "big")
                topic = body[2:2 + tlen].decode(errors="replace")
                pid = int.from_bytes(body[2 + tlen:4 + tlen], "big")
                pos = 4 + tlen
                if self.v5:
                    plen, pos = _varint(body, pos)
                    pos += plen
                if topic.endswith("/data"):
                    self.pid_seq[pid] = _frame_seq(bytes(body[pos:]))

    def downstream(self, data: bytes) -> None:
        self._down += data
        for ptype, _, body in _packets(self._down):
            if ptype == 4:  # PUBACK
                pid = int.from_bytes(body[0:2], "big")
                reason = body[2] if len(body) > 2 else 0
                seq = self.pid_seq.pop(pid, None)
                if seq is not None and reason < 0x80:
                    self.journal.write(f"acked {seq}\n")
                    self.journal.flush()


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _packets(buf: bytearray):
    """Yield complete packets (type, flags, body) from the front of buf, consuming them."""
    while len(buf) >= 2:
        try:
            length, pos = _varint(buf, 1)
        except IndexError:
            return
        if len(buf) < pos + length:
            return
        ptype, flags, body = buf[0] >> 4, buf[0] & 0x0F, bytes(buf[pos:pos + length])
        del buf[:pos + length]
        yield ptype, flags, body


def _frame_seq(payload: bytes) -> int:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload[:200])
    unpacker.read_array_header()
    for _ in range(3):  # version, agent, boot
        unpacker.skip()
    return int(unpacker.unpack())


class Relay:
    def __init__(self, listen_port: int, target_port: int, journal: IO[str] | None = None):
        self.listen_port, self.target_port = listen_port, target_port
        self.journal = journal
        self.forwarding = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    def cut(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def blackhole(self) -> None:
        self.forwarding = False

    def restore(self) -> None:
        self.forwarding = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        watch = MqttWatch(self.journal) if self.journal is not None else None
        await asyncio.gather(
            self._pump(reader, up_writer, watch.upstream if watch else None),
            self._pump(up_reader, writer, watch.downstream if watch else None),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, watch: object) -> None:
        while data := await reader.read(65536):
            if self.forwarding:
                if callable(watch):
                    watch(data)  # journal first: if the agent saw the PUBACK, the journal has it
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


def _write_ready(path: str) -> None:
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.replace(path + ".tmp", path)


async def _main(listen: int, target: int, journal: IO[str] | None, ready: str | None) -> None:
    relay = Relay(listen, target, journal)
    await relay.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, relay.blackhole)
    loop.add_signal_handler(signal.SIGUSR2, lambda: (relay.cut(), relay.restore()))
    if ready:
        _write_ready(ready)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--journal")
    ap.add_argument("--ready-file")
    a = ap.parse_args()
    journal = open(a.journal, "a") if a.journal else None  # noqa: SIM115 - lives as long as the process
    asyncio.run(_main(a.listen, a.target, journal, a.ready_file))
