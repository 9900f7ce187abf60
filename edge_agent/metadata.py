"""The agent's metadata message: per device, its protocol and its tags with type and engineering unit.

Units and types change only when the config does, so they are published once per connection and
after every reload as one retained message (as Sparkplug B's birth certificates do), never in the
frames, whose bytes per point are the uplink's cost. The message carries the config digest that the
birth message carries too, so a consumer can tell which config a frame was made under.
docs/metadata.md specifies it.
"""

from __future__ import annotations

from typing import Any

from drivers.registry import plugins
from edge_agent.config.loader import Config

META_VERSION = 1


def tag_units(device: Any) -> tuple[str, ...]:
    """Engineering unit per tag in config order ("" when none): the plugin's hook when it has one."""
    plugin = plugins()[device.protocol]
    hook = getattr(plugin, "tag_units", None)
    if hook is not None:
        return tuple(hook(device))
    return tuple(str(getattr(t, "eng_unit", "") or "") for t in device.tags)


def build_meta(cfg: Config, boot: str, version: str) -> dict[str, object]:
    """The metadata document for `cfg` (JSON-ready)."""
    registry = plugins()
    devices = []
    for d in cfg.devices:
        types = registry[d.protocol].tag_types(d)
        units = tag_units(d)
        tags = []
        for t, typ, unit in zip(d.tags, types, units, strict=True):
            entry: dict[str, object] = {"name": t.name, "type": typ}
            if unit:
                entry["eng_unit"] = unit
            tags.append(entry)
        devices.append({"name": d.name, "protocol": d.protocol, "tags": tags})
    return {"meta": META_VERSION, "agent": cfg.agent.id, "boot": boot, "version": version,
            "config": cfg.digest[:16], "devices": devices}
