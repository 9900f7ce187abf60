"""Security against the simulator: every policy and mode, server trust, users over secured channels,
and `edge-agent opcua-cert`."""

from __future__ import annotations

import datetime
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def make_ca(directory: Path, name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert, key


def issue_server_cert(directory: Path, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> tuple[Path, Path, int]:
    """A server application-instance certificate signed by `ca`: (cert.der, key.pem, serial)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plant-sim (CA-signed)")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(APPLICATION_URI),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.der", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, serial


def write_crl(path: Path, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, revoked: list[int]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now)
               .next_update(now + datetime.timedelta(days=7)))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


async def test_a_server_certificate_issued_by_a_trusted_ca_is_accepted_until_the_ca_revokes_it(certs, tmp_path,
                                                                                                caplog):
    _, client, _ = certs
    trust = tmp_path / "pki" / "trusted"
    ca, ca_key = make_ca(trust, "Plant CA")  # only the CA is trusted, never the server's own certificate
    write_crl(trust / "ca.crl", ca, ca_key, [])  # the CA's (empty) revocation list, as a plant PKI keeps one
    server_cert, server_key, serial = issue_server_cert(tmp_path / "server", ca, ca_key)
    sim = OpcUaSimServer(seed=SEED, security=["Basic256Sha256-SignAndEncrypt"], certificate=server_cert,
                         private_key=server_key)
    await sim.start("127.0.0.1", 0)
    dev = secured(sim.endpoint, client, trust, "Basic256Sha256", "SignAndEncrypt",
                  reconnect_min="200ms", reconnect_max="200ms")
    got = Collector(len(TAGS))
    drv = OpcUaDriver(dev, got)
    caplog.set_level(logging.INFO, logger="edge_agent")
    task = await running(drv)
    try:
        await async_wait_for(lambda: got.all_good_since(0), 15, "data from the CA-signed server")
        assert not drv.stats.errors_by_kind, drv.stats
        write_crl(trust / "ca.crl", ca, ca_key, [serial])  # the CA revokes the server's certificate
        sim.drop_connections()  # trust is decided at each connect
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("untrusted", 0) >= 2, 10, "refusals once revoked")
    finally:
        await stop(task)
        await sim.stop()
    revoked = [r.getMessage() for r in caplog.records if "revoked" in r.getMessage()]
    assert revoked and f"serial {serial:x}) is revoked by its CA CN=Plant CA" in revoked[0], revoked
    assert len([r for r in caplog.records if r.levelno == logging.WARNING and "revoked" in r.getMessage()]) == 1
    assert not (tmp_path / "pki" / "rejected").exists() or not any((tmp_path / "pki" / "rejected").iterdir()), \
        "a revoked certificate is not offered for trusting"


async def test_a_certificate_from_an_untrusted_ca_or_signed_by_a_leaf_is_refused(tmp_path):
    trust = tmp_path / "trusted"
    make_ca(trust, "Plant CA")
    other, other_key = make_ca(tmp_path / "other", "Someone Else's CA")
    server_cert, _, _ = issue_server_cert(tmp_path / "server", other, other_key)
    with pytest.raises(pki.UntrustedServer, match="is not trusted"):
        pki.check_server_certificate(server_cert.read_bytes(), trust, None, "dev")
    # A trusted *leaf* with the issuer's name does not make what it "signed" trusted: only a CA does.
    leaf = pki.generate(tmp_path / "leaf", hostname="leaf")
    shutil.copy(leaf.cert, trust / "leaf.der")
    assert pki.check_server_certificate(leaf.cert.read_bytes(), trust, None, "dev")  # the leaf itself: trusted
    leaf_cert = pki.load_certificate(leaf.cert)
    leaf_key = serialization.load_pem_private_key(leaf.key.read_bytes(), password=None)
    signed_by_leaf, _, _ = issue_server_cert(tmp_path / "by-leaf", leaf_cert, leaf_key)  # type: ignore[arg-type]
    with pytest.raises(pki.UntrustedServer, match="is not trusted"):
        pki.check_server_certificate(signed_by_leaf.read_bytes(), trust, None, "dev")


async def test_a_server_refusing_our_certificate_is_one_clear_line_and_retried_with_backoff(certs, tmp_path, caplog):
    server_cert, client, _ = certs
    trust = tmp_path / "trusted"
    trust.mkdir()
    shutil.copy(server_cert.cert, trust / "plant-sim.der")
    server_trusts = tmp_path / "server-trusted"  # the server's trust list: this gateway is not on it yet
    server_trusts.mkdir()
    sim = OpcUaSimServer(seed=SEED, security=["Basic256Sha256-SignAndEncrypt"], certificate=server_cert.cert,
                         private_key=server_cert.key, trusted_clients=server_trusts)
    await sim.start("127.0.0.1", 0)
    dev = secured(sim.endpoint, client, trust, "Basic256Sha256", "SignAndEncrypt",
                  reconnect_min="300ms", reconnect_max="300ms")
    got = Collector(len(TAGS))
    drv = OpcUaDriver(dev, got)
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    task = await running(drv)
    try:
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("security", 0) >= 1, 15, "a refusal")
        t0 = time.monotonic()
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("security", 0) >= 3, 15, "two more attempts")
        assert time.monotonic() - t0 >= 2 * 0.3, "attempts not spaced by the backoff"
        assert not task.done() and not got.batches
        shutil.copy(client.cert, server_trusts / "edge-agent.der")  # the server's operator trusts us
        await async_wait_for(lambda: got.all_good_since(0), 15, "data once the server trusts this gateway")
    finally:
        await stop(task)
        await sim.stop()
    assert sim.refused_clients >= 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "refused the secure channel (BadCertificateUntrusted)" in warnings[0], warnings
    assert str(client.cert) in warnings[0] and "Traceback" not in caplog.text
