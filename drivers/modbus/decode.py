"""Turns a reply into values for a batch row, vectorised per dtype with gather indices from the plan.

The size of every reply was checked against its request before it gets here (client.py), so a short
or over-long answer can never shift values into the wrong tags.
"""

from __future__ import annotations

import numpy as np

from drivers.modbus.plan import DecodeGroup, ReadRequest

# id(group) -> (group, (byte offset, stride, columns) or None); groups live as long as their plan.
_STRIDED: dict[int, tuple[DecodeGroup, tuple[int, int, slice | np.ndarray] | None]] = {}


def decode_registers(req: ReadRequest, data: bytes, out: np.ndarray, text: dict[int, str] | None = None) -> None:
    """Write the request's tag values into `out` (a float64 row) from the reply's register bytes."""
    for g in req.groups:
        strided = _strided(g)
        if strided is not None:  # evenly spaced values in the dtype's own byte order: read them in place
            offset, stride, columns = strided
            out[columns] = np.ndarray((g.gather.shape[0],), g.dtype, data, offset, (stride,))
        else:
            payload = np.frombuffer(data, dtype=np.uint8)
            out[g.columns] = payload[g.gather].view(g.dtype)[:, 0]
    if req.register_bits is None and not req.strings:
        return
    payload = np.frombuffer(data, dtype=np.uint8)
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


def _strided(g: DecodeGroup) -> tuple[int, int, slice | np.ndarray] | None:
    """When the group's values sit at a fixed stride, each with its bytes in order (the usual
    ABCD layout of neighbouring registers), a strided view of the reply replaces the byte gather;
    contiguous columns become a slice. Worked out once per group, not per reply."""
    hit = _STRIDED.get(id(g))
    if hit is not None and hit[0] is g:
        return hit[1]
    gather = g.gather
    m, width = gather.shape
    spec = None
    if m and width == g.dtype.itemsize:
        offset = int(gather[0, 0])
        stride = int(gather[1, 0] - gather[0, 0]) if m > 1 else width
        expect = offset + stride * np.arange(m)[:, None] + np.arange(width)[None, :]
        if stride >= width and np.array_equal(gather, expect):
            cols = g.columns
            c0 = int(cols[0])
            contiguous = np.array_equal(cols, np.arange(c0, c0 + m))
            spec = (offset, stride, slice(c0, c0 + m) if contiguous else cols)
    if len(_STRIDED) > 100_000:  # plans are made at start-up; only splits add groups, a few each
        _STRIDED.clear()
    _STRIDED[id(g)] = (g, spec)
    return spec
