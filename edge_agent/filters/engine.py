"""Runs the configured filters over each device batch: one kernel call per filter kind per batch.

Per-tag parameters are laid out as arrays at start-up (tags that do not use a filter get neutral
values), so the kernels vectorise across tags and never branch on configuration per sample.
"""

from __future__ import annotations

import numpy as np

from edge_agent.config.models import DeviceBase, FilterSpec, LimitsFilter
from edge_agent.filters import flags
from edge_agent.filters.kernels.limits import limits_kernel
from edge_agent.samples import Batch


class DeviceFilters:
    """The filters of one device, with their per-tag parameter arrays."""

    def __init__(self, device: DeviceBase, specs: dict[str, FilterSpec]):
        k = len(device.tags)
        self.device = device.name
        self.lo = np.full(k, -np.inf)
        self.hi = np.full(k, np.inf)
        self.has_limits = False
        self.fired = {"limits": 0}
        for j, tag in enumerate(device.tags):
            for ref in tag.filters:
                spec = specs[ref]
                if isinstance(spec, LimitsFilter):
                    self.has_limits = True
                    if spec.lo is not None:
                        self.lo[j] = max(self.lo[j], spec.lo)
                    if spec.hi is not None:
                        self.hi[j] = min(self.hi[j], spec.hi)

    def process(self, batch: Batch) -> None:
        """Set flag bits on the batch in place (per-tag parameters follow the batch's columns)."""
        if self.has_limits:
            cols = batch.columns
            lo, hi = (self.lo, self.hi) if cols is None else (self.lo[cols], self.hi[cols])
            self.fired["limits"] += limits_kernel(
                batch.values, batch.quality, lo, hi, np.uint32(flags.LIMITS), batch.flags
            )


def warm_up() -> None:
    """Compile (or load from NUMBA_CACHE_DIR) every kernel before the first poll, not during it."""
    limits_kernel(
        np.zeros((1, 1)), np.zeros((1, 1), np.uint8), np.zeros(1), np.ones(1), np.uint32(1),
        np.zeros((1, 1), np.uint32),
    )
