"""A compiled fast path for encode_frame that gives byte-identical output (docs/frame-format.md).

Why: a frame of 1-s polls holds 1-10 rows per tag, so the reference encoder's per-tag Python work
(a dozen numpy calls and small objects per tag, microseconds each) costs far more than the samples
themselves: with 10,000 tags a second it was half the agent's CPU. With OPC UA, whose source
timestamps differ per tag, a frame is thousands of one-tag blocks, so the per-block cost matters
as much: one numba call encodes all the blocks of a frame (encode_blocks), choosing every tag's
encoding (values, quality, flags, score columns, status codes) and writing the msgpack bytes
directly, and the per-tag name/type headers are packed once per tag layout and reused.

The reference encoder in codec.py stays the definition of the format: this module copies its choices
exactly (tests/test_frame_fastpack.py checks the bytes on random frames) and declines (returns None,
so the caller uses the reference for that block) for anything it does not know: blocks with text,
arrays whose dtypes or shapes are not the canonical ones, fields added to Block after this was
written, and any frame the reference would reject, which then raises the reference's own error.
"""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import zstandard
from numba import njit

from edge_agent.frame import codec
from edge_agent.frame.model import FORMAT_VERSION, VALUE_TYPES, Block, Frame

__all__ = ["encode_block", "encode_frame", "warm_up"]

# Block fields this module encodes. Any other field (one added later, or a subclass's) must be empty
# (None, or an empty container or array), else the block carries something only the reference knows.
_KNOWN_FIELDS = frozenset({"device", "tags", "types", "ts", "values", "quality", "flags", "scores", "status"})
_VALUE_TYPES = frozenset(VALUE_TYPES)
_EXTRA: dict[type, tuple[str, ...]] = {}  # block class -> its fields beyond _KNOWN_FIELDS

# Value codes, in the reference's tie-break order after "k" and "b"; index = code id in the kernel.
_CODES = ("u1", "i1", "u2", "i2", "u4", "i4", "f4", "u8", "i8", "f8", "k", "b")
_CODE_BYTES = np.frombuffer(b"".join(msgpack.packb(c) for c in _CODES), dtype=np.uint8).copy()
_CODE_OFF = np.cumsum([0] + [len(msgpack.packb(c)) for c in _CODES]).astype(np.intp)

_ONE_BITS = np.uint64(0x3FF0000000000000)
_NEG_ZERO_BITS = np.uint64(0x8000000000000000)


@njit(cache=True, nogil=True)
def _put_be(out, pos, x, nbytes):
    for i in range(nbytes):
        out[pos + i] = (x >> np.uint64(8 * (nbytes - 1 - i))) & np.uint64(0xFF)
    return pos + nbytes


@njit(cache=True, nogil=True)
def _bin_header(out, pos, length):
    if length < 256:
        out[pos] = 0xC4
        out[pos + 1] = length
        return pos + 2
    if length < 65536:
        out[pos] = 0xC5
        return _put_be(out, pos + 1, np.uint64(length), 2)
    out[pos] = 0xC6
    return _put_be(out, pos + 1, np.uint64(length), 4)


@njit(cache=True, nogil=True)
def _bin_size(length):
    if length < 256:
        return 2 + length
    if length < 65536:
        return 3 + length
    return 5 + length


@njit(cache=True, nogil=True)
def _uint(out, pos, x):
    """msgpack's shortest form of a non-negative int (what msgpack.packb writes)."""
    if x < 128:
        out[pos] = x
        return pos + 1
    if x < 256:
        out[pos] = 0xCC
        out[pos + 1] = x
        return pos + 2
    if x < 65536:
        out[pos] = 0xCD
        return _put_be(out, pos + 1, np.uint64(x), 2)
    if x < 4294967296:
        out[pos] = 0xCE
        return _put_be(out, pos + 1, np.uint64(x), 4)
    out[pos] = 0xCF
    return _put_be(out, pos + 1, np.uint64(x), 8)


