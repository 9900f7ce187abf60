"""AsyncSpool answers "nothing pending" from memory only when the spool really holds nothing past the cursor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edge_agent.spool import AsyncSpool


def frames(*sizes: int):
    def build(first: int) -> list[tuple[bytes, int, int]]:
        return [(bytes(n), n, time.time_ns()) for n in sizes]
    return build


async def _scenario(path: Path) -> None:
    spool = AsyncSpool(path, seq_origin=100)
    await spool.open()
    assert await spool.pending_with_points(0, 10) == []
    assert await spool.pending_events(0, 10) == []
    result = await spool.append(frames(3, 4))
    assert [r[0] for r in await spool.pending_with_points(0, 10)] == list(result.seqs)
    last = result.seqs[-1]
    assert await spool.pending_with_points(last, 10) == []  # the live cursor after the newest frame
    assert [r[0] for r in await spool.pending_with_points(last - 1, 10)] == [last]
    await spool.add_event({"kind": "test"})
    events = await spool.pending_events(0, 10)
    assert len(events) == 1
    assert await spool.pending_events(events[0][0], 10) == []
    await spool.delete([result.seqs[0]], [events[0][0]])
    assert [r[0] for r in await spool.pending_with_points(0, 10)] == [last]
    await spool.close()

    # A restart with a backlog: the bounds come from the file, so the backlog is found.
    again = AsyncSpool(path)
    await again.open()
    assert [r[0] for r in await again.pending_with_points(0, 10)] == [last]
    more = await again.append(frames(5))
    assert more.seqs == (last + 1,)
    assert [r[0] for r in await again.pending_with_points(last, 10)] == [last + 1]
    await again.add_event({"kind": "after restart"})
    assert len(await again.pending_events(events[0][0], 10)) == 1
    await again.close()


def test_pending_shortcuts_never_hide_stored_frames_or_events(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path / "spool.db"))


async def _memory_scenario(path: Path) -> None:
    spool = AsyncSpool(path, seq_origin=10)
    await spool.open()

    async def same_as_sqlite(cursors: range) -> None:
        for cursor in cursors:
            for limit in (1, 2, 10):
                got = await spool.pending_with_points(cursor, limit)
                assert got == spool.spool.pending_with_points(cursor, limit), (cursor, limit)

    old = await spool.append(frames(1, 2))
    new = await spool.append(frames(3, 4, 5))  # the frames answered from memory from now on
    await same_as_sqlite(range(old.seqs[0] - 1, new.seqs[-1] + 1))
    await spool.delete([new.seqs[1]])  # acknowledged: never offered again
    await same_as_sqlite(range(old.seqs[0] - 1, new.seqs[-1] + 1))
    await spool.close()


def test_frames_answered_from_memory_are_what_the_spool_holds(tmp_path: Path) -> None:
    asyncio.run(_memory_scenario(tmp_path / "spool.db"))
