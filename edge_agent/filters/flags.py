"""Bits of a sample's `flags` word: which filters fired. Frame consumers rely on these positions
(docs/frame-format.md), so a bit, once given, is never reused for something else."""

LIMITS = 1 << 0