@njit(cache=True, nogil=True)
def _int(out, pos, x):
    """msgpack's shortest form of an int64: unsigned formats for x >= 0, as msgpack.packb does."""
    if x >= 0:
        return _uint(out, pos, np.uint64(x))
    u = np.uint64(x)  # two's complement bits
    if x >= -32:
        out[pos] = u & np.uint64(0xFF)
        return pos + 1
    if x >= -128:
        out[pos] = 0xD0
        return _put_be(out, pos + 1, u, 1)
    if x >= -32768:
        out[pos] = 0xD1
        return _put_be(out, pos + 1, u, 2)
    if x >= -2147483648:
        out[pos] = 0xD2
        return _put_be(out, pos + 1, u, 4)
    out[pos] = 0xD3
    return _put_be(out, pos + 1, u, 8)


@njit(cache=True, nogil=True)
def _array_len(out, pos, k):
    if k < 16:
        out[pos] = 0x90 | k
        return pos + 1
    if k < 65536:
        out[pos] = 0xDC
        return _put_be(out, pos + 1, np.uint64(k), 2)
    out[pos] = 0xDD
    return _put_be(out, pos + 1, np.uint64(k), 4)


@njit(cache=True, nogil=True)
def _pack_ts(ts, out, pos):
    """codec._encode_ts: [n, t0, enc, deltas], deltas with 64-bit wrap-around, narrowest width."""
    n = ts.shape[0]
    out[pos] = 0x94
    pos += 1
    if n == 0:  # [0, 0, "i1", b""]
        out[pos] = 0
        out[pos + 1] = 0
        out[pos + 2] = 0xA2
        out[pos + 3] = 0x69  # "i"
        out[pos + 4] = 0x31  # "1"
        out[pos + 5] = 0xC4
        out[pos + 6] = 0
        return pos + 7
    pos = _uint(out, pos, np.uint64(n))
    pos = _int(out, pos, ts[0])
    lo = np.int64(0)
    hi = np.int64(0)
    for i in range(1, n):
        d = np.int64(np.uint64(ts[i]) - np.uint64(ts[i - 1]))
        if i == 1 or d < lo:
            lo = d
        if i == 1 or d > hi:
            hi = d
    if lo >= -128 and hi <= 127:
        width = 1
    elif lo >= -32768 and hi <= 32767:
        width = 2
    elif lo >= -2147483648 and hi <= 2147483647:
        width = 4
    else:
        width = 8
    out[pos] = 0xA2
    out[pos + 1] = 0x69  # "i"
    out[pos + 2] = 0x31 if width == 1 else 0x32 if width == 2 else 0x34 if width == 4 else 0x38
    pos = _bin_header(out, pos + 3, width * (n - 1))
    for i in range(1, n):
        x = np.uint64(ts[i]) - np.uint64(ts[i - 1])
        for q in range(width):
            out[pos + q] = (x >> np.uint64(8 * q)) & np.uint64(0xFF)
        pos += width
    return pos


@njit(cache=True, nogil=True)
def _pack_block(device, ts, values, quality, flags, heads, head_off, codes, code_off,
                s64, s32, s32_64, h16, h64, kinds, kind_off, kind_ids, status, has_status, out):
    """A whole block: [device, ts, tags]; device is its packed msgpack str. Returns the length."""
    out[0] = 0x93
    pos = 1
    for p in range(device.shape[0]):
        out[pos] = device[p]
        pos += 1
    pos = _pack_ts(ts, out, pos)
    pos = _array_len(out, pos, values.shape[1])
    return _pack_tags(values, quality, flags, heads, head_off, codes, code_off,
                      s64, s32, s32_64, h16, h64, kinds, kind_off, kind_ids, status, has_status, out, pos)


@njit(cache=True, nogil=True)
def _pack_blocks(meta, devices, ts, values, quality, flags, heads, head_off, codes, code_off,
                 s64, s32, s32_64, h16, h64, kinds, kind_off, kind_ids, status, out, ends):
    """Many blocks in one call, each from its stretch of the flat inputs; ends[b] = end of block b.

    meta[b] = (n, k, device start, device end, heads start, head_off start, ts start, cells start,
    status start or -1, kinds, kind_ids start, scores start).
    """
    pos = 0
    for b in range(meta.shape[0]):
        n, k = meta[b, 0], meta[b, 1]
        cells = meta[b, 7]
        shape = (n, k)
        m = meta[b, 9]
        s0 = meta[b, 11]
        size = m * n * k
        st = meta[b, 8]
        ho = meta[b, 5]
        end = _pack_block(
            devices[meta[b, 2]:meta[b, 3]], ts[meta[b, 6]:meta[b, 6] + n],
            values[cells:cells + n * k].reshape(shape), quality[cells:cells + n * k].reshape(shape),
            flags[cells:cells + n * k].reshape(shape), heads[meta[b, 4]:], head_off[ho:ho + k + 1], codes, code_off,
            s64[s0:s0 + size].reshape((m, n, k)), s32[s0:s0 + size].reshape((m, n, k)),
            s32_64[s0:s0 + size].reshape((m, n, k)), h16[s0:s0 + size].reshape((m, n, k)),
            h64[s0:s0 + size].reshape((m, n, k)), kinds, kind_off, kind_ids[meta[b, 10]:meta[b, 10] + m],
            status[max(st, 0):max(st, 0) + n * k].reshape(shape) if st >= 0 else status[0:0].reshape((0, 0)),
            st >= 0, out[pos:])
        pos += end
        ends[b] = pos
    return pos


