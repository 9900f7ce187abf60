"""Finds driver plugins through entry points, once per process."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from drivers.api import DriverPlugin

ENTRY_POINT_GROUP = "edge_agent.drivers"


@cache
def plugins() -> dict[str, DriverPlugin]:
    """Every installed driver by protocol name. Import errors surface here, at start-up."""
    found: dict[str, DriverPlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found
