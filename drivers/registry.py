"""Finds driver plugins through entry points, and imports one only when a config uses it.

Lazy on purpose: a plant that only speaks Modbus must not fail to start because the OPC UA plugin
(or its library) is broken or missing, and start-up should not pay for imports it does not need.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from drivers.api import DriverPlugin

ENTRY_POINT_GROUP = "edge_agent.drivers"


class PluginLoadError(Exception):
    """A plugin the config needs could not be imported; the message is one line for the operator."""


class _Registry(Mapping[str, DriverPlugin]):
    def __init__(self, eps: dict[str, EntryPoint]):
        self._eps = eps
        self._loaded: dict[str, DriverPlugin] = {}

    def __getitem__(self, name: str) -> DriverPlugin:
        if name not in self._loaded:
            ep = self._eps[name]
            try:
                self._loaded[name] = ep.load()
            except Exception as exc:
                raise PluginLoadError(f"driver plugin {name!r} ({ep.value}) failed to load: {exc!r}") from exc
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._eps)

    def __len__(self) -> int:
        return len(self._eps)

    def __contains__(self, name: object) -> bool:
        return name in self._eps


@cache
def plugins() -> Mapping[str, DriverPlugin]:
    """Every installed driver by protocol name; a plugin is imported on first use."""
    return _Registry({ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)})
