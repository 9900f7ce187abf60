"""`edge-agent opcua-cert`: the gateway's own certificate, and the config lines that use it."""

from __future__ import annotations

import sys
from pathlib import Path

EX_CANTCREAT = 73


def run_opcua_cert(directory: Path, uri: str | None, hostname: str | None, days: int, force: bool) -> int:
    from drivers.opcua import pki

    if days < 1:
        print(f"opcua-cert: --days must be at least 1, not {days}", file=sys.stderr)
        return 2
    try:
        own = pki.generate(directory, application_uri=uri, hostname=hostname, days=days, force=force)
    except FileExistsError as exc:
        print(f"opcua-cert: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"opcua-cert: cannot write {exc.filename or directory}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    trusted = directory / "trusted"
    print(f"created {own.cert} (application URI {own.application_uri}, valid {days} days) and {own.key}")
    print("give the certificate to the OPC UA server's administrator to trust, then add to the device:")
    print(f'  certificate = "{own.cert}"')
    print(f'  private_key = "{own.key}"')
    print(f'  trust_dir = "{trusted}"        # copy the server\'s certificate here')
    return 0
