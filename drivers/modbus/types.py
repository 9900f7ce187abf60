"""Register value types and byte orders.

A value is decoded by gathering its bytes from the reply in big-endian order and viewing them as a
big-endian numpy dtype. Every byte order is just a different gather permutation, computed once at
start-up by `byte_positions`, so a word-swapped float costs nothing more per poll than a plain one.
"""

from __future__ import annotations

import numpy as np

REGISTER_WIDTH = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}
DTYPES = {
    "int16": np.dtype(">i2"), "uint16": np.dtype(">u2"), "int32": np.dtype(">i4"),
    "uint32": np.dtype(">u4"), "float32": np.dtype(">f4"), "int64": np.dtype(">i8"),
    "uint64": np.dtype(">u8"), "float64": np.dtype(">f8"),
}
TYPES = ("bool", *REGISTER_WIDTH, "string")

# Letters name the bytes of a 32-bit value, most significant first (A); the order lists them as they
# arrive in the registers. Wider values extend the same rule: CDAB reverses the word order, BADC swaps
# the two bytes of every register, DCBA does both (fully little-endian).
BYTE_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def width(type_name: str, length: int | None = None) -> int:
    """Registers a value of this type spans (bits count as one item of a bit table)."""
    if type_name == "string":
        return length or 1
    return REGISTER_WIDTH.get(type_name, 1)


def byte_positions(registers: int, order: str) -> list[int]:
    """Offsets, into the value's registers' bytes, of the value's bytes from most significant down.

    Strings use the same rule with 'most significant' meaning 'first character': the word order part
    does not apply to them (characters are never word-swapped), only the byte swap does.
    """
    words = list(range(registers))
    if order in ("CDAB", "DCBA"):
        words.reverse()
    swap = order in ("BADC", "DCBA")
    return [2 * w + (1 - b if swap else b) for w in words for b in (0, 1)]


def string_positions(registers: int, order: str) -> list[int]:
    """Character order of a string: only the byte swap of the order applies (see byte_positions)."""
    return byte_positions(registers, "BADC" if order in ("BADC", "DCBA") else "ABCD")
