"""The `edge-agent` command. User errors are one clear line and an exit code, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path

from edge_agent import __version__
from edge_agent.config.loader import EX_CONFIG, Config, ConfigError, load_config
from edge_agent.config.units import format_duration
from edge_agent.spool import SpoolUnavailable

EX_CANTCREAT = 73
log = logging.getLogger("edge_agent")


# Before numpy is imported (nothing above imports it): one BLAS thread. numpy's OpenBLAS otherwise
# starts a thread per core at import, ~50 ms of CPU at every start on a 2-core machine (plus
# wall time), for matrix sizes (a multivariate model's fit) that one thread handles as fast.
# An OPENBLAS_NUM_THREADS set by the operator wins.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(*BLAS_THREADS)
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run the agent")
    p_run.add_argument("-c", "--config", required=True, type=Path)

    p_check = sub.add_parser("check", help="validate a config file and summarise it")
    p_check.add_argument("-c", "--config", required=True, type=Path)
    p_check.add_argument("--plan", action="store_true", help="print each device's read plan")

    p_tail = sub.add_parser("tail", help="print decoded samples from the broker, one JSON object per line")
    p_tail.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p_tail.add_argument("--topic", default="edge/+/data")
    p_tail.add_argument("--count", type=int, default=None, help="exit after N samples")
    p_tail.add_argument("--units", action="store_true",
                        help="add each tag's eng_unit from the agents' retained metadata (TOPIC/../meta)")
    p_tail.add_argument("--dedupe", action="store_true",
                        help="skip frames already seen, by (agent, seq): redelivered frames after an outage")

    p_demo = sub.add_parser("demo", help="the whole system in one command: simulators, broker, agent, live view")
    p_demo.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    p_demo.add_argument("--broker", help="use this broker (mqtt://HOST:PORT) instead of the embedded one")
    p_demo.add_argument("--plain", action="store_true", help="plain text lines even on a terminal")

    p_status = sub.add_parser("status", help="devices, uplink and spool of the running agent, from its metrics")
    p_status.add_argument("--url", default="http://127.0.0.1:9108/metrics")

    p_bench = sub.add_parser("bench", help="measure the pipeline against JSON, or the filter kernels against NumPy")
    p_bench.add_argument("what", nargs="?", choices=("pipeline", "filters", "startup"), default="pipeline",
                         help="pipeline (default): CPU and bytes per point; filters: samples/s per kernel; "
                              "startup: a fresh process to every kernel loaded from NUMBA_CACHE_DIR")
    p_bench.add_argument("--tags", type=int, default=1000, help="pipeline only")
    p_bench.add_argument("--polls", type=int, default=500, help="pipeline only")
    p_bench.add_argument("--json", action="store_true", help="filters, startup: one JSON document instead of a table")
    p_bench.add_argument("--runs", type=int, default=9, help="startup only: cached starts, the best is reported")
    p_bench.add_argument("--cold", action="store_true", help="startup only: also report the compiling first start")

    p_replay = sub.add_parser("replay", help="run the configured filters over a historian CSV export")
    p_replay.add_argument("-c", "--config", required=True, type=Path)
    p_replay.add_argument("--csv", required=True, type=Path, help="input: time column, then device/tag columns")
    p_replay.add_argument("--out", required=True, type=Path, help="output CSV: values with flags and scores")
    p_replay.add_argument("--events", type=Path, help="also write the events the agent would raise (JSON lines)")
    p_replay.add_argument("--save-baselines", type=Path, metavar="DIR",
                          help="write trained multivariate models to DIR (for `baseline = ...` in the config)")
    p_replay.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    p_cert = sub.add_parser("opcua-cert", help="create this gateway's OPC UA application-instance certificate")
    p_cert.add_argument("--dir", required=True, type=Path, help="PKI directory: writes own/cert.der, own/key.pem")
    p_cert.add_argument("--uri", help="application URI (default urn:<hostname>:edge-agent)")
    p_cert.add_argument("--hostname", help="host name for the certificate (default: this machine's)")
    p_cert.add_argument("--days", type=int, default=730, help="validity in days (default 730)")
    p_cert.add_argument("--force", action="store_true", help="replace an existing certificate and key")

    args = parser.parse_args(argv)
    if args.command == "opcua-cert":
        from drivers.opcua.certcli import run_opcua_cert  # late: only this command needs cryptography

        return run_opcua_cert(args.dir, args.uri, args.hostname, args.days, args.force)
    if args.command == "bench" and args.what == "filters":
        from edge_agent.filters.bench import run_filter_bench

        return run_filter_bench(as_json=args.json)
    if args.command == "bench" and args.what == "startup":
        from edge_agent.filters.bench import run_startup_bench

        return run_startup_bench(max(1, args.runs), as_json=args.json, cold=args.cold)
    if args.command == "bench":
        from edge_agent.bench import run_bench

        print(run_bench(args.tags, args.polls).report())
        return 0
    if args.command == "demo":
        return demo(args.duration, args.broker, True if args.plain else None)
    if args.command == "status":
        return status(args.url)
    if args.command == "tail":
        from edge_agent.tail import run_tail

        return run_tail(args.broker, args.topic, args.count, args.dedupe, args.units)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EX_CONFIG
    if args.command == "check":
        print_summary(cfg, plan=args.plan)
        return 0
    if args.command == "replay":
        return replay(cfg, args)
    return run(cfg)


def replay(cfg: Config, args: argparse.Namespace) -> int:
    from edge_agent.replay import ReplayError, run_replay

    try:
        summary = run_replay(cfg, args.csv, args.out, events_out=args.events,
                             progress=False if args.no_progress else None, save_baselines=args.save_baselines)
    except ReplayError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except ValueError as exc:  # e.g. a multivariate baseline file that does not fit
        print(f"{cfg.path}: {exc}", file=sys.stderr)
        return EX_CONFIG
    fired = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.flagged.items())) or "none"
    print(f"{args.out}: {summary.rows} rows, {summary.points} samples; flagged samples by filter: {fired}; "
          f"{summary.events} events ({summary.events_held_back} held back by rate limiting)", file=sys.stderr)
    return 0


def print_summary(cfg: Config, plan: bool = False) -> None:
    from drivers.registry import plugins

    registry = plugins()
    described = [(d, registry[d.protocol].describe(d)) for d in cfg.devices]
    tags = sum(len(d.tags) for d in cfg.devices)
    requests = sum(s.requests_per_poll for _, s in described)
    subscribed = sum(s.subscribed for _, s in described)
    up = cfg.uplink
    print(f"{cfg.path}: OK")
    print(f"  agent    {cfg.agent.id}, state in {cfg.agent.state_dir}")
    print(f"  uplink   {up.url} topic {up.topic_prefix}/{cfg.agent.id}/data, {up.inflight} in flight")
    print(f"  batch    closes at {cfg.batch.max_points} points or {format_duration(cfg.batch.max_interval)}")
    kinds = ", ".join(f"{name} ({spec.kind})" for name, spec in cfg.filters.items()) or "none"
    print(f"  filters  {len(cfg.filters)}: {kinds}")
    print(f"  devices  {len(cfg.devices)}, {tags} tags, {requests} requests per poll"
          + (f", {subscribed} tags by subscription" if subscribed else ""))
    for dev, summary in described:
        endpoint = getattr(dev, "endpoint", "")
        work = summary.headline or (f"every {format_duration(dev.poll_interval)}: "
                                    f"{len(dev.tags)} tags in {summary.requests_per_poll} requests")
        print(f"    {dev.name:<16} {dev.protocol} {endpoint} {work}")
        if plan:
            for line in summary.plan:
                print(f"        {line}")


def run(cfg: Config) -> int:
    from edge_agent.logs import setup_logging

    setup_logging(cfg.agent.log_level)
    state = cfg.agent.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(f"{cfg.path}: agent.state_dir: cannot write {state}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    # Before numba is imported: compiled kernels are cached per machine inside the state directory.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(state / "numba-cache"))
    from edge_agent.agent import Agent

    async def _main() -> None:
        stop = asyncio.Event()
        reloads: asyncio.Queue[Config] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(cfg.path, reloads)))
        await Agent(cfg).run(stop, reload=reloads)

    from edge_agent.eventloop import LoopUnavailable, loop_factory

    try:
        factory, loop_name = loop_factory(cfg.agent.event_loop)
    except LoopUnavailable as exc:
        print(f"{cfg.path}: agent.event_loop: {exc}", file=sys.stderr)
        return EX_CONFIG
    log.info("event loop: %s", loop_name)
    # A watchdog kill (SIGABRT) then leaves a stack trace of every thread in the journal: where it hung.
    faulthandler.enable()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_main())
    except SpoolUnavailable as exc:
        print(f"{cfg.path}: {exc}", file=sys.stderr)
        return 74  # EX_IOERR
    return 0


def demo(duration: float, broker: str | None, plain: bool | None) -> int:
    if duration < 2 * 8:
        print("edge-agent demo: --duration must be at least 16 s (the outage alone takes 5 s)", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-agent" / "numba"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache))  # compiled once per machine, not once per demo
    from edge_agent.demo.run import run_demo

    try:
        return asyncio.run(run_demo(duration, broker, plain))
    except KeyboardInterrupt:
        return 130


async def _reload(path: Path, reloads: asyncio.Queue[Config]) -> None:
    """SIGHUP: validate the file again; a bad one is reported line by line and the running config stays."""
    try:
        new = await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("reload rejected, keeping the running config: %s", line, extra={"every_attempt": True})
        return
    log.info("reload: %s is valid, applying", path)
    await reloads.put(new)


def status(url: str) -> int:
    """Print devices, uplink and spool from the local metrics endpoint, for an operator at the box."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # a local, operator-given URL
            text = resp.read().decode()
    except OSError as exc:
        print(f"edge-agent status: cannot read {url}: {getattr(exc, 'reason', exc)} (is the agent running, "
              "with [metrics] enabled?)", file=sys.stderr)
        return 69
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            samples.setdefault(smp.name, []).append((smp.labels, smp.value))

    def one(name: str, default: float = 0.0) -> float:
        return samples.get(name, [({}, default)])[0][1]

    def by_device(name: str) -> dict[str, float]:
        return {labels["device"]: v for labels, v in samples.get(name, []) if "device" in labels}

    info = samples.get("edge_agent_info", [({}, 0)])[0][0]
    print(f"agent {info.get('agent', '?')}  version {info.get('version', '?')}  boot {info.get('boot', '?')[:8]}  "
          f"config {info.get('config', '?')}")
    polls = by_device("edge_agent_device_polls_total")
    errors: dict[str, float] = {}
    for labels, v in samples.get("edge_agent_device_errors_total", []):  # every kind, connect failures too
        errors[labels["device"]] = errors.get(labels["device"], 0) + v
    up, skipped = by_device("edge_agent_device_connected"), by_device("edge_agent_device_skipped_ticks_total")
    print(f"{'DEVICE':<20} {'STATE':<6} {'POLLS':>10} {'ERRORS':>8} {'SKIPPED':>8}")
    for dev in sorted(polls):
        print(f"{dev:<20} {'up' if up.get(dev) else 'DOWN':<6} {polls[dev]:>10.0f} {errors.get(dev, 0):>8.0f} "
              f"{skipped.get(dev, 0):>8.0f}")
    print(f"uplink  {'connected' if one('edge_agent_uplink_connected') else 'DISCONNECTED'}, "
          f"{one('edge_agent_frames_published_total'):.0f} frames / {one('edge_agent_points_published_total'):.0f} "
          f"points published, {one('edge_agent_uplink_refused_total'):.0f} refused")
    dropped = sum(v for _, v in samples.get("edge_agent_spool_dropped_points_total", []))
    print(f"spool   {one('edge_agent_spool_frames'):.0f} frames, {one('edge_agent_spool_points'):.0f} points, "
          f"{one('edge_agent_spool_bytes') / 1e6:.1f} MB waiting; {dropped:.0f} points dropped"
          f"{'; POLLS PAUSED (spool full)' if one('edge_agent_spool_blocked') else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
