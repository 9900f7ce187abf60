"""systemd's notify protocol: READY, WATCHDOG, STATUS, RELOADING, STOPPING over $NOTIFY_SOCKET.

Twenty lines of stdlib rather than a dependency: one datagram per message, and silence when the
agent is not run by systemd (no NOTIFY_SOCKET), so the same code runs in a terminal and in tests.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address  # abstract namespace
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: object) -> None:
        """notify(READY=1, STATUS="...") -> "READY=1\\nSTATUS=..."; never raises (systemd may be gone)."""
        if self._sock is None or self._address is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        with contextlib.suppress(OSError):
            self._sock.sendto(message, self._address)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (systemd passes WATCHDOG_USEC), or None when no watchdog is configured."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
