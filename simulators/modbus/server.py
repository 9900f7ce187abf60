"""A small hand-written asyncio Modbus TCP server that serves the simulated plant.

Hand-written rather than built on pymodbus's server: its datastore API is deprecated ahead of v4,
and the fault injection planned next (per-unit delays, short replies, wrong transaction ids,
exceptions on chosen addresses, dropped connections) needs control over every byte on the wire.
The seams for it are `respond` (PDU in, PDU or None out, pure apart from the stats) and `_serve`
(framing and the socket).

Behaviour a client will see:
  * FC 1/2/3/4 are served from the plant at the request's arrival time (one tick for the whole
    reply, so a multi-register value is never torn across ticks).
  * Writes (FC 5/6/15/16) and any other function code: exception 01 (illegal function).
  * Count 0, count > 125 registers / > 2000 bits, or a malformed read PDU: exception 03.
  * Any address of the requested range that is not in the unit's map: exception 02. The plant's
    map is contiguous per table, so merged reads across neighbouring points are fine; a gap would
    be illegal just as on a PLC with sparse memory.
  * Unknown unit id (including 0 and 255): no answer at all, like a gateway whose serial device is
    dead. The client times out; the connection stays open and later requests are still answered.
  * Requests on one connection are answered in order (pipelining works); frames may arrive split
    across TCP segments; a bad MBAP length closes the connection (framing cannot be recovered);
    a non-zero protocol id frame is skipped without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from simulators.modbus.faults import Faults, struct_crc_bad
from simulators.plant import DEFAULT_TICK_NS, PLANT, Point, address_index, encode, value_at_tick

log = logging.getLogger("simulators.modbus")

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length (unit id + PDU), unit id
MAX_PDU = 253

EXC_ILLEGAL_FUNCTION = 0x01
EXC_ILLEGAL_DATA_ADDRESS = 0x02
EXC_ILLEGAL_DATA_VALUE = 0x03

# function code -> (table, max count per request)
READS: dict[int, tuple[str, int]] = {1: ("coil", 2000), 2: ("di", 2000), 3: ("hr", 125), 4: ("ir", 125)}


def _write_if_open(writer: asyncio.StreamWriter, frame: bytes) -> None:
    if not writer.is_closing():
        writer.write(frame)


def exception_pdu(function_code: int, code: int) -> bytes:
    """Exception reply: the request's function code with the high bit set, then the code."""
    return bytes(((function_code | 0x80) & 0xFF, code))


