"""Typed config sections. Each component takes its own section; unknown keys are errors because a
typo that silently falls back to a default is how a gateway ends up polling the wrong thing for months.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from edge_agent.config.units import Duration, MillisDuration, PositiveDuration, Seconds, Size
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
    # uvloop where installed (see edge_agent/eventloop.py); EDGE_AGENT_EVENT_LOOP overrides this.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class UplinkSection(Section):
    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["3.1.1", "5"] = "5"
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$", max_length=128)] = "edge"
    client_id: Name | None = None
    keepalive: Seconds = Field(default="30s", validate_default=True)
    inflight: Annotated[int, Field(ge=1, le=1000)] = 32
    reconnect_min: PositiveDuration = Field(default="500ms", validate_default=True)
    reconnect_max: PositiveDuration = Field(default="30s", validate_default=True)
    # After an outage, the share of the in-flight window the backlog gets while live frames wait,
    # and the longest a live frame may wait behind the backlog.
    backlog_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    live_max_delay: PositiveDuration = Field(default="5s", validate_default=True)
    compression: Literal["none", "zstd"] = "none"
    zstd_level: Annotated[int, Field(ge=1, le=22)] = 3
    # TLS (mqtts://): the system's CAs unless ca_file is given; a client certificate for mutual TLS.
    ca_file: Annotated[Path, Field(strict=False)] | None = None
    cert_file: Annotated[Path, Field(strict=False)] | None = None
    key_file: Annotated[Path, Field(strict=False)] | None = None
    verify_hostname: bool = True
    username: str | None = None
    password_file: Annotated[Path, Field(strict=False)] | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_endpoint(v, ("mqtt", "mqtts"), "mqtt://HOST:PORT or mqtts://HOST:PORT")

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @model_validator(mode="after")
    def _consistent(self) -> UplinkSection:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its key)")
        if not self.tls and (self.ca_file or self.cert_file or not self.verify_hostname):
            raise ValueError("ca_file, cert_file, key_file and verify_hostname need an mqtts:// url")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give the password by password_file or password_env, not both")
        if (self.password_file or self.password_env) and self.username is None:
            raise ValueError("a password needs a username")
        return self

    def password(self) -> str | None:
        """Read at connect time, so a rotated password file is picked up; never logged."""
        import os

        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"environment variable {self.password_env} is not set")
            return value
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return None


class SpoolSection(Section):
    """Bounds of the on-disk spool; what happens when the broker is away longer than it holds."""

    max_bytes: Size = Field(default="512MiB", validate_default=True)
    max_age: PositiveDuration = Field(default="7d", validate_default=True)
    on_full: Literal["drop_oldest", "drop_newest", "block"] = "drop_oldest"

    @field_validator("max_bytes")
    @classmethod
    def _min(cls, v: int) -> int:
        if v < 64 * 1024:
            raise ValueError("must be at least 64KiB")
        return v


class BatchSection(Section):
    """A batch closes on whichever comes first: enough points, or its oldest row getting too old."""

    max_points: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    max_interval: PositiveDuration = Field(default="1s", validate_default=True)
    # Larger batches are split into several frames: brokers reject oversized messages (AWS IoT: 128KiB).
    max_frame_bytes: Size = Field(default="128KiB", validate_default=True)

    @field_validator("max_frame_bytes")
    @classmethod
    def _frame_min(cls, v: int) -> int:
        if v < 1024:
            raise ValueError("must be at least 1KiB")
        return v


Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class FilterBase(Section):
    """What every filter kind has: whether it raises events, and how often per tag at most."""

    # An alarm that stays on raises one event when it starts; a flapping one at most one per interval
    # per tag (the next event says how many were held back), so a stuck alarm cannot flood the uplink.
    events: bool = True
    event_interval: PositiveDuration = Field(default="1m", validate_default=True)


class ScoringFilterBase(FilterBase):
    # Scores cost about 2 bytes per sample in the frame; turn them off where bandwidth matters more.
    send_scores: bool = True


class LimitsFilter(FilterBase):
    kind: Literal["limits"]
    lo: Finite | None = None
    hi: Finite | None = None
    lolo: Finite | None = None
    hihi: Finite | None = None

    @model_validator(mode="after")
    def _bounds(self) -> LimitsFilter:
        if self.lo is None and self.hi is None:
            raise ValueError("a limits filter needs lo, hi or both")
        if self.lo is not None and self.hi is not None and not self.lo < self.hi:
            raise ValueError(f"lo ({self.lo}) must be below hi ({self.hi})")
        if self.lolo is not None and (self.lo is None or not self.lolo < self.lo):
            raise ValueError(f"lolo ({self.lolo}) needs a lo above it" if self.lo is None
                             else f"lolo ({self.lolo}) must be below lo ({self.lo})")
        if self.hihi is not None and (self.hi is None or not self.hihi > self.hi):
            raise ValueError(f"hihi ({self.hihi}) needs a hi below it" if self.hi is None
                             else f"hihi ({self.hihi}) must be above hi ({self.hi})")
        return self


class RateOfChangeFilter(ScoringFilterBase):
    kind: Literal["rate_of_change"]
    max_rate: Positive  # engineering units per second, either direction


class EwmaZscoreFilter(ScoringFilterBase):
    kind: Literal["ewma_zscore"]
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    threshold: Positive = 4.0
    warmup: Annotated[int, Field(ge=2, le=1_000_000)] = 50
    min_sigma: NonNegative = 0.0


class HampelFilter(ScoringFilterBase):
    kind: Literal["hampel"]
    window: Annotated[int, Field(ge=3, le=1024)] = 31
    n_sigmas: Positive = 3.5
    min_sigma: NonNegative = 0.0


class FlatlineFilter(FilterBase):
    kind: Literal["flatline"]
    tolerance: NonNegative = 0.0
    samples: Annotated[int, Field(ge=2)] | None = None
    duration: PositiveDuration | None = None

    @model_validator(mode="after")
    def _length(self) -> FlatlineFilter:
        if self.samples is None and self.duration is None:
            raise ValueError("a flatline filter needs samples, duration or both (how long is stuck)")
        return self


class CusumFilter(ScoringFilterBase):
    kind: Literal["cusum"]
    k: NonNegative = 0.5
    h: Positive = 5.0
    warmup: Annotated[int, Field(ge=2, le=1_000_000)] = 100
    min_sigma: NonNegative = 0.0


class DeadbandFilter(FilterBase):
    kind: Literal["deadband"]
    events: bool = False  # a report is not an alarm
    absolute: NonNegative | None = None
    percent: Positive | None = None
    max_silence: PositiveDuration | None = Field(default="10m", validate_default=True)

    @model_validator(mode="after")
    def _band(self) -> DeadbandFilter:
        if self.absolute is None and self.percent is None:
            raise ValueError("a deadband filter needs absolute, percent or both")
        if self.events:
            raise ValueError("a deadband filter raises no events (a report is not an alarm)")
        return self


class MultivariateFilter(ScoringFilterBase):
    kind: Literal["multivariate"]
    training: Annotated[int, Field(ge=10, le=1_000_000)] = 1000
    components: Annotated[int, Field(ge=1)] | None = None
    variance: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.999
    baseline: Annotated[Path, Field(strict=False)] | None = None

    @model_validator(mode="after")
    def _model(self) -> MultivariateFilter:
        if self.components is not None and "variance" in self.model_fields_set:
            raise ValueError("give components or variance, not both")
        return self


# Every filter kind's model; FilterSpec is their discriminated union.
FILTER_MODELS: tuple[type[Section], ...] = (
    LimitsFilter, RateOfChangeFilter, EwmaZscoreFilter, HampelFilter, FlatlineFilter, CusumFilter,
    DeadbandFilter, MultivariateFilter,
)
FILTER_KINDS = frozenset(k for m in FILTER_MODELS for k in get_args(m.model_fields["kind"].annotation))
FilterSpec = Annotated[
    LimitsFilter | RateOfChangeFilter | EwmaZscoreFilter | HampelFilter | FlatlineFilter | CusumFilter
    | DeadbandFilter | MultivariateFilter,
    Field(discriminator="kind"),
]


class ReportingSpec(Section):
    """Adaptive reporting of a group of tags: reduced while normal, full rate around an anomaly."""

    mode: Literal["deadband", "aggregate"]
    interval: PositiveDuration | None = None
    pre_trigger: Duration = Field(default="10s", validate_default=True)
    post_trigger: Duration = Field(default="30s", validate_default=True)

    @model_validator(mode="after")
    def _interval(self) -> ReportingSpec:
        if self.mode == "aggregate" and self.interval is None:
            raise ValueError("mode \"aggregate\" needs an interval, e.g. interval = \"1m\"")
        if self.mode == "deadband" and self.interval is not None:
            raise ValueError("interval is for mode \"aggregate\" (mode \"deadband\" follows the tags' deadband filter)")
        return self


class TagBase(Section):
    """What every protocol's tag has; a driver's tag model adds its addressing."""

    name: Name
    filters: list[str] = []
    reporting: str | None = None  # a [reporting.NAME] policy; its tags of one device form a group


class DeviceBase(Section):
    """What every protocol's device has; a driver's device model adds its transport and tags."""

    name: Name
    protocol: str
    poll_interval: MillisDuration = Field(default="1s", validate_default=True)
    tags: list[TagBase] = Field(min_length=1)


class MetricsSection(Section):
    """The Prometheus endpoint. Loopback by default: metrics say a lot about a plant."""

    enabled: bool = True
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r}: use HOST:PORT, e.g. \"127.0.0.1:9108\" (\"0.0.0.0:9108\" for every interface)")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class RawConfig(Section):
    """First pass: device tables stay raw until their driver plugin validates them."""

    agent: AgentSection
    uplink: UplinkSection = UplinkSection()
    spool: SpoolSection = SpoolSection()
    batch: BatchSection = BatchSection()
    metrics: MetricsSection = MetricsSection()
    filters: dict[Name, FilterSpec] = {}
    reporting: dict[Name, ReportingSpec] = {}
    devices: list[dict[str, object]] = Field(min_length=1)
