"""What a frame holds, independent of its wire encoding (specified in docs/frame-format.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1

# Declared (PLC-side) value types a tag can have. The wire encoding of values is chosen per frame
# (the narrowest exact one); the declared type tells consumers how to present the value.
VALUE_TYPES = (
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string",
)


@dataclass(slots=True)
class Block:
    """Samples of some tags of one device that share one timestamp column.

    n rows by k tags: ts (n,) int64 unix ns, values (n, k) float64, quality (n, k) uint8,
    flags (n, k) uint32. tags and types have k entries. scores maps a scoring filter kind to its
    (n, k) float32 column (NaN where the filter did not score); empty when no filter scores.
    A string tag's values column holds NaN and its text is in `text` (frame tag element 8).
    """

    device: str
    tags: tuple[str, ...]
    types: tuple[str, ...]
    ts: np.ndarray
    values: np.ndarray
    quality: np.ndarray
    flags: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    # Optional per-sample protocol status, uint32 (n, k) (OPC UA StatusCode, Modbus exception code);
    # None = all 0. Text of string tags by column position: object (n,) of str or None (missing).
    status: np.ndarray | None = None
    text: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def points(self) -> int:
        return int(self.values.size)


@dataclass(slots=True)
class Frame:
    agent: str
    boot: bytes  # 16 bytes, new at every process start
    seq: int  # +1 per frame, continues across restarts
    created_ns: int
    blocks: list[Block] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(b.points for b in self.blocks)
