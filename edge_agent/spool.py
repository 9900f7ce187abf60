"""The durable store-and-forward spool: the single truth for what the broker has not acknowledged.

SQLite in WAL mode, one transaction per batch (one fsync per batch, not per sample: SD cards wear
out), synchronous=FULL so a committed frame survives power loss too. A frame is deleted only after
its PUBACK, or by the bound policy, and then counted and announced. The sequence counter lives in
the same transaction as the frames, so `seq` continues across restarts and never repeats.

Events (spool drops now, anomalies later) live in their own table and are published on the events
topic: they are stored for the same reason frames are, since drops happen exactly while the broker
is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

log = logging.getLogger("edge_agent.spool")
T = TypeVar("T")

OnFull = Literal["drop_oldest", "drop_newest", "block"]
MAX_EVENTS = 10_000  # oldest events give way first; a flood of events must not eat the frame budget

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    points INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
"""


@dataclass(frozen=True)
class SpoolDepth:
    frames: int
    points: int
    bytes: int


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 512 * 1024 * 1024
    max_age_ns: int = 7 * 86_400 * 1_000_000_000
    on_full: OnFull = "drop_oldest"


@dataclass
class DropCounters:
    """Everything the bounds ever removed unsent, by reason; exported as metrics, never reset."""

    frames: dict[str, int] = field(default_factory=lambda: {"full": 0, "expired": 0})
    points: dict[str, int] = field(default_factory=lambda: {"full": 0, "expired": 0})

    def add(self, reason: str, frames: int, points: int) -> None:
        self.frames[reason] += frames
        self.points[reason] += points


@dataclass(frozen=True)
class Appended:
    """What one append did: the seqs it committed, or `full` when the block policy refused it."""

    seqs: tuple[int, ...] = ()
    full: bool = False


Build = Callable[[int], list[tuple[bytes, int, int]]]  # first seq -> [(data, points, created_ns)] in seq order


class SpoolCorrupt(sqlite3.DatabaseError):
    """The file is not a usable SQLite database: the only case where the spool is moved aside."""


class SpoolUnavailable(Exception):
    """The spool cannot be opened (locked, read-only, no space): fatal, never a reason to discard it."""


