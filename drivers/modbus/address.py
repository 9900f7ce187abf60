"""Tag addresses, in both spellings engineers meet: `hr:100` (0-based, as on the wire) and the 1-based
Modicon numbers of device manuals (`40101`, `400101`), plus a bit inside a register (`hr:100.3`).

The two spellings are told apart by form, never by guessing: `table:N` is always 0-based; a bare
number of exactly five or six digits is always Modicon (its first digit names the table, the rest
counts from 1). So `40001` and `hr:0` are the same register, and there is no third reading.
"""

from __future__ import annotations

import re
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
MODICON_TABLE = {"0": "coil", "1": "di", "3": "ir", "4": "hr"}


@dataclass(frozen=True)
class Address:
    table: str
    index: int  # 0-based, as sent on the wire
    bit: int | None = None  # bit 0 (least significant) .. 15 of a register, for `hr:N.B` / `ir:N.B`

    def __str__(self) -> str:
        return f"{self.table}:{self.index}" + ("" if self.bit is None else f".{self.bit}")


_MODICON = re.compile(r"^([0134])(\d{4,5})$")
HINT = "use coil:N, di:N, hr:N, ir:N (0-based), hr:N.B for a bit, or a Modicon number such as 40001"


def parse_address(text: str) -> Address:
    """`hr:100` -> Address("hr", 100). Raises ValueError naming what is wrong."""
    body, dot, bit_text = text.strip().partition(".")
    table, sep, index = body.partition(":")
    if sep:
        table = table.strip().lower()
        if table not in TABLES:
            raise ValueError(f"{text!r} is not an address: {HINT}")
        try:
            n = int(index.strip(), 10)
        except ValueError:
            raise ValueError(f"{text!r}: {index.strip()!r} is not a whole number") from None
        if not 0 <= n <= 0xFFFF:
            raise ValueError(f"{text!r}: address out of range 0..65535")
    else:
        m = _MODICON.match(body.strip())
        if not m:
            raise ValueError(f"{text!r} is not an address: {HINT}")
        table, number = MODICON_TABLE[m.group(1)], int(m.group(2))
        top = 9999 if len(m.group(2)) == 4 else 65536
        if not 1 <= number <= top:
            first = m.group(1) + "0" * (len(m.group(2)) - 1) + "1"
            raise ValueError(
                f"{text!r} is not an address: Modicon numbers count from 1 ({first} is {table}:0) "
                f"up to {m.group(1)}{top}"
            )
        n = number - 1
    bit = None
    if dot:
        if TABLES[table].bits:
            raise ValueError(f"{text!r}: {table} addresses are single bits already; drop the .{bit_text}")
        if not bit_text.strip().isdigit() or not 0 <= int(bit_text) <= 15:
            raise ValueError(f"{text!r}: the bit after '.' must be 0..15 (0 = least significant)")
        bit = int(bit_text)
    return Address(table, n, bit)
