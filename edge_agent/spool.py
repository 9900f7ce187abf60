"""The durable store-and-forward spool: the single truth for what the broker has not acknowledged.

SQLite in WAL mode, one transaction per frame (one fsync per batch, not per sample: SD cards wear
out), synchronous=FULL so a committed frame survives power loss too. A frame is deleted only after
its PUBACK; the sequence counter lives in the same transaction as the frame, so `seq` continues
across restarts and never repeats.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("edge_agent.spool")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    points INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
"""


@dataclass(frozen=True)
class SpoolDepth:
    frames: int
    points: int
    bytes: int


class Spool:
    """Synchronous spool; use from one thread (AsyncSpool gives it one)."""

    def __init__(self, path: Path):
        self.path = path
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(str(aside) + suffix)
            log.error("spool %s is unreadable (%s): moved aside to %s, starting a fresh spool",
                      self.path, exc, aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def last_seq(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])

    def append(self, build: Callable[[int], tuple[bytes, int, int]]) -> int:
        """Commit one frame; `build(seq)` returns (encoded bytes, points, created_ns)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self.last_seq() + 1
            data, points, created_ns = build(seq)
            db.execute("INSERT INTO frames (seq, created_ns, points, data) VALUES (?, ?, ?, ?)",
                       (seq, created_ns, points, data))
            db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Unacknowledged frames after `after_seq`, oldest first."""
        rows = self._db.execute(
            "SELECT seq, data FROM frames WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [(int(s), bytes(d)) for s, d in rows]

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget acknowledged frames, all in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM frames WHERE seq=?", [(s,) for s in seqs])
        db.execute("COMMIT")

    def depth(self) -> SpoolDepth:
        n, pts, size = self._db.execute(
            "SELECT count(*), coalesce(sum(points),0), coalesce(sum(length(data)),0) FROM frames"
        ).fetchone()
        return SpoolDepth(int(n), int(pts), int(size))

    def close(self) -> None:
        self._db.close()


class AsyncSpool:
    """Runs every spool call on one dedicated thread, so SQLite and fsync never block the event loop."""

    def __init__(self, path: Path):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._spool: Spool | None = None
        self.path = path
        self.changed = asyncio.Event()  # set after every append: wakes the uplink

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        self._spool = await self._call(Spool, self.path)

    @property
    def spool(self) -> Spool:
        assert self._spool is not None, "spool not open"
        return self._spool

    async def append(self, build: Callable[[int], tuple[bytes, int, int]]) -> int:
        seq = await self._call(self.spool.append, build)
        self.changed.set()
        return seq

    async def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        return await self._call(self.spool.pending, after_seq, limit)

    async def delete(self, seqs: list[int]) -> None:
        await self._call(self.spool.delete, seqs)

    async def depth(self) -> SpoolDepth:
        return await self._call(self.spool.depth)

    async def last_seq(self) -> int:
        return await self._call(self.spool.last_seq)

    async def close(self) -> None:
        if self._spool is not None:
            await self._call(self._spool.close)
            self._spool = None
        self._pool.shutdown(wait=True)
