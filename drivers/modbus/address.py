"""Tag addresses: `table:index`, 0-based, as on the wire (`hr:0` is the first holding register).

0-based is what the protocol sends; the 1-based Modicon spelling (40001) arrives with the full driver.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    read_function: int
    bits: bool
    protocol_limit: int  # most items one read may return (Modbus spec)


TABLES = {
    "coil": Table("coil", 1, True, 2000),
    "di": Table("di", 2, True, 2000),
    "hr": Table("hr", 3, False, 125),
    "ir": Table("ir", 4, False, 125),
}


def parse_address(text: str) -> tuple[str, int]:
    """`hr:100` -> ("hr", 100). Raises ValueError naming what is wrong."""
    table, sep, index = text.partition(":")
    table = table.strip().lower()
    if not sep or table not in TABLES:
        raise ValueError(f"{text!r} is not an address: use coil:N, di:N, hr:N or ir:N (N from 0)")
    try:
        n = int(index.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r}: {index.strip()!r} is not a whole number") from None
    if not 0 <= n <= 0xFFFF:
        raise ValueError(f"{text!r}: address out of range 0..65535")
    return table, n
