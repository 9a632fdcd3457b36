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
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .gateway import Gateway


class _TableCollector:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    def collect(self) -> Any:
        gateway = self.gateway
        table = gateway.table
        now = time.monotonic()
        inflight = GaugeMetricFamily("gateway_replica_inflight", "Requests this gateway has in flight on the replica.",
                                     labels=["container_uuid"])
        requests = CounterMetricFamily("gateway_replica_requests", "Requests sent to the replica, by outcome.",
                                       labels=["container_uuid", "outcome"])
        retries = CounterMetricFamily("gateway_replica_retries", "Requests that failed on the replica and were retried on another.",
                                      labels=["container_uuid"])
        ejections = CounterMetricFamily("gateway_replica_ejections", "Times the replica was ejected after a failure.",
                                        labels=["container_uuid"])
        running = GaugeMetricFamily("gateway_replica_reported_running", "Running requests in the replica's last load report.",
                                    labels=["container_uuid"])
        waiting = GaugeMetricFamily("gateway_replica_reported_waiting", "Waiting requests in the replica's last load report.",
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
        by_state = GaugeMetricFamily("gateway_replicas", "Replicas by state.", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], count)
        queue = GaugeMetricFamily("gateway_queue_depth", "Requests waiting for a replica.", value=table.queued)
        rejections = CounterMetricFamily("gateway_queue_rejections", "Requests answered 503 because no replica had room in time.",
                                         value=gateway.totals.queue_rejections)
        registry = gateway.registry_state()
        stale = GaugeMetricFamily("gateway_registry_stale", "1 while the gateway serves the last good registry.",
                                  value=1 if registry["stale"] else 0)
        age = GaugeMetricFamily("gateway_registry_age_seconds", "Seconds since the registry was last read fresh.",
                                value=registry["age_seconds"] if registry["age_seconds"] is not None else float("nan"))
        yield from (inflight, requests, retries, ejections, running, waiting, by_state, queue, rejections, stale, age)
        for extension in gateway.extensions:
            yield from extension.collect()


class GatewayMetrics:
    def __init__(self, gateway: "Gateway") -> None:
        from .gateway import DURATION_BUCKETS

        self.registry = CollectorRegistry(auto_describe=False)
        self.duration = Histogram("http_server_request_duration_seconds", "Duration of HTTP server requests.",
                                  ["http_request_method", "http_response_status_code"], buckets=DURATION_BUCKETS,
                                  registry=self.registry)
        self.active = Gauge("http_server_active_requests", "Number of active HTTP server requests.", registry=self.registry)
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
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
