"""The only module that talks to asyncua's client: connect with security and user, resolve tags, read,
subscribe. A fresh asyncua Client per connection, so nothing survives from a session the server
has forgotten (the trap behind "BadNodeIdUnknown forever" after a PLC restart).

asyncua's own reconnect is off: the driver owns reconnecting (our backoff and jitter, and a full
re-resolution of namespaces and nodes each time). asyncua's supervisor is still used as the
keepalive: it reads ServerState every keepalive/2 with a keepalive/2 timeout and reports a failed
probe or a dropped socket through `connection_lost_callback`.

Errors come out as SessionError with a `kind` (a stats key) and a one-line message naming what the
operator should check; passwords never appear in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.opcua import pki
from drivers.opcua.address import BrowsePath, Namespace, NodeAddress
from drivers.opcua.config import OpcUaDevice, OpcUaTag

# asyncua logs every reconnect step, and its publish loop logs tracebacks when a session dies;
# the driver reports connection problems itself, once, by device name.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {"None": ua.MessageSecurityMode.None_, "Sign": ua.MessageSecurityMode.Sign,
         "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
STATUS_NAMES: dict[int, str] = {
    v: k for k, v in vars(ua.StatusCodes).items() if isinstance(v, int) and not k.startswith("_")
}
# DataTypes in namespace 0 that are not numbers: a tag on one is reported, not sampled.
NON_NUMERIC = {12: "String", 13: "DateTime", 14: "Guid", 15: "ByteString", 16: "XmlElement", 17: "NodeId",
               18: "ExpandedNodeId", 19: "StatusCode", 20: "QualifiedName", 21: "LocalizedText",
               22: "Structure", 23: "DataValue", 25: "DiagnosticInfo", 294: "UtcTime"}
TEXT_TYPES = {12, 21}  # String, LocalizedText: what a `type = "string"` tag may read
DATATYPE_NAMES = {1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32", 7: "UInt32",
                  8: "Int64", 9: "UInt64", 10: "Float", 11: "Double"}
ROOT = ua.NodeId(ua.ObjectIds.RootFolder)
HIERARCHICAL = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
BAD_NODE_UNKNOWN = ua.StatusCodes.BadNodeIdUnknown
BAD_TYPE_MISMATCH = ua.StatusCodes.BadTypeMismatch
AUTH_CODES = {ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenRejected,
              ua.StatusCodes.BadIdentityTokenInvalid}
CHUNK_DEFAULT = 1000  # when the server advertises no limit: keeps each message well below 64 KiB chunks


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, STATUS_NAMES.get(code & 0xFFFF0000, f"0x{code:08X}"))


class SessionError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Resolved:
    """Per tag, in config order: the NodeId to use, or None with the StatusCode saying why not."""

    nodes: list[ua.NodeId | None]
    status: list[int]
    problems: list[str]  # one line each, for the log
    max_nodes_per_read: int
    max_items_per_call: int


def _ns_index(ns: Namespace, device: OpcUaDevice, table: list[str]) -> int | None:
    if ns.index is not None:
        return ns.index
    uri = ns.uri if ns.uri is not None else device.namespaces[ns.alias or ""]
    try:
        return table.index(uri)
    except ValueError:
        return None


def _node_id(addr: NodeAddress, ns: int) -> ua.NodeId:
    if addr.kind == "i":
        return ua.NodeId(addr.identifier, ns, ua.NodeIdType.Numeric)
    if addr.kind == "s":
        return ua.NodeId(addr.identifier, ns, ua.NodeIdType.String)
    if addr.kind == "g":
        return ua.NodeId(addr.identifier, ns, ua.NodeIdType.Guid)
    return ua.NodeId(addr.identifier, ns, ua.NodeIdType.ByteString)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    size = size or CHUNK_DEFAULT
    return [items[i:i + size] for i in range(0, len(items), size)]


class UaSession:
    def __init__(self, device: OpcUaDevice, where: str, on_lost: Callable[[str], None]):
        self.device = device
        self.where = where
        self._on_lost = on_lost
        self.client: Client | None = None
        self.subscription_id: int | None = None
        self.silence_limit_ns = 0
        self.timeout_s = device.timeout / 1e9

    # --- connect ----------------------------------------------------------------------------------

    async def connect(self) -> None:
        dev = self.device
        client = Client(dev.endpoint, timeout=self.timeout_s, watchdog_intervall=dev.keepalive / 2e9)
        client.session_timeout = dev.session_timeout // 1_000_000
        client.name = client.description = "edge-agent"
        client.product_uri = "urn:edge-agent"
        client.application_uri = pki.default_application_uri()
        if dev.certificate is not None:
            cert = pki.load_certificate(Path(dev.certificate))
            client.application_uri = pki.application_uri_of(cert) or client.application_uri
        if dev.username is not None:
            try:
                password = dev.read_password()
            except (OSError, KeyError) as exc:
                raise SessionError("password", f"cannot read the password ({dev.password_source}): "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
            client.set_user(dev.username)
            client.set_password(password)
        client.connection_lost_callback = self._lost
        try:
            if dev.security_policy != "None":
                await self._secure(client)
            await asyncio.wait_for(client.connect(), self.timeout_s * 3)
        except SessionError:
            raise
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                client.disconnect_socket()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._explain(exc) from None
        self.client = client

    async def _secure(self, client: Client) -> None:
        dev = self.device
        mode = MODES[dev.security_mode or "SignAndEncrypt"]
        policy = POLICIES[dev.security_policy]
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), self.timeout_s * 2)
        match = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
        if not match:
            offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}"
                              for e in endpoints})
            wanted = f"{dev.security_policy}/{dev.security_mode or 'SignAndEncrypt'}"
            raise SessionError("security", f"the server offers no {wanted} endpoint (it offers {', '.join(offered)})")
        der = pki.x509_first_der(match[0].ServerCertificate or b"")
        if not der:
            raise SessionError("security", "the server sent no certificate with its secured endpoint")
        trust = Path(dev.trust_dir or ".")
        try:
            await asyncio.to_thread(pki.check_server_certificate, der, trust, trust.parent / "rejected", self.where)
        except pki.UntrustedServer as exc:
            raise SessionError("untrusted", str(exc).removeprefix(f"{self.where}: ")) from None
        await client.set_security(policy, dev.certificate or "", dev.private_key or "", server_certificate=der,
                                  mode=mode)

    def _explain(self, exc: BaseException) -> SessionError:
        dev = self.device
        if isinstance(exc, UaStatusCodeError):
            code = exc.code
            name = status_name(code)
            if code in AUTH_CODES:
                who = f"user {dev.username!r}" if dev.username else "anonymous access"
                hint = (f"check username and the password in {dev.password_source}" if dev.username
                        else "the server needs a username (set username and password_file)")
                return SessionError("auth", f"the server rejected {who} ({name}); {hint}")
            if "Certificate" in name or "Security" in name:
                return SessionError("security", f"the server refused the secure channel ({name}); it may need to "
                                    f"trust this gateway's certificate {dev.certificate}")
            return SessionError("connect", f"connect failed: {name}")
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return SessionError("timeout", f"no answer within {self.timeout_s:g}s")
        if isinstance(exc, OSError):
            return SessionError("connect", f"cannot connect ({exc.strerror or exc})")
        if isinstance(exc, UaError | ValueError):
            return SessionError("connect", f"connect failed: {exc}")
        return SessionError("connect", f"connect failed: {type(exc).__name__}: {exc}")

    async def _lost(self, exc: Exception) -> None:
        text = status_name(exc.code) if isinstance(exc, UaStatusCodeError) else (str(exc) or type(exc).__name__)
        self._on_lost(f"session lost ({text})")

    async def close(self) -> None:
        client, self.client = self.client, None
        self.subscription_id = None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            await asyncio.wait_for(client.disconnect(), self.timeout_s)
        except BaseException as exc:  # a dead server cannot answer CloseSession: drop the socket
            with contextlib.suppress(BaseException):
                await client.close_session()
            client.disconnect_socket()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _require(self) -> Client:
        if self.client is None:
            raise SessionError("connection", "not connected")
        return self.client

    # --- resolve ------------------------------------------------------------------------------------

    async def resolve(self, tags: list[OpcUaTag]) -> Resolved:
        """NodeIds for every tag from today's namespace table, checked to exist and to be numeric."""
        client = self._require()
        dev = self.device
        table = await client.get_namespace_array()
        k = len(tags)
        nodes: list[ua.NodeId | None] = [None] * k
        status = [0] * k
        problems: list[str] = []
        missing_ns: dict[str, list[str]] = {}
        paths: list[tuple[int, ua.BrowsePath]] = []
        for j, tag in enumerate(tags):
            addr = tag.address
            if isinstance(addr, NodeAddress):
                ns = _ns_index(addr.namespace, dev, table)
                if ns is None:
                    missing_ns.setdefault(addr.namespace.describe(), []).append(tag.name)
                    status[j] = BAD_NODE_UNKNOWN
                    continue
                nodes[j] = _node_id(addr, ns)
            else:
                assert isinstance(addr, BrowsePath)
                elements = []
                for ns_ref, name in addr.elements:
                    ns = _ns_index(ns_ref, dev, table)
                    if ns is None:
                        missing_ns.setdefault(ns_ref.describe(), []).append(tag.name)
                        break
                    elements.append(ua.RelativePathElement(ReferenceTypeId=HIERARCHICAL, IsInverse=False,
                                                           IncludeSubtypes=True,
                                                           TargetName=ua.QualifiedName(name, ns)))
                else:
                    paths.append((j, ua.BrowsePath(StartingNode=ROOT, RelativePath=ua.RelativePath(elements))))
                    continue
                status[j] = BAD_NODE_UNKNOWN
        for ns_text, names in missing_ns.items():
            uri = dev.namespaces.get(ns_text, ns_text)
            problems.append(f"namespace {uri!r} is not on the server, tags {', '.join(names)} stay bad")
        unknown: list[str] = []
        for chunk in _chunks(paths, CHUNK_DEFAULT):
            results = await client.uaclient.translate_browsepaths_to_nodeids([p for _, p in chunk])
            for (j, _), res in zip(chunk, results, strict=True):
                if res.StatusCode.is_good() and res.Targets:
                    target = res.Targets[0].TargetId
                    nodes[j] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                else:
                    status[j] = res.StatusCode.value or BAD_NODE_UNKNOWN
                    unknown.append(f"{tags[j].name} ({tags[j].address_text}: {status_name(status[j])})")
        max_read, max_items = await self._limits()
        # Existence and data type in one pass: a node that does not exist answers BadNodeIdUnknown here.
        present = [j for j in range(k) if nodes[j] is not None]
        non_numeric: list[str] = []
        non_text: list[str] = []
        for chunk in _chunks(present, max_read):
            dvs = await self._read_attr([nodes[j] for j in chunk], ua.AttributeIds.DataType)  # type: ignore[misc]
            for j, dv in zip(chunk, dvs, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                if code & 0x80000000:
                    status[j], nodes[j] = code, None
                    unknown.append(f"{tags[j].name} ({tags[j].address_text}: {status_name(code)})")
                    continue
                dtype = dv.Value.Value if dv.Value is not None else None
                builtin = dtype.Identifier if isinstance(dtype, ua.NodeId) and dtype.NamespaceIndex == 0 else None
                if tags[j].type == "string":
                    if builtin not in TEXT_TYPES:  # a number read as text would hide a config mistake
                        status[j], nodes[j] = BAD_TYPE_MISMATCH, None
                        what = NON_NUMERIC.get(builtin) or DATATYPE_NAMES.get(builtin) or str(dtype)
                        non_text.append(f"{tags[j].name} ({what})")
                elif builtin in NON_NUMERIC:
                    status[j], nodes[j] = BAD_TYPE_MISMATCH, None
                    non_numeric.append(f"{tags[j].name} ({NON_NUMERIC[builtin]})")
        if unknown:
            problems.append(f"{len(unknown)} tags not found, they stay bad: {', '.join(unknown[:5])}"
                            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        if non_numeric:
            problems.append(f"tags on non-numeric variables are not sampled (quality 0x83): {', '.join(non_numeric)}")
        if non_text:
            problems.append("string tags on variables that are not String or LocalizedText are not sampled "
                            f"(quality 0x83): {', '.join(non_text)}")
        return Resolved(nodes, status, problems, max_read, max_items)

    async def _read_attr(self, nodes: list[ua.NodeId], attr: ua.AttributeIds) -> list[ua.DataValue]:
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=attr) for n in nodes]
        return await self._require().uaclient.read(params)

    async def _limits(self) -> tuple[int, int]:
        ids = [ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
               ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)]
        dvs = await self._read_attr(ids, ua.AttributeIds.Value)
        out = []
        for dv in dvs:
            v = dv.Value.Value if dv.Value is not None and dv.StatusCode.is_good() else 0
            out.append(int(v) if isinstance(v, int) else 0)
        if self.device.max_nodes_per_read:
            out[0] = min(out[0], self.device.max_nodes_per_read) if out[0] else self.device.max_nodes_per_read
        return out[0], out[1]

    async def clock_skew_ns(self) -> int:
        """Server clock minus ours, from ServerStatus/CurrentTime bracketed by two local readings."""
        t0 = time.time_ns()
        node = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
        dv = (await self._read_attr([node], ua.AttributeIds.Value))[0]
        t1 = time.time_ns()
        server = dv.Value.Value if dv.Value is not None else None
        if not isinstance(server, datetime):
            return 0
        return to_ns(server) - (t0 + t1) // 2

    # --- read -----------------------------------------------------------------------------------------

    @staticmethod
    def read_requests(nodes: list[ua.NodeId], chunk: int) -> list[ua.ReadParameters]:
        """Prebuilt Read requests (one per chunk of the server's MaxNodesPerRead), reused every tick."""
        out = []
        for part in _chunks(nodes, chunk):
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in part]
            out.append(params)
        return out

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        return await self._require().uaclient.read(params)

    # --- subscribe ------------------------------------------------------------------------------------

    async def subscribe(self, items: list[tuple[int, ua.NodeId, int, int, str, float]], max_per_call: int,
                        callback: Callable[[ua.PublishResult], None]) -> list[tuple[int, int]]:
        """Create the subscription and its monitored items; (client handle, StatusCode) of every failure.

        items: (client handle = tag index, node, sampling ns, queue size, deadband type, deadband).
        """
        client = self._require()
        dev = self.device
        pub_ms = dev.publishing_interval_ns / 1e6
        keepalive_count = max(1, int(dev.keepalive / 2 // dev.publishing_interval_ns))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=pub_ms,
            RequestedLifetimeCount=max(3 * keepalive_count, int(dev.session_timeout // dev.publishing_interval_ns)),
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        result = await client.uaclient.create_subscription(params, callback)
        self.subscription_id = result.SubscriptionId
        # The server may revise both; it must answer at least every interval x keepalive count.
        keepalive_ms = result.RevisedPublishingInterval * max(1, result.RevisedMaxKeepAliveCount)
        self.silence_limit_ns = int(1.5 * keepalive_ms * 1e6)
        failures: list[tuple[int, int]] = []
        for chunk in _chunks(items, max_per_call):
            req = ua.CreateMonitoredItemsParameters()
            req.SubscriptionId = result.SubscriptionId
            req.TimestampsToReturn = ua.TimestampsToReturn.Both
            for handle, node, sampling_ns, queue, band_type, band in chunk:
                flt = None
                if band_type != "none":
                    flt = ua.DataChangeFilter(
                        Trigger=ua.DataChangeTrigger.StatusValue,
                        DeadbandType=ua.DeadbandType.Absolute if band_type == "absolute" else ua.DeadbandType.Percent,
                        DeadbandValue=float(band))
                mp = ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=sampling_ns / 1e6, Filter=flt,
                                             QueueSize=queue, DiscardOldest=True)
                req.ItemsToCreate.append(ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mp))
            results = await client.uaclient.create_monitored_items(req)
            for (handle, *_), res in zip(chunk, results, strict=True):
                if not res.StatusCode.is_good():
                    failures.append((handle, res.StatusCode.value))
        return failures


UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ns(dt: datetime) -> int:
    """Exact unix ns of an asyncua datetime (UTC-aware; naive ones are UTC by asyncua's convention)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - UNIX_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def hostname() -> str:
    return socket.gethostname()
