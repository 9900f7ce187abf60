"""`edge-agent-sim opcua`: the plant over OPC UA, with security, users and faults switchable.

Same conventions as `edge-agent-sim modbus`: `--port 0 --ready-file F` for a race-free ephemeral
port, readiness is the file appearing, SIGTERM ends with one JSON line on stdout and exit 0, errors
are one line on stderr. Faults at run time: SIGUSR1 makes the server forget every session (sockets
stay open, subscriptions go quiet), SIGUSR2 aborts every connection. A server restart is a real one:
kill the process and start it again (`--extra-namespaces` moves the plant's namespace index).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from simulators.labels import label_writer
from simulators.plant import DEFAULT_TICK_NS

# The endpoints --security accepts (simulators/opcua/server.py maps them to asyncua's policy types);
# spelled out here so building the `edge-agent-sim` parser does not import asyncua.
SECURITY_NAMES = (
    "None", "Basic256Sha256-Sign", "Basic256Sha256-SignAndEncrypt", "Aes128_Sha256_RsaOaep-Sign",
    "Aes128_Sha256_RsaOaep-SignAndEncrypt", "Aes256_Sha256_RsaPss-Sign", "Aes256_Sha256_RsaPss-SignAndEncrypt",
)


def add_parser(sub: argparse._SubParsersAction, port_type, tick_type) -> None:
    """The `opcua` subcommand; the port and tick parsers are the shared ones of simulators/cli.py."""
    p = sub.add_parser("opcua", help="serve the plant over OPC UA (opc.tcp://HOST:PORT/edge-agent/plant)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port_type, default=4840, help="TCP port, 0 = any free port (default 4840)")
    p.add_argument("--seed", type=int, default=1, help="plant seed: same seed, same values (default 1)")
    p.add_argument("--tick", type=tick_type, default=DEFAULT_TICK_NS, help="plant update period (default 100ms)")
    p.add_argument("--ready-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--profile", type=Path, help="profile file (TOML) of devices and points instead of the built-in "
                   "plant (the same file as for `edge-agent-sim modbus`; addresses are ignored)")
    p.add_argument("--labels", type=Path, help="append the ground truth of injected anomalies here (JSON lines)")
    p.add_argument("--security", default="None",
                   help="comma-separated endpoints to offer, or 'all': "
                        + ", ".join(SECURITY_NAMES) + " (default None)")
    p.add_argument("--pki", type=Path,
                   help="directory of the server certificate (own/cert.der, own/key.pem; created if missing). "
                        "Default: a temporary directory")
    p.add_argument("--trusted-clients", type=Path, metavar="DIR",
                   help="accept only client certificates in DIR (or issued by a CA in it), re-read at each "
                        "session; default: any client certificate")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="accept this user (repeatable); anonymous access is then refused unless --allow-anonymous")
    p.add_argument("--allow-anonymous", action="store_true", help="accept anonymous sessions even with --user")
    p.add_argument("--bad-status", action="append", default=[], metavar="DEVICE.POINT=CODE",
                   help="serve this StatusCode on a node, e.g. boiler.pressure=BadSensorFailure (repeatable)")
    p.add_argument("--drop-sessions-every", type=tick_type, metavar="DURATION",
                   help="forget every client session this often (also: SIGUSR1 now)")
    p.add_argument("--extra-namespaces", type=int, default=0, metavar="N",
                   help="register N spare namespaces first, so the plant's namespace index is 2+N")
    p.add_argument("--max-nodes-per-read", type=int, default=10_000, metavar="N",
                   help="advertised MaxNodesPerRead; larger Reads are refused with BadTooManyOperations")
    p.add_argument("--clock-offset", type=tick_type, default=0, metavar="DURATION",
                   help="run the server clock this far ahead (CurrentTime, server timestamps), e.g. 5m")
    p.add_argument("--bench-nodes", type=int, default=0, metavar="N",
                   help="add N Double nodes (ns=<plant>;s=bench.0 ...) that change every tick, for load tests")


def _security(text: str) -> list[str]:
    if text.strip() == "all":
        return list(SECURITY_NAMES)
    return [s.strip() for s in text.split(",") if s.strip()]


def _write_ready_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> int:
    import logging

    from drivers.opcua import pki
    from simulators.opcua.server import APPLICATION_URI, OpcUaSimServer, status_code
    from simulators.plant import PLANT, ProfileError, load_profile

    logging.getLogger("asyncua").setLevel(logging.ERROR)  # it logs every request at INFO, and setup warnings

    try:
        security = _security(args.security)
        users = {}
        for spec in args.user:
            name, sep, password = spec.partition(":")
            if not sep or not name:
                raise ValueError(f"--user {spec!r}: use NAME:PASSWORD")
            users[name] = password
        points = PLANT if args.profile is None else load_profile(args.profile)
        bad = {}
        for spec in args.bad_status:
            key, sep, code = spec.partition("=")
            if not sep:
                raise ValueError(f"--bad-status {spec!r}: use DEVICE.POINT=CODE")
            bad[key] = status_code(code)
    except (ValueError, ProfileError) as e:
        print(f"edge-agent-sim opcua: {e}", file=sys.stderr)
        return 2
    tmp = None
    cert = key = None
    if any(s != "None" for s in security):
        directory = args.pki
        if directory is None:
            tmp = tempfile.TemporaryDirectory(prefix="edge-agent-sim-pki-")
            directory = Path(tmp.name)
        cert, key = directory / "own" / "cert.der", directory / "own" / "key.pem"
        if not (cert.exists() and key.exists()):
            pki.generate(directory, application_uri=APPLICATION_URI, force=True)
    try:
        server = OpcUaSimServer(
            seed=args.seed, tick_ns=args.tick, points=points, security=security, certificate=cert, private_key=key,
            users=users, allow_anonymous=True if args.allow_anonymous else None,
            extra_namespaces=args.extra_namespaces, max_nodes_per_read=args.max_nodes_per_read,
            bench_nodes=args.bench_nodes, bad_status=bad, clock_offset_ns=args.clock_offset,
            trusted_clients=args.trusted_clients)
    except ValueError as e:
        print(f"edge-agent-sim opcua: {e}", file=sys.stderr)
        return 2
    try:
        await server.start(args.host, args.port)
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    faults: set[asyncio.Task[object]] = set()

    def fault(coro_fn) -> None:
        task = loop.create_task(coro_fn())
        faults.add(task)
        task.add_done_callback(faults.discard)

    async def drop_connections() -> int:
        return server.drop_connections()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, fault, server.drop_sessions)
    loop.add_signal_handler(signal.SIGUSR2, fault, drop_connections)
    dropper = None
    labels = loop.create_task(label_writer(server, args.labels)) if args.labels is not None else None
    if args.drop_sessions_every:
        async def drop_loop() -> None:
            while True:
                await asyncio.sleep(args.drop_sessions_every / 1e9)
                await server.drop_sessions()
        dropper = loop.create_task(drop_loop())
    try:
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, server.port)
        extra = f", certificate {cert}" if cert else ""
        print(f"opcua simulator listening on opc.tcp://{args.host}:{server.port}/edge-agent/plant "
              f"(namespace index {server.ns}, security {','.join(security)}, seed {args.seed}, "
              f"{len(users)} users{extra})", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        for task in (dropper, labels):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        if args.ready_file is not None:
            with contextlib.suppress(OSError):
                args.ready_file.unlink()
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(server.summary()), flush=True)
    return 0
