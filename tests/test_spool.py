"""The spool: ordering, seq across restarts, delete-on-ack only, survival of kill -9, a corrupt file."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edge_agent.spool import Limits, Spool, SpoolDepth, SpoolUnavailable

T0 = time.time_ns()


def frame(seq: int) -> list[tuple[bytes, int, int]]:
    return [(f"frame-{seq}".encode(), 10, T0 + seq)]


def test_seq_continues_across_reopen_and_pending_is_oldest_first(tmp_path):
    path = tmp_path / "spool.db"
    s = Spool(path, seq_origin=0)
    assert [s.append(frame).seqs for _ in range(5)] == [(1,), (2,), (3,), (4,), (5,)]
    s.delete([1, 2, 3, 4, 5])
    s.close()
    s = Spool(path)
    assert s.append(frame).seqs == (6,)  # the counter survives even when every frame was acknowledged
    assert s.append(frame).seqs == (7,)
    assert s.pending(0, 10) == [(6, T0 + 6, b"frame-6"), (7, T0 + 7, b"frame-7")]
    assert s.pending(6, 10) == [(7, T0 + 7, b"frame-7")]
    assert s.depth().frames == 2 and s.depth().points == 20 and s.depth().bytes == 14
    s.delete([6])
    assert s.pending(0, 10) == [(7, T0 + 7, b"frame-7")]
    s.close()


def test_failed_build_commits_nothing(tmp_path):
    s = Spool(tmp_path / "spool.db", seq_origin=0)

    def broken(seq: int) -> list[tuple[bytes, int, int]]:
        raise ValueError("encoder bug")

    with pytest.raises(ValueError, match="encoder bug"):
        s.append(broken)
    assert s.last_seq() == 0 and s.depth().frames == 0
    assert s.append(frame).seqs == (1,)
    s.close()


def test_committed_frames_survive_kill_9(tmp_path):
    path = tmp_path / "spool.db"
    script = textwrap.dedent(f"""
        import sys, time
        from edge_agent.spool import Spool
        s = Spool(__import__("pathlib").Path({str(path)!r}), seq_origin=0)
        while True:
            seqs = s.append(lambda q: [(b"x" * 1000, 100, time.time_ns())]).seqs
            print(seqs[0], flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 200:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(10)
    s = Spool(path)
    stored = [seq for seq, _, _ in s.pending(0, 1_000_000)]
    assert stored[: len(acknowledged)] == acknowledged  # every commit the writer saw is on disk
    assert stored == list(range(1, len(stored) + 1))
    s.close()


def test_corrupt_spool_is_moved_aside_and_seq_never_repeats(tmp_path, caplog):
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    before_ms = time.time_ns() // 1_000_000
    with caplog.at_level(logging.ERROR, logger="edge_agent.spool"):
        s = Spool(path)
    (seq,) = s.append(frame).seqs
    # Whatever the lost spool had reached, the new seqs are above it: a consumer's dedupe keeps them.
    assert seq > before_ms
    (event,) = events(s)
    assert event["kind"] == "spool_reset" and event["next_seq"] == seq
    s.close()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "moved aside" in errors[0] and str(aside[0]) in errors[0]


def sized(n_bytes: int, points: int = 10):
    def build(seq: int) -> list[tuple[bytes, int, int]]:
        return [(bytes([seq % 256]) * n_bytes, points, time.time_ns())]

    return build


def events(s: Spool) -> list[dict]:
    return [json.loads(p) for _, p in s.pending_events(0, 1000)]


def test_drop_oldest_evicts_exactly_enough_and_announces_it(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_bytes=10_000, on_full="drop_oldest"), agent="a1", boot="b1",
              seq_origin=0)
    for _ in range(10):
        s.append(sized(1000))
    assert s.depth() == SpoolDepth(10, 100, 10_000)
    assert s.append(sized(2500)).seqs == (11,)  # needs 2500 bytes: seq 1..3 go
    assert [seq for seq, _, _ in s.pending(0, 100)] == list(range(4, 12))
    assert s.depth() == SpoolDepth(8, 80, 9_500)
    assert s.drops.frames["full"] == 3 and s.drops.points["full"] == 30
    (ev,) = events(s)
    assert ev["agent"] == "a1" and ev["boot"] == "b1" and ev["kind"] == "spool_drop"
    assert (ev["reason"], ev["policy"], ev["frames"], ev["points"], ev["first_seq"], ev["last_seq"]) == (
        "full", "drop_oldest", 3, 30, 1, 3)
    s.close()
    reopened = Spool(tmp_path / "spool.db", seq_origin=0)
    assert reopened.depth() == SpoolDepth(8, 80, 9_500) and len(events(reopened)) == 1  # the event is durable
    reopened.close()


