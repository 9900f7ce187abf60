"""The frame encoder stage: closed batches become wire frames no larger than the configured size.

Brokers and clouds cap message sizes (AWS IoT Core at 128 KiB), and a message over the cap is
rejected, which would make the frame undeliverable forever. So a batch that encodes too large is
split, by blocks, then by rows, then by tags, and each part becomes its own frame with its own seq.
Parts keep row order, so a consumer reading frames in seq order still sees each tag in time order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent.frame.fastpack import BlockCache, encode_frame  # the reference's bytes, faster
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import take_text

log = logging.getLogger("edge_agent.frame")


def build_frames(
    blocks: list[Block],
    first_seq: int,
    make: Callable[[int, list[Block]], Frame],
    max_bytes: int,
    zstd_level: int | None = None,
) -> list[tuple[bytes, int, int]]:
    """Encode `blocks` as frames of at most `max_bytes`: [(data, points, created_ns)] in seq order."""
    out: list[tuple[bytes, int, int]] = []
    todo: list[list[Block]] = [blocks]
    seq = first_seq
    # Each block is packed once: halving a batch of thousands of one-tag blocks (OPC UA source
    # timestamps differ per tag) re-encoded every block at every level before.
    cache = BlockCache()
    while todo:
        part = todo.pop(0)
        frame = make(seq, part)
        data = encode_frame(frame, zstd_level=zstd_level, cache=cache)
        if len(data) > max_bytes:
            halves = _split(part)
            if halves is not None:
                todo[:0] = halves
                continue
            log.warning("frame %d is %d bytes, over max_frame_bytes %d, and cannot be split further",
                        seq, len(data), max_bytes)
        out.append((data, frame.points, frame.created_ns))
        seq += 1
    return out


def _split(blocks: list[Block]) -> list[list[Block]] | None:
    if len(blocks) > 1:
        mid = len(blocks) // 2
        return [blocks[:mid], blocks[mid:]]
    (b,) = blocks
    n, k = b.values.shape
    if n > 1:
        mid = n // 2
        return [[_rows(b, slice(0, mid))], [_rows(b, slice(mid, n))]]
    if k > 1:
        mid = k // 2
        return [[_cols(b, slice(0, mid))], [_cols(b, slice(mid, k))]]
    return None


def _rows(b: Block, s: slice) -> Block:
    return Block(b.device, b.tags, b.types, b.ts[s], b.values[s], b.quality[s], b.flags[s],
                 {kind: a[s] for kind, a in b.scores.items()},
                 None if b.status is None else b.status[s], take_text(b.text, rows=s) or {})


def _cols(b: Block, s: slice) -> Block:
    return Block(b.device, b.tags[s], b.types[s], b.ts, b.values[:, s], b.quality[:, s], b.flags[:, s],
                 {kind: a[:, s] for kind, a in b.scores.items()},
                 None if b.status is None else b.status[:, s], take_text(b.text, pos=s, k=len(b.tags)) or {})
