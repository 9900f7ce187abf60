"""The `edge-agent` command. User errors are one clear line and an exit code, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from edge_agent import __version__
from edge_agent.config.loader import EX_CONFIG, Config, ConfigError, load_config
from edge_agent.config.units import format_duration

EX_CANTCREAT = 73
log = logging.getLogger("edge_agent")


def main(argv: list[str] | None = None) -> int:
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
    p_tail.add_argument("--dedupe", action="store_true",
                        help="skip frames already seen, by (agent, seq): redelivered frames after an outage")

    p_bench = sub.add_parser("bench", help="measure CPU and bytes per point of the pipeline against JSON")
    p_bench.add_argument("--tags", type=int, default=1000)
    p_bench.add_argument("--polls", type=int, default=500)

    args = parser.parse_args(argv)
    if args.command == "bench":
        from edge_agent.bench import run_bench

        print(run_bench(args.tags, args.polls).report())
        return 0
    if args.command == "tail":
        from edge_agent.tail import run_tail

        return run_tail(args.broker, args.topic, args.count, args.dedupe)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EX_CONFIG
    if args.command == "check":
        print_summary(cfg, plan=args.plan)
        return 0
    return run(cfg)


def print_summary(cfg: Config, plan: bool = False) -> None:
    from drivers.registry import plugins

    registry = plugins()
    described = [(d, registry[d.protocol].describe(d)) for d in cfg.devices]
    tags = sum(len(d.tags) for d in cfg.devices)
    requests = sum(s.requests_per_poll for _, s in described)
    up = cfg.uplink
    print(f"{cfg.path}: OK")
    print(f"  agent    {cfg.agent.id}, state in {cfg.agent.state_dir}")
    print(f"  uplink   {up.url} topic {up.topic_prefix}/{cfg.agent.id}/data, {up.inflight} in flight")
    print(f"  batch    closes at {cfg.batch.max_points} points or {format_duration(cfg.batch.max_interval)}")
    kinds = ", ".join(f"{name} ({spec.kind})" for name, spec in cfg.filters.items()) or "none"
    print(f"  filters  {len(cfg.filters)}: {kinds}")
    print(f"  devices  {len(cfg.devices)}, {tags} tags, {requests} requests per poll")
    for dev, summary in described:
        endpoint = getattr(dev, "endpoint", "")
        print(
            f"    {dev.name:<16} {dev.protocol} {endpoint} every {format_duration(dev.poll_interval)}: "
            f"{len(dev.tags)} tags in {summary.requests_per_poll} requests"
        )
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
