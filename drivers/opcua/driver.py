"""Reads one OPC UA server: subscribed tags through one subscription, polled tags with batched Reads.

Every connection starts from nothing: a new session, the namespace table read again, browse paths
translated again, the subscription and its monitored items created again. That is what makes a
server restart (new namespace indices, no sessions, no subscriptions) a non-event instead of the
peers' "BadNodeIdUnknown until someone restarts the gateway".

Subscriptions notify per item. Notifications are accumulated and handed to the sink at most once
per publishing interval (or sooner when `MAX_PENDING` items wait), as Batches of just the tags that
changed: one Batch per flush in the usual case, never one per notification.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from asyncua import ua
from asyncua.ua.uaerrors import UaError

from drivers.api import DriverStats, SampleSink
from drivers.opcua.config import OpcUaDevice
from drivers.opcua.quality import quality_of
from drivers.opcua.session import SessionError, UaSession, status_name, to_ns
from edge_agent.backoff import Backoff
from edge_agent.config.units import format_duration
from edge_agent.samples import QUALITY_BAD, QUALITY_BAD_COMM, QUALITY_BAD_CONFIG, Batch, text_column

log = logging.getLogger("edge_agent.drivers.opcua")

MAX_PENDING = 200_000  # notifications held before an early flush (bounds memory under a burst)
MIN_FLUSH_NS = 20_000_000  # never flush more often than every 20 ms, whatever the publishing interval
SEVERITY = 0xC0000000
FILTER_REFUSED = {ua.StatusCodes.BadFilterNotAllowed, ua.StatusCodes.BadDeadbandFilterInvalid,
                  ua.StatusCodes.BadMonitoredItemFilterUnsupported}


class _Lost(Exception):
    pass


class OpcUaDriver:
    def __init__(self, device: OpcUaDevice, sink: SampleSink):
        self.device = device
        self.sink = sink
        self.stats = DriverStats()
        self._k = len(device.tags)
        modes = device.mode_of
        self._poll_cols = np.array([j for j, m in enumerate(modes) if m == "poll"], dtype=np.intp)
        self._sub_cols = np.array([j for j, m in enumerate(modes) if m == "subscribe"], dtype=np.intp)
        # The full 32-bit StatusCode of each tag's latest sample (the quality byte keeps only the family
        # and a reason); 0 = Good.
        self.status = np.zeros(self._k, dtype=np.uint32)
        # String tags: their values travel as text beside the NaN numeric column (Batch.text).
        self._is_text = np.array([t.type == "string" for t in device.tags], dtype=bool)
        self._any_text = bool(self._is_text.any())
        self.clock_skew_ns = 0
        self.notifications = 0
        self.batches_out = 0
        self._backoff = Backoff(device.reconnect_min, device.reconnect_max)
        self._backoff_pending = False
        self._last_error = ""
        self._warned_error = ""
        self._where = f"device {device.name} ({device.endpoint})"
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._last_publish = 0
        self._silence_ns = device.keepalive
        self._fallback_server = device.timestamp_fallback == "server"
        self._flush_ns = max(device.publishing_interval_ns, MIN_FLUSH_NS)
        self._last_flush = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pending: tuple[list[int], list[object], list[int], list[object]] = ([], [], [], [])
        self._quality_cache: dict[int, int] = {}
        self._read_plan: list[tuple[ua.ReadParameters, np.ndarray]] = []
        self._poll_unresolved = np.zeros(0, dtype=np.intp)
        self._resolved_status = np.zeros(self._k, dtype=np.uint32)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def run(self) -> None:
        session: UaSession | None = None
        try:
            while True:
                session = await self._connect()
                try:
                    reason = await self._serve(session)
                except _Lost as exc:
                    reason = str(exc)
                log.warning("%s: %s", self._where, reason)
                # Close first: that stops asyncua's publish loop, so whatever the old session still
                # delivers is handed on before the bad row, never after it (a dead session must not
                # leave a tag looking good).
                await session.close()
                session = None
                self._flush()
                self._all_bad(QUALITY_BAD_COMM)
                self.stats.poll_errors += 1
                self.stats.connected = False
                self._backoff_pending = True
                self._last_error = reason
        finally:
            self.stats.connected = False
            try:
                if session is not None:
                    await asyncio.shield(session.close())
            finally:
                self._flush()  # what arrived up to the end goes to the pipeline, which shutdown flushes

    async def _connect(self) -> UaSession:
        """Connect, resolve and subscribe, waiting out the backoff between failed attempts."""
        dev = self.device
        while True:
            if self._backoff_pending:
                delay = self._backoff.next_delay_s()
                # One warning per outage, and one more whenever the reason changes (a lost session that
                # then turns into a refused certificate must not hide behind the first line).
                fresh = self._backoff.attempt == 1 or self._last_error != self._warned_error
                level = logging.WARNING if fresh else logging.DEBUG
                self._warned_error = self._last_error
                log.log(level, "%s: %s; retrying in %.1fs", self._where, self._last_error, delay)
                await asyncio.sleep(delay)
            self._lost = asyncio.Event()
            session = UaSession(dev, self._where, self._on_lost)
            try:
                await session.connect()
                resolved = await session.resolve(dev.tags)
                skew = await session.clock_skew_ns()
                self._plan(session, resolved)
                if len(self._sub_cols):
                    await self._subscribe(session, resolved)
            except Exception as exc:  # a device fault of any kind is retried, never the end of the task
                kind = exc.kind if isinstance(exc, SessionError) else "connect"
                self.stats.error(kind)
                self._last_error = str(exc) if isinstance(exc, SessionError) else _describe(exc)
                self._backoff_pending = True
                await session.close()
                continue
            if self._backoff.attempt > 1:
                log.info("%s: connected again after %d attempts", self._where, self._backoff.attempt)
            else:
                log.info("%s: connected (%s, %d tags: %d subscribed, %d polled)", self._where,
                        dev.security_policy if dev.security_policy == "None"
                        else f"{dev.security_policy}/{dev.security_mode or 'SignAndEncrypt'}",
                        self._k, len(self._sub_cols), len(self._poll_cols))
            for line in resolved.problems:
                log.warning("%s: %s", self._where, line)
            self._report_skew(skew)
            self._backoff.reset()
            self._backoff_pending = False
            self.stats.connects += 1
            self.stats.connected = True
            return session

    async def _serve(self, session: UaSession) -> str:
        """Run until the session is lost; returns why."""
        tasks = [asyncio.create_task(self._lost.wait())]
        if len(self._poll_cols):
            tasks.append(asyncio.create_task(self._poll_loop(session)))
        if session.subscription_id is not None:  # none when every subscribed tag failed to resolve
            tasks.append(asyncio.create_task(self._silence_watch()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                if isinstance(exc, _Lost | SessionError):
                    return str(exc)
                return f"session lost ({_describe(exc)})"  # type: ignore[arg-type]
        return self._lost_reason or "session lost"

    def _on_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    # --- setup per connection ----------------------------------------------------------------------

    def _plan(self, session: UaSession, resolved) -> None:
        self._resolved_status = np.asarray(resolved.status, dtype=np.uint32)
        nodes = resolved.nodes
        poll = [int(j) for j in self._poll_cols]
        ok = [j for j in poll if nodes[j] is not None]
        self._poll_unresolved = np.array([i for i, j in enumerate(poll) if nodes[j] is None], dtype=np.intp)
        chunk = resolved.max_nodes_per_read
        requests = UaSession.read_requests([nodes[j] for j in ok], chunk)
        positions = {j: i for i, j in enumerate(poll)}
        self._read_plan = []
        start = 0
        for req in requests:
            n = len(req.NodesToRead)
            self._read_plan.append((req, np.array([positions[j] for j in ok[start:start + n]], dtype=np.intp)))
            start += n

    async def _subscribe(self, session: UaSession, resolved) -> None:
        dev = self.device
        items = []
        failed: list[tuple[int, int]] = []
        for j in self._sub_cols:
            j = int(j)
            node = resolved.nodes[j]
            if node is None:
                failed.append((j, resolved.status[j]))
                continue
            tag = dev.tags[j]
            band_type, band = dev.deadband_of(tag)
            items.append((j, node, dev.sampling_interval_ns(tag), dev.queue_size_of(tag), band_type, band))
        self._pending = ([], [], [], [])
        self._last_publish = time.monotonic_ns()
        if items:
            failures = await session.subscribe(items, resolved.max_items_per_call, self._on_publish)
            if failures:
                names = ", ".join(f"{dev.tags[j].name} ({status_name(c)})" for j, c in failures[:5])
                hint = ""
                if any(c in FILTER_REFUSED and dev.deadband_of(dev.tags[j])[0] == "percent" for j, c in failures):
                    hint = ("; a percent deadband needs an analog item with an EURange on the server: use "
                            "deadband_type = \"absolute\" for this node")
                log.warning("%s: %d monitored items refused: %s%s", self._where, len(failures), names, hint)
            failed += failures
            self._silence_ns = max(dev.keepalive, session.silence_limit_ns)
        if failed:  # one sample each, so these tags do not keep a stale quality from before
            cols = np.array(sorted(j for j, _ in failed), dtype=np.intp)
            codes = dict(failed)
            batch = Batch.empty(dev.name, 1, len(cols), columns=cols)
            batch.ts[0] = time.time_ns()
            batch.status = np.zeros((1, len(cols)), dtype=np.uint32)
            for i, j in enumerate(cols):
                batch.quality[0, i] = self._quality(codes[int(j)])
                self.status[j] = batch.status[0, i] = codes[int(j)]
            self._emit(batch)

    # --- subscription path --------------------------------------------------------------------------

    def _on_publish(self, result: ua.PublishResult) -> None:
        """Called by asyncua's publish loop with each PublishResponse, data or keepalive."""
        self._last_publish = time.monotonic_ns()
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        recv = time.time_ns()
        handles, values, codes, stamps = self._pending
        fallback = self._fallback_server
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                items = notif.MonitoredItems
                for item in items:
                    dv = item.Value
                    handles.append(item.ClientHandle)
                    var = dv.Value
                    values.append(var.Value if var is not None else None)
                    sc = dv.StatusCode
                    codes.append(sc.value if sc is not None else 0)
                    st = dv.SourceTimestamp
                    if st is None:
                        st = dv.ServerTimestamp if fallback else None
                    stamps.append(st if st is not None else recv)
                self.notifications += len(items)
            elif isinstance(notif, ua.StatusChangeNotification):
                code = notif.Status.value if notif.Status is not None else 0
                if code & 0x80000000:
                    self._on_lost(f"the server ended the subscription ({status_name(code)})")
        if not handles:
            return
        # Rate-bounded but not delayed: hand on at once unless the last flush was under one publishing
        # interval ago; then wait out the rest of that interval, collecting what else arrives.
        wait_ns = self._last_flush + self._flush_ns - time.monotonic_ns()
        if wait_ns <= 0 or len(handles) >= MAX_PENDING:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait_ns / 1e9, self._flush)

    def _flush(self) -> None:
        """Hand accumulated notifications to the sink: one Batch per distinct per-tag count (usually one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        handles, values, codes, stamps = self._pending
        if not handles:
            return
        self._last_flush = time.monotonic_ns()
        self._pending = ([], [], [], [])
        h = np.asarray(handles, dtype=np.intp)
        v, q, ts, c, text = self._convert(values, codes, stamps, h)
        order = np.argsort(h, kind="stable")  # tag-major, arrival order kept within a tag
        hs = h[order]
        tags, first, counts = np.unique(hs, return_index=True, return_counts=True)
        self.status[tags] = c[order][first + counts - 1]
        for n_rows in np.unique(counts):
            sel = counts == n_rows
            cols = tags[sel]
            idx = order[np.repeat(sel, counts)].reshape(len(cols), int(n_rows)).T
            batch = Batch(
                device=self.device.name,
                ts=np.ascontiguousarray(ts[idx]),
                values=np.ascontiguousarray(v[idx]),
                quality=np.ascontiguousarray(q[idx]),
                flags=np.zeros(idx.shape, dtype=np.uint32),
                columns=None if len(cols) == self._k else cols,
                status=np.ascontiguousarray(c[idx]) if c.any() else None,
            )
            if text is not None:
                batch.text = {int(p): text[idx[:, p]] for p in np.flatnonzero(self._is_text[cols])} or None
            self._emit(batch)

    # --- poll path ------------------------------------------------------------------------------------

    async def _poll_loop(self, session: UaSession) -> None:
        period = self.device.poll_interval
        start = time.monotonic_ns()
        tick = 0
        while True:
            await _sleep_until(start + tick * period)
            if getattr(self.sink, "accepting", True):
                t0 = time.monotonic()
                await self._poll(session)
                self.stats.observe_latency(time.monotonic() - t0)
            else:  # the spool is full under the `block` policy: do not read what has nowhere to go
                self.stats.skipped_ticks += 1
            due = (time.monotonic_ns() - start) // period + 1
            if due > tick + 1:
                self.stats.skipped_ticks += due - tick - 1
            tick = max(tick + 1, due)

    async def _poll(self, session: UaSession) -> None:
        cols = self._poll_cols
        batch = Batch.empty(self.device.name, 1, len(cols), columns=None if len(cols) == self._k else cols)
        self.stats.polls += 1
        try:
            for req, pos in self._read_plan:
                dvs = await session.read(req)
                recv = time.time_ns()
                fallback = self._fallback_server
                values, codes, stamps = [], [], []
                for dv in dvs:
                    var = dv.Value
                    values.append(var.Value if var is not None else None)
                    sc = dv.StatusCode
                    codes.append(sc.value if sc is not None else 0)
                    st = dv.SourceTimestamp
                    if st is None:
                        st = dv.ServerTimestamp if fallback else None
                    stamps.append(st if st is not None else recv)
                v, q, ts, c, text = self._convert(values, codes, stamps, cols[pos])
                batch.values[0, pos], batch.quality[0, pos], batch.ts[0, pos] = v, q, ts
                self.status[cols[pos]] = c
                if c.any():
                    self._set_status(batch, pos, c)
                if text is not None:
                    batch.text = batch.text or {}
                    for i in np.flatnonzero(self._is_text[cols[pos]]):
                        batch.text[int(pos[i])] = text_column([text[i]])
        except (UaError, OSError, TimeoutError, SessionError) as exc:
            batch.ts[0][batch.ts[0] == 0] = time.time_ns()
            self._emit(batch)
            raise _Lost(f"read failed ({_describe(exc)})") from None
        if len(self._poll_unresolved):
            pos = self._poll_unresolved
            codes = self._resolved_status[cols[pos]]
            batch.quality[0, pos] = [self._quality(int(x)) for x in codes]
            batch.ts[0, pos] = time.time_ns()
            self.status[cols[pos]] = codes
            self._set_status(batch, pos, codes)
        self._emit(batch)

    @staticmethod
    def _set_status(batch: Batch, pos: np.ndarray, codes: np.ndarray) -> None:
        """A poll row's StatusCodes; the column exists only once some code is not Good (0)."""
        if batch.status is None:
            batch.status = np.zeros(batch.values.shape, dtype=np.uint32)
        batch.status[0, pos] = codes

    # --- shared -------------------------------------------------------------------------------------

    def _convert(self, values: list, codes: list[int], stamps: list,  # type: ignore[type-arg]
                 tags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Python values, StatusCodes and timestamps to float64 values, quality bytes, int64 ns and
        uint32 codes, plus the text of string tags (object array aligned with the items, None when no
        item is a string tag). `tags` gives each item's device tag index."""
        c = np.asarray(codes, dtype=np.uint32)
        text = None
        if self._any_text:
            is_text = self._is_text[tags]
            if is_text.any():
                # Taken out before the numeric conversion: np.asarray would turn "12" into 12.0.
                text = np.full(len(values), None, dtype=object)
                values = list(values)
                for i in np.flatnonzero(is_text).tolist():
                    text[i] = _text_of(values[i])
                    values[i] = None
        try:
            v = np.asarray(values, dtype=np.float64)
            numeric = None
        except (TypeError, ValueError):
            v, numeric = _values_slow(values)
        ts = np.fromiter((x if type(x) is int else to_ns(x) for x in stamps), dtype=np.int64, count=len(stamps))
        if not c.any():
            q = np.zeros(len(codes), dtype=np.uint8)
        else:
            uniq, inv = np.unique(c, return_inverse=True)
            q = np.array([self._quality(int(x)) for x in uniq], dtype=np.uint8)[inv]
            v[q >= QUALITY_BAD] = np.nan  # a bad sample's value is to be ignored (Part 4 7.7.1)
            for code, n in zip(uniq, np.bincount(inv), strict=True):
                if int(code) & SEVERITY:
                    name = status_name(int(code))
                    self.stats.errors_by_kind[name] = self.stats.errors_by_kind.get(name, 0) + int(n)
        if numeric is not None:
            bad_type = ~numeric & (q < QUALITY_BAD)
            if bad_type.any():
                q[bad_type] = QUALITY_BAD_CONFIG
                self.stats.error("non_numeric")
        if text is not None and c.any():
            text[q >= QUALITY_BAD] = None  # a bad sample's value is to be ignored, text too
        return v, q, ts, c, text

    def _quality(self, code: int) -> int:
        q = self._quality_cache.get(code)
        if q is None:
            q = self._quality_cache[code] = quality_of(code)
        return q

    def _emit(self, batch: Batch) -> None:
        self.batches_out += 1
        self.sink(batch)

    def _all_bad(self, quality: int) -> None:
        """One row for every tag at the moment the session was lost: nothing keeps a stale good quality."""
        batch = Batch.empty(self.device.name, 1, self._k)
        batch.ts[0] = time.time_ns()
        batch.quality[0] = quality
        self._emit(batch)

    async def _silence_watch(self) -> None:
        """A subscription must produce a PublishResponse (data or keepalive) within its keepalive period."""
        while True:
            deadline = self._last_publish + self._silence_ns
            now = time.monotonic_ns()
            if now >= deadline:
                raise _Lost(f"no data or keepalive from the subscription for {format_duration(self._silence_ns)}")
            await asyncio.sleep((deadline - now) / 1e9)

    def _report_skew(self, skew: int) -> None:
        self.clock_skew_ns = skew
        if abs(skew) > self.device.max_clock_skew:
            log.warning("%s: server clock is %.1fs %s this gateway's; samples keep the server's timestamps",
                        self._where, abs(skew) / 1e9, "ahead of" if skew > 0 else "behind")


def _text_of(x: object) -> str | None:
    """A String variable's value as text; LocalizedText gives its text; null stays missing."""
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, ua.LocalizedText):
        return x.Text
    return str(x)  # a server that changed the variable's type: visible, never a crash


def _values_slow(values: list) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """Per-item conversion when some value is not a number (a string, an array): those become NaN."""
    out = np.full(len(values), np.nan)
    numeric = np.zeros(len(values), dtype=bool)
    for i, x in enumerate(values):
        if x is None:
            numeric[i] = True
        elif isinstance(x, bool | int | float):
            out[i] = float(x)
            numeric[i] = True
    return out, numeric


def _describe(exc: BaseException) -> str:
    from asyncua.ua.uaerrors import UaStatusCodeError

    if isinstance(exc, UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
