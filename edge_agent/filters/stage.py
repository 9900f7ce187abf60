"""One device's whole filter stage, as the agent and `edge-agent replay` run it: kernels, then events,
then adaptive reporting. Keeping it in one place is what makes replay give exactly the live flags."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.config.models import DeviceBase, ReportingSpec
from edge_agent.filters.engine import DeviceFilters
from edge_agent.filters.events import EventDetector
from edge_agent.filters.reporting import Reporter
from edge_agent.frame.model import Block
from edge_agent.samples import Batch


class DeviceStage:
    def __init__(self, engine: DeviceFilters, device: DeviceBase, reporting: dict[str, ReportingSpec],
                 types: tuple[str, ...]):
        self.engine = engine
        self.events = EventDetector(engine)
        self.reporter = Reporter(device, reporting, types) if any(t.reporting for t in device.tags) else None
        self.last_scores: dict[str, np.ndarray] = {}
        # No kernel, no event and no reporting rule on any tag: run() hands the batch on as it came,
        # minus any scores, without asking the engine and the detector (a big plant polls such devices
        # hundreds of times a second).
        self.passthrough = not engine.active and not self.events.bits and self.reporter is None

    def run(self, batch: Batch) -> tuple[list[Batch], list[Block], list[dict[str, Any]]]:
        """Filter the batch in place; returns (batches for Batcher.add, blocks for add_blocks, events)."""
        if self.passthrough:
            batch.scores = None
            return [batch], [], []
        scores = self.engine.process(batch)
        self.last_scores = scores
        events = self.events.detect(batch, scores)
        if self.reporter is None:
            return [batch], [], events
        batches, blocks = self.reporter.route(batch)
        return batches, blocks, events

    def flush(self) -> list[Block]:
        return self.reporter.flush() if self.reporter is not None else []
