"""Turns a reply into values for a batch row, vectorised per dtype with gather indices from the plan.

The size of every reply was checked against its request before it gets here (client.py), so a short
or over-long answer can never shift values into the wrong tags.
"""

from __future__ import annotations

import numpy as np

from drivers.modbus.plan import ReadRequest


def decode_registers(req: ReadRequest, data: bytes, out: np.ndarray, text: dict[int, str] | None = None) -> None:
    """Write the request's tag values into `out` (a float64 row) from the reply's register bytes."""
    payload = np.frombuffer(data, dtype=np.uint8)
    for g in req.groups:
        out[g.columns] = payload[g.gather].view(g.dtype)[:, 0]
    rb = req.register_bits
    if rb is not None:
        regs = payload.view(">u2")
        out[rb.columns] = (regs[rb.offsets] >> rb.shifts) & 1
    for s in req.strings:
        out[s.column] = np.nan  # text has no float value; it travels in `text` (see README, Strings)
        if text is not None:
            text[s.column] = decode_string(payload[s.gather].tobytes())


def decode_string(raw: bytes) -> str:
    """Characters up to the first NUL, trailing spaces dropped (how PLCs pad fixed-size strings).

    Bytes are read as Latin-1, which maps every byte to one character, so a device sending non-ASCII
    gives a visible, reversible result instead of a decode error or replacement characters.
    """
    return raw.split(b"\0", 1)[0].rstrip(b" ").decode("latin-1")


def decode_bits(req: ReadRequest, data: bytes, out: np.ndarray) -> None:
    """Write the request's bit tags into `out` as 0.0 / 1.0 from the reply's packed bits (LSB first)."""
    assert req.bit_index is not None
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    out[req.columns] = bits[req.bit_index]
