"""Prometheus metrics, read from the agent's own counters at scrape time.

Nothing on the hot path touches a metric object: drivers, filters, the spool and the uplink keep
plain counters, and this collector turns them into metric families only when Prometheus (or
`edge-agent status`) asks. A scrape every 15 s costs nothing between scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from drivers.api import LATENCY_BUCKETS
from edge_agent import __version__

if TYPE_CHECKING:
    from edge_agent.agent import Agent

log = logging.getLogger("edge_agent.metrics")


class AgentCollector(Collector):
    def __init__(self, agent: Agent):
        self.agent = agent

    def collect(self) -> Iterator[object]:
        a = self.agent
        info = InfoMetricFamily("edge_agent", "the running agent")
        info.add_metric([], {"version": __version__, "agent": a.cfg.agent.id, "boot": a.boot.hex(),
                             "config": a.cfg.digest[:16]})
        yield info

        polls = CounterMetricFamily("edge_agent_device_polls", "polls attempted", labels=["device"])
        poll_errors = CounterMetricFamily("edge_agent_device_poll_errors", "polls that failed", labels=["device"])
        errors = CounterMetricFamily("edge_agent_device_errors", "device errors by kind", labels=["device", "kind"])
        skipped = CounterMetricFamily("edge_agent_device_skipped_ticks", "poll ticks skipped (overrun, offline, "
                                      "spool full)", labels=["device"])
        connected = GaugeMetricFamily("edge_agent_device_connected", "1 while the device connection is up",
                                      labels=["device"])
        latency = HistogramMetricFamily("edge_agent_device_poll_latency_seconds", "poll latency", labels=["device"])
        for name, drv in list(a.drivers.items()):
            st = drv.stats
            polls.add_metric([name], st.polls)
            poll_errors.add_metric([name], st.poll_errors)
            skipped.add_metric([name], st.skipped_ticks)
            connected.add_metric([name], 1 if st.connected else 0)
            for kind, n in list(st.errors_by_kind.items()):
                errors.add_metric([name, kind], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), st.latency_counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([name], buckets, st.latency_sum)
        yield from (polls, poll_errors, errors, skipped, connected, latency)

        c, up = a.counters, a.uplink
        yield CounterMetricFamily("edge_agent_points_in", "samples polled", value=c.points_in)
        yield CounterMetricFamily("edge_agent_points_spooled", "samples committed to the spool", value=c.points_spooled)
        yield CounterMetricFamily("edge_agent_points_published", "samples acknowledged by the broker",
                                  value=up.points_out)
        yield CounterMetricFamily("edge_agent_frames_spooled", "frames committed to the spool", value=c.frames_spooled)
        yield CounterMetricFamily("edge_agent_frames_published", "frames acknowledged by the broker",
                                  value=up.frames_out)
        yield CounterMetricFamily("edge_agent_bytes_published", "frame bytes acknowledged by the broker",
                                  value=up.bytes_out)
        yield CounterMetricFamily("edge_agent_events_published", "events acknowledged by the broker",
                                  value=up.events_out)

        spool = a.spool.spool if a.spool.is_open else None
        if spool is not None:
            depth = spool.depth()
            yield GaugeMetricFamily("edge_agent_spool_frames", "frames waiting for a PUBACK", value=depth.frames)
            yield GaugeMetricFamily("edge_agent_spool_points", "samples waiting for a PUBACK", value=depth.points)
            yield GaugeMetricFamily("edge_agent_spool_bytes", "bytes waiting for a PUBACK", value=depth.bytes)
            dropped_f = CounterMetricFamily("edge_agent_spool_dropped_frames", "frames dropped unsent by the bounds",
                                            labels=["reason"])
            dropped_p = CounterMetricFamily("edge_agent_spool_dropped_points", "samples dropped unsent by the bounds",
                                            labels=["reason"])
            for reason in ("full", "expired"):
                dropped_f.add_metric([reason], spool.drops.frames[reason])
                dropped_p.add_metric([reason], spool.drops.points[reason])
            yield dropped_f
            yield dropped_p
        yield GaugeMetricFamily("edge_agent_spool_blocked", "1 while polls are paused by a full spool (block policy)",
                                value=0 if a.sink.accepting else 1)

        yield GaugeMetricFamily("edge_agent_uplink_connected", "1 while connected to the broker",
                                value=1 if up.connected else 0)
        yield CounterMetricFamily("edge_agent_uplink_connects", "successful broker connections", value=up.connects)
        yield CounterMetricFamily("edge_agent_uplink_connect_failures", "failed broker connection attempts",
                                  value=up.connect_failures)
        yield CounterMetricFamily("edge_agent_uplink_refused", "publishes the broker refused (MQTT 5 reason code)",
                                  value=up.refused)

        anomalies = CounterMetricFamily("edge_agent_anomalies", "samples flagged, by filter kind",
                                        labels=["device", "filter"])
        for device, filters in list(a.filters.items()):
            for kind, n in list(filters.fired.items()):
                anomalies.add_metric([device, kind], n)
        yield anomalies
        yield GaugeMetricFamily("edge_agent_event_loop_lag_seconds", "how late the last heartbeat ran",
                                value=a.loop_lag_s)


def serve(agent: Agent, host: str, port: int) -> CollectorRegistry:
    """Start the /metrics endpoint on a daemon thread; the process collector adds RSS and CPU."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(AgentCollector(agent))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return registry
