"""The agent's event loop: uvloop where installed, the stdlib loop on request (config or environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config.loader import EX_CONFIG
from edge_agent.eventloop import ENV, LoopUnavailable, loop_factory
from tests.conftest import Proc, agent_cmd, free_port, wait_for

uvloop = pytest.importorskip("uvloop")

CONFIG = """
[agent]
id = "looptest"
state_dir = "{state}"
log_level = "info"
{extra}
[uplink]
url = "mqtt://127.0.0.1:{port}"

[[devices]]
name = "boiler"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{port}"

[[devices.tags]]
name = "temp"
address = "hr:0"
type = "float32"
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "plant.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state", port=free_port(), extra=extra))
    return path


def test_auto_takes_uvloop_and_asyncio_takes_the_stdlib_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    factory, name = loop_factory("auto")
    assert factory is uvloop.new_event_loop and name.startswith("uvloop ")
    assert loop_factory("asyncio") == (None, "asyncio (stdlib)")


def test_environment_overrides_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "asyncio")
    assert loop_factory("uvloop")[0] is None
    monkeypatch.setenv(ENV, "UVLOOP")
    assert loop_factory("asyncio")[0] is uvloop.new_event_loop
    monkeypatch.setenv(ENV, "trio")
    with pytest.raises(LoopUnavailable, match=f"{ENV}=trio: expected one of auto, uvloop, asyncio"):
        loop_factory("auto")


@pytest.mark.parametrize(("extra", "env", "logged"), [
    ("", {}, "event loop: uvloop "),
    ('event_loop = "asyncio"', {}, "event loop: asyncio (stdlib)"),
    ('event_loop = "uvloop"', {ENV: "asyncio"}, "event loop: asyncio (stdlib)"),
])
def test_the_agent_logs_the_loop_it_runs(tmp_path: Path, extra: str, env: dict[str, str], logged: str) -> None:
    agent = Proc(agent_cmd(write(tmp_path, extra)), tmp_path, "agent", env={ENV: "", **env})
    try:
        wait_for(lambda: logged in agent.stderr() or not agent.alive(), 30, f"'{logged}' in the log")
        assert agent.alive(), agent.stderr()
        assert "Traceback" not in agent.stderr()
    finally:
        agent.terminate()
        agent.close()


def test_a_bad_loop_name_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'event_loop = "tokio"')
    out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check", "-c", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == EX_CONFIG
    assert out.stderr.startswith(f"{path}: agent.event_loop: 'tokio' is not one of"), out.stderr
    out = subprocess.run(agent_cmd(write(tmp_path)), capture_output=True, text=True, timeout=60,
                         env={**os.environ, ENV: "tokio"})
    assert out.returncode == EX_CONFIG
    assert f"agent.event_loop: {ENV}=tokio: expected one of" in out.stderr, out.stderr
