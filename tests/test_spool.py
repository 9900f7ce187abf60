"""The spool: ordering, seq across restarts, delete-on-ack only, survival of kill -9, a corrupt file."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from edge_agent.spool import Spool


def frame(seq: int) -> tuple[bytes, int, int]:
    return f"frame-{seq}".encode(), 10, seq * 1000


def test_seq_continues_across_reopen_and_pending_is_oldest_first(tmp_path):
    path = tmp_path / "spool.db"
    s = Spool(path)
    assert [s.append(frame) for _ in range(5)] == [1, 2, 3, 4, 5]
    s.delete([1, 2, 3, 4, 5])
    s.close()
    s = Spool(path)
    assert s.append(frame) == 6  # the counter survives even when every frame was acknowledged
    assert s.append(frame) == 7
    assert s.pending(0, 10) == [(6, b"frame-6"), (7, b"frame-7")]
    assert s.pending(6, 10) == [(7, b"frame-7")]
    assert s.depth().frames == 2 and s.depth().points == 20 and s.depth().bytes == 14
    s.delete([6])
    assert s.pending(0, 10) == [(7, b"frame-7")]
    s.close()


def test_failed_build_commits_nothing(tmp_path):
    s = Spool(tmp_path / "spool.db")

    def broken(seq: int) -> tuple[bytes, int, int]:
        raise ValueError("encoder bug")

    with pytest.raises(ValueError, match="encoder bug"):
        s.append(broken)
    assert s.last_seq() == 0 and s.depth().frames == 0
    assert s.append(frame) == 1
    s.close()


def test_committed_frames_survive_kill_9(tmp_path):
    path = tmp_path / "spool.db"
    script = textwrap.dedent(f"""
        import sys, time
        from edge_agent.spool import Spool
        s = Spool(__import__("pathlib").Path({str(path)!r}))
        while True:
            seq = s.append(lambda q: (b"x" * 1000, 100, q))
            print(seq, flush=True)
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
    stored = [seq for seq, _ in s.pending(0, 1_000_000)]
    assert stored[: len(acknowledged)] == acknowledged  # every commit the writer saw is on disk
    assert stored == list(range(1, len(stored) + 1))
    s.close()


def test_corrupt_spool_is_moved_aside_with_one_log_line(tmp_path, caplog):
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR, logger="edge_agent.spool"):
        s = Spool(path)
    assert s.append(frame) == 1
    s.close()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "moved aside" in errors[0] and str(aside[0]) in errors[0]
