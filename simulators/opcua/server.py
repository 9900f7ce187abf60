"""The plant as an OPC UA server (asyncua), with switchable security, users and fault injection.

Same plant, same values as the Modbus simulator: every point's value for tick k is
`plant.value_at_tick(point, k, seed, tick_ns)`, written at the start of the tick with
SourceTimestamp = k * tick_ns exactly, so a test can recompute what it should have received from the
timestamp alone. Address space:

    Objects/Plant (ns=<plant>;s=Plant)
        serial (ns=<plant>;s=Plant.serial, a String: not a sample)
        <device> (ns=<plant>;s=<device>)
            <point> (ns=<plant>;s=<device>.<point>, browse name <plant>:<point>, typed as the point)

`<plant>` is the index of NAMESPACE_URI; `extra_namespaces` registers dummy namespaces first so the
index moves, as on a real server whose namespace table changed across a restart.

Fault seams: `set_status` (a chosen StatusCode on a node from now on), `drop_sessions` (the server
forgets every session, sockets stay open: the client's subscriptions go quiet), `drop_connections`
(sockets aborted), and a restart is `stop()` plus a new server on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole

from simulators.opcua import deadband
from simulators.opcua.cli import SECURITY_NAMES
from simulators.plant import DEFAULT_TICK_NS, PLANT, Point, text_of, value_at_tick

log = logging.getLogger("simulators.opcua")

NAMESPACE_URI = "urn:edge-agent:plant-sim"
APPLICATION_URI = "urn:edge-agent:plant-sim:server"
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

VARIANT = {
    "bool": ua.VariantType.Boolean, "int16": ua.VariantType.Int16, "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32, "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64, "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double, "string": ua.VariantType.String,
}

# name -> (asyncua policy type) for --security; "None" is the unsecured endpoint.
SECURITY = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256-Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256-SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128_Sha256_RsaOaep-Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes128_Sha256_RsaOaep-SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256_Sha256_RsaPss-Sign": ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    "Aes256_Sha256_RsaPss-SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}


assert tuple(SECURITY) == SECURITY_NAMES

# EURange (Part 8 5.3.2.2) of the built-in plant's analog points, in engineering units: what a percent
# deadband is a percentage of. Points without one (counters, bits, raw words, profile points) refuse a
# percent deadband with BadFilterNotAllowed, as a real server's non-analog items do.
EU_RANGES: dict[str, tuple[float, float]] = {
    "boiler.temp_supply": (0.0, 150.0), "boiler.temp_return": (0.0, 150.0), "boiler.pressure": (0.0, 10.0),
    "mixer.flow_setpoint": (0.0, 50.0), "mixer.flow_actual": (0.0, 50.0),
}


def ns_of_tick(k: int, tick_ns: int) -> datetime:
    return UNIX_EPOCH + timedelta(microseconds=k * tick_ns // 1000)


def status_code(name_or_value: str | int) -> int:
    """'BadSensorFailure' or 0x808B0000 -> int; ValueError naming the bad input."""
    if isinstance(name_or_value, int):
        return name_or_value
    text = name_or_value.strip()
    if text.lower().startswith("0x"):
        return int(text, 16)
    value = getattr(ua.StatusCodes, text, None)
    if not isinstance(value, int):
        raise ValueError(f"unknown StatusCode {text!r} (use a name such as BadSensorFailure, or 0x808B0000)")
    return value


class _Users:
    """Username/password check for the simulator; None (access denied) for anyone else."""

    def __init__(self, users: dict[str, str], allow_anonymous: bool):
        self.users = users
        self.allow_anonymous = allow_anonymous
        self.rejected = 0

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None and self.allow_anonymous:
            return User(role=UserRole.User)
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        self.rejected += 1
        log.info("rejected user %r", username)
        return None


@dataclass
class _Node:
    point: Point | None  # None: a load-generator node
    nodeid: ua.NodeId
    vtype: ua.VariantType


class OpcUaSimServer:
    def __init__(
        self,
        seed: int = 1,
        tick_ns: int = DEFAULT_TICK_NS,
        points: Sequence[Point] = PLANT,
        *,
        security: Sequence[str] = ("None",),
        certificate: Path | None = None,
        private_key: Path | None = None,
        users: dict[str, str] | None = None,
        allow_anonymous: bool | None = None,
        extra_namespaces: int = 0,
        max_nodes_per_read: int = 10_000,
        bench_nodes: int = 0,
        bad_status: dict[str, int] | None = None,
        clock_offset_ns: int = 0,
        trusted_clients: Path | None = None,
    ) -> None:
        if tick_ns <= 0:
            raise ValueError("tick_ns must be positive")
        unknown = [s for s in security if s not in SECURITY]
        if unknown:
            raise ValueError(f"unknown security {unknown[0]!r} (known: {', '.join(SECURITY)})")
        if any(s != "None" for s in security) and (certificate is None or private_key is None):
            raise ValueError("secured endpoints need a server certificate and private key")
        self.seed, self.tick_ns, self.points = seed, tick_ns, tuple(points)
        self.security = tuple(security)
        self.certificate, self.private_key = certificate, private_key
        self.users = _Users(dict(users or {}), allow_anonymous if allow_anonymous is not None else not users)
        self.extra_namespaces = extra_namespaces
        self.max_nodes_per_read = max_nodes_per_read
        self.bench_nodes = bench_nodes
        # A server whose clock is off: ServerStatus/CurrentTime and ServerTimestamps are shifted (the
        # source timestamps stay on the plant's ticks, so values remain predictable).
        self.clock_offset_ns = clock_offset_ns
        # A directory of client certificates (or their CAs) the server trusts; None: any client certificate.
        self.trusted_clients = trusted_clients
        self.refused_clients = 0
        self._status: dict[str, int] = {}  # "device.point" -> StatusCode forced on that node
        for key, code in (bad_status or {}).items():
            self._check_key(key)
            self._status[key] = code
        self.reads: Counter[str] = Counter()  # "calls", "nodes", "refused"
        self.ticks_written = 0
        self.clock = time.time_ns  # what "now" is for the ticks (and for the label writer)
        self.ns = 0
        self._server: Server | None = None
        self._nodes: list[_Node] = []
        self._by_key: dict[str, _Node] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._port = 0
        self._current_time = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 4840) -> None:
        deadband.install()  # asyncua's server lacks percent deadband (simulators/opcua/deadband.py)
        server = Server()
        server.iserver.set_user_manager(self.users)  # type: ignore[arg-type]
        await server.init()
        server.set_server_name("edge-agent plant simulator")
        server.disable_clock(True)  # CurrentTime is written with each tick, shifted by clock_offset_ns
        await server.set_application_uri(APPLICATION_URI)
        server.set_endpoint(f"opc.tcp://{host}:{port}/edge-agent/plant")
        server.set_security_policy([SECURITY[s] for s in self.security])
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.users.allow_anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        if self.trusted_clients is not None:
            server.set_certificate_validator(self._validate_client)
        for i in range(self.extra_namespaces):
            await server.register_namespace(f"urn:edge-agent:plant-sim:spare{i}")
        self.ns = await server.register_namespace(NAMESPACE_URI)
        await self._write_limits(server)
        await self._build(server)
        await self._add_eu_ranges(server)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        await server.start()
        self._server = server
        assert server.bserver is not None
        self._port = int(server.bserver.port or port)
        k = self.clock() // self.tick_ns
        await self._write_tick(k)
        self._ticker = asyncio.create_task(self._tick_loop(k + 1))

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not listening")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/edge-agent/plant"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if server is not None:
            self.drop_connections(server)
            await server.stop()

    # --- faults ---------------------------------------------------------------------------------

    def set_status(self, key: str, code: int | None) -> None:
        """From the next tick on, node `device.point` carries StatusCode `code` (None: back to Good)."""
        self._check_key(key)
        if code is None:
            self._status.pop(key, None)
        else:
            self._status[key] = code

    async def drop_sessions(self) -> int:
        """The server forgets every client session (and its subscriptions); the TCP connections stay."""
        server = self._require()
        sessions = list(server.iserver._external_sessions.values())
        for s in sessions:
            await s.close_session(True)
        log.info("fault: dropped %d sessions", len(sessions))
        return len(sessions)

    def drop_connections(self, server: Server | None = None) -> int:
        server = server or self._require()
        clients = list(server.bserver.clients) if server.bserver is not None else []
        for proto in clients:
            if proto.transport is not None:
                proto.transport.abort()
        return len(clients)

    @property
    def sessions(self) -> int:
        return len(self._require().iserver._external_sessions)

    # --- internals ------------------------------------------------------------------------------

    def _require(self) -> Server:
        if self._server is None:
            raise RuntimeError("server is not running")
        return self._server

    def _check_key(self, key: str) -> None:
        if not any(f"{p.device}.{p.name}" == key for p in self.points) and not key.startswith("bench."):
            raise ValueError(f"no point {key!r} (use DEVICE.POINT, e.g. boiler.pressure)")

    async def _write_limits(self, server: Server) -> None:
        node = server.get_node(ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead))
        await node.write_value(ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32))

    async def _build(self, server: Server) -> None:
        ns = self.ns
        plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns))
        folders = {}
        self._nodes, self._by_key = [], {}
        for p in self.points:
            if p.device not in folders:
                folders[p.device] = await plant.add_folder(ua.NodeId(p.device, ns), ua.QualifiedName(p.device, ns))
            vtype = VARIANT[p.type]
            initial = ua.Variant(False if p.type == "bool" else "" if p.type == "string" else
                                 0 if "int" in p.type else 0.0, vtype)
            var = await folders[p.device].add_variable(
                ua.NodeId(f"{p.device}.{p.name}", ns), ua.QualifiedName(p.name, ns), initial, datatype=None)
            if p.eng_unit or p.description:
                await var.write_attribute(ua.AttributeIds.Description,
                                          ua.DataValue(ua.Variant(ua.LocalizedText(p.description or p.eng_unit))))
            node = _Node(p, var.nodeid, vtype)
            self._nodes.append(node)
            self._by_key[f"{p.device}.{p.name}"] = node
        # A non-numeric variable, as every real server has: clients must refuse it clearly, not sample it.
        await plant.add_variable(ua.NodeId("Plant.serial", ns), ua.QualifiedName("serial", ns),
                                 ua.Variant("SIM-0001", ua.VariantType.String))
        if self.bench_nodes:
            bench = await plant.add_folder(ua.NodeId("bench", ns), ua.QualifiedName("bench", ns))
            for i in range(self.bench_nodes):
                var = await bench.add_variable(ua.NodeId(f"bench.{i}", ns), ua.QualifiedName(f"b{i}", ns),
                                               ua.Variant(0.0, ua.VariantType.Double))
                node = _Node(None, var.nodeid, ua.VariantType.Double)
                self._nodes.append(node)
                self._by_key[f"bench.{i}"] = node

    async def _validate_client(self, cert, app_description) -> None:
        """CreateSession with a client certificate: refused (BadCertificateUntrusted) unless it is in
        `trusted_clients`, read again each time so an operator's "trust this client" needs no restart."""
        from asyncua.common.utils import ServiceError
        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        assert self.trusted_clients is not None
        options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        try:
            if not any(f.suffix.lower() in (".der", ".pem") for f in self.trusted_clients.iterdir()):
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)  # asyncua's store refuses to be empty
            store = TrustStore([self.trusted_clients], [])
            await store.load()
            await CertificateValidator(options, store).validate(cert, app_description)
        except Exception:
            self.refused_clients += 1
            log.info("refused client certificate %s", cert.subject.rfc4514_string())
            raise

    async def _add_eu_ranges(self, server: Server) -> None:
        """An EURange property on each analog point, and its span where the deadband filter finds it."""
        spans: dict[ua.NodeId, float] = {}
        for key, (low, high) in EU_RANGES.items():
            node = self._by_key.get(key)
            if node is None:
                continue
            var = server.get_node(node.nodeid)
            await var.add_property(ua.NodeId(f"{key}.EURange", self.ns), ua.QualifiedName("EURange", 0),
                                   ua.Range(Low=low, High=high),
                                   datatype=ua.NodeId(ua.ObjectIds.Range))
            spans[node.nodeid] = high - low
        server.iserver.aspace.eu_spans = spans  # type: ignore[attr-defined]

    async def _pre_read(self, event, dispatcher) -> None:
        """Counts Read calls, and refuses one over MaxNodesPerRead as a real server does."""
        params = event.request_params
        n = len(params.NodesToRead)
        if n == 1 and params.NodesToRead[0].NodeId.NamespaceIndex == 0:
            return  # the client's keepalive probe (ServerState) and other single standard reads
        self.reads["calls"] += 1
        self.reads["nodes"] += n
        if self.max_nodes_per_read and n > self.max_nodes_per_read:
            self.reads["refused"] += 1
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)

    async def _tick_loop(self, k: int) -> None:
        """Writes tick k at its start on the wall clock; a late loop skips to the current tick."""
        while True:
            delay = (k * self.tick_ns - self.clock()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            now_k = self.clock() // self.tick_ns
            k = max(k, now_k)
            await self._write_tick(k)
            k += 1

    async def _write_tick(self, k: int) -> None:
        aspace = self._require().iserver.aspace
        src = ns_of_tick(k, self.tick_ns)
        now = datetime.now(UTC) + timedelta(microseconds=self.clock_offset_ns // 1000)
        current = ua.DataValue(ua.Variant(now, ua.VariantType.DateTime), SourceTimestamp=now, ServerTimestamp=now)
        await aspace.write_attribute_value(self._current_time, ua.AttributeIds.Value, current)
        status = self._status
        for i, (key, node) in enumerate(self._by_key.items()):
            if i % 500 == 499:
                await asyncio.sleep(0)  # a big tick must not starve the server's request handling
            code = status.get(key, 0)
            if node.point is not None:
                v = value_at_tick(node.point, k, self.seed, self.tick_ns)
                value = bool(v) if node.vtype == ua.VariantType.Boolean else (
                    text_of(node.point, v) if node.vtype == ua.VariantType.String else
                    v if node.vtype in (ua.VariantType.Float, ua.VariantType.Double) else int(v))
            else:
                value = float(k % 1_000_000) + int(key[6:]) * 1e-3  # changes every tick
            dv = ua.DataValue(ua.Variant(value, node.vtype), StatusCode=ua.StatusCode(code),
                              SourceTimestamp=src, ServerTimestamp=now)
            await aspace.write_attribute_value(node.nodeid, ua.AttributeIds.Value, dv)
        self.ticks_written += 1

    def summary(self) -> dict[str, object]:
        return {"reads": dict(self.reads), "ticks": self.ticks_written, "rejected_users": self.users.rejected,
                "refused_clients": self.refused_clients}
