"""`edge-agent replay` as an engineer runs it: a real subprocess, a CSV in, a CSV out."""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

CONFIG = """
[agent]
id = "gw"
state_dir = "{state}"

[filters.range]
kind = "limits"
hi = 80.0

[filters.z]
kind = "ewma_zscore"
alpha = 0.1
threshold = 5.0
warmup = 20

[[devices]]
name = "boiler"
protocol = "synthetic"

[[devices.tags]]
name = "temp"
filters = ["range", "z"]

[[devices.tags]]
name = "pressure"
"""


def replay(tmp_path, rows, header=("time", "boiler/temp", "boiler/pressure"), extra=()):
    cfg = tmp_path / "plant.toml"
    cfg.write_text(CONFIG.replace("{state}", str(tmp_path / "state")))
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    out = tmp_path / "out.csv"
    run = subprocess.run([sys.executable, "-m", "edge_agent.cli", "replay", "-c", str(cfg), "--csv", str(src),
                          "--out", str(out), *extra], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return run, out


def test_replay_flags_and_scores_rows_like_the_agent(tmp_path):
    rng = np.random.default_rng(2)
    temp = 60 + rng.normal(0, 0.5, 10_000)  # more rows than one chunk: state carries across chunks
    temp[5000] = 85.0
    rows = [[f"2024-03-01T00:00:{i % 60:02d}" if i < 60 else str(1_709_251_200 + i), f"{t:.3f}", "2.5"]
            for i, t in enumerate(temp)]
    rows[7000][1] = ""  # a gap: missing, not zero
    run, out = replay(tmp_path, rows, extra=("--events", str(tmp_path / "events.jsonl"), "--no-progress"))
    assert run.returncode == 0, run.stderr
    assert "10000 rows" in run.stderr and "1 events" not in run.stderr
    with open(out, newline="") as fh:
        got = list(csv.reader(fh))
    assert got[0] == ["time", "boiler/temp", "boiler/temp:flags", "boiler/temp:alarms", "boiler/temp:ewma_zscore",
                      "boiler/pressure", "boiler/pressure:flags", "boiler/pressure:alarms"]
    body = got[1:]
    assert len(body) == 10_000
    assert body[0][3] == "warmup" and body[100][3] == ""
    assert body[5000][3] == "limits|ewma_zscore" and float(body[5000][4]) > 5
    assert body[7000][1:5] == ["", "0", "", ""]  # the gap is not judged and does not poison the state
    assert sum(1 for r in body if "ewma_zscore" in r[3]) < 10
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {(e["tag"], e["flag"], e["value"]) for e in events} >= {("temp", "limits", 85.0)}


def test_replay_names_the_bad_column_in_one_line(tmp_path):
    run, _ = replay(tmp_path, [["1", "2", "3"]], header=("time", "boiler/temperature", "boilr/pressure"))
    assert run.returncode == 65
    lines = run.stderr.strip().splitlines()
    assert lines == [
        f"{tmp_path / 'in.csv'}: column 2 'boiler/temperature': device 'boiler' has no tag 'temperature'",
        f"{tmp_path / 'in.csv'}: column 3 'boilr/pressure': no device 'boilr' in {tmp_path / 'plant.toml'} "
        "(devices: 'boiler')",
    ]
    run, _ = replay(tmp_path, [["yesterday", "2", "3"]])
    assert run.returncode == 65 and run.stderr.strip().endswith(
        "line 2: column 1: 'yesterday' is not a time (unix seconds/ms/us/ns, or ISO 8601)")
    assert "Traceback" not in run.stderr


def _write_rows(path, rows: int) -> None:
    rng = np.random.default_rng(3)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("time", "boiler/temp", "boiler/pressure"))
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            temp = 60 + rng.normal(0, 0.5, n)
            w.writerows([str(1_709_251_200 + start + i), f"{t:.3f}", "2.5"] for i, t in enumerate(temp))


def _peak_rss_kb(tmp_path, rows: int) -> int:
    """Peak RSS of one replay process over `rows` rows (wait4 gives that child's own figure)."""
    work = tmp_path / f"r{rows}"
    work.mkdir()
    cfg = work / "plant.toml"
    cfg.write_text(CONFIG.replace("{state}", str(work / "state")))
    _write_rows(work / "in.csv", rows)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "replay", "-c", str(cfg), "--csv",
                             str(work / "in.csv"), "--out", str(work / "out.csv"), "--no-progress"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr
    assert f"{rows} rows".encode() in stderr
    return usage.ru_maxrss


def test_replay_streams_a_large_file_in_flat_memory(tmp_path):
    # 150,000 more rows held in memory as parsed CSV rows would be ~40 MB more; streamed, they cost nothing.
    small, large = _peak_rss_kb(tmp_path, 10_000), _peak_rss_kb(tmp_path, 160_000)
    assert large - small < 12_000, (small, large)


def test_replay_shows_a_progress_bar_on_a_terminal_and_none_in_a_pipe(tmp_path):
    cfg = tmp_path / "plant.toml"
    cfg.write_text(CONFIG.replace("{state}", str(tmp_path / "state")))
    _write_rows(tmp_path / "in.csv", 20_000)
    cmd = [sys.executable, "-m", "edge_agent.cli", "replay", "-c", str(cfg), "--csv", str(tmp_path / "in.csv"),
           "--out", str(tmp_path / "out.csv")]
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=follower,
                                env={**os.environ, "COLUMNS": "120"})
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the replay closed its end of the terminal
                break
            if not chunk:
                break
            screen += chunk
        assert proc.wait(timeout=120) == 0, screen.decode(errors="replace")
    finally:
        os.close(leader)
    text = screen.decode(errors="replace")
    assert "replay in.csv" in text and "100%" in text, text
    piped = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "replay in.csv" not in piped.stderr and "20000 rows" in piped.stderr
