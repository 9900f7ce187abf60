"""Endpoint URLs in the config (`tcp://host:port`, `mqtt://host:port`), checked strictly: a part the
agent would ignore (a path, a query, credentials) is an error, not a surprise at 3 a.m."""

from __future__ import annotations

from urllib.parse import urlsplit


def check_endpoint(url: str, schemes: tuple[str, ...], hint: str, allow_path: bool = False) -> str:
    """Return `url` unchanged, or raise ValueError naming the one thing wrong with it.

    allow_path: the path is part of the address (OPC UA endpoints such as opc.tcp://plc:4840/server).
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{url!r}: use {hint}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: credentials do not belong in the URL (use username and password_file)")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: unexpected query or fragment; use {hint}")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError(f"{url!r}: unexpected path or query; use {hint}")
    return url