class ModbusSimServer:
    """Modbus TCP server for every unit of a plant profile on one port.

    `clock` (unix ns) is injectable so tests and fault injection can pin the time a request is
    evaluated at; by default it is wall time, which is what makes `value_at` predictions hold.
    """

    def __init__(
        self,
        seed: int = 1,
        tick_ns: int = DEFAULT_TICK_NS,
        points: Sequence[Point] = PLANT,
        clock: Callable[[], int] = time.time_ns,
        faults: Faults | None = None,
        framing: str = "tcp",
    ) -> None:
        if tick_ns <= 0:
            raise ValueError("tick_ns must be positive")
        self.seed = seed
        self.tick_ns = tick_ns
        self.points = tuple(points)
        self.clock = clock
        self.units: frozenset[int] = frozenset(p.unit for p in self.points)
        self._index = address_index(self.points)
        # Requests answered (normal or exception reply), by (unit id, function code).
        self.stats: Counter[tuple[int, int]] = Counter()
        # Requests that got no answer on purpose (unknown unit id or non-Modbus protocol id).
        self.unanswered = 0
        self.connections_total = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._host = ""
        self._stopping = False
        if framing not in ("tcp", "rtu"):
            raise ValueError("framing must be 'tcp' (MBAP) or 'rtu' (RTU frames over TCP)")
        self.faults = faults or Faults()
        self.framing = framing
        self.crc_errors = 0  # RTU request frames dropped for a bad CRC (a real slave stays silent)
        self.rtu_gaps: deque[float] = deque(maxlen=10_000)  # silence (s) from a reply to the next request
        self.dropped_connections = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._serial: asyncio.StreamWriter | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 5020) -> None:
        """Listen; port 0 picks a free port (read it back from `port`). OSError if it cannot bind."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._stopping = False
        handler = self._serve if self.framing == "tcp" else self._serve_rtu_stream
        self._server = await asyncio.start_server(handler, host, port)
        self._host = host
        self._start_fault_timers()

    async def start_serial(self, path: str, baudrate: int = 19200, parity: str = "E", stopbits: int = 1,
                           bytesize: int = 8) -> None:
        """Serve RTU on a serial port (a real one, or one end of a socat PTY pair). OSError if it cannot open."""
        import serial_asyncio_fast

        self._stopping = False
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=path, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize)
        self._serial = writer
        self._tasks.append(asyncio.create_task(self._rtu_loop(reader, writer, f"serial {path}")))
        self._start_fault_timers()

    def _start_fault_timers(self) -> None:
        if self.faults.drop_every_s > 0:
            self._tasks.append(asyncio.create_task(self._drop_connections()))

    async def _drop_connections(self) -> None:
        """Every drop_every_s, reset every client connection: a PLC rebooting, a flaky switch port."""
        while True:
            await asyncio.sleep(self.faults.drop_every_s)
            for writer in list(self._handlers.values()):
                writer.transport.abort()
                self.dropped_connections += 1
                self.faults.injected["drop"] += 1

    @property
    def port(self) -> int:
        """The bound port. With port 0 and a host resolving to several addresses each socket gets its
        own port; this reports the first, so use a literal address with port 0."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        return self._host

    @property
    def active_connections(self) -> int:
        return len(self._handlers)

    async def stop(self, grace_s: float = 0.5) -> None:
        """Stop listening and drop every client; bounded by grace_s so shutdown is always prompt."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        for writer in list(self._handlers.values()):
            writer.close()
        handlers = dict(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=grace_s)
            for task in pending:
                # A client that stopped reading leaves close() waiting to flush: abort instead.
                handlers[task].transport.abort()
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), grace_s)

    def stats_summary(self) -> dict[str, dict]:
        """JSON-ready {"requests": {"<unit>": {"<fc>": n}}}; string keys because JSON needs them.
        With fault injection on, "faults" counts what was injected by kind."""
        out: dict[str, dict[str, int]] = {}
        for (unit, fc), n in sorted(self.stats.items()):
            out.setdefault(str(unit), {})[str(fc)] = n
        summary: dict[str, dict] = {"requests": out}
        if self.faults.active or self.crc_errors:
            summary["faults"] = dict(sorted(self.faults.injected.items()))
            if self.crc_errors:
                summary["faults"]["request_crc_errors"] = self.crc_errors
        return summary

    # --- protocol -------------------------------------------------------------------------------

    def respond(self, unit: int, pdu: bytes, t_ns: int) -> bytes | None:
        """Reply PDU for a request PDU arriving at t_ns, or None for no answer at all."""
        if unit not in self.units or not pdu or unit in self.faults.dead_units:
            self.unanswered += 1
            return None
        fc = pdu[0]
        self.stats[(unit, fc)] += 1
        if fc not in READS:
            return exception_pdu(fc, EXC_ILLEGAL_FUNCTION)
        table, max_count = READS[fc]
        if len(pdu) != 5:
            return exception_pdu(fc, EXC_ILLEGAL_DATA_VALUE)
        address, count = struct.unpack_from(">HH", pdu, 1)
        if not 1 <= count <= max_count:
            return exception_pdu(fc, EXC_ILLEGAL_DATA_VALUE)
        index = self._index.get((unit, table))
        if index is None or any(a not in index for a in range(address, address + count)):
            return exception_pdu(fc, EXC_ILLEGAL_DATA_ADDRESS)

        k = t_ns // self.tick_ns
        words: dict[str, tuple[int, ...]] = {}
        out: list[int] = []
        for a in range(address, address + count):
            p, off = index[a]
            enc = words.get(p.name)
            if enc is None:
                enc = words[p.name] = encode(p, value_at_tick(p, k, self.seed, self.tick_ns))
            out.append(enc[off])
        if table in ("coil", "di"):
            packed = bytearray((count + 7) // 8)
            for i, bit in enumerate(out):
                if bit:
                    packed[i // 8] |= 1 << (i % 8)
            return bytes((fc, len(packed))) + bytes(packed)
        return bytes((fc, 2 * count)) + struct.pack(f">{count}H", *out)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        self.connections_total += 1
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        log.info("connection open from %s", peer_s)
        answered = 0
        reason = "client closed"
        try:
            while True:
                try:
                    header = await reader.readexactly(MBAP.size)
                except asyncio.IncompleteReadError as e:
                    reason = "client closed mid-request" if e.partial else "client closed"
                    break
                tid, proto, length, unit = MBAP.unpack(header)
                if not 2 <= length <= MAX_PDU + 1:
                    reason = f"bad MBAP length {length}"
                    break
                try:
                    pdu = await reader.readexactly(length - 1)
                except asyncio.IncompleteReadError:
                    reason = "client closed mid-request"
                    break
                t_ns = self.clock()
                if proto != 0:
                    self.unanswered += 1
                    continue
                reply = self.respond(unit, pdu, t_ns)
                if reply is None:
                    continue
                fault = self.faults.draw(rtu=False) if self.faults.active else None
                if fault == "tid":
                    tid = (tid + 0x5A5A) & 0xFFFF  # an id the client never sent
                elif fault is not None:
                    reply = self.faults.mangle(fault, pdu, reply)
                frame = MBAP.pack(tid, 0, len(reply) + 1, unit) + reply
                answered += 1
                delay = self.faults.delay_s(unit)
                if delay > 0:
                    # A slow server still reads on: each delayed reply goes out on its own timer, so
                    # pipelined requests overlap (replies may then arrive out of order, as Modbus TCP allows).
                    asyncio.get_running_loop().call_later(delay, _write_if_open, writer, frame)
                    continue
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, OSError) as e:
            reason = f"connection error: {e}"
        except asyncio.CancelledError:
            reason = "server stopping"
            raise
        finally:
            if self._stopping:
                reason = "server stopping"
            self._handlers.pop(task, None)
            writer.close()
            log.info("connection closed from %s (%d replies, %s)", peer_s, answered, reason)

    # --- RTU ------------------------------------------------------------------------------------

    async def _serve_rtu_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RTU frames over a TCP connection: what a serial-to-Ethernet converter in transparent mode passes."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        self.connections_total += 1
        try:
            await self._rtu_loop(reader, writer, "rtu-over-tcp client")
        finally:
            self._handlers.pop(task, None)
            writer.close()

    async def _rtu_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, what: str) -> None:
        """Frames are delimited by their function code's length (reads and writes are fixed or carry a
        byte count); a frame with a bad CRC is dropped silently, as a slave on a noisy line does, and
        the buffer is cleared so the next frame starts clean."""
        from drivers.modbus.client import crc16, rtu_frame  # one CRC implementation for both sides

        buf = bytearray()
        last_write = 0.0
        log.info("%s: serving RTU", what)
        try:
            while True:
                data = await reader.read(512)
                if not data:
                    break
                buf += data
                while len(buf) >= 2:
                    fc = buf[1]
                    if 1 <= fc <= 6:
                        n = 8
                    elif fc in (15, 16) and len(buf) >= 7:
                        n = 9 + buf[6]
                    elif fc in (15, 16):
                        break
                    else:
                        buf.clear()  # cannot frame an unknown function: wait for the next request
                        break
                    if len(buf) < n:
                        break
                    frame, buf[:] = bytes(buf[:n]), buf[n:]
                    if last_write:  # silence on the line before this request, for inter-frame gap checks
                        self.rtu_gaps.append(time.monotonic() - last_write)
                    if crc16(frame[:-2]) != struct.unpack("<H", frame[-2:])[0]:
                        self.crc_errors += 1
                        buf.clear()
                        continue
                    unit, pdu = frame[0], frame[1:-2]
                    if unit == 0:
                        continue  # broadcast: never answered
                    reply = self.respond(unit, pdu, self.clock())
                    if reply is None:
                        continue
                    delay = self.faults.delay_s(unit)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    fault = self.faults.draw(rtu=True) if self.faults.active else None
                    reply_unit = unit
                    if fault == "tid":
                        reply_unit = (unit % 247) + 1  # another unit's answer on the line
                    elif fault not in (None, "crc"):
                        reply = self.faults.mangle(fault, pdu, reply)
                    out = rtu_frame(reply_unit, reply)
                    if fault == "crc":
                        out = struct_crc_bad(out)
                    writer.write(out)
                    await writer.drain()
                    last_write = time.monotonic()
        except (ConnectionError, OSError) as e:
            log.info("%s: %s", what, e)
