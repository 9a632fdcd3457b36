"""The gateway's Prometheus metrics, rendered by prometheus_client (never hand-written text).

Names follow OpenTelemetry's HTTP server conventions where one exists:

- `http_server_request_duration_seconds` histogram {http_request_method, http_response_status_code}
- `http_server_active_requests` gauge
- `gateway_replica_inflight` gauge {container_uuid}
- `gateway_replica_requests_total` counter {container_uuid, outcome}: success, error (5xx
  answered), failure (no answer / broken mid-stream), cancelled (client went away)
- `gateway_replica_retries_total` counter {container_uuid}: failed here, retried elsewhere
- `gateway_replica_ejections_total` counter {container_uuid}
- `gateway_replica_reported_running` / `gateway_replica_reported_waiting` gauges {container_uuid}
- `gateway_queue_depth` gauge, `gateway_queue_rejections_total` counter
- `gateway_replicas` gauge {state}: ready, ejected, unhealthy, draining
- `gateway_registry_stale` gauge (1 = serving the last good registry), `gateway_registry_age_seconds`

Per-replica series are produced at scrape time from the replica table, so a replica that
left leaves no stale series behind.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Protocol

from ...core.deps import require

# prometheus_client loads with this module (only the gateway imports it): a missing one is
# the usual dependency_missing answer with the install command, never a traceback.
prometheus = require("prometheus_client")
families = require("prometheus_client.core")

# Buckets of http_server_request_duration_seconds: OpenTelemetry's defaults for HTTP
# servers, extended to minutes because an LLM answer can take that long.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0, 300.0)


class Measured(Protocol):
    """What the metrics read of a gateway (`gateway.Gateway` is one)."""

    table: Any  # replicas.ReplicaTable
    totals: Any  # queue_rejections
    extensions: Iterable[Any]  # each with collect()
    http_active_requests: int

    def registry_state(self) -> dict[str, Any]: ...


class _TableCollector:
    def __init__(self, gateway: Measured) -> None:
        self.gateway = gateway

    def collect(self) -> Any:
        gateway = self.gateway
        table = gateway.table
        now = time.monotonic()
        inflight = families.GaugeMetricFamily("gateway_replica_inflight", "Requests this gateway has in flight on the replica.",
                                              labels=["container_uuid"])
        requests = families.CounterMetricFamily("gateway_replica_requests", "Requests sent to the replica, by outcome.",
                                                labels=["container_uuid", "outcome"])
        retries = families.CounterMetricFamily("gateway_replica_retries", "Requests that failed on the replica and were retried on another.",
                                               labels=["container_uuid"])
        ejections = families.CounterMetricFamily("gateway_replica_ejections", "Times the replica was ejected after a failure.",
                                                 labels=["container_uuid"])
        running = families.GaugeMetricFamily("gateway_replica_reported_running", "Running requests in the replica's last load report.",
                                             labels=["container_uuid"])
        waiting = families.GaugeMetricFamily("gateway_replica_reported_waiting", "Waiting requests in the replica's last load report.",
                                             labels=["container_uuid"])
        states: dict[str, int] = {"ready": 0, "ejected": 0, "unhealthy": 0, "draining": 0}
        for replica in table.all_replicas():
            uuid = replica.container_uuid
            states[replica.state(now)] += 1
            inflight.add_metric([uuid], replica.inflight)
            for outcome, count in replica.outcomes.items():
                requests.add_metric([uuid, outcome], count)
            retries.add_metric([uuid], replica.retries)
            ejections.add_metric([uuid], replica.ejections)
            if replica.report is not None:
                running.add_metric([uuid], replica.report.running)
                waiting.add_metric([uuid], replica.report.waiting)
        by_state = families.GaugeMetricFamily("gateway_replicas", "Replicas by state.", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], count)
        queue = families.GaugeMetricFamily("gateway_queue_depth", "Requests waiting for a replica.", value=table.queued)
        rejections = families.CounterMetricFamily("gateway_queue_rejections", "Requests answered 503 because no replica had room in time.",
                                                  value=gateway.totals.queue_rejections)
        registry = gateway.registry_state()
        stale = families.GaugeMetricFamily("gateway_registry_stale", "1 while the gateway serves the last good registry.",
                                           value=1 if registry["stale"] else 0)
        age = families.GaugeMetricFamily("gateway_registry_age_seconds", "Seconds since the registry was last read fresh.",
                                         value=registry["age_seconds"] if registry["age_seconds"] is not None else float("nan"))
        yield from (inflight, requests, retries, ejections, running, waiting, by_state, queue, rejections, stale, age)
        for extension in gateway.extensions:
            yield from extension.collect()


class GatewayMetrics:
    def __init__(self, gateway: Measured) -> None:
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.duration = prometheus.Histogram("http_server_request_duration_seconds", "Duration of HTTP server requests.",
                                             ["http_request_method", "http_response_status_code"], buckets=DURATION_BUCKETS,
                                             registry=self.registry)
        self.active = prometheus.Gauge("http_server_active_requests", "Number of active HTTP server requests.", registry=self.registry)
        # OpenTelemetry's meaning: every HTTP request in flight, this scrape included (idle.py counts on it).
        self.active.set_function(lambda: gateway.http_active_requests)
        self.registry.register(_TableCollector(gateway))
        self._children: dict[tuple[str, int], Any] = {}

    def observe(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.duration.labels(method, str(status))
        child.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST
