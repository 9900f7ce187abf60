"""What a SIGHUP reload must do, worked out from the old and the new config before anything is touched."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.config.loader import Config


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # restarted: their own settings changed
    kept: tuple[str, ...]  # untouched: they keep polling through the reload
    refiltered: tuple[str, ...]  # kept, but a filter they use changed: new filter state
    uplink_changed: bool
    needs_restart: tuple[str, ...]  # sections that cannot change under a running process


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    added = tuple(n for n in after if n not in before)
    removed = tuple(n for n in before if n not in after)
    changed = tuple(n for n in after if n in before and after[n] != before[n])
    kept = tuple(n for n in after if n in before and after[n] == before[n])

    def specs(cfg: Config, name: str) -> list[object]:
        """What a device's filter stage is built from: its filters' and reporting policies' settings."""
        dev = next(d for d in cfg.devices if d.name == name)
        reporting = getattr(cfg, "reporting", {}) or {}
        return ([cfg.filters.get(ref) for tag in dev.tags for ref in tag.filters]
                + [reporting.get(getattr(tag, "reporting", None)) for tag in dev.tags])

    refiltered = tuple(n for n in kept if specs(old, n) != specs(new, n))
    needs_restart = tuple(s for s in ("agent", "spool", "metrics") if getattr(old, s) != getattr(new, s))
    return ReloadPlan(added, removed, changed, kept, refiltered, old.uplink != new.uplink, needs_restart)
