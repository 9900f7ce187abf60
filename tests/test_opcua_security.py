"""Security against the simulator: every policy and mode, server trust, users over secured channels,
and `edge-agent opcua-cert`."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from drivers.opcua import pki
from drivers.opcua.driver import OpcUaDriver
from simulators.opcua.server import APPLICATION_URI, OpcUaSimServer
from simulators.plant import point, value_at_tick
from tests.conftest import ROOT, async_wait_for
from tests.test_opcua_driver import SEED, TICK, Collector, device, running, stop

POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
COMBOS = [("None", None)] + [(p, m) for p in POLICIES for m in ("Sign", "SignAndEncrypt")]
TAGS = [{"name": "temp_supply", "node": "ns=plant;s=boiler.temp_supply", "type": "float32"},
        {"name": "running", "path": "/Objects/plant:Plant/plant:press/plant:running", "type": "bool"}]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[pki.OwnCertificate, pki.OwnCertificate, Path]:
    base = tmp_path_factory.mktemp("pki")
    server = pki.generate(base / "server", application_uri=APPLICATION_URI, key_bits=2048)
    client = pki.generate(base / "client", key_bits=2048)
    return server, client, base


def secured(endpoint: str, client: pki.OwnCertificate, trust: Path, policy: str, mode: str | None, **kw: object):
    extra: dict[str, object] = {}
    if policy != "None":
        extra = {"security_policy": policy, "security_mode": mode, "certificate": str(client.cert),
                 "private_key": str(client.key), "trust_dir": str(trust)}
    return device(endpoint, TAGS, mode="poll", timeout="3s", **extra, **kw)


@pytest.mark.parametrize(("policy", "mode"), COMBOS, ids=[f"{p}-{m}" for p, m in COMBOS])
async def test_each_policy_and_mode_with_a_user(certs, policy, mode, monkeypatch, tmp_path):
    server_cert, client, _ = certs
    trust = tmp_path / "trusted"
    trust.mkdir()
    shutil.copy(server_cert.cert, trust / "plant-sim.der")
    endpoint = "None" if policy == "None" else f"{policy}-{mode}"
    sim = OpcUaSimServer(seed=SEED, security=[endpoint],  # only this one: no silent fallback to None
                         certificate=server_cert.cert, private_key=server_cert.key, users={"operator": "pw-123"})
    await sim.start("127.0.0.1", 0)
    monkeypatch.setenv("EDGE_AGENT_TEST_OPCUA_PW", "pw-123")
    dev = secured(sim.endpoint, client, trust, policy, mode, username="operator",
                  password_env="EDGE_AGENT_TEST_OPCUA_PW")
    got = Collector(len(TAGS))
    drv = OpcUaDriver(dev, got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: len(got.batches) >= 3, 15, f"3 polls over {endpoint}")
    finally:
        await stop(task)
        await sim.stop()
    assert drv.stats.connects == 1 and not drv.stats.errors_by_kind, drv.stats
    for j, ts, v, q in got.samples():
        name = ("boiler", "temp_supply") if j == 0 else ("press", "running")
        assert q == 0 and v == value_at_tick(point(*name), ts // TICK, SEED)


async def test_an_unknown_server_is_refused_until_its_certificate_is_trusted(certs, tmp_path, caplog):
    server_cert, client, _ = certs
    trust = tmp_path / "pki" / "trusted"
    trust.mkdir(parents=True)
    sim = OpcUaSimServer(seed=SEED, security=["None", "Basic256Sha256-SignAndEncrypt"],
                         certificate=server_cert.cert, private_key=server_cert.key)
    await sim.start("127.0.0.1", 0)
    dev = secured(sim.endpoint, client, trust, "Basic256Sha256", "SignAndEncrypt",
                  reconnect_min="200ms", reconnect_max="200ms")
    got = Collector(len(TAGS))
    drv = OpcUaDriver(dev, got)
    caplog.set_level(logging.INFO, logger="edge_agent")
    task = await running(drv)
    try:
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("untrusted", 0) >= 2, 10, "refusals")
        assert not got.batches, "no data from an untrusted server"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # one line, not one per attempt
        line = warnings[0]
        assert "is not trusted; to trust it: mv " in line and str(trust) in line, line
        rejected = Path(line.split("mv ", 1)[1].split(" ")[0])
        assert rejected.read_bytes() == server_cert.cert.read_bytes()  # noqa: ASYNC240 - a test, tiny files
        shutil.move(rejected, trust)  # what the operator does
        await async_wait_for(lambda: got.all_good_since(0), 10, "data once the server is trusted")
    finally:
        await stop(task)
        await sim.stop()


async def test_a_missing_endpoint_is_named_with_what_the_server_offers(certs, tmp_path):
    server_cert, client, _ = certs
    sim = OpcUaSimServer(seed=SEED, security=["None", "Basic256Sha256-Sign"],
                         certificate=server_cert.cert, private_key=server_cert.key)
    await sim.start("127.0.0.1", 0)
    dev = secured(sim.endpoint, client, tmp_path, "Aes256_Sha256_RsaPss", "SignAndEncrypt")
    drv = OpcUaDriver(dev, Collector(len(TAGS)))
    task = await running(drv)
    try:
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("security", 0) >= 1, 10, "a refusal")
    finally:
        await stop(task)
        await sim.stop()
    assert drv._last_error == ("the server offers no Aes256_Sha256_RsaPss/SignAndEncrypt endpoint "
                               "(it offers Basic256Sha256/Sign, None/None)")


def test_opcua_cert_creates_a_certificate_with_the_application_uri(tmp_path):
    cmd = [sys.executable, "-m", "edge_agent.cli", "opcua-cert", "--dir", str(tmp_path / "pki"),
           "--uri", "urn:line1-gw:edge-agent", "--hostname", "line1-gw"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 30
    cert = x509.load_der_x509_certificate((tmp_path / "pki" / "own" / "cert.der").read_bytes())
    assert pki.application_uri_of(cert) == "urn:line1-gw:edge-agent"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["line1-gw"]
    assert (tmp_path / "pki" / "own" / "key.pem").stat().st_mode & 0o077 == 0, "the key is readable by others"
    assert (tmp_path / "pki" / "trusted").is_dir() and (tmp_path / "pki" / "rejected").is_dir()
    assert 'certificate = "' in done.stdout and "trust_dir" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 73
    assert again.stderr.count("\n") == 1 and "--force" in again.stderr and "Traceback" not in again.stderr
