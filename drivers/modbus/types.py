"""Register value types: width in registers and the big-endian numpy dtype the bytes are read as."""

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
TYPES = ("bool", *REGISTER_WIDTH)


def width(type_name: str) -> int:
    """Registers a value of this type spans (bits count as one item of a bit table)."""
    return REGISTER_WIDTH.get(type_name, 1)
