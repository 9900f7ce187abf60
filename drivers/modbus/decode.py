"""Turns a reply into values for a batch row, vectorised per dtype with gather indices from the plan."""

from __future__ import annotations

import numpy as np

from drivers.modbus.plan import ReadRequest


class ReplyError(Exception):
    """A reply whose size does not match the request (some servers answer short instead of failing)."""


def decode_registers(req: ReadRequest, registers: np.ndarray, out: np.ndarray) -> None:
    """Write the request's tag values into `out` (a float64 row) from the reply's 16-bit registers."""
    if registers.shape[0] != req.count:
        raise ReplyError(f"expected {req.count} registers, got {registers.shape[0]}")
    payload = registers.astype(">u2", copy=False).view(np.uint8)
    for g in req.groups:
        out[g.columns] = payload[g.gather].view(g.dtype)[:, 0]


def decode_bits(req: ReadRequest, bits: np.ndarray, out: np.ndarray) -> None:
    """Write the request's bit tags into `out` as 0.0 / 1.0 from the reply's unpacked bits."""
    if bits.shape[0] < req.count:
        raise ReplyError(f"expected {req.count} bits, got {bits.shape[0]}")
    assert req.bit_index is not None
    out[req.columns] = bits[req.bit_index]
