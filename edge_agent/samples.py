"""The columnar sample batch that travels from a driver through every stage.

A poll of a device yields one row across all its tags, so a batch is a (rows x tags) matrix per
column. Keeping samples as numpy columns (never one Python object per sample) is what lets the
filter kernels vectorise across tags and keeps CPU per point low on a Raspberry Pi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Quality: one byte per sample. Good is 0 so that a frame where everything is good encodes the
# whole quality column as a single integer. The top two bits give the family, the low six a reason.
QUALITY_GOOD = 0x00
QUALITY_UNCERTAIN = 0x40
QUALITY_BAD = 0x80
QUALITY_BAD_COMM = 0x81  # no answer: timeout, connection lost
QUALITY_BAD_DEVICE = 0x82  # the device answered with an exception
QUALITY_BAD_CONFIG = 0x83  # the tag's address or type is rejected by the device
QUALITY_BAD_DECODE = 0x84  # the answer could not be decoded (short reply, bad byte count)
QUALITY_FAMILY_MASK = 0xC0


def quality_family(code: int) -> str:
    """Name of the family ('good', 'uncertain', 'bad') a quality byte belongs to."""
    fam = code & QUALITY_FAMILY_MASK
    if fam == QUALITY_GOOD:
        return "good"
    if fam == QUALITY_UNCERTAIN:
        return "uncertain"
    return "bad"


@dataclass(slots=True)
class Batch:
    """Samples of one device: n rows (polls) by k tags (in the device's configured tag order).

    ts[i, j] is the sample's time in unix ns: when the answer arrived (Modbus), or the source
    timestamp (OPC UA). Tags read by different requests of one poll may carry different timestamps;
    the frame encoder groups tags whose timestamp columns are identical so that they share one
    encoded time column.

    `columns` says which of the device's tags (indices in config order) the k columns are; None
    means all of them, in order. A poll-based driver fills every tag each row; a subscription
    delivers only the tags that changed, so it sends batches of a subset.
    """

    device: str
    ts: np.ndarray  # int64 (n, k)
    values: np.ndarray  # float64 (n, k)
    quality: np.ndarray  # uint8 (n, k)
    flags: np.ndarray  # uint32 (n, k)
    columns: np.ndarray | None = None  # intp (k,): device tag indices; None = all tags in order
    # Scores of the scoring filters, per filter kind: float32 (n, k), NaN where the kind did not score.
    scores: dict[str, np.ndarray] | None = None
    # Text of string tags, by column position (0..k-1): object (n,) of str, or None for a missing
    # sample. Only string tags have an entry (their `values` column stays NaN, so filters and
    # aggregates never see text); numeric tags never pay for a Python object.
    text: dict[int, np.ndarray] | None = None
    # The protocol's own status code per sample, uint32 (n, k): the raw OPC UA StatusCode, the Modbus
    # exception code. None means all 0 (good), which is what nearly every batch is.
    status: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def points(self) -> int:
        return int(self.values.size)

    @classmethod
    def empty(cls, device: str, rows: int, tags: int, columns: np.ndarray | None = None) -> Batch:
        """A batch of `rows` rows, all samples bad-comm with NaN values until a driver fills them."""
        return cls(
            device=device,
            ts=np.zeros((rows, tags), dtype=np.int64),
            values=np.full((rows, tags), np.nan, dtype=np.float64),
            quality=np.full((rows, tags), QUALITY_BAD_COMM, dtype=np.uint8),
            flags=np.zeros((rows, tags), dtype=np.uint32),
            columns=columns,
        )


def text_column(values: list[str | None]) -> np.ndarray:
    """An object column for Batch.text / Block.text (np.array would make a fixed-width unicode array)."""
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def take_text(
    text: dict[int, np.ndarray] | None, rows: np.ndarray | slice | None = None,
    pos: np.ndarray | slice | None = None, k: int | None = None,
) -> dict[int, np.ndarray] | None:
    """Rows and/or columns of a text side channel, keys renumbered to the new column positions.

    `pos` is an array of column positions or a slice (then `k`, the column count, is needed)."""
    if not text:
        return None
    if pos is None:
        picked = {j: j for j in text}
    else:
        if isinstance(pos, slice):
            assert k is not None, "a slice of columns needs k"
            pos = np.arange(k)[pos]
        picked = {int(p): i for i, p in enumerate(np.asarray(pos).tolist()) if int(p) in text}
    r = slice(None) if rows is None else rows
    out = {new: text[old][r] for old, new in picked.items()}
    return out or None


def concat_text(parts: list[tuple[dict[int, np.ndarray] | None, int]]) -> dict[int, np.ndarray] | None:
    """Concatenate the text channels of row-stacked parts ((text, rows) each); a part without a
    column's text contributes missing samples (None) for it."""
    keys = sorted({j for text, _ in parts for j in (text or {})})
    if not keys:
        return None
    out: dict[int, np.ndarray] = {}
    for j in keys:
        cols = []
        for text, rows in parts:
            got = (text or {}).get(j)
            cols.append(got if got is not None else np.full(rows, None, dtype=object))
        out[j] = np.concatenate(cols)
    return out


def concat_status(parts: list[tuple[np.ndarray | None, tuple[int, int]]]) -> np.ndarray | None:
    """Concatenate status columns of row-stacked parts ((status, shape) each); None stays None."""
    if all(s is None for s, _ in parts):
        return None
    return np.concatenate([s if s is not None else np.zeros(shape, dtype=np.uint32) for s, shape in parts])