def test_drop_newest_refuses_new_frames_but_spends_their_seq(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_bytes=3_000, on_full="drop_newest"), seq_origin=0)
    for _ in range(3):
        s.append(sized(1000))
    assert s.append(sized(1000)).seqs == ()
    assert [seq for seq, _, _ in s.pending(0, 100)] == [1, 2, 3]
    assert s.append(sized(1)).seqs == ()  # still full: nothing fits
    s.delete([1])
    assert s.append(sized(1000)).seqs == (6,)  # 4 and 5 were dropped: the consumer sees the gap
    assert s.drops.frames["full"] == 2
    assert [(e["first_seq"], e["last_seq"]) for e in events(s)] == [(4, 4), (5, 5)]
    s.close()


def test_block_refuses_without_dropping_anything(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_bytes=3_000, on_full="block"), seq_origin=0)
    for _ in range(3):
        s.append(sized(1000))
    result = s.append(sized(1000))
    assert result.full and result.seqs == ()
    assert s.last_seq() == 3 and s.drops.frames == {"full": 0, "expired": 0} and events(s) == []
    s.delete([1])
    assert s.append(sized(1000)).seqs == (4,)  # no seq was spent on the refused attempt
    s.close()


def test_frames_older_than_max_age_expire_and_are_announced(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_age_ns=60 * 10**9), seq_origin=0)
    old = time.time_ns() - 120 * 10**9
    s.append(lambda seq: [(b"old", 5, old), (b"old", 5, old)])
    s.append(sized(10))
    assert [seq for seq, _, _ in s.pending(0, 10)] == [3]
    assert s.drops.frames["expired"] == 2 and s.drops.points["expired"] == 10
    assert [(e["reason"], e["first_seq"], e["last_seq"]) for e in events(s)] == [("expired", 1, 2)]
    s.close()


def test_acknowledging_events_and_frames_together(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_bytes=2_000), seq_origin=0)
    for _ in range(3):
        s.append(sized(1000))
    ids = [i for i, _ in s.pending_events(0, 10)]
    s.delete([2, 3, 3, 99], ids)  # duplicates and unknown seqs are harmless
    assert s.depth() == SpoolDepth(0, 0, 0) and s.pending_events(0, 10) == []
    s.close()


def test_block_never_waits_for_a_batch_larger_than_the_whole_spool(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_bytes=3_000, on_full="block"), seq_origin=0)
    assert s.append(sized(5_000)).seqs == () and not s.append(sized(5_000)).full
    assert s.drops.frames["full"] == 2 and s.depth() == SpoolDepth(0, 0, 0)
    s.close()


def test_expiry_is_counted_once_even_while_block_refuses(tmp_path):
    s = Spool(tmp_path / "spool.db", Limits(max_bytes=3_000, max_age_ns=60 * 10**9, on_full="block"),
              seq_origin=0)
    old = time.time_ns() - 120 * 10**9
    s.append(lambda seq: [(b"o" * 1000, 5, old)], now_ns=old)
    s.append(sized(1000), now_ns=old)
    s.append(sized(1000), now_ns=old)
    assert s.depth() == SpoolDepth(3, 25, 3_000)
    # Now: the old frame expires (once), which makes room for exactly one more frame.
    assert s.append(sized(1000)).seqs == (4,)
    assert s.append(sized(1000)).full and s.append(sized(1000)).full
    assert s.drops.frames == {"full": 0, "expired": 1} and s.drops.points["expired"] == 5
    assert s.depth() == SpoolDepth(3, 30, 3_000)
    assert [e["reason"] for e in events(s)] == ["expired"]
    s.close()


def test_a_new_spool_starts_seq_at_its_creation_time_so_a_replaced_gateway_never_repeats(tmp_path):
    before_ms = time.time_ns() // 1_000_000
    s = Spool(tmp_path / "spool.db")
    (seq,) = s.append(frame).seqs
    assert before_ms < seq <= time.time_ns() // 1_000_000 + 1
    s.close()
    assert Spool(tmp_path / "spool.db").append(frame).seqs == (seq + 1,)  # and then continues by exactly 1


def test_a_spool_that_cannot_be_opened_is_never_moved_aside(tmp_path):
    # Not corrupt, just unopenable (here: the path is a directory; in the field: locked, read-only,
    # no space): the agent must stop with a clear error, never set the file aside and lose its frames.
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolUnavailable, match="unable to open"):
        Spool(tmp_path / "spool.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]
