"""Typed config sections. Each component takes its own section; unknown keys are errors because a
typo that silently falls back to a default is how a gateway ends up polling the wrong thing for months.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from edge_agent.config.units import MillisDuration, PositiveDuration, Seconds
from edge_agent.config.urls import check_endpoint

# Names end up in MQTT topics and in frame keys: no wildcards, no separators, nothing invisible.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class Section(BaseModel):
    # strict: `unit = "5"` or `inflight = true` is a mistake to report, not a value to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _directory(v: object) -> object:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a directory path such as \"/var/lib/edge-agent\" or \"./state\"")
    return v


class AgentSection(Section):
    id: Name
    state_dir: Annotated[Path, BeforeValidator(_directory), Field(strict=False)]
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class UplinkSection(Section):
    url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$", max_length=128)] = "edge"
    client_id: Name | None = None
    keepalive: Seconds = Field(default="30s", validate_default=True)
    inflight: Annotated[int, Field(ge=1, le=1000)] = 32
    reconnect_min: PositiveDuration = Field(default="500ms", validate_default=True)
    reconnect_max: PositiveDuration = Field(default="30s", validate_default=True)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_endpoint(v, ("mqtt",), "mqtt://HOST:PORT (mqtts:// arrives with the TLS uplink)")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 1883

    @model_validator(mode="after")
    def _backoff_order(self) -> UplinkSection:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        return self


class BatchSection(Section):
    """A batch closes on whichever comes first: enough points, or its oldest row getting too old."""

    max_points: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    max_interval: PositiveDuration = Field(default="1s", validate_default=True)


Finite = Annotated[float, Field(allow_inf_nan=False)]


class LimitsFilter(Section):
    kind: Literal["limits"]
    lo: Finite | None = None
    hi: Finite | None = None

    @model_validator(mode="after")
    def _bounds(self) -> LimitsFilter:
        if self.lo is None and self.hi is None:
            raise ValueError("a limits filter needs lo, hi or both")
        if self.lo is not None and self.hi is not None and not self.lo < self.hi:
            raise ValueError(f"lo ({self.lo}) must be below hi ({self.hi})")
        return self


# Every filter kind's model; FilterSpec becomes their discriminated union as kinds are added.
FILTER_MODELS: tuple[type[Section], ...] = (LimitsFilter,)
FILTER_KINDS = frozenset(k for m in FILTER_MODELS for k in get_args(m.model_fields["kind"].annotation))
FilterSpec = Annotated[LimitsFilter, Field(discriminator="kind")]


class TagBase(Section):
    """What every protocol's tag has; a driver's tag model adds its addressing."""

    name: Name
    filters: list[str] = []


class DeviceBase(Section):
    """What every protocol's device has; a driver's device model adds its transport and tags."""

    name: Name
    protocol: str
    poll_interval: MillisDuration = Field(default="1s", validate_default=True)
    tags: list[TagBase] = Field(min_length=1)


class RawConfig(Section):
    """First pass: device tables stay raw until their driver plugin validates them."""

    agent: AgentSection
    uplink: UplinkSection = UplinkSection()
    batch: BatchSection = BatchSection()
    filters: dict[Name, FilterSpec] = {}
    devices: list[dict[str, object]] = Field(min_length=1)
