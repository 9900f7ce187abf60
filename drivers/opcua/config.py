"""OPC UA device and tag config, validated at load time (no asyncua import: `check` stays fast).

What cannot be known before connecting (whether a node exists, its data type, the server's
operation limits, which index a namespace URI has today) is checked at every connect by the driver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from drivers.opcua.address import BrowsePath, NodeAddress, aliases_used, parse_browse_path, parse_node_id
from edge_agent.config.models import DeviceBase, Name, TagBase
from edge_agent.config.units import MillisDuration, PositiveDuration
from edge_agent.config.urls import check_endpoint

Mode = Literal["subscribe", "poll"]
DeadbandType = Literal["none", "absolute", "percent"]
# Declared value types (frame metadata). Every numeric OPC UA type becomes a float64 sample;
# int64/uint64 values beyond 2**53 lose their lowest bits. "string" reads a String (or LocalizedText)
# variable: its text travels in the frame's text element, its numeric column is NaN.
OpcUaType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
                    "string"]
SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
TimestampFallback = Literal["server", "receipt"]

ENDPOINT_HINT = "opc.tcp://HOST[:PORT][/PATH], port default 4840"


def check_opcua_endpoint(url: str) -> str:
    return check_endpoint(url, ("opc.tcp",), ENDPOINT_HINT, allow_path=True)


class OpcUaTag(TagBase):
    """One variable. Exactly one of `node` (a NodeId) or `path` (a browse path from Root)."""

    node: str | None = None
    path: str | None = None
    type: str = "float64"
    # Per-tag overrides of the device's settings (a tag group with its own mode or deadband).
    mode: Mode | None = None
    sampling_interval: MillisDuration | None = None
    queue_size: Annotated[int, Field(ge=1, le=10_000)] | None = None
    deadband_type: DeadbandType | None = None
    deadband: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None:
            parse_node_id(v)
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            parse_browse_path(v)
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        allowed = OpcUaType.__args__  # type: ignore[attr-defined]
        if v not in allowed:
            raise ValueError(f"{v!r} is not one of {', '.join(repr(a) for a in allowed)}")
        return v

    @model_validator(mode="after")
    def _no_filters_on_text(self) -> OpcUaTag:
        if self.type == "string" and self.filters:
            raise ValueError("filters judge numbers; a string tag cannot have filters (its text is sent as is)")
        if self.type == "string" and self.deadband_type not in (None, "none"):
            raise ValueError("a deadband applies to numbers; a string tag is sent on every change")
        return self

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaTag:
        if (self.node is None) == (self.path is None):
            raise ValueError("give exactly one of node (a NodeId such as \"ns=2;s=Line1.Temp\") or path "
                             "(a browse path such as \"/Objects/2:Plant/2:Temp\")")
        return self

    @property
    def address(self) -> NodeAddress | BrowsePath:
        return parse_node_id(self.node) if self.node is not None else parse_browse_path(self.path or "")

    @property
    def address_text(self) -> str:
        return self.node if self.node is not None else (self.path or "")


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"]
    endpoint: str
    mode: Mode = "subscribe"
    # Subscription settings (defaults follow poll_interval: "how often I want a value").
    publishing_interval: MillisDuration | None = None
    sampling_interval: MillisDuration | None = None
    queue_size: Annotated[int, Field(ge=1, le=10_000)] | None = None
    deadband_type: DeadbandType = "none"
    deadband: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    timestamp_fallback: TimestampFallback = "server"
    max_nodes_per_read: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    # Connection
    timeout: MillisDuration = Field(default="5s", validate_default=True)
    keepalive: MillisDuration = Field(default="5s", validate_default=True)
    session_timeout: MillisDuration = Field(default="1m", validate_default=True)
    reconnect_min: PositiveDuration = Field(default="500ms", validate_default=True)
    reconnect_max: PositiveDuration = Field(default="30s", validate_default=True)
    max_clock_skew: PositiveDuration = Field(default="5s", validate_default=True)
    namespaces: dict[Name, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    # Security
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode | None = None
    certificate: str | None = None
    private_key: str | None = None
    trust_dir: str | None = None
    # User authentication: the password itself is never in this file.
    username: Annotated[str, Field(min_length=1)] | None = None
    password_file: str | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    tags: list[OpcUaTag] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_opcua_endpoint(v)

    @field_validator("certificate", "private_key", "password_file")
    @classmethod
    def _readable_file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not os.path.isfile(v):
            raise ValueError(f"{v}: no such file")
        if not os.access(v, os.R_OK):
            raise ValueError(f"{v}: not readable by this user")
        return v

    @field_validator("trust_dir")
    @classmethod
    def _directory(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isdir(v):
            raise ValueError(f"{v}: no such directory (create it and copy the trusted server certificates into it)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaDevice:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        if self.security_policy == "None":
            if self.security_mode not in (None, "None"):
                raise ValueError(f"security_mode {self.security_mode!r} needs a security_policy other than 'None'")
        else:
            if self.security_mode == "None":
                raise ValueError(f"security_policy {self.security_policy!r} needs security_mode 'Sign' or "
                                 "'SignAndEncrypt'")
            missing = [k for k in ("certificate", "private_key", "trust_dir") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"security_policy {self.security_policy!r} needs {', '.join(missing)} "
                                 "(create a certificate with `edge-agent opcua-cert`)")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if self.username is None and (self.password_file or self.password_env):
            raise ValueError("a password needs a username")
        if self.username is not None and not (self.password_file or self.password_env):
            raise ValueError("username needs password_file or password_env (the password is never in this file)")
        for i, tag in enumerate(self.tags):
            unknown = aliases_used(tag.address) - set(self.namespaces)
            if unknown:
                known = ", ".join(sorted(self.namespaces)) or "none declared"
                raise ValueError(f"tags[{i}] ({tag.name}): namespace alias {sorted(unknown)[0]!r} is not in "
                                 f"namespaces (declared: {known})")
            mode = tag.mode or self.mode
            dtype = tag.deadband_type or self.deadband_type
            band = tag.deadband if tag.deadband is not None else self.deadband
            if dtype == "percent" and band > 100:
                raise ValueError(f"tags[{i}] ({tag.name}): a percent deadband is 0..100, not {band:g}")
            if mode == "poll" and (tag.sampling_interval or tag.queue_size or tag.deadband_type
                                   or tag.deadband is not None):
                raise ValueError(f"tags[{i}] ({tag.name}): sampling_interval, queue_size and deadband apply to "
                                 "subscribed tags, and this tag is polled")
        return self

    # --- derived settings ----------------------------------------------------------------------

    @property
    def mode_of(self) -> list[Mode]:
        return [t.mode or self.mode for t in self.tags]

    @property
    def publishing_interval_ns(self) -> int:
        return self.publishing_interval or self.poll_interval

    def sampling_interval_ns(self, tag: OpcUaTag) -> int:
        return tag.sampling_interval or self.sampling_interval or self.poll_interval

    def queue_size_of(self, tag: OpcUaTag) -> int:
        """Default: enough to hold every sample taken between two publishes, so none is dropped."""
        if tag.queue_size is not None:
            return tag.queue_size
        if self.queue_size is not None:
            return self.queue_size
        return max(1, -(-self.publishing_interval_ns // self.sampling_interval_ns(tag)))

    def deadband_of(self, tag: OpcUaTag) -> tuple[DeadbandType, float]:
        if tag.type == "string":  # a deadband is a numeric filter; servers refuse it on a String
            return ("none", 0.0)
        return (tag.deadband_type or self.deadband_type, tag.deadband if tag.deadband is not None else self.deadband)

    @property
    def password_source(self) -> str:
        """Where the password comes from, for log lines (never the password)."""
        if self.password_file:
            return f"password_file {self.password_file}"
        return f"environment variable {self.password_env}" if self.password_env else "no password"

    def read_password(self) -> str:
        """The password, read at each connect so a rotated secret is picked up; OSError/KeyError if gone."""
        if self.password_file:
            return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise KeyError(f"environment variable {self.password_env} is not set")
            return value
        return ""
