"""Loads the TOML file and turns every problem into one line: `FILE: key.path: message`.

All problems are collected before giving up, because an engineer on a plant floor editing over a
slow SSH session should fix the file once, not once per error.
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edge_agent.config.models import (
    FILTER_KINDS,
    FILTER_MODELS,
    AgentSection,
    BatchSection,
    DeviceBase,
    FilterSpec,
    MetricsSection,
    RawConfig,
    ReportingSpec,
    SpoolSection,
    UplinkSection,
)

EX_CONFIG = 78  # sysexits.h: the unit file stops systemd from restart-looping on it


class ConfigError(Exception):
    """Every problem found in a config file, one formatted line each."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Config:
    path: Path
    agent: AgentSection
    uplink: UplinkSection
    spool: SpoolSection
    batch: BatchSection
    metrics: MetricsSection
    filters: dict[str, FilterSpec]
    devices: tuple[DeviceBase, ...]
    digest: str  # sha256 of the file: tells which config a running agent uses
    reporting: dict[str, ReportingSpec] = field(default_factory=dict)

    def device(self, name: str) -> DeviceBase:
        return next(d for d in self.devices if d.name == name)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem found."""
    from drivers.registry import PluginLoadError, plugins  # late: plugins import the config models

    path = Path(path)
    label = str(path)  # as the user typed it, so the line points at the file they mean
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{label}: TOML syntax error: {exc}"]) from None

    problems: list[str] = []
    try:
        raw = RawConfig.model_validate(doc)
    except ValidationError as exc:
        problems += _format(label, exc, RawConfig, ())
        raw = None
        # Keep going into the devices so their problems are reported in the same run.
    raw_devices = doc.get("devices") if isinstance(doc.get("devices"), list) else []
    # References are checked against the names declared, even when a filter's own body is invalid
    # (that is reported already): one mistake must not echo as a second, misleading one.
    filters = doc.get("filters") if isinstance(doc.get("filters"), dict) else {}

    registry = plugins()
    devices: list[tuple[int, DeviceBase]] = []
    for i, dev in enumerate(raw_devices):
        if not isinstance(dev, dict):
            continue  # already reported by RawConfig
        protocol = dev.get("protocol")
        if protocol not in registry:
            known = ", ".join(repr(p) for p in sorted(registry))
            what = "required key is missing" if protocol is None else f"{protocol!r} is not one of {known}"
            problems.append(f"{label}: devices[{i}].protocol: {what}")
            continue
        try:
            model = registry[protocol].device_model
        except PluginLoadError as exc:
            problems.append(f"{label}: devices[{i}].protocol: {exc}")
            continue
        try:
            devices.append((i, model.model_validate(dev)))
        except ValidationError as exc:
            problems += _format(label, exc, model, ("devices", i))
    problems += _cross_checks(label, devices, raw_devices, filters)
    reporting = doc.get("reporting") if isinstance(doc.get("reporting"), dict) else {}
    problems += _filter_checks(label, devices, filters, reporting)
    if problems:
        raise ConfigError(problems)
    assert raw is not None
    return Config(
        path=path,
        agent=raw.agent,
        uplink=raw.uplink,
        spool=raw.spool,
        batch=raw.batch,
        metrics=raw.metrics,
        filters=dict(raw.filters),
        devices=tuple(d for _, d in devices),
        digest=hashlib.sha256(data).hexdigest(),
        reporting=dict(raw.reporting),
    )


def _cross_checks(
    label: str, devices: list[tuple[int, DeviceBase]], raw_devices: list[Any], filters: dict[str, Any]
) -> list[str]:
    """Rules that span entries: names unique, filter references resolve."""
    problems = []
    seen_devices: dict[str, int] = {}
    for i, raw in enumerate(raw_devices):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen_devices:
            problems.append(
                f"{label}: devices[{i}].name: duplicate device name {name!r} (also devices[{seen_devices[name]}])"
            )
        else:
            seen_devices[name] = i
    for i, dev in devices:
        seen_tags: dict[str, int] = {}
        for j, tag in enumerate(dev.tags):
            where = f"devices[{i}].tags[{j}]"
            if tag.name in seen_tags:
                problems.append(
                    f"{label}: {where}.name: duplicate tag name {tag.name!r} in device {dev.name!r} "
                    f"(also tags[{seen_tags[tag.name]}])"
                )
            else:
                seen_tags[tag.name] = j
            for m, ref in enumerate(tag.filters):
                if ref not in filters:
                    known = ", ".join(repr(f) for f in sorted(filters)) or "none defined"
                    problems.append(f"{label}: {where}.filters[{m}]: no filter named {ref!r} (filters: {known})")
                elif ref in tag.filters[:m]:
                    problems.append(f"{label}: {where}.filters[{m}]: {ref!r} is listed twice")
            problems += _limits_overlap(label, where, tag.filters, filters)
    return problems


def _filter_checks(
    label: str, devices: list[tuple[int, DeviceBase]], filters: dict[str, Any], reporting: dict[str, Any]
) -> list[str]:
    """What only the whole device shows: one filter per kind per tag (limits excepted, they combine),
    multivariate groups big enough to have a correlation, reporting references that resolve."""
    problems = []
    for i, dev in devices:
        groups: dict[str, list[int]] = {}
        for j, tag in enumerate(dev.tags):
            where = f"devices[{i}].tags[{j}]"
            kinds: dict[str, str] = {}
            for ref in dict.fromkeys(tag.filters):
                kind = filters.get(ref, {}).get("kind") if isinstance(filters.get(ref), dict) else None
                if kind == "multivariate":
                    groups.setdefault(ref, []).append(j)
                if kind is None or kind == "limits":
                    continue
                if kind in kinds:
                    problems.append(f"{label}: {where}.filters: {kinds[kind]!r} and {ref!r} are both {kind} "
                                    "filters; a tag takes one filter of each kind (limits excepted)")
                kinds[kind] = ref
            if tag.reporting is not None:
                policy = reporting.get(tag.reporting)
                if not isinstance(policy, dict):
                    known = ", ".join(repr(r) for r in sorted(reporting)) or "none defined"
                    problems.append(f"{label}: {where}.reporting: no reporting policy named {tag.reporting!r} "
                                    f"(reporting: {known})")
                elif (policy.get("mode") == "deadband" and "deadband" not in kinds
                      and getattr(tag, "type", "") != "string"):  # no filters: strings are sent on change
                    problems.append(f"{label}: {where}.reporting: policy {tag.reporting!r} reports by deadband, "
                                    "but the tag has no deadband filter")
        for ref, members in groups.items():
            training = filters[ref].get("training", 1000)
            if len(members) < 2:
                problems.append(f"{label}: devices[{i}].tags[{members[0]}].filters: multivariate filter {ref!r} "
                                f"needs at least 2 tags of device {dev.name!r} (it scores them as one vector)")
            elif isinstance(training, int) and training <= len(members):
                problems.append(f"{label}: filters.{ref}.training: {training} rows cannot train a model of "
                                f"{len(members)} tags (device {dev.name!r}); use more than {len(members)}")
    return problems


def _limits_overlap(label: str, where: str, refs: list[str], filters: dict[str, Any]) -> list[str]:
    """Two limits filters on one tag combine to the tightest bounds; an empty range flags everything."""
    specs = [filters[r] for r in refs if isinstance(filters.get(r), dict) and filters[r].get("kind") == "limits"]
    los = [s["lo"] for s in specs if isinstance(s.get("lo"), int | float)]
    his = [s["hi"] for s in specs if isinstance(s.get("hi"), int | float)]
    if len(specs) > 1 and los and his and max(los) >= min(his):
        return [f"{label}: {where}.filters: the limits filters combine to lo {max(los)} >= hi {min(his)}"]
    return []


_FILTER_BY_KIND = {k: m for m in FILTER_MODELS for k in typing.get_args(m.model_fields["kind"].annotation)}


def _format(label: str, exc: ValidationError, model: type[BaseModel], prefix: tuple) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        rel = tuple(err["loc"])
        if len(rel) >= 3 and rel[0] == "filters" and rel[2] in FILTER_KINDS:
            # pydantic names the union member; the file has no such key. Hints come from that member.
            kind, rel = rel[2], rel[:2] + rel[3:]
            lines.append(f"{label}: {_loc_text(prefix + rel)}: {_message(err, _FILTER_BY_KIND[kind], rel[2:])}")
            continue
        lines.append(f"{label}: {_loc_text(prefix + rel)}: {_message(err, model, rel)}")
    return lines


def _loc_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Any, model: type[BaseModel], loc: tuple) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        known = _keys_at(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(known)})")
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}"
    if kind == "union_tag_invalid":
        return f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"required key {ctx.get('discriminator', '').strip(chr(39))!r} is missing"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "password_env":
        return f"{value!r} is not an environment variable name (letters, digits and '_', not starting with a digit)"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "topic_prefix":
        return f"{value!r} is not a topic prefix (levels of letters, digits, '_', '.', '-' joined by single '/')"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; no spaces, '/', '+' or '#')"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "too_short" and isinstance(value, list) and not value:
        return "must not be empty"
    msg = err["msg"]
    if not isinstance(value, dict | list):
        msg += f" (got {value!r})"
    return msg


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at `loc` (for did-you-mean hints); empty if not a model."""
    ann: Any = model
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(str(part))
            if field is None:
                return []
            ann = field.annotation
            continue
        args = typing.get_args(ann)
        if not args:
            return []
        ann = args[-1]  # list[X] -> X, dict[K, V] -> V
    ann = _unwrap(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [name for name in ann.model_fields]
    return []


def _unwrap(ann: Any) -> Any:
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(models) != 1:
                return ann
            ann = models[0]
        else:
            return ann
