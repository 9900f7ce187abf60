"""Running as a service: the unit file, sd_notify and the watchdog, SIGHUP reloads, metrics, status."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.spool import Spool
from tests.chaos import Accounting, missing_ticks, spooled_frames
from tests.conftest import ROOT, agent_cmd, free_port, wait_for
from tests.mqtt_consumer import Consumer

UNIT = ROOT / "systemd" / "edge-agent.service"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("systemd-analyze is missing: run the README's test command (scripts/test installs systemd)")
    return found


def test_unit_file_verifies_clean(tmp_path):
    # verify checks that ExecStart exists; point it at this checkout's installed edge-agent, nothing else changes.
    installed = Path(sys.executable).with_name("edge-agent")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", str(installed)))
    proc = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_unit_file_is_hardened_and_complete():
    proc = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-agent.service: ([\d.]+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    assert float(m.group(1)) <= 2.0, f"exposure {m.group(1)} above 2.0"
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartPreventExitStatus=78",
                 "User=edge-agent", "StateDirectory=edge-agent", "ConfigurationDirectory=edge-agent",
                 "SupplementaryGroups=dialout", "DeviceAllow=char-ttyUSB rw", "ExecReload="):
        assert re.search(rf"^{re.escape(line)}", text, re.M), line


def synthetic(tmp: Path, broker: int, devices: dict[str, tuple[int, str]], *, metrics: int | None = None,
              url: str | None = None, name: str = "agent.toml") -> Path:
    lines = ["[agent]", 'id = "svc"', f'state_dir = "{tmp / "state"}"', "",
             "[uplink]", f'url = "{url or f"mqtt://127.0.0.1:{broker}"}"', 'reconnect_min = "100ms"',
             'reconnect_max = "500ms"', "",
             "[batch]", 'max_interval = "200ms"', "",
             "[metrics]", f"enabled = {'true' if metrics else 'false'}", f'listen = "127.0.0.1:{metrics or 9108}"', ""]
    for dev, (tags, interval) in devices.items():
        lines += ["[[devices]]", f'name = "{dev}"', 'protocol = "synthetic"', f'poll_interval = "{interval}"', ""]
        lines += [f'[[devices.tags]]\nname = "t{j}"\n' for j in range(tags)]
    path = tmp / name
    path.write_text("\n".join(lines))
    return path


class NotifyListener:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.splitlines()]

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def test_notify_ready_watchdog_status_and_stopping(procs, broker, tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        config = synthetic(tmp_path, broker, {"load": (5, "100ms")})
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        agent = procs(agent_cmd(config), "agent", env=env)
        wait_for(lambda: "READY=1" in listener.lines() or not agent.alive(), 60, "READY=1")
        ready_at = len(listener.lines())
        wait_for(lambda: listener.lines()[ready_at:].count("WATCHDOG=1") >= 4, 10, "watchdog pings every 0.5 s")
        wait_for(lambda: any(line.startswith("STATUS=devices 1/1 up") for line in listener.lines()), 15,
                 "a STATUS line with the devices up")
        rc, _ = agent.terminate()
        assert rc == 0
        assert "STOPPING=1" in listener.lines()
        status = next(line for line in listener.lines() if line.startswith("STATUS=devices"))
        assert re.match(r"STATUS=devices 1/1 up, \d+ points/s, spool \d+ frames, uplink (up|down)$", status), status
    finally:
        listener.close()


def test_sighup_adds_removes_and_changes_devices_without_losing_a_sample(procs, broker, tmp_path):
    consumer = Consumer(broker, topic="edge/svc/data", client_id="reload-consumer")
    try:
        v1 = synthetic(tmp_path, broker, {"kept": (10, "100ms"), "changed": (3, "200ms"), "removed": (4, "100ms")})
        agent = procs(agent_cmd(v1), "agent")
        wait_for(lambda: len(consumer.received()) >= 3 or not agent.alive(), 60, "frames before the reload")
        synthetic(tmp_path, broker, {"kept": (10, "100ms"), "changed": (4, "100ms"), "added": (2, "100ms")})
        agent.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "config" in agent.stderr() and "applied" in agent.stderr(), 20, "the reload")
        assert "1 devices added, 1 removed, 1 changed, 1 kept" in agent.stderr()

        def devices_seen() -> set[str]:
            return {b.device for f in Accounting.of(consumer.received()).frames.values() for b in f.blocks
                    if b.device != "changed" or "t3" in b.tags}

        wait_for(lambda: {"added", "changed"} <= devices_seen(), 20, "the added and changed devices' samples")

        # A broken config is refused, line by line, and the running one stays.
        (tmp_path / "agent.toml").write_text((tmp_path / "agent.toml").read_text().replace("synthetic", "synthetc", 1))
        agent.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in agent.stderr(), 20, "the rejected reload")
        assert "devices[0].protocol: 'synthetc' is not one of" in agent.stderr()
        n = len(consumer.received())
        wait_for(lambda: len(consumer.received()) >= n + 3, 20, "frames still flowing after the rejection")
        assert agent.alive()

        rc, _ = agent.terminate()
        assert rc == 0, agent.stderr()
        polled = int(re.search(r"stopped: (\d+) points polled", agent.stderr()).group(1))
        acc = Accounting.of(consumer.received() + spooled_frames(tmp_path / "state"))
        assert acc.missing_seqs() == []
        assert acc.points() == polled, "every polled sample is at the consumer or in the spool"
        per_device: dict[str, dict[str, list]] = {}
        for seq in sorted(acc.frames):
            for b in acc.frames[seq].blocks:
                for j, tag in enumerate(b.tags):
                    per_device.setdefault(b.device, {}).setdefault(tag, []).extend(b.values[:, j].tolist())
        for tag, values in per_device["kept"].items():  # untouched by the reload: not a single tick missed
            assert missing_ticks(np.array(values, dtype=np.int64)) == 0, tag
    finally:
        consumer.close()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("le",))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_match_what_went_through(procs, broker, tmp_path):
    # 30 frames of 7 points wait in the spool; the device polls once an hour, so nothing else moves.
    state = tmp_path / "state"
    spool = Spool(state / "spool.db")
    for _ in range(30):
        spool.append(lambda seq: [(b"x" * 100, 7, time.time_ns())])
    spool.close()
    port = free_port()
    dead = free_port()  # nothing listens here: the uplink is down
    config = synthetic(tmp_path, broker, {"idle": (3, "1h")}, metrics=port, url=f"mqtt://127.0.0.1:{dead}")
    agent = procs(agent_cmd(config), "agent")
    wait_for(lambda: _try_scrape(port) or not agent.alive(), 60, "the metrics endpoint")
    m = scrape(port)
    assert m["edge_agent_spool_frames"] == 30 and m["edge_agent_spool_points"] == 210
    assert m["edge_agent_spool_bytes"] == 3000
    assert m["edge_agent_uplink_connected"] == 0
    wait_for(lambda: scrape(port)["edge_agent_uplink_connect_failures_total"] >= 2, 10, "connect failures counted")
    assert m["edge_agent_device_connected{device=idle}"] == 1
    assert m["process_resident_memory_bytes"] > 10e6

    status = subprocess.run([sys.executable, "-m", "edge_agent.cli", "status", "--url",
                             f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert "agent svc" in status.stdout and re.search(r"^idle\s+up\s+0\s+0\s+0$", status.stdout, re.M)
    assert "uplink  DISCONNECTED" in status.stdout and "spool   30 frames, 210 points" in status.stdout

    # Point the uplink at the real broker with a reload: the 30 frames go out, and the counters say so.
    synthetic(tmp_path, broker, {"idle": (3, "1h")}, metrics=port)
    agent.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: scrape(port)["edge_agent_spool_frames"] == 0, 20, "the spool to drain")
    m = scrape(port)
    assert m["edge_agent_frames_published_total"] == 30
    assert m["edge_agent_points_published_total"] == 210
    assert m["edge_agent_bytes_published_total"] == 3000
    assert m["edge_agent_uplink_connected"] == 1
    assert m["edge_agent_points_in_total"] == 0 and m["edge_agent_device_polls_total{device=idle}"] == 0
    rc, _ = agent.terminate()
    assert rc == 0


def _try_scrape(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def test_status_without_an_agent_is_one_line():
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "status", "--url",
                           f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 69
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read" in proc.stderr


def test_a_reload_loads_a_new_filter_kind_before_applying(procs, broker, tmp_path):
    """The agent loads only the kernels its config uses; a reload that brings a new kind loads it
    before the new filters take the polls (a first poll must never wait for a compiler)."""
    v1 = synthetic(tmp_path, broker, {"line": (3, "100ms")})
    agent = procs(agent_cmd(v1), "agent")
    wait_for(lambda: "starting" in agent.stderr() or not agent.alive(), 60, "the agent's start")
    assert "filter kernels ready" not in agent.stderr()  # no filters configured: no kernel loaded
    text = v1.read_text().replace('[[devices.tags]]\nname = "t0"\n',
                                  '[[devices.tags]]\nname = "t0"\nfilters = ["spike"]\n')
    v1.write_text(text + '\n[filters.spike]\nkind = "hampel"\nwindow = 5\n')
    agent.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: "applied" in agent.stderr() or not agent.alive(), 60, "the reload")
    log = agent.stderr()
    assert "filter kernels ready (hampel)" in log, log
    assert log.index("filter kernels ready (hampel)") < log.index("applied")
