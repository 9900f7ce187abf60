"""Frame format v1: the msgpack wire encoding of a Frame. docs/frame-format.md is the normative spec.

The format is columnar because the uplink is metered (cellular gateways pay per byte) and because a
Raspberry Pi cannot afford one Python object per sample: every column is converted with one numpy
call, and only blocks and tags are looped over. Each tag's value column gets the narrowest encoding
that still reproduces the float64 column bit for bit, so the edge never loses information to save
bytes (a NaN payload, -0.0 or an integer beyond 2**53 arrives exactly as the agent held it).
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import zstandard

from edge_agent.frame.model import FORMAT_VERSION, VALUE_TYPES, Block, Frame

__all__ = ["FrameError", "decode_frame", "encode_frame"]

# Body encodings (frame element 5).
BODY_PLAIN = 0  # the body is the blocks array itself
BODY_ZSTD = 1  # the body is a bin holding zstd(msgpack(blocks array))
# A compressed body may not inflate past this: a corrupt or hostile frame must not exhaust memory.
MAX_INFLATED_BODY = 256 * 1024 * 1024

# Value encodings of a tag. Integer and float codes are little-endian fixed-width arrays in a bin.
_INT_CODES: dict[str, np.dtype] = {
    "u1": np.dtype("<u1"), "i1": np.dtype("<i1"),
    "u2": np.dtype("<u2"), "i2": np.dtype("<i2"),
    "u4": np.dtype("<u4"), "i4": np.dtype("<i4"),
    "u8": np.dtype("<u8"), "i8": np.dtype("<i8"),
}
_FLOAT_CODES: dict[str, np.dtype] = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
_BIN_CODES: dict[str, np.dtype] = {**_INT_CODES, **_FLOAT_CODES}
TS_CODES: dict[str, np.dtype] = {
    "i1": np.dtype("<i1"), "i2": np.dtype("<i2"), "i4": np.dtype("<i4"), "i8": np.dtype("<i8"),
}

# Encoder preference when two encodings cost the same number of bytes: integers read more naturally
# than f4 in a hex dump, and f8 is the last resort. Ordered by element size so that the first
# candidate that fits is also the smallest among the bin codes.
_CANDIDATE_ORDER = ("u1", "i1", "u2", "i2", "u4", "i4", "f4", "u8", "i8", "f8")

_ONE_BITS = np.float64(1.0).view(np.uint64)
_NEG_ZERO_BITS = np.float64(-0.0).view(np.uint64)
_K_SIZE = 9  # msgpack float 64: 0xcb + 8 bytes

# Widths of a varying flags column, narrowest first: the bin length (n, 2n or 4n bytes) says which.
# Filters are assigned bits from bit 0 up, so a frame where only the first few fired costs 1 byte
# per sample for that tag instead of 4.
_FLAG_DTYPES = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"))

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1
BOOT_LEN = 16

# Decoding a frame allocates 21 bytes per point, and constant columns ("k") let a few bytes stand for
# many points; this bound keeps a hostile or corrupt-but-valid frame from exhausting memory.
DEFAULT_MAX_POINTS = 10_000_000


class FrameError(ValueError):
    """The bytes are not a valid v1 frame; the message is one line saying what is wrong and where.

    A single exception type lets the uplink and the cloud quarantine a bad frame without catching
    broad exception classes that would also hide bugs.
    """


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def encode_frame(frame: Frame, *, zstd_level: int | None = None) -> bytes:
    """Serialise a frame in the v1 wire format (docs/frame-format.md).

    Encodings are chosen here and nowhere else, deterministically: the same Frame always gives the
    same bytes, so re-encoding a decoded frame is a no-op and size tests are reproducible.
    Raises ValueError (not FrameError: the bytes are fine, the caller's object is not) when the
    frame cannot be represented, e.g. wrong boot length or mismatched array shapes.
    """
    if not isinstance(frame.agent, str):
        raise ValueError("frame.agent must be str")
    if not isinstance(frame.boot, bytes | bytearray | memoryview):  # bytes(16) would be 16 zeros
        raise ValueError("frame.boot must be bytes")
    boot = bytes(frame.boot)
    if len(boot) != BOOT_LEN:
        raise ValueError(f"frame.boot must be {BOOT_LEN} bytes, got {len(boot)}")
    seq = _checked_int("frame.seq", frame.seq, 0, _UINT64_MAX)
    created = _checked_int("frame.created_ns", frame.created_ns, _INT64_MIN, _INT64_MAX)
    blocks = [_encode_block(i, b) for i, b in enumerate(frame.blocks)]
    try:
        if zstd_level is None:
            doc = [FORMAT_VERSION, frame.agent, boot, seq, created, BODY_PLAIN, blocks]
        else:
            # The header stays plain msgpack, so a consumer can dedupe and route by (agent, seq)
            # without inflating the body.
            body = zstandard.ZstdCompressor(level=zstd_level).compress(msgpack.packb(blocks, use_bin_type=True))
            doc = [FORMAT_VERSION, frame.agent, boot, seq, created, BODY_ZSTD, body]
        return msgpack.packb(doc, use_bin_type=True)
    except UnicodeEncodeError as exc:  # lone surrogates in a name cannot travel as UTF-8
        raise ValueError(f"frame contains a string that is not valid UTF-8: {exc.reason}") from exc


def _checked_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be an int")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{what}={value} out of range [{lo}, {hi}]")
    return value


def _as(what: str, arr: object, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """Accept any array that converts to dtype without loss; silent wrap-around would corrupt data."""
    a = np.asarray(arr)
    if not np.can_cast(a.dtype, dtype, casting="safe"):
        raise ValueError(f"{what}: dtype {a.dtype} does not convert losslessly to {np.dtype(dtype)}")
    if a.shape != shape:
        raise ValueError(f"{what}: shape {a.shape}, expected {shape}")
    return a.astype(dtype, copy=False)


def _encode_block(index: int, block: Block) -> list:
    where = f"block {index}"
    if not isinstance(block.device, str):
        raise ValueError(f"{where}: device must be str")
    tags, types = tuple(block.tags), tuple(block.types)
    k = len(tags)
    if len(types) != k:
        raise ValueError(f"{where}: {k} tags but {len(types)} types")
    for name, typ in zip(tags, types, strict=True):
        if not isinstance(name, str):
            raise ValueError(f"{where}: tag names must be str")
        if typ not in VALUE_TYPES:
            raise ValueError(f"{where}: tag {name!r} has unknown type {typ!r}")
    ts = np.asarray(block.ts)
    if ts.ndim != 1:
        raise ValueError(f"{where}: ts must be 1-D, got shape {ts.shape}")
    n = ts.shape[0]
    ts = _as(f"{where} ts", ts, np.int64, (n,))
    values = _as(f"{where} values", block.values, np.float64, (n, k))
    quality = _as(f"{where} quality", block.quality, np.uint8, (n, k))
    flags = _as(f"{where} flags", block.flags, np.uint32, (n, k))

    value_cols = _encode_values(values)
    quality_cols = _encode_uniform_or_bin(quality)
    flag_cols = _encode_flags(flags)
    tag_docs = [
        [tags[j], types[j], value_cols[j][0], value_cols[j][1], quality_cols[j], flag_cols[j]]
        for j in range(k)
    ]
    for kind in sorted(block.scores or {}):
        if not isinstance(kind, str):
            raise ValueError(f"{where}: score kinds must be str")
        col = _as(f"{where} scores {kind!r}", block.scores[kind], np.float64, (n, k))
        for j, entry in enumerate(_encode_scores(kind, col)):
            if entry is not None:
                if len(tag_docs[j]) == 6:
                    tag_docs[j].append([])
                tag_docs[j][6].append(entry)
    if block.status is not None or block.text:
        _append_status_and_text(where, block, n, k, tag_docs)
    return [block.device, _encode_ts(ts), tag_docs]


# --- optional trailing tag elements: 7 = status, 8 = text ---------------------------------------
# Both are appended only to the tags that need them, so a frame without status codes or string
# tags is byte for byte what it was before they existed (and the fast encoder path, which declines
# blocks carrying either, stays byte-identical to this one).

_TAG_SCORES, _TAG_STATUS, _TAG_TEXT = 6, 7, 8


def _append_status_and_text(where: str, block: Block, n: int, k: int, tag_docs: list[list]) -> None:
    status = None if block.status is None else _as(f"{where} status", block.status, np.uint32, (n, k))
    status_cols = _encode_status(status) if status is not None else [None] * k
    texts = _checked_text(where, block.text or {}, n, k)
    for j, doc in enumerate(tag_docs):
        st, tx = status_cols[j], texts.get(j)
        if st is None and tx is None:
            continue
        if len(doc) == _TAG_SCORES:
            doc.append([])  # no scores: an empty list keeps the position (old decoders iterate it)
        doc.append(0 if st is None else st)  # 0 = all good: the placeholder before a text element
        if tx is not None:
            doc.append(tx)


def _encode_status(status: np.ndarray) -> list[object]:
    """Per tag: None when all 0 (the element is left out), a uint when uniform, else n u4 LE."""
    n, k = status.shape
    if n == 0:
        return [None] * k
    uniform = np.all(status == status[0], axis=0)
    nonzero = status.any(axis=0)
    out: list[object] = []
    for j in range(k):
        if not nonzero[j]:
            out.append(None)
        elif uniform[j]:
            out.append(int(status[0, j]))
        else:
            out.append(status[:, j].astype("<u4").tobytes())
    return out


def _checked_text(where: str, text: dict[int, object], n: int, k: int) -> dict[int, list[str | None]]:
    out: dict[int, list[str | None]] = {}
    for j, col in text.items():
        if isinstance(j, bool) or not isinstance(j, int | np.integer) or not 0 <= int(j) < k:
            raise ValueError(f"{where}: text column {j!r} is not a tag position 0..{k - 1}")
        items = list(col)  # type: ignore[call-overload]
        if len(items) != n:
            raise ValueError(f"{where}: text of tag {int(j)} has {len(items)} rows, expected {n}")
        for i, x in enumerate(items):
            if x is not None and not isinstance(x, str):
                raise ValueError(f"{where}: text of tag {int(j)} row {i} is {type(x).__name__}, not str or None")
        out[int(j)] = [None if x is None else str(x) for x in items]  # np.str_ -> str
    return out


_F2_MAX = float(np.finfo(np.float16).max)
_SCORE_CODES = {"f2": np.dtype("<f2"), "f4": np.dtype("<f4")}


def _encode_scores(kind: str, scores: np.ndarray) -> list[list | None]:
    """Per tag: None when the filter did not score it in this frame (all NaN), else [kind, enc, payload].

    Scores are judgements, not measurements: three significant digits (float16, 2 bytes per sample)
    say how far past its threshold a sample was, at half the cost of float32. A column with a score
    beyond float16's range goes as float32; a constant column as one float64.
    """
    n, k = scores.shape
    out: list[list | None] = []
    nan = np.isnan(scores)
    all_nan = nan.all(axis=0) if n else np.ones(k, dtype=bool)
    for j in range(k):
        if all_nan[j]:
            out.append(None)
            continue
        col = scores[:, j]
        finite = col[np.isfinite(col)]  # ±inf exists in float16 too
        code = "f2" if np.abs(finite).max(initial=0.0) <= _F2_MAX else "f4"
        # Round first, then look for a constant: so that re-encoding a decoded frame gives the same bytes.
        rounded = col.astype(_SCORE_CODES[code])
        bits = rounded.view(np.uint16 if code == "f2" else np.uint32)
        if (bits == bits[0]).all() and _bin_size(rounded.nbytes) > _K_SIZE:
            out.append([kind, "k", float(rounded[0])])
        else:
            out.append([kind, code, rounded.tobytes()])
    return out


def _encode_ts(ts: np.ndarray) -> list:
    """Delta-encode timestamps: polls are regular, so deltas fit in 4 bytes where absolute ns need 8.

    Deltas are taken with 64-bit wrap-around so that any int64 sequence round-trips, even one that
    jumps from -2**63 to 2**63-1 (a clock that was never set, then set).
    """
    n = ts.shape[0]
    if n == 0:
        return [0, 0, "i1", b""]
    deltas = np.diff(ts)  # int64 arithmetic wraps modulo 2**64, which is exactly what we want
    code = _narrowest_ts_code(int(deltas.min()), int(deltas.max())) if deltas.size else "i1"
    return [n, int(ts[0]), code, deltas.astype(TS_CODES[code]).tobytes()]


def _narrowest_ts_code(lo: int, hi: int) -> str:
    for code, dtype in TS_CODES.items():
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return code
    return "i8"  # unreachable: int64 deltas always fit i8


def _bin_size(payload_len: int) -> int:
    """Bytes msgpack spends on a bin of this length (bin 8 / bin 16 / bin 32 header + payload)."""
    if payload_len < 1 << 8:
        return 2 + payload_len
    if payload_len < 1 << 16:
        return 3 + payload_len
    return 5 + payload_len


def _encode_values(values: np.ndarray) -> list[tuple[str, object]]:
    """Choose each tag's cheapest bit-exact encoding, testing all tags of the block at once.

    Exactness is judged on the raw float64 bits, never with ==, because == would let -0.0 pass as
    0 and would reject NaN from every encoding; both must come back exactly as sent.
    """
    n, k = values.shape
    if n == 0:
        return [("f8", b"")] * k
    bits = values.view(np.uint64)
    constant = np.all(bits == bits[0], axis=0)
    boolean = np.all((bits == 0) | (bits == _ONE_BITS), axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        # -0.0 is excluded: an integer has no sign for zero, so it would come back as +0.0.
        integral = np.isfinite(values) & (np.trunc(values) == values) & (bits != _NEG_ZERO_BITS)
        f4_exact = np.all(values.astype(np.float32).astype(np.float64).view(np.uint64) == bits, axis=0)
    all_integral = np.all(integral, axis=0)
    masked = np.where(integral, values, 0.0)
    col_min, col_max = masked.min(axis=0), masked.max(axis=0)

    out: list[tuple[str, object]] = []
    for j in range(k):
        col = values[:, j]
        best_code, best_size = "f8", math.inf
        if constant[j]:
            best_code, best_size = "k", _K_SIZE
        if boolean[j] and _bin_size((n + 7) // 8) < best_size:
            best_code, best_size = "b", _bin_size((n + 7) // 8)
        for code in _CANDIDATE_ORDER:
            size = _bin_size(_BIN_CODES[code].itemsize * n)
            if size >= best_size:
                continue
            if code == "f8":
                ok = True
            elif code == "f4":
                ok = bool(f4_exact[j])
            else:
                ok = bool(all_integral[j]) and _int_fits(code, float(col_min[j]), float(col_max[j]))
            if ok:
                best_code, best_size = code, size
                break  # candidates are ordered by size, so the first fit is the best bin code
        if best_code == "k":
            out.append(("k", float(col[0])))  # Python float keeps the exact bits, NaN payload included
        elif best_code == "b":
            out.append(("b", np.packbits(bits[:, j] == _ONE_BITS, bitorder="little").tobytes()))
        else:
            out.append((best_code, col.astype(_BIN_CODES[best_code]).tobytes()))
    return out


def _int_fits(code: str, lo: float, hi: float) -> bool:
    # Python compares float with int exactly (no rounding to float), which matters at the 64-bit
    # edges: float(2**63-1) is 2**63, which must be rejected for i8 but accepted for u8.
    info = np.iinfo(_INT_CODES[code])
    return int(info.min) <= float(lo) and float(hi) <= int(info.max)


def _encode_uniform_or_bin(col: np.ndarray) -> list[object]:
    """One msgpack uint per tag when the column is uniform (the normal case: all good, no flags).

    Otherwise the whole column as little-endian bytes; the per-sample cost is only paid by tags that
    actually changed quality in this frame. (Flags use _encode_flags, which also narrows the width.)
    """
    n, k = col.shape
    if n == 0:
        return [0] * k
    uniform = np.all(col == col[0], axis=0)
    le = col.dtype.newbyteorder("<")
    return [int(col[0, j]) if uniform[j] else col[:, j].astype(le).tobytes() for j in range(k)]


def _encode_flags(flags: np.ndarray) -> list[object]:
    """Like _encode_uniform_or_bin, but a varying column uses the narrowest of uint8/16/32 that holds
    its maximum; the decoder infers the width from the bin length (n, 2n or 4n bytes)."""
    n, k = flags.shape
    if n == 0:
        return [0] * k
    uniform = np.all(flags == flags[0], axis=0)
    col_max = flags.max(axis=0)
    out: list[object] = []
    for j in range(k):
        if uniform[j]:
            out.append(int(flags[0, j]))
            continue
        hi = int(col_max[j])
        dtype = next(d for d in _FLAG_DTYPES if hi <= np.iinfo(d).max)
        out.append(flags[:, j].astype(dtype).tobytes())
    return out


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def decode_frame(data: bytes, *, max_points: int = DEFAULT_MAX_POINTS) -> Frame:
    """Parse v1 frame bytes, raising FrameError (and nothing else) for anything malformed.

    Frames come from disk spools and networks, so every field is checked before it is used: the
    caller can trust the returned arrays' dtypes and shapes. Trailing array elements this decoder
    does not know are ignored, because that is how v1 grows without a version bump.
    max_points bounds the decoded size (see DEFAULT_MAX_POINTS).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError(f"frame must be bytes, got {type(data).__name__}")
    doc = _unpack(data, "frame")

    if not isinstance(doc, list) or not doc:
        raise FrameError("frame is not a non-empty msgpack array")
    version = doc[0]
    if type(version) is not int or version != FORMAT_VERSION:
        raise FrameError(f"unsupported frame version {_short(version)} (this decoder reads {FORMAT_VERSION})")
    if len(doc) < 7:
        raise FrameError(f"frame array has {len(doc)} elements, v1 needs at least 7")
    agent = _str("agent", doc[1])
    boot = _bin("boot", doc[2])
    if len(boot) != BOOT_LEN:
        raise FrameError(f"boot is {len(boot)} bytes, expected {BOOT_LEN}")
    seq = _int("seq", doc[3], 0, _UINT64_MAX)
    created_ns = _int("created_ns", doc[4], _INT64_MIN, _INT64_MAX)
    encoding = _int("encoding", doc[5], 0, _UINT64_MAX)
    if encoding == BODY_ZSTD:
        body = _unpack(_inflate(_bin("body (encoding 1)", doc[6])), "zstd body")
    elif encoding == BODY_PLAIN:
        body = doc[6]
    else:
        raise FrameError(f"unknown body encoding {encoding}")
    if not isinstance(body, list):
        raise FrameError(f"body (encoding {encoding}) must be an array of blocks")

    budget = [max_points]
    blocks = [_decode_block(i, b, budget) for i, b in enumerate(body)]
    return Frame(agent=agent, boot=boot, seq=seq, created_ns=created_ns, blocks=blocks)


def _inflate(data: bytes) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise FrameError(_one_line(f"body is not a zstd frame: {exc}")) from None
    if declared > MAX_INFLATED_BODY:
        raise FrameError(f"zstd body declares {declared} bytes, over the {MAX_INFLATED_BODY} limit")
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_INFLATED_BODY)
    except zstandard.ZstdError as exc:
        raise FrameError(_one_line(f"corrupt zstd body: {exc}")) from None


