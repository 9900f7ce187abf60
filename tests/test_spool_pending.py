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