_F2_MAX = 65504.0  # float16's largest finite value


@njit(cache=True, nogil=True)
def _scored(s64, m, j):
    """Whether kind m scored tag j in this block (codec._encode_scores leaves all-NaN columns out)."""
    for i in range(s64.shape[1]):  # noqa: SIM110 (numba compiles loops, not generator expressions)
        if not np.isnan(s64[m, i, j]):
            return True
    return False


@njit(cache=True, nogil=True)
def _score_entry(s64, s32, s32_64, h16, h64, kinds, kind_off, kind_ids, m, j, out, pos, write):
    """codec._encode_scores for kind m, tag j: [kind, enc, payload], or nothing when all NaN.

    Returns (pos, written). The roundings come precomputed by numpy (the reference's own casts), so
    the bits are the reference's bits, NaN payloads included.
    """
    n = s64.shape[1]
    if n == 0:
        return pos, False
    all_nan = True
    amax = 0.0
    for i in range(n):
        v = s64[m, i, j]
        if not np.isnan(v):
            all_nan = False
            if np.isfinite(v):
                a = abs(v)
                if a > amax:
                    amax = a
    if all_nan:
        return pos, False
    if not write:
        return pos, True
    f2 = amax <= _F2_MAX
    out[pos] = 0x93
    pos += 1
    g = kind_ids[m]  # the kind's packed name in `kinds`
    for p in range(kind_off[g], kind_off[g + 1]):
        out[pos] = kinds[p]
        pos += 1
    constant = True
    if f2:
        b0 = h16[m, 0, j]
        for i in range(1, n):
            if h16[m, i, j] != b0:
                constant = False
                break
        constant = constant and 2 + 2 * n > 9
    else:
        c0 = s32[m, 0, j]
        for i in range(1, n):
            if s32[m, i, j] != c0:
                constant = False
                break
        constant = constant and 2 + 4 * n > 9
    out[pos] = 0xA1 if constant else 0xA2
    if constant:
        out[pos + 1] = 0x6B  # "k"
        pos += 2
        out[pos] = 0xCB  # float 64 of the rounded score; h64 and s32_64 hold its bits
        return _put_be(out, pos + 1, h64[m, 0, j] if f2 else s32_64[m, 0, j], 8), True
    out[pos + 1] = 0x66  # "f"
    out[pos + 2] = 0x32 if f2 else 0x34
    pos += 3
    width = 2 if f2 else 4
    pos = _bin_header(out, pos, width * n)
    for i in range(n):
        x = np.uint64(h16[m, i, j]) if f2 else np.uint64(s32[m, i, j])
        for q in range(width):
            out[pos + q] = (x >> np.uint64(8 * q)) & np.uint64(0xFF)
        pos += width
    return pos, True