class Spool:
    """Synchronous spool; use from one thread (AsyncSpool gives it one)."""

    def __init__(self, path: Path, limits: Limits | None = None, agent: str = "", boot: str = "",
                 seq_origin: int | None = None):
        self.path = path
        self.seq_origin = seq_origin  # tests pin it; in service a new spool starts at its creation time in ms
        self.limits = limits or Limits()
        self.drops = DropCounters()
        self._event_identity = {"agent": agent, "boot": boot}
        self._reset_event: dict[str, object] | None = None
        self._db = self._open()
        # Upper bounds of the stored frame seqs and event ids, raised at insert time (before the
        # commit): when a cursor is at or past them nothing can be pending, and AsyncSpool answers
        # without a trip to the spool thread. An idle uplink asks after every frame.
        self.newest_seq = int(self._db.execute("SELECT coalesce(max(seq), -1) FROM frames").fetchone()[0])
        self.newest_event = int(self._db.execute("SELECT coalesce(max(id), -1) FROM events").fetchone()[0])
        if self._reset_event is not None:
            self.add_event(self._reset_event)
        frames, points, size = self._db.execute(
            "SELECT count(*), coalesce(sum(points),0), coalesce(sum(length(data)),0) FROM frames"
        ).fetchone()
        self._depth = [int(frames), int(points), int(size)]

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except SpoolCorrupt as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(str(aside) + suffix)
            db = self._connect()
            # seq must never repeat, or consumers would drop new frames as duplicates of old ones: the
            # fresh spool continues from the unix time in ms, far above any seq a spool reaches, and
            # the jump is the gap a consumer reports.
            restart = time.time_ns() // 1_000_000
            db.execute("UPDATE meta SET value=max(value, ?) WHERE key='last_seq'", (restart,))
            log.error("spool %s is corrupt (%s): moved aside to %s; a fresh spool continues at seq %d",
                      self.path, exc, aside, restart + 1)
            self._reset_event = {"kind": "spool_reset", "reason": str(exc)[:200], "moved_to": str(aside),
                                 "next_seq": restart + 1}
            return db
        except sqlite3.Error as exc:
            # Locked, read-only, disk full, permissions: the file may be fine, so it is never moved.
            raise SpoolUnavailable(f"spool {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        fresh = not self.path.exists()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # Builds that default to secure_delete (Debian's) zero every freed page of a deleted frame
            # and write it to the WAL, then to the file at the checkpoint: the delete after each
            # PUBACK wrote as much as the append: twice the SD card wear and CPU, to hide bytes the
            # broker already has. FAST still clears what costs no extra I/O.
            db.execute("PRAGMA secure_delete=FAST")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise SpoolCorrupt(f"quick_check: {ok}")
            db.executescript(_SCHEMA)
            if fresh and self.seq_origin is None:
                # A new spool (first install, a replaced box keeping its agent id) must not restart
                # seq at 1: consumers dedupe by (agent, seq) and would discard its frames. Starting
                # from the creation time in ms keeps every seq above any an earlier spool handed out.
                db.execute("UPDATE meta SET value=? WHERE key='last_seq' AND value=0", (time.time_ns() // 1_000_000,))
            elif fresh:
                db.execute("UPDATE meta SET value=? WHERE key='last_seq' AND value=0", (self.seq_origin,))
        except sqlite3.DatabaseError as exc:
            db.close()
            if isinstance(exc, SpoolCorrupt) or exc.sqlite_errorcode in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise SpoolCorrupt(str(exc)) from None
            raise
        return db

    def last_seq(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])

    def append(self, build: Build, now_ns: int | None = None) -> Appended:
        """Commit the frames `build(first_seq)` returns, all in one transaction, within the bounds.

        drop_oldest evicts the oldest frames to make room; drop_newest refuses the new frames; block
        refuses them and reports `full`, so the caller holds them and stops polling until there is
        room. A batch larger than the whole spool can never fit and is dropped under every policy.
        Evictions and refusals are counted and written as an event in the same transaction.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        self.expire(now_ns)  # its own transaction: a refused append must not undo (or recount) it
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            first = self.last_seq() + 1
            frames = build(first)
            size = sum(len(d) for d, _, _ in frames)
            points = sum(p for _, p, _ in frames)
            last = first + len(frames) - 1
            over = self._depth[2] + size - self.limits.max_bytes
            too_big = size > self.limits.max_bytes
            if over > 0 and self.limits.on_full == "block" and not too_big:
                db.execute("ROLLBACK")
                return Appended(full=True)
            if over > 0 and (self.limits.on_full == "drop_newest" or too_big):
                # The new frames do not fit: drop them, but still spend their seqs, so the consumer
                # sees the gap the event announces.
                db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (last,))
                dropped = self._dropped("full", len(frames), points, first, last, now_ns)
                db.execute("COMMIT")
                dropped()
                return Appended()
            evicted = self._evict_oldest(over, now_ns) if over > 0 else None
            self.newest_seq = max(self.newest_seq, last)
            db.executemany(
                "INSERT INTO frames (seq, created_ns, points, data) VALUES (?, ?, ?, ?)",
                [(first + i, created, pts, data) for i, (data, pts, created) in enumerate(frames)],
            )
            db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (last,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if evicted is not None:
            evicted()
        self._account(len(frames), points, size)
        return Appended(seqs=tuple(range(first, last + 1)))

    def expire(self, now_ns: int | None = None) -> None:
        """Drop (count, announce) frames older than max_age, in one transaction."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = now_ns - self.limits.max_age_ns
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(points),0), coalesce(sum(length(data)),0), min(seq), max(seq) "
            "FROM frames WHERE created_ns < ?", (cutoff,)
        ).fetchone()
        if not row[0]:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM frames WHERE created_ns < ?", (cutoff,))
            dropped = self._dropped("expired", row[0], row[1], row[3], row[4], now_ns)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        dropped()
        self._account(-row[0], -row[1], -row[2])

    def _evict_oldest(self, need_bytes: int, now_ns: int) -> Callable[[], None]:
        freed = frames = points = 0
        first = last = 0
        for seq, pts, size in self._db.execute("SELECT seq, points, length(data) FROM frames ORDER BY seq"):
            if freed >= need_bytes:
                break
            first = first or seq
            last = seq
            freed += size
            frames += 1
            points += pts
        self._db.execute("DELETE FROM frames WHERE seq <= ?", (last,))
        announce = self._dropped("full", frames, points, first, last, now_ns)

        def after_commit() -> None:
            announce()
            self._account(-frames, -points, -freed)

        return after_commit

    def _account(self, frames: int, points: int, size: int) -> None:
        self._depth[0] += frames
        self._depth[1] += points
        self._depth[2] += size

    def _dropped(self, reason: str, frames: int, points: int, first: int, last: int,
                 now_ns: int) -> Callable[[], None]:
        """Write the drop event (inside the caller's transaction); count and log once it commits."""
        policy = self.limits.on_full if reason == "full" else "max_age"
        self._insert_event({
            "kind": "spool_drop", "reason": reason, "policy": policy,
            "frames": frames, "points": points, "first_seq": first, "last_seq": last,
        }, now_ns)

        def after_commit() -> None:
            self.drops.add(reason, frames, points)
            log.warning("spool %s: dropped %d frames (%d points, seq %d..%d) unsent, policy %s",
                        "full" if reason == "full" else "expiry", frames, points, first, last,
                        policy if reason == "full" else f"max_age {self.limits.max_age_ns // 10**9}s")

        return after_commit

    def _insert_event(self, body: dict[str, object], now_ns: int) -> None:
        payload = json.dumps({**self._event_identity, "ts": now_ns, **body}, separators=(",", ":"))
        cur = self._db.execute("INSERT INTO events (created_ns, payload) VALUES (?, ?)", (now_ns, payload.encode()))
        self.newest_event = max(self.newest_event, int(cur.lastrowid or 0))
        self._db.execute(
            "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (MAX_EVENTS,)
        )

    def add_event(self, body: dict[str, object], now_ns: int | None = None) -> None:
        """Store an event for the events topic (its own transaction)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._insert_event(body, time.time_ns() if now_ns is None else now_ns)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        """Unacknowledged frames after `after_seq`, oldest first: (seq, created_ns, data)."""
        return [(s, c, d) for s, c, _, d in self.pending_with_points(after_seq, limit)]

    def pending_with_points(self, after_seq: int, limit: int) -> list[tuple[int, int, int, bytes]]:
        """As `pending`, with each frame's point count: (seq, created_ns, points, data)."""
        rows = self._db.execute(
            "SELECT seq, created_ns, points, data FROM frames WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [(int(s), int(c), int(p), bytes(d)) for s, c, p, d in rows]

    def pending_events(self, after_id: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._db.execute(
            "SELECT id, payload FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [(int(i), bytes(p)) for i, p in rows]

    def delete(self, seqs: Iterable[int], event_ids: Iterable[int] = ()) -> None:
        """Forget acknowledged frames and events, all in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            frames = points = size = 0
            for seq in seqs:
                row = db.execute("DELETE FROM frames WHERE seq=? RETURNING points, length(data)", (seq,)).fetchone()
                if row is not None:  # already evicted or acknowledged twice
                    frames, points, size = frames + 1, points + row[0], size + row[1]
            db.executemany("DELETE FROM events WHERE id=?", [(i,) for i in event_ids])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._account(-frames, -points, -size)

    def depth(self) -> SpoolDepth:
        return SpoolDepth(*self._depth)

    def oldest_seq(self) -> int | None:
        row = self._db.execute("SELECT min(seq) FROM frames").fetchone()
        return None if row[0] is None else int(row[0])

    def close(self) -> None:
        self._db.close()


class AsyncSpool:
    """Runs every spool call on one dedicated thread, so SQLite and fsync never block the event loop."""

    def __init__(self, path: Path, limits: Limits | None = None, agent: str = "", boot: str = "",
                 seq_origin: int | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._spool: Spool | None = None
        self.path = path
        self._args = (limits, agent, boot, seq_origin)
        self.changed = asyncio.Event()  # set after every append: wakes the uplink
        self.room = asyncio.Event()  # set after every delete: wakes a writer blocked on a full spool
        # The frames the last append committed, as pending_with_points gives them: the uplink asks
        # for exactly these right after each append, and gets them without a trip to the spool
        # thread (a thread hand-off costs more CPU than the query) or reading back what was written.
        self._recent: list[tuple[int, int, int, bytes]] = []

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        self._spool = await self._call(Spool, self.path, *self._args)

    @property
    def spool(self) -> Spool:
        assert self._spool is not None, "spool not open"
        return self._spool

    async def append(self, build: Build) -> Appended:
        built: list[list[tuple[bytes, int, int]]] = []

        def keep(first_seq: int) -> list[tuple[bytes, int, int]]:
            frames = build(first_seq)
            built.append(frames)
            return frames

        self._recent = []  # until this append is known to have committed
        result = await self._call(self.spool.append, keep)
        if result.seqs:
            self._recent = [(seq, created, points, data)
                            for seq, (data, points, created) in zip(result.seqs, built[-1], strict=True)]
        self.changed.set()  # also after a drop: a drop event waits to be published
        return result

    async def add_event(self, body: dict[str, object]) -> None:
        await self._call(self.spool.add_event, body)
        self.changed.set()

    async def pending(self, after_seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        return await self._call(self.spool.pending, after_seq, limit)

    async def pending_with_points(self, after_seq: int, limit: int) -> list[tuple[int, int, int, bytes]]:
        newest = self.spool.newest_seq
        if after_seq >= newest:
            return []  # nothing stored after the cursor: no need to wake the spool thread
        recent = self._recent
        # Answered from memory only when the last append holds every frame after the cursor: its
        # frames are the newest stored (no later insert) and none before them is asked for.
        if recent and recent[-1][0] == newest and after_seq >= recent[0][0] - 1:
            return [r for r in recent if r[0] > after_seq][:limit]
        return await self._call(self.spool.pending_with_points, after_seq, limit)

    @property
    def is_open(self) -> bool:
        return self._spool is not None

    async def pending_events(self, after_id: int, limit: int) -> list[tuple[int, bytes]]:
        if after_id >= self.spool.newest_event:
            return []
        return await self._call(self.spool.pending_events, after_id, limit)

    async def delete(self, seqs: list[int], event_ids: Iterable[int] = ()) -> None:
        if self._recent:  # a deleted frame is never offered again, not even from memory
            gone = set(seqs)
            self._recent = [r for r in self._recent if r[0] not in gone]
        await self._call(self.spool.delete, seqs, list(event_ids))
        self.room.set()

    async def depth(self) -> SpoolDepth:
        return self.spool.depth()  # in-memory counters: no need to queue behind a commit

    async def last_seq(self) -> int:
        return await self._call(self.spool.last_seq)

    async def close(self) -> None:
        if self._spool is not None:
            await self._call(self._spool.close)
            self._spool = None
        self._pool.shutdown(wait=True)
