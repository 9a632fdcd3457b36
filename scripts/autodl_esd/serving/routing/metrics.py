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
- `gen_ai_server_time_to_first_token_seconds` / `gen_ai_server_time_per_output_token_seconds`
  histograms {container_uuid} (OpenTelemetry GenAI names and buckets) of streamed (SSE)
  answers; what counts as a token is in stream_timing.py. Their p50/p95 are in
  /_gateway/status (`latency`), estimated from the buckets as Prometheus's histogram_quantile does.

A gateway with routes (serve_gateway.py --route) puts a `route` label first on every family
above except `http_server_active_requests`, and on its routes' extensions' families (each
route's autoscaler).

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
# The bucket boundaries OpenTelemetry's GenAI semantic conventions advise for
# gen_ai.server.time_to_first_token and gen_ai.server.time_per_output_token.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TTFT = "gen_ai_server_time_to_first_token_seconds"
TPOT = "gen_ai_server_time_per_output_token_seconds"


class Measured(Protocol):
    """What the metrics read of a gateway (`gateway.Gateway` is one)."""

    routes: dict[str, Any]  # routes.Route by name: table, totals, registry_state(), extensions
    router: Any  # None for a one-deployment gateway (no `route` label)
    extensions: Iterable[Any]  # gateway-wide ones, each with collect()
    http_active_requests: int


class _TableCollector:
    def __init__(self, gateway: Measured) -> None:
        self.gateway = gateway

    def collect(self) -> Any:
        gateway = self.gateway
        routed = gateway.router is not None
        head = ["route"] if routed else []
        now = time.monotonic()

        def family(kind: Any, name: str, documentation: str, labels: list[str]) -> Any:
            return kind(name, documentation, labels=head + labels)

        gauge, counter = families.GaugeMetricFamily, families.CounterMetricFamily
        inflight = family(gauge, "gateway_replica_inflight", "Requests this gateway has in flight on the replica.", ["container_uuid"])
        requests = family(counter, "gateway_replica_requests", "Requests sent to the replica, by outcome.", ["container_uuid", "outcome"])
        retries = family(counter, "gateway_replica_retries", "Requests that failed on the replica and were retried on another.",
                         ["container_uuid"])
        ejections = family(counter, "gateway_replica_ejections", "Times the replica was ejected after a failure.", ["container_uuid"])
        running = family(gauge, "gateway_replica_reported_running", "Running requests in the replica's last load report.",
                         ["container_uuid"])
        waiting = family(gauge, "gateway_replica_reported_waiting", "Waiting requests in the replica's last load report.",
                         ["container_uuid"])
        by_state = family(gauge, "gateway_replicas", "Replicas by state.", ["state"])
        queue = family(gauge, "gateway_queue_depth", "Requests waiting for a replica.", [])
        rejections = family(counter, "gateway_queue_rejections", "Requests answered 503 because no replica had room in time.", [])
        stale = family(gauge, "gateway_registry_stale", "1 while the gateway serves the last good registry.", [])
        age = family(gauge, "gateway_registry_age_seconds", "Seconds since the registry was last read fresh.", [])
        for route in gateway.routes.values():
            table = route.table
            mark = [route.name] if routed else []
            states: dict[str, int] = {"ready": 0, "ejected": 0, "unhealthy": 0, "draining": 0}
            for replica in table.all_replicas():
                uuid = replica.container_uuid
                states[replica.state(now)] += 1
                inflight.add_metric(mark + [uuid], replica.inflight)
                for outcome, count in replica.outcomes.items():
                    requests.add_metric(mark + [uuid, outcome], count)
                retries.add_metric(mark + [uuid], replica.retries)
                ejections.add_metric(mark + [uuid], replica.ejections)
                if replica.report is not None:
                    running.add_metric(mark + [uuid], replica.report.running)
                    waiting.add_metric(mark + [uuid], replica.report.waiting)
            for state, count in states.items():
                by_state.add_metric(mark + [state], count)
            queue.add_metric(mark, table.queued)
            rejections.add_metric(mark, route.totals.queue_rejections)
            registry = route.registry_state()
            stale.add_metric(mark, 1 if registry["stale"] else 0)
            age.add_metric(mark, registry["age_seconds"] if registry["age_seconds"] is not None else float("nan"))
        yield from (inflight, requests, retries, ejections, running, waiting, by_state, queue, rejections, stale, age)
        for extension in gateway.extensions:
            yield from extension.collect()
        yield from _route_extension_families(gateway, routed)


def _route_extension_families(gateway: Measured, routed: bool) -> Iterable[Any]:
    """The routes' extensions' families (e.g. each route's autoscaler); with several routes,
    each family once, its samples labelled with their route."""
    if not routed:
        for route in gateway.routes.values():
            for extension in route.extensions:
                yield from extension.collect()
        return
    merged: dict[str, Any] = {}
    for route in gateway.routes.values():
        for extension in route.extensions:
            for metric in extension.collect():
                into = merged.get(metric.name)
                if into is None:
                    into = merged[metric.name] = prometheus.Metric(metric.name, metric.documentation, metric.type)
                for sample in metric.samples:
                    into.add_sample(sample.name, {"route": route.name, **sample.labels}, sample.value,
                                    sample.timestamp, sample.exemplar)
    yield from merged.values()


class GatewayMetrics:
    def __init__(self, gateway: Measured) -> None:
        self.routed = gateway.router is not None
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.duration = prometheus.Histogram("http_server_request_duration_seconds", "Duration of HTTP server requests.",
                                             (["route"] if self.routed else []) + ["http_request_method", "http_response_status_code"],
                                             buckets=DURATION_BUCKETS, registry=self.registry)
        self.active = prometheus.Gauge("http_server_active_requests", "Number of active HTTP server requests.", registry=self.registry)
        # OpenTelemetry's meaning: every HTTP request in flight, this scrape included (idle.py counts on it).
        self.active.set_function(lambda: gateway.http_active_requests)
        self.registry.register(_TableCollector(gateway))
        self._children: dict[tuple[str, int, str], Any] = {}
        labels = (["route"] if self.routed else []) + ["container_uuid"]
        self.ttft = prometheus.Histogram(TTFT, "Time to generate the first token (first SSE event) of streamed answers, "
                                               "from the request's arrival at the gateway.", labels, buckets=TTFT_BUCKETS,
                                         registry=self.registry)
        self.tpot = prometheus.Histogram(TPOT, "Time per output token (SSE event) after the first, of streamed answers.",
                                         labels, buckets=TPOT_BUCKETS, registry=self.registry)
        self._streams: dict[tuple[str, str], tuple[Any, Any]] = {}  # (route, container_uuid) -> its two children
        self._gateway = gateway

    def observe_stream(self, route: str, container_uuid: str, ttft: float | None, tpot: float | None) -> None:
        key = (route, container_uuid)
        children = self._streams.get(key)
        if children is None:
            labels = (route, container_uuid) if self.routed else (container_uuid,)
            children = self._streams[key] = (self.ttft.labels(*labels), self.tpot.labels(*labels))
        if ttft is not None:
            children[0].observe(ttft)
        if tpot is not None:
            children[1].observe(tpot)

    def forget_departed(self) -> None:
        """Drop the series of replicas no route lists any more (not even as departed, which
        keeps the last DEPARTED_KEPT): the label set stays bounded whatever the churn."""
        known = {(route.name, uuid) for route in self._gateway.routes.values()
                 for uuid in [*route.table.replicas, *route.table.draining, *route.table.departed]}
        for key in [key for key in self._streams if key not in known]:
            del self._streams[key]
            labels = key if self.routed else key[1:]
            self.ttft.remove(*labels)
            self.tpot.remove(*labels)

    def latency(self, route: str | None, container_uuid: str | None = None) -> dict[str, Any]:
        """Count, mean (exact) and p50/p95 (estimated from the buckets) of the two histograms:
        of one replica, a whole route, or (route None) the whole gateway."""
        keys = [key for key in self._streams if route in (None, key[0]) and container_uuid in (None, key[1])]
        document = {}
        for name, index, bounds in (("time_to_first_token_seconds", 0, TTFT_BUCKETS),
                                    ("time_per_output_token_seconds", 1, TPOT_BUCKETS)):
            counts = [0.0] * (len(bounds) + 1)
            seconds = 0.0
            for key in keys:
                buckets, observed = _buckets_and_sum(self._streams[key][index])
                seconds += observed
                for position, count in enumerate(buckets):
                    counts[position] += count
            total = sum(counts)
            document[name] = {"count": int(total), "mean": round(seconds / total, 6) if total else None,
                              "p50": histogram_quantile(0.5, bounds, counts), "p95": histogram_quantile(0.95, bounds, counts)}
        return document


    def observe(self, method: str, status: int, seconds: float, route: str = "") -> None:
        key = (method, status, route)
        child = self._children.get(key)
        if child is None:
            labels = (route, method, str(status)) if self.routed else (method, str(status))
            child = self._children[key] = self.duration.labels(*labels)
        child.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        self.forget_departed()
        return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST


def _buckets_and_sum(child: Any) -> tuple[list[float], float]:
    """Per-bucket (not cumulative) counts of one histogram child, +Inf last, and the sum of its
    observations, from its samples."""
    samples = [sample for metric in child.collect() for sample in metric.samples]
    cumulative = [sample.value for sample in samples if sample.name.endswith("_bucket")]
    observed = next((sample.value for sample in samples if sample.name.endswith("_sum")), 0.0)
    return [value - (cumulative[index - 1] if index else 0.0) for index, value in enumerate(cumulative)], observed


def histogram_quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float | None:
    """The q-quantile of bucketed observations (counts per bucket, +Inf last), interpolated
    linearly inside its bucket as Prometheus's histogram_quantile does; None without any.
    One in the +Inf bucket is reported as the highest finite bound (a floor)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return round(lower + (bounds[index] - lower) * (rank - seen) / count, 6)
        seen += count
    return bounds[-1]