@njit(cache=True, nogil=True)
def _pack_tags(values, quality, flags, heads, head_off, codes, code_off,
               s64, s32, s32_64, h16, h64, kinds, kind_off, kind_ids, status, has_status, out, pos):
    """Write the k tag arrays of a block at out[pos:] (after the array header); returns the end.

    Mirrors codec._encode_values / _encode_uniform_or_bin / _encode_flags / _encode_scores /
    _encode_status choice for choice. A tag array has 6 elements, 7 with scores (element 6), 8 with
    a status column (element 7, after an empty scores list when the tag has no scores).
    """
    n, k = values.shape
    n_kinds = s64.shape[0]
    bits = values.view(np.uint64)
    v32 = values.astype(np.float32)
    bits32 = v32.view(np.uint32)
    round_trip = v32.astype(np.float64).view(np.uint64)  # f4 is exact where this equals bits
    for j in range(k):
        scored = False
        for m in range(n_kinds):
            if _scored(s64, m, j):
                scored = True
                break
        st_uniform = True
        st_nonzero = False
        if has_status and n > 0:
            st0 = status[0, j]
            for i in range(n):
                if status[i, j] != st0:
                    st_uniform = False
                if status[i, j] != 0:
                    st_nonzero = True
        out[pos] = 0x98 if st_nonzero else 0x97 if scored else 0x96
        pos += 1
        for p in range(head_off[j], head_off[j + 1]):
            out[pos] = heads[p]
            pos += 1
        if n == 0:
            code = 9  # f8, empty bin; quality and flags 0
            for p in range(code_off[code], code_off[code + 1]):
                out[pos] = codes[p]
                pos += 1
            out[pos] = 0xC4
            out[pos + 1] = 0
            out[pos + 2] = 0
            out[pos + 3] = 0
            pos += 4
            continue
        b0 = bits[0, j]
        constant = True
        boolean = True
        integral = True
        f4_exact = True
        lo = np.inf
        hi = -np.inf
        for i in range(n):
            b = bits[i, j]
            v = values[i, j]
            if b != b0:
                constant = False
            if b != 0 and b != _ONE_BITS:
                boolean = False
            if integral:
                if np.isfinite(v) and np.trunc(v) == v and b != _NEG_ZERO_BITS:
                    if v < lo:
                        lo = v
                    if v > hi:
                        hi = v
                else:
                    integral = False
            if round_trip[i, j] != b:
                f4_exact = False
        best = 9
        best_size = 1 << 62
        if constant:
            best, best_size = 10, 9
        if boolean and _bin_size((n + 7) // 8) < best_size:
            best, best_size = 11, _bin_size((n + 7) // 8)
        for c in range(10):
            width = 1 if c < 2 else 2 if c < 4 else 4 if c < 7 else 8
            size = _bin_size(width * n)
            if size >= best_size:
                continue
            if c == 9:
                ok = True
            elif c == 6:
                ok = f4_exact
            elif not integral:
                ok = False
            elif c == 0:
                ok = lo >= 0.0 and hi <= 255.0
            elif c == 1:
                ok = lo >= -128.0 and hi <= 127.0
            elif c == 2:
                ok = lo >= 0.0 and hi <= 65535.0
            elif c == 3:
                ok = lo >= -32768.0 and hi <= 32767.0
            elif c == 4:
                ok = lo >= 0.0 and hi <= 4294967295.0
            elif c == 5:
                ok = lo >= -2147483648.0 and hi <= 2147483647.0
            elif c == 7:
                ok = lo >= 0.0 and hi < 18446744073709551616.0  # <= 2**64-1 for integral floats
            else:
                ok = lo >= -9223372036854775808.0 and hi < 9223372036854775808.0
            if ok:
                best, best_size = c, size
                break
        for p in range(code_off[best], code_off[best + 1]):
            out[pos] = codes[p]
            pos += 1
        if best == 10:
            out[pos] = 0xCB
            pos = _put_be(out, pos + 1, b0, 8)
        elif best == 11:
            nb = (n + 7) // 8
            pos = _bin_header(out, pos, nb)
            for q in range(nb):
                out[pos + q] = 0
            for i in range(n):
                if bits[i, j] == _ONE_BITS:
                    out[pos + i // 8] |= np.uint8(1 << (i % 8))
            pos += nb
        else:
            width = 1 if best < 2 else 2 if best < 4 else 4 if best < 7 else 8
            pos = _bin_header(out, pos, width * n)
            for i in range(n):
                if best == 6:
                    x = np.uint64(bits32[i, j])
                elif best == 9:
                    x = bits[i, j]
                elif best == 7:
                    x = np.uint64(values[i, j])
                else:
                    x = np.uint64(np.int64(values[i, j]))  # two's complement; low bytes are the value
                for q in range(width):
                    out[pos + q] = (x >> np.uint64(8 * q)) & np.uint64(0xFF)
                pos += width
        # quality: one uint when uniform, else n bytes
        q0 = quality[0, j]
        uniform = True
        for i in range(1, n):
            if quality[i, j] != q0:
                uniform = False
                break
        if uniform:
            pos = _uint(out, pos, np.uint64(q0))
        else:
            pos = _bin_header(out, pos, n)
            for i in range(n):
                out[pos + i] = quality[i, j]
            pos += n
        # flags: one uint when uniform, else the narrowest of uint8/16/32 holding the maximum
        f0 = flags[0, j]
        uniform = True
        fmax = f0
        for i in range(1, n):
            f = flags[i, j]
            if f != f0:
                uniform = False
            if f > fmax:
                fmax = f
        if uniform:
            pos = _uint(out, pos, np.uint64(f0))
        else:
            width = 1 if fmax < 256 else 2 if fmax < 65536 else 4
            pos = _bin_header(out, pos, width * n)
            for i in range(n):
                x = np.uint64(flags[i, j])
                for q in range(width):
                    out[pos + q] = (x >> np.uint64(8 * q)) & np.uint64(0xFF)
                pos += width
        if scored or st_nonzero:
            entries = 0
            for m in range(n_kinds):
                if _scored(s64, m, j):
                    entries += 1
            pos = _array_len(out, pos, entries)
            for m in range(n_kinds):
                pos, _ = _score_entry(s64, s32, s32_64, h16, h64, kinds, kind_off, kind_ids, m, j, out, pos, True)
        if st_nonzero:
            if st_uniform:
                pos = _uint(out, pos, np.uint64(status[0, j]))
            else:
                pos = _bin_header(out, pos, 4 * n)
                for i in range(n):
                    x = np.uint64(status[i, j])
                    for q in range(4):
                        out[pos + q] = (x >> np.uint64(8 * q)) & np.uint64(0xFF)
                    pos += 4
    return pos


class _Heads:
    """Packed [name, type] prefixes per tag layout: a device's layout repeats every frame.

    Looked up by identity first (the batcher hands the device's own tuples on), then by value.
    A layout the fast path cannot encode (a name that is not str or not UTF-8, an unknown type) is
    remembered as None, so checking names costs once per layout, not once per frame.
    """

    # More distinct layouts than any config has: start over rather than grow. Tags whose source
    # timestamps differ (OPC UA) are one block each, so a device has a layout per tag: 4096 made
    # a 5,000-item subscription repack every header of every frame.
    MAX_LAYOUTS = 1 << 17

    def __init__(self) -> None:
        self._by_value: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[np.ndarray, np.ndarray] | None] = {}
        self._by_id: dict[tuple[int, int], tuple[tuple, tuple, tuple[np.ndarray, np.ndarray] | None]] = {}
        self._lock = threading.Lock()

    def get(self, tags: tuple[str, ...], types: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        hit = self._by_id.get((id(tags), id(types)))
        if hit is not None and hit[0] is tags and hit[1] is types:
            return hit[2]
        key = (tags, types)
        if key in self._by_value:  # a new tuple of a known layout (a slice of the device's tags)
            return self._by_value[key]
        got = _pack_heads(tags, types)
        with self._lock:  # build_frames may run on more than one thread
            if len(self._by_value) >= self.MAX_LAYOUTS:
                self._by_value.clear()
            if len(self._by_id) >= self.MAX_LAYOUTS:
                self._by_id.clear()
            self._by_value[key] = got
            self._by_id[(id(tags), id(types))] = (tags, types, got)  # holds the tuples: ids stay unique
        return got


def _pack_heads(tags: tuple[str, ...], types: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    if len(tags) != len(types):
        return None
    if not all(type(t) is str for t in tags) or not all(type(t) is str and t in _VALUE_TYPES for t in types):
        return None
    try:  # name and type as msgpack str (the kernel writes the tag array's header before them)
        parts = [msgpack.packb(name) + msgpack.packb(typ) for name, typ in zip(tags, types, strict=True)]
    except UnicodeEncodeError:  # lone surrogates: the reference raises its ValueError for them
        return None
    heads = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    off = np.zeros(len(parts) + 1, dtype=np.intp)
    np.cumsum([len(p) for p in parts], out=off[1:])
    return heads, off


_heads = _Heads()
_devices: dict[str, np.ndarray] = {}  # device name -> its packed msgpack str


def _array_header(k: int) -> bytes:
    if k < 16:
        return bytes((0x90 | k,))
    if k < 65536:
        return b"\xdc" + k.to_bytes(2, "big")
    return b"\xdd" + k.to_bytes(4, "big")


def _empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, np.ndarray):
        return value.size == 0
    try:
        return len(value) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


def _extra_fields(cls: type) -> tuple[str, ...]:
    """Slots of the block's class and its bases beyond the fields this module encodes."""
    names = [n for c in cls.__mro__ for n in getattr(c, "__slots__", ())]
    return tuple(n for n in names if n not in _KNOWN_FIELDS and not n.startswith("__"))


_I64, _F64, _U8, _U32 = np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.uint8), np.dtype(np.uint32)
_F32 = np.dtype(np.float32)
_ND = np.ndarray


def _supported(block: Block) -> bool:
    """Runs once per block (thousands per frame with OPC UA), so it is written for speed: identity
    before equality, and the extra-fields walk only for classes other than Block itself."""
    cls = type(block)
    if cls is Block:
        if block.text:
            return False
    else:
        extra = _EXTRA.get(cls)
        if extra is None:
            extra = _EXTRA[cls] = _extra_fields(cls)
        for name in extra:
            if not _empty(getattr(block, name, None)):
                return False
        if getattr(block, "__dict__", None):  # a subclass without slots carrying extra attributes
            return False
    if type(block.device) is not str or type(block.tags) is not tuple or type(block.types) is not tuple:
        return False
    ts, values, quality, flags = block.ts, block.values, block.quality, block.flags
    if not (type(ts) is _ND and type(values) is _ND and type(quality) is _ND and type(flags) is _ND):
        return False
    # Equality of dtypes includes the byte order: a byte-swapped array (written as it is in memory)
    # is declined here.
    d = ts.dtype
    if not (d is _I64 or d == _I64):
        return False
    d = values.dtype
    if not (d is _F64 or d == _F64):
        return False
    d = quality.dtype
    if not (d is _U8 or d == _U8):
        return False
    d = flags.dtype
    if not (d is _U32 or d == _U32):
        return False
    if ts.ndim != 1:
        return False
    shape = (ts.shape[0], len(block.tags))
    if values.shape != shape or quality.shape != shape or flags.shape != shape or len(block.types) != shape[1]:
        return False
    status = block.status
    if status is not None:
        if type(status) is not _ND or status.shape != shape:
            return False
        d = status.dtype
        if not (d is _U32 or d == _U32):
            return False
    scores = block.scores
    if scores:
        if type(scores) is not dict:
            return False
        for kind, col in scores.items():
            if type(kind) is not str or type(col) is not _ND or col.shape != shape:
                return False
            d = col.dtype
            if d not in (_F32, _F64):  # `in` tries identity first
                return False
    return True


_KIND_IDS: dict[str, int] = {}  # kind name -> its index in _KIND_BYTES / _KIND_OFF (grows, never shrinks)
_KIND_BYTES = np.zeros(0, np.uint8)
_KIND_OFF = np.zeros(1, np.intp)
_KIND_LEN: list[int] = []


def _kind_id(kind: str) -> int | None:
    global _KIND_BYTES, _KIND_OFF
    got = _KIND_IDS.get(kind)
    if got is not None:
        return got
    try:
        packed = msgpack.packb(kind)
    except UnicodeEncodeError:  # the reference raises its own error for it
        return None
    if len(_KIND_IDS) >= _Heads.MAX_LAYOUTS:
        return None
    with _heads._lock:
        got = _KIND_IDS.get(kind)
        if got is None:
            _KIND_BYTES = np.concatenate([_KIND_BYTES, np.frombuffer(packed, np.uint8)])
            _KIND_OFF = np.append(_KIND_OFF, len(_KIND_BYTES)).astype(np.intp)
            _KIND_LEN.append(len(packed))
            got = _KIND_IDS[kind] = len(_KIND_IDS)
    return got


def _device_bytes(device: str) -> np.ndarray | None:
    got = _devices.get(device)
    if got is None:
        try:
            got = np.frombuffer(msgpack.packb(device), dtype=np.uint8).copy()
        except UnicodeEncodeError:
            return None  # the reference raises its own error for it
        if len(_devices) >= _Heads.MAX_LAYOUTS:
            _devices.clear()
        _devices[device] = got
    return got


_EMPTY = {dt: np.zeros(0, dt) for dt in (np.int64, np.float64, np.uint8, np.uint32, np.intp)}


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    if len(parts) == 1:  # one big block (a poll-based device): no copy of its columns
        return np.ascontiguousarray(parts[0])
    return np.concatenate(parts) if parts else _EMPTY[dtype]


def encode_block(block: Block) -> bytes | None:
    """The block's msgpack bytes exactly as the reference encodes them, or None when not supported."""
    return encode_blocks([block])[0]


def encode_blocks(blocks: list[Block]) -> list[bytes | None]:
    """Each block's bytes as encode_block gives them, with one kernel call for all of them.

    A batch of OPC UA samples, whose source timestamps differ per tag, is thousands of one-tag
    blocks: a kernel call per block (and a dozen small numpy calls for its scores) cost far more
    than its few samples. Here each block costs a few list appends; its arrays are joined into flat
    buffers with one np.concatenate per column, and the score roundings run once over all of them.
    """
    out: list[bytes | None] = [None] * len(blocks)
    meta: list[tuple[int, ...]] = []
    chosen: list[int] = []
    devices: list[np.ndarray] = []
    heads: list[np.ndarray] = []
    head_offs: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    values: list[np.ndarray] = []
    quality: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    status: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    kind_ids: list[int] = []
    dev_pos = head_pos = off_pos = ts_pos = cell_pos = st_pos = score_pos = 0
    capacity = 0
    for i, block in enumerate(blocks):
        if not _supported(block):
            continue
        layout = _heads.get(block.tags, block.types)
        if layout is None:
            continue
        device = _device_bytes(block.device)
        if device is None:
            continue
        ids = []
        if block.scores:
            kinds = sorted(block.scores)
            ids = [_kind_id(kind) for kind in kinds]
            if None in ids:
                continue
        n, k = block.values.shape
        h, off = layout
        st = -1
        if block.status is not None:
            st = st_pos
            status.append(block.status.ravel())
            st_pos += n * k
        m = len(ids)
        meta.append((n, k, dev_pos, dev_pos + len(device), head_pos, off_pos, ts_pos, cell_pos, st, m,
                     len(kind_ids), score_pos))
        chosen.append(i)
        devices.append(device)
        heads.append(h)
        head_offs.append(off)
        ts.append(block.ts)
        values.append(block.values.ravel())
        quality.append(block.quality.ravel())
        flags.append(block.flags.ravel())
        if m:
            kind_ids += ids
            scores += [block.scores[kind].ravel() for kind in kinds]
            score_pos += m * n * k
        dev_pos += len(device)
        head_pos += len(h)
        off_pos += k + 1
        ts_pos += n
        cell_pos += n * k
        # 1 + device + ts (at most 1 + 9 + 9 + 3 + 5 + 8n) + tags header (5) + per tag at most 27 + 13n,
        # + per tag: scores array header 5 and per kind 1 + kind + 3 + 9 + 4n, status 5 + 4n
        capacity += len(device) + len(h) + 32 + 8 * n + k * (30 + 13 * n)
        if m or st >= 0:
            capacity += k * (10 + 4 * n + m * (20 + 4 * n) + sum(_KIND_LEN[g] for g in ids))
    if not chosen:
        return out
    if scores:
        # The reference's own casts (codec._encode_scores: float64, then float16 or float32), over all
        # columns at once; the kernel only chooses and copies bits. Scores may be float32 or float64.
        s64 = np.concatenate(scores).astype(np.float64, copy=False)
        with np.errstate(over="ignore", invalid="ignore"):  # past f2's range: the kernel picks f4 there
            s32 = s64.astype(np.float32)
            h16 = s64.astype(np.float16)
        s32_64 = s32.astype(np.float64).view(np.uint64)
        h64 = h16.astype(np.float64).view(np.uint64)
        s32, h16 = s32.view(np.uint32), h16.view(np.uint16)
    else:
        s64 = _EMPTY[np.float64]
        s32_64 = h64 = np.zeros(0, np.uint64)
        s32 = _EMPTY[np.uint32]
        h16 = np.zeros(0, np.uint16)
    ends = np.empty(len(chosen), np.intp)
    buf = np.empty(capacity, dtype=np.uint8)
    _pack_blocks(np.array(meta, dtype=np.intp), _cat(devices, np.uint8), _cat(ts, np.int64), _cat(values, np.float64),
                 _cat(quality, np.uint8), _cat(flags, np.uint32), _cat(heads, np.uint8), _cat(head_offs, np.intp),
                 _CODE_BYTES, _CODE_OFF, s64, s32, s32_64, h16, h64, _KIND_BYTES, _KIND_OFF,
                 np.array(kind_ids, dtype=np.intp), _cat(status, np.uint32), buf, ends)
    data = buf[:ends[-1]].tobytes()
    start = 0
    for i, end in zip(chosen, ends.tolist(), strict=True):
        out[i] = data[start:end]
        start = end
    return out


class BlockCache:
    """Encoded bytes of blocks by id(block), for the blocks of one build_frames call.

    Every block is kept alive in a list, so an id cannot be reused by a new block while the cache
    lives; the map holds only ints and bytes, which the cyclic garbage collector does not track (a
    (block, bytes) tuple per tag made the collector scan thousands more objects per frame).
    """

    __slots__ = ("data", "keep")

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.keep: list[Block] = []

    def get(self, block: Block) -> bytes | None:
        return self.data.get(id(block))

    def put(self, block: Block, data: bytes) -> None:
        if id(block) not in self.data:
            self.keep.append(block)
        self.data[id(block)] = data



def encode_frame(frame: Frame, *, zstd_level: int | None = None, cache: BlockCache | None = None) -> bytes:
    """codec.encode_frame's bytes, faster.

    A block the fast path declines is encoded by the reference's block encoder (msgpack concatenates,
    so a frame's body is the bytes of its blocks in a row); a frame the reference would reject gets
    the reference's own error. `cache` keeps each block's bytes across calls: build_frames encodes a
    batch again in halves when it is over max_frame_bytes, and a block is then not packed twice.
    """
    parts = _parts(frame, cache)
    if parts is None:
        return codec.encode_frame(frame, zstd_level=zstd_level)
    body = _array_header(len(parts)) + b"".join(parts)
    head = [FORMAT_VERSION, frame.agent, bytes(frame.boot), int(frame.seq), int(frame.created_ns)]
    packed = b"\x97" + b"".join(msgpack.packb(x) for x in head)
    if zstd_level is None:
        return packed + msgpack.packb(codec.BODY_PLAIN) + body
    compressed = zstandard.ZstdCompressor(level=zstd_level).compress(body)
    return packed + msgpack.packb(codec.BODY_ZSTD) + msgpack.packb(compressed, use_bin_type=True)


def _parts(frame: Frame, cache: BlockCache | None) -> list[bytes] | None:
    if type(frame) is not Frame:  # a Frame grown new fields belongs to the reference
        return None
    if type(frame.agent) is not str or not isinstance(frame.boot, bytes | bytearray | memoryview):
        return None
    if len(bytes(frame.boot)) != codec.BOOT_LEN:
        return None
    for value, lo, hi in ((frame.seq, 0, codec._UINT64_MAX), (frame.created_ns, codec._INT64_MIN, codec._INT64_MAX)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= int(value) <= hi:
            return None
    try:
        frame.agent.encode("utf-8")
    except UnicodeEncodeError:
        return None
    blocks = frame.blocks
    parts: list[bytes | None] = [None] * len(blocks)
    todo: list[int] = []
    for i, block in enumerate(blocks):
        hit = None if cache is None else cache.get(block)
        if hit is not None:
            parts[i] = hit
        else:
            todo.append(i)
    if todo:
        fresh = encode_blocks([blocks[i] for i in todo])
        for i, data in zip(todo, fresh, strict=True):
            if data is None:
                try:  # the reference's bytes for this block (text, unusual dtypes...)
                    data = msgpack.packb(codec._encode_block(i, blocks[i]), use_bin_type=True)
                except (ValueError, UnicodeEncodeError):
                    return None  # let the reference raise its error for the whole frame
            if cache is not None:
                cache.put(blocks[i], data)
            parts[i] = data
    return parts  # type: ignore[return-value]


def warm_up() -> None:
    """Compile (or load from NUMBA_CACHE_DIR) the kernel before the first frame needs it."""
    enc = encode_block(Block("warm", ("a",), ("float32",), np.zeros(1, np.int64), np.zeros((1, 1)),
                             np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint32)))
    assert enc is not None
