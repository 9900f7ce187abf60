"""Real components for tests: a mosquitto broker on its own port, the simulator and the agent as
subprocesses. Waiting is always on a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The agent runs on uvloop where installed (edge_agent/eventloop.py); in-process tests run on the
# stdlib loop unless EDGE_AGENT_TEST_LOOP=uvloop, which runs them on uvloop too (the hook needs
# pytest-asyncio >= 1.3, hence defined only on request).
if os.environ.get("EDGE_AGENT_TEST_LOOP") == "uvloop":
    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plant.toml"
# Agents started by tests share one compiled-kernel cache: each would otherwise compile every numba
# kernel afresh in its own state_dir (seconds per process), which is start-up cost, not behaviour.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"edge-agent-tests-numba-{os.getuid()}"))


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Every numba kernel compiled once into the shared cache before the first test. Cold, the frame
    encoder alone takes 6-12 s on two busy cores: inside whichever test starts the first agent, that
    would eat its start-up deadline, and which test that is depends on the selection."""
    from edge_agent.batcher import warm_up as batcher_warm_up
    from edge_agent.filters.engine import warm_up
    from edge_agent.frame import fastpack

    warm_up()
    fastpack.warm_up()
    batcher_warm_up()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll `condition` until it returns something truthy; fail the test naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


async def async_wait_for(condition: Callable[[], object], within: float, what: str) -> object:
    """`wait_for` for async tests: yields to the event loop between checks."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.1f}s waiting for {what}")
        await asyncio.sleep(0.01)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        pytest.fail("mosquitto is not installed: run the README's test command (scripts/test installs it)")
    return found


class Proc:
    """A subprocess with its output captured to files, stopped for real at teardown."""

    def __init__(self, args: list[str], log_dir: Path, name: str, env: dict[str, str] | None = None):
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        t0 = time.monotonic()
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            rc = self.popen.wait(5)
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)

    def stdout(self) -> str:
        self._out.flush()
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        self.kill()
        self._out.close()
        self._err.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(args, tmp_path, name, env)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.close()


@pytest.fixture
def broker(procs: Callable[..., Proc], tmp_path: Path) -> int:
    """A real mosquitto on a free loopback port; returns the port."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = procs([mosquitto_binary(), "-c", str(conf)], "mosquitto")
    wait_for(lambda: port_open(port) or not proc.alive(), 10, "mosquitto to listen")
    assert proc.alive(), f"mosquitto exited: {proc.stderr()}"
    return port


def start_simulator(procs: Callable[..., Proc], tmp_path: Path, name: str = "simulator") -> tuple[Proc, int]:
    """`edge-agent-sim modbus` (seed 7) on an ephemeral port; returns (process, port)."""
    ready = tmp_path / f"{name}.port"
    proc = procs(
        [sys.executable, "-m", "simulators.cli", "modbus", "--port", "0", "--seed", "7", "--ready-file", str(ready)],
        name,
    )
    wait_for(lambda: (ready.exists() and ready.read_text().strip()) or not proc.alive(), 15, f"the {name}")
    assert proc.alive(), f"{name} exited: {proc.stderr()}"
    return proc, int(ready.read_text())


@pytest.fixture
def simulator(procs: Callable[..., Proc], tmp_path: Path) -> tuple[Proc, int]:
    return start_simulator(procs, tmp_path)


def example_config(tmp_path: Path, sim_port: int, broker_port: int, name: str = "plant.toml", **replace: str) -> Path:
    """examples/plant.toml as shipped, pointed at this test's simulator, broker and state dir."""
    text = EXAMPLE.read_text()
    text = text.replace("tcp://127.0.0.1:5020", f"tcp://127.0.0.1:{sim_port}")
    text = text.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{broker_port}")
    text = text.replace('state_dir = "./state"', f'state_dir = "{tmp_path / "state"}"')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def agent_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cli", "run", "-c", str(config)]
