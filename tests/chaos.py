"""Shared machinery for the chaos tests: brokers that can be killed for real, a journaling relay,
agents on a synthetic load whose every sample is verifiable, and the loss accounting."""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.frame.codec import decode_frame
from edge_agent.frame.model import Frame
from tests.conftest import Proc, free_port, mosquitto_binary, port_open, wait_for

AGENT = "chaos"


class Broker:
    """mosquitto on a fixed port, restartable after kill -9, persistent so sessions survive."""

    def __init__(self, start: Callable[..., Proc], tmp: Path, port: int | None = None, extra: str = ""):
        self._start, self.tmp, self.port, self.extra = start, tmp, port or free_port(), extra
        self.data = tmp / "mosquitto-data"
        self.data.mkdir(exist_ok=True)
        self.conf = tmp / "mosquitto.conf"
        self.proc: Proc | None = None
        self.starts = 0

    def write_conf(self, extra: str | None = None) -> None:
        if extra is not None:
            self.extra = extra
        plain = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        listener = self.extra if "listener" in self.extra else plain
        # Started as root (CI), mosquitto would switch to its own user and lose access to the test's files.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}{listener}\n"
            f"persistence true\npersistence_location {self.data}/\nautosave_interval 1\n"
            "max_queued_messages 0\nmax_inflight_messages 0\n"
        )

    def start(self) -> None:
        self.write_conf()
        self.starts += 1
        self.proc = self._start([mosquitto_binary(), "-c", str(self.conf)], f"mosquitto{self.starts}")
        wait_for(lambda: port_open(self.port) or not self.proc.alive(), 10, "mosquitto to listen")
        assert self.proc.alive(), self.proc.stderr()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads password and ACL files."""
        assert self.proc is not None
        self.proc.popen.send_signal(1)

    def sessions_saved(self) -> bool:
        return (self.data / "mosquitto.db").exists()


class RelayProc:
    """tests/relay.py as a process: kill -9 for real, SIGUSR1 to blackhole, SIGUSR2 to restore."""

    def __init__(self, start: Callable[..., Proc], tmp: Path, target: int):
        self._start, self.tmp, self.target = start, tmp, target
        self.port = free_port()
        self.journal = tmp / "acked.journal"
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        ready = self.tmp / f"relay{self.starts}.ready"
        self.proc = self._start(
            [sys.executable, "-m", "tests.relay", "--listen", str(self.port), "--target", str(self.target),
             "--journal", str(self.journal), "--ready-file", str(ready)], f"relay{self.starts}")
        wait_for(lambda: ready.exists() or not self.proc.alive(), 10, "the relay")
        assert self.proc.alive(), self.proc.stderr()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.popen.send_signal(sig)

    def acked(self) -> set[int]:
        if not self.journal.exists():
            return set()
        return {int(line.split()[1]) for line in self.journal.read_text().splitlines() if line.startswith("acked ")}


def synthetic_config(tmp: Path, broker_url: str, *, tags: int = 500, interval: str = "100ms",
                     batch_interval: str = "500ms", uplink: str = "", spool: str = "",
                     name: str = "agent.toml") -> Path:
    lines = [
        "[agent]", f'id = "{AGENT}"', f'state_dir = "{tmp / "state"}"', "",
        "[uplink]", f'url = "{broker_url}"', 'keepalive = "2s"', 'reconnect_min = "100ms"', 'reconnect_max = "1s"',
        uplink, "",
        "[batch]", f'max_interval = "{batch_interval}"', "max_points = 100000", "",
        "[spool]", spool, "",
        "[[devices]]", 'name = "load"', 'protocol = "synthetic"', f'poll_interval = "{interval}"', "",
    ]
    for j in range(tags):
        lines += ["[[devices.tags]]", f'name = "t{j:04d}"', ""]
    path = tmp / name
    path.write_text("\n".join(lines))
    return path


def spooled_frames(state: Path) -> list[bytes]:
    db = state / "spool.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [bytes(r[0]) for r in con.execute("SELECT data FROM frames ORDER BY seq")]
    finally:
        con.close()


@dataclass
class Accounting:
    """What arrived, per frame and per tag, after dedupe by (agent, seq)."""

    frames: dict[int, Frame] = field(default_factory=dict)
    duplicates: int = 0
    out_of_order_tags: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, payloads: list[bytes]) -> Accounting:
        acc = cls()
        for data in payloads:
            f = decode_frame(data)
            if f.seq in acc.frames:
                acc.duplicates += 1
            else:
                acc.frames[f.seq] = f
        return acc

    def missing_seqs(self, upto: int | None = None) -> list[int]:
        if not self.frames:
            return []
        top = max(self.frames) if upto is None else upto
        return sorted(set(range(min(self.frames), top + 1)) - set(self.frames))

    def ticks(self, boot: bytes | None = None) -> dict[str, np.ndarray]:
        """Per tag, the tick values in frame (seq) order; in order means strictly increasing.

        With `boot`, only that agent run: between two runs no polls happen, so ticks have a gap there.
        """
        per_tag: dict[str, list[np.ndarray]] = {}
        for seq in sorted(self.frames):
            if boot is not None and self.frames[seq].boot != boot:
                continue
            for b in self.frames[seq].blocks:
                for j, tag in enumerate(b.tags):
                    per_tag.setdefault(tag, []).append(b.values[:, j])
        out = {t: np.concatenate(v).astype(np.int64) for t, v in per_tag.items()}
        self.out_of_order_tags = [t for t, v in out.items() if v.size > 1 and not (np.diff(v) > 0).all()]
        return out

    def points(self) -> int:
        return sum(f.points for f in self.frames.values())


def missing_ticks(ticks: np.ndarray) -> int:
    return int(ticks[-1] - ticks[0] + 1 - ticks.size) if ticks.size else 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def report(tmp: Path, name: str, **figures: object) -> None:
    """Chaos figures go to stdout (pytest -s) and to a JSON file a closing note can quote."""
    line = json.dumps({"test": name, "at": datetime.datetime.now(datetime.UTC).isoformat(), **figures})
    print(line)
    out = Path(__file__).resolve().parents[1] / ".chaos-report.jsonl"
    with out.open("a") as f:
        f.write(line + "\n")


def gen_ca_and_server(tmp: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}-server.crt", tmp / f"{name}-server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    # A client certificate from the same CA, for mutual TLS.
    ckey = ec.generate_private_key(ec.SECP256R1())
    client = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-agent")]))
              .issuer_name(ca_name).public_key(ckey.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
              .sign(ca_key, hashes.SHA256()))
    (tmp / f"{name}-client.crt").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}-client.key").write_bytes(ckey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def mosquitto_password_file(path: Path, user: str, password: str) -> None:
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), user, password], check=True,
                   capture_output=True, timeout=30)
