"""Certificates: the gateway's own application-instance certificate, and the trust decision for servers.

Layout (the usual OPC UA PKI folders, created by `edge-agent opcua-cert --dir DIR`):

    DIR/own/cert.der      the gateway's certificate (give this file to the server's administrator)
    DIR/own/key.pem       its private key (mode 0600)
    DIR/trusted/          server certificates (or the CAs that issued them) this gateway trusts, and
                          the CAs' revocation lists (*.crl, PEM or DER)
    DIR/rejected/         certificates of servers that were refused, ready to be moved to trusted/

Only `cryptography` is imported here: `edge-agent opcua-cert` must work without loading asyncua.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
CRL_SUFFIXES = (".crl",)


class UntrustedServer(Exception):
    """The server's certificate is not in the trust directory; the message says which file to trust."""


def default_application_uri(hostname: str | None = None) -> str:
    return f"urn:{hostname or socket.gethostname()}:edge-agent"


@dataclass(frozen=True)
class OwnCertificate:
    cert: Path
    key: Path
    application_uri: str


def generate(directory: Path, application_uri: str | None = None, hostname: str | None = None,
             days: int = 730, key_bits: int = 2048, force: bool = False) -> OwnCertificate:
    """Create a self-signed application-instance certificate (OPC UA Part 6 6.2.2) and the PKI folders.

    The application URI goes into the subjectAltName, where servers check it against the URI the
    client announces in CreateSession; the driver announces the URI it finds in this certificate, so
    the two cannot disagree. Refuses to overwrite an existing key unless `force`.
    """
    hostname = hostname or socket.gethostname()
    uri = application_uri or default_application_uri(hostname)
    own = directory / "own"
    cert_path, key_path = own / "cert.der", own / "key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise FileExistsError(f"{own} already holds a certificate or key (use --force to replace them)")
    for sub in (own, directory / "trusted", directory / "rejected"):
        sub.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edge-agent@{hostname}"[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent")])
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):  # a host name, not an address
        alt.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a server clock slightly behind still accepts it
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return OwnCertificate(cert_path, key_path, uri)


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def application_uri_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def x509_first_der(data: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send their certificate followed by its CAs)."""
    if len(data) < 4 or data[0] != 0x30:
        return data
    if data[1] == 0x82:
        return data[: int.from_bytes(data[2:4], "big") + 4]
    if data[1] == 0x83:
        return data[: int.from_bytes(data[2:5], "big") + 5]
    return data


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _trusted(trust_dir: Path) -> list[x509.Certificate]:
    out = []
    for f in sorted(trust_dir.iterdir()):
        if f.suffix.lower() in CERT_SUFFIXES and f.is_file():
            try:
                out.append(load_certificate(f))
            except (ValueError, OSError):
                continue  # a stray file must not stop the gateway; it simply trusts nothing
    return out


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _revocation_lists(trust_dir: Path) -> list[x509.CertificateRevocationList]:
    out = []
    for f in sorted(trust_dir.iterdir()):
        if f.suffix.lower() in CRL_SUFFIXES and f.is_file():
            try:
                data = f.read_bytes()
                out.append(x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
            except (ValueError, OSError):
                continue
    return out


def _revoked_by(cert: x509.Certificate, ca: x509.Certificate, trust_dir: Path) -> x509.CertificateRevocationList | None:
    """The CRL of `ca` (signature checked) that lists `cert`, if any. Without a CRL for its CA a
    certificate counts as not revoked: a plant network rarely reaches a CA's distribution point."""
    for crl in _revocation_lists(trust_dir):
        if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            continue
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return crl
    return None


def check_server_certificate(der: bytes, trust_dir: Path, rejected_dir: Path | None, where: str) -> x509.Certificate:
    """Return the certificate if trusted (the exact certificate, or one issued by a trusted CA and not
    on that CA's revocation list, and in its validity period); otherwise save it to `rejected_dir` and
    raise UntrustedServer telling the operator which file to move into `trust_dir`.
    """
    cert = x509.load_der_x509_certificate(der)
    now = datetime.datetime.now(datetime.UTC)
    trusted = False
    issuer: x509.Certificate | None = None
    for t in _trusted(trust_dir):
        if t.public_bytes(serialization.Encoding.DER) == der:
            trusted = True
            break
        if t.subject == cert.issuer and _is_ca(t):
            try:
                cert.verify_directly_issued_by(t)
            except (ValueError, TypeError, Exception):
                continue
            trusted, issuer = True, t
            break
    subject = cert.subject.rfc4514_string() or "(no subject)"
    if trusted:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            valid = f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
            raise UntrustedServer(f"{where}: server certificate {subject} is trusted but not valid now ({valid})")
        if issuer is not None and _revoked_by(cert, issuer, trust_dir) is not None:
            ca = issuer.subject.rfc4514_string()
            raise UntrustedServer(f"{where}: server certificate {subject} (serial {cert.serial_number:x}) is revoked "
                                  f"by its CA {ca}'s revocation list in {trust_dir}")
        return cert
    fp = fingerprint(der)
    hint = f"sha256 {fp}"
    if rejected_dir is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", _common_name(cert) or "server")[:40]
        target = rejected_dir / f"{safe}_{fp[:16]}.der"
        try:
            rejected_dir.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.write_bytes(der)
            hint = f"to trust it: mv {target} {trust_dir}/"
        except OSError as exc:
            hint = f"sha256 {fp}; could not save it to {rejected_dir} ({exc.strerror or exc})"
    raise UntrustedServer(f"{where}: server certificate {subject} is not trusted; {hint}")


def _common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None