def _unpack(data: bytes, what: str) -> object:
    size = len(data)
    try:
        # Nothing in a frame can be longer than the frame, so these bounds cost nothing for valid
        # input and stop a forged length prefix from reserving gigabytes before the data runs out.
        doc = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=size, max_bin_len=size, max_array_len=size,
            max_map_len=size // 2, max_ext_len=size,
        )
    except msgpack.ExtraData:
        raise FrameError(f"trailing bytes after the {what}'s msgpack object") from None
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, UnicodeDecodeError...
        raise FrameError(_one_line(f"{what} is not a msgpack document: {type(exc).__name__}: {exc}")) from None
    return doc


def _one_line(msg: str) -> str:
    return " ".join(msg.split())[:300]


def _short(value: object) -> str:
    return _one_line(repr(value))[:40]


_MSGPACK_NAMES = {
    bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", list: "array", dict: "map",
    type(None): "nil",
}


def _kind(value: object) -> str:
    """Name the msgpack type, not the Python one: the message is read by people decoding in Go/Java."""
    return _MSGPACK_NAMES.get(type(value), "ext")


def _str(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise FrameError(f"{what} must be a msgpack str, got {_kind(value)}")
    return value


def _bin(what: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise FrameError(f"{what} must be a msgpack bin, got {_kind(value)}")
    return value


def _int(what: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is an int subclass in Python but a distinct msgpack type
        raise FrameError(f"{what} must be a msgpack int, got {_kind(value)}")
    if not lo <= value <= hi:
        raise FrameError(f"{what}={value} out of range [{lo}, {hi}]")
    return value


def _array(what: str, value: object, min_len: int) -> list:
    if not isinstance(value, list):
        raise FrameError(f"{what} must be a msgpack array, got {_kind(value)}")
    if len(value) < min_len:
        raise FrameError(f"{what} has {len(value)} elements, needs at least {min_len}")
    return value


def _decode_block(index: int, doc: object, budget: list[int]) -> Block:
    where = f"block {index}"
    doc = _array(where, doc, 3)
    device = _str(f"{where} device", doc[0])
    ts = _decode_ts(where, doc[1])
    n = ts.shape[0]
    tag_docs = _array(f"{where} tags", doc[2], 0)
    k = len(tag_docs)
    budget[0] -= n * k
    if budget[0] < 0:
        raise FrameError(f"{where}: frame holds more points than max_points allows")

    values = np.empty((n, k), dtype=np.float64)
    quality = np.empty((n, k), dtype=np.uint8)
    flags = np.empty((n, k), dtype=np.uint32)
    scores: dict[str, np.ndarray] = {}
    status: np.ndarray | None = None
    text: dict[int, np.ndarray] = {}
    names: list[str] = []
    types: list[str] = []
    for j, tag_doc in enumerate(tag_docs):
        tw = f"{where} tag {j}"
        tag = _array(tw, tag_doc, 6)
        names.append(_str(f"{tw} name", tag[0]))
        # Any str is accepted as declared type so that adding a type later does not break v1 readers.
        types.append(_str(f"{tw} type", tag[1]))
        values[:, j] = _decode_values(tw, n, tag[2], tag[3])
        quality[:, j] = _decode_uniform_or_bin(f"{tw} quality", n, tag[4], np.dtype("<u1"))
        flags[:, j] = _decode_flags(tw, names[j], n, tag[5])
        # Element 6 is the scores list when it is an array; anything else is an unknown extension.
        if len(tag) > 6 and isinstance(tag[6], list):
            for kind, column in _decode_scores(tw, n, tag[6]):
                if kind not in scores:
                    scores[kind] = np.full((n, k), np.nan, dtype=np.float32)
                scores[kind][:, j] = column
        if len(tag) > _TAG_STATUS:
            col = _decode_status(tw, n, tag[_TAG_STATUS])
            if col is not None and np.any(col):
                if status is None:
                    status = np.zeros((n, k), dtype=np.uint32)
                status[:, j] = col
        if len(tag) > _TAG_TEXT and isinstance(tag[_TAG_TEXT], list):
            text[j] = _decode_text(tw, n, tag[_TAG_TEXT])
    return Block(
        device=device, tags=tuple(names), types=tuple(types),
        ts=ts, values=values, quality=quality, flags=flags, scores=scores, status=status, text=text,
    )


def _decode_status(where: str, n: int, doc: object) -> np.ndarray | int | None:
    """Element 7: a uint for a uniform column, else exactly 4n bytes of u4 LE; any other msgpack type
    is an extension this decoder does not know (ignored, like a non-array element 6)."""
    if type(doc) is int:
        if not 0 <= doc <= _UINT32_MAX:
            raise FrameError(f"{where} status={doc} out of range [0, {_UINT32_MAX}]")
        return doc
    if isinstance(doc, bytes):
        if len(doc) != 4 * n:
            raise FrameError(f"{where} status: {len(doc)} bytes, n={n} needs {4 * n} (uint32 LE)")
        return np.frombuffer(doc, dtype="<u4")
    return None


def _decode_text(where: str, n: int, doc: list) -> np.ndarray:
    if len(doc) != n:
        raise FrameError(f"{where} text: {len(doc)} elements, n={n}")
    for i, x in enumerate(doc):
        if x is not None and not isinstance(x, str):
            raise FrameError(f"{where} text row {i} must be a msgpack str or nil, got {_kind(x)}")
    col = np.empty(n, dtype=object)
    col[:] = doc
    return col


def _decode_scores(where: str, n: int, doc: list) -> list[tuple[str, np.ndarray]]:
    out = []
    for m, entry in enumerate(doc):
        ew = f"{where} score {m}"
        entry = _array(ew, entry, 3)
        kind = _str(f"{ew} kind", entry[0])
        code = _str(f"{ew} enc", entry[1])
        if code == "k":
            if type(entry[2]) is not float:
                raise FrameError(f"{ew}: 'k' scores must be a msgpack float, got {_kind(entry[2])}")
            out.append((kind, np.full(n, entry[2], dtype=np.float32)))
            continue
        dtype = _SCORE_CODES.get(code)
        if dtype is None:
            raise FrameError(f"{ew}: unknown score encoding {_short(code)}")
        raw = _bin(f"{ew} scores", entry[2])
        if len(raw) != n * dtype.itemsize:
            raise FrameError(f"{ew}: scores are {len(raw)} bytes, n={n} with {code} needs {n * dtype.itemsize}")
        out.append((kind, np.frombuffer(raw, dtype=dtype).astype(np.float32)))
    return out


def _decode_ts(where: str, doc: object) -> np.ndarray:
    tw = f"{where} ts"
    doc = _array(tw, doc, 4)
    n = _int(f"{tw} n", doc[0], 0, _UINT64_MAX)
    t0 = _int(f"{tw} t0", doc[1], _INT64_MIN, _INT64_MAX)
    code = _str(f"{tw} enc", doc[2])
    if code not in TS_CODES:
        raise FrameError(f"{tw}: unknown delta encoding {_short(code)}")
    raw = _bin(f"{tw} deltas", doc[3])
    width = TS_CODES[code].itemsize
    expected = max(n - 1, 0) * width
    if len(raw) != expected:
        raise FrameError(f"{tw}: deltas are {len(raw)} bytes, n={n} with {code} needs {expected}")
    out = np.empty(n, dtype=np.int64)
    if n:
        out[0] = t0
        out[1:] = np.frombuffer(raw, dtype=TS_CODES[code])
        np.cumsum(out, out=out)  # wraps modulo 2**64, mirroring the encoder
    return out


def _decode_values(where: str, n: int, code: object, payload: object) -> np.ndarray:
    code = _str(f"{where} enc", code)
    if code == "k":
        if type(payload) is not float:
            raise FrameError(f"{where}: 'k' values must be a msgpack float, got {_kind(payload)}")
        return np.full(n, payload, dtype=np.float64)
    if code == "b":
        raw = _bin(f"{where} values", payload)
        if len(raw) != (n + 7) // 8:
            raise FrameError(f"{where}: 'b' values are {len(raw)} bytes, n={n} needs {(n + 7) // 8}")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="little")
        return bits.astype(np.float64)
    dtype = _BIN_CODES.get(code)
    if dtype is None:
        raise FrameError(f"{where}: unknown value encoding {_short(code)}")
    raw = _bin(f"{where} values", payload)
    if len(raw) != n * dtype.itemsize:
        need = n * dtype.itemsize
        raise FrameError(f"{where}: values are {len(raw)} bytes, n={n} with {code} needs {need}")
    return np.frombuffer(raw, dtype=dtype).astype(np.float64)


def _decode_uniform_or_bin(where: str, n: int, doc: object, dtype: np.dtype) -> np.ndarray | int:
    if type(doc) is int:
        hi = (1 << (8 * dtype.itemsize)) - 1
        if not 0 <= doc <= hi:
            raise FrameError(f"{where}={doc} out of range [0, {hi}]")
        return doc
    if isinstance(doc, bytes):
        if len(doc) != n * dtype.itemsize:
            raise FrameError(f"{where}: {len(doc)} bytes, n={n} needs {n * dtype.itemsize}")
        return np.frombuffer(doc, dtype=dtype)
    raise FrameError(f"{where} must be a msgpack uint or bin, got {_kind(doc)}")



def _decode_flags(where: str, name: str, n: int, doc: object) -> np.ndarray | int:
    """A uint for a uniform column, else a bin whose length gives the width: n, 2n or 4n bytes hold
    uint8, uint16 or uint32 flags. For n >= 1 the three lengths differ, so the width is unambiguous;
    for n == 0 an empty bin is all three and decodes to an empty column either way."""
    what = f"{where} {_short(name)} flags"
    if type(doc) is int:
        hi = _UINT32_MAX
        if not 0 <= doc <= hi:
            raise FrameError(f"{what}={doc} out of range [0, {hi}]")
        return doc
    if isinstance(doc, bytes):
        for dtype in _FLAG_DTYPES:
            if len(doc) == n * dtype.itemsize:
                return np.frombuffer(doc, dtype=dtype)
        needs = f"{n}, {2 * n} or {4 * n} (uint8/16/32)" if n else "0"
        raise FrameError(f"{what}: {len(doc)} bytes, n={n} needs {needs}")
    raise FrameError(f"{what} must be a msgpack uint or bin, got {_kind(doc)}")
