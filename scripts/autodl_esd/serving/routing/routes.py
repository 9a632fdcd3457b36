"""Routes: the deployments one gateway serves, each with its own replicas, policy and queue.

A gateway in front of one deployment has one `Route` (named "default") and sends it every
request, as before routes existed. With `serve_gateway.py --route MODEL=DEPLOYMENT` (and
`--route-prefix PREFIX=DEPLOYMENT`) it has several, and a `RouteMap` picks one per request:

- a path prefix route (`/sd` -> `/sd/txt2img`) wins first, longest prefix first; the prefix
  is cut off before the request goes to the replica (the service sees its own paths);
- otherwise the request's JSON `model` (OpenAI style) names a model route.

Each route keeps what a one-deployment gateway keeps: its `ReplicaSource`, `ReplicaTable`
(replicas, in-flight counts, ejection, queue), `Policy`, counters (`Totals`), registry view
(a route whose deployment ended answers 503 no_replicas and the others keep serving) and
its extensions (its own autoscaler and cost cap). The gateway owns the HTTP side.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .policies import POLICIES, Policy
from .replicas import ReplicaTable
from .sources import RegistryView, ReplicaSource

DEFAULT_ROUTE = "default"


@dataclass
class Totals:
    """Request counts of a gateway or of one route (see gateway.py's docstring for the sums)."""

    requests: int = 0  # requests for the replicas (paths outside /_gateway/), on arrival
    proxied: int = 0  # of those, past the Host/auth checks (counted on arrival): the autoscaler's idle clock
    sent_to_replicas: int = 0  # finished requests that reached at least one replica
    answered_by_gateway: int = 0  # finished requests no replica saw (refused, no replica in time, bad body, client left while queued)
    gateway_endpoint_requests: int = 0  # /_gateway/status, /_gateway/metrics and other /_gateway/ paths
    retries: int = 0  # extra attempts on another replica (a request's attempts = 1 + its retries)
    by_status_class: dict[str, int] = field(default_factory=lambda: {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "other": 0})
    queue_rejections: int = 0
    aborted_streams: int = 0

    def finished(self, status: int, reached_replica: bool) -> None:
        key = f"{status // 100}xx" if 200 <= status < 600 else "other"
        self.by_status_class[key] = self.by_status_class.get(key, 0) + 1
        if reached_replica:
            self.sent_to_replicas += 1
        else:
            self.answered_by_gateway += 1

    def document(self, with_endpoints: bool = True) -> dict[str, Any]:
        document = {"requests": self.requests, "sent_to_replicas": self.sent_to_replicas,
                    "answered_by_gateway": self.answered_by_gateway, "retries": self.retries,
                    "by_status_class": dict(self.by_status_class), "queue_rejections": self.queue_rejections,
                    "aborted_streams": self.aborted_streams}
        if with_endpoints:
            document["gateway_endpoint_requests"] = self.gateway_endpoint_requests
        return document


@dataclass
class RouteOptions:
    """What one route is set up with (the gateway's flags, or a routes file's overrides)."""

    policy: str = "least_inflight"
    max_inflight_per_replica: int = 0
    max_queue: int = 256
    queue_timeout: float = 30.0
    eject_seconds: float = 10.0
    probe_before_readmit: bool = False  # --health-path: an ejected replica waits for a good probe
    report_max_age: float = float("inf")  # a load report older than this no longer counts
    deployment_uuid: str | None = None
    balance_factor: float | None = None  # cache_aware's bound (None: the policy's default)


def make_policy(name: str, rng: random.Random, options: RouteOptions) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}")
    policy_class = POLICIES[name]
    if name == "queue_aware":
        return policy_class(rng, max_report_age=options.report_max_age)
    if name == "cache_aware" and options.balance_factor is not None:
        return policy_class(rng, balance_factor=options.balance_factor)
    return policy_class(rng)


class Route:
    """One deployment behind the gateway (see the module docstring)."""

    def __init__(self, name: str, source: ReplicaSource, options: RouteOptions, *, model: str | None = None,
                 prefix: str | None = None, ledger: Any = None, rng: random.Random | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.model = model
        self.prefix = prefix
        self.source = source
        self.options = options
        self.log = log or (lambda message: None)
        self.report_max_age = options.report_max_age
        self.policy = make_policy(options.policy, rng or random.Random(), options)
        label = "" if name == DEFAULT_ROUTE else f"[{name}] "
        self.table = ReplicaTable(
            self.policy, max_inflight_per_replica=options.max_inflight_per_replica, max_queue=options.max_queue,
            queue_timeout=options.queue_timeout, eject_seconds=options.eject_seconds,
            probe_before_readmit=options.probe_before_readmit, ledger=ledger,
            on_change=lambda message: self.log(label + message))
        self.totals = Totals()  # this route's requests (the gateway's totals count every request)
        self.active_requests = 0  # this route's requests in flight at the gateway
        self.view: RegistryView | None = None
        self.ended_by: str | None = None  # deployment_stopped / deployment_gone, once its registry says so
        self.extensions: list[Any] = []

    @property
    def deployment_uuid(self) -> str | None:
        return self.options.deployment_uuid or (self.view.deployment_uuid if self.view else None)

    def refresh_registry(self) -> bool:
        """Apply the source's newest view; True when it just said the deployment ended."""
        view = self.source.current()
        if view is None or view is self.view:
            return False
        ended_now = bool(view.ended) and not (self.view and self.view.ended)
        same_replicas = self.view is not None and view.services is self.view.services
        self.view = view
        if not same_replicas:  # a source hands the same services again when nothing changed
            self.table.update(view.services)
        if ended_now:
            self.ended_by = view.ended
        return ended_now

    def reapply_registry(self) -> None:
        """Apply the source's view again (after `table.restore()`: the autoscaler's failed scale to zero)."""
        self.view = None
        self.refresh_registry()

    def registry_state(self) -> dict[str, Any]:
        view = self.view
        error = self.source.last_error()
        if view is None:
            return {"source": self.source.description, "age_seconds": None, "stale": True,
                    "stale_reason": error or "还没有读到注册表", "generated_at": None}
        age = max(0.0, time.monotonic() - view.read_at)
        reason = view.stale_reason
        if reason is None and age > self.source.stale_after:
            reason = f"注册表已 {age:.1f} 秒没有更新 (超过 {self.source.stale_after:g} 秒)"
        if reason is None and error:
            reason = f"读取注册表失败: {error}"
        if view.ended:  # final: the watcher stopped on purpose, its silence is not staleness
            return {"source": self.source.description, "age_seconds": round(age, 3), "stale": False, "stale_reason": None,
                    "generated_at": view.generated_at, "ended": view.ended, "ended_reason": view.ended_reason}
        return {"source": self.source.description, "age_seconds": round(age, 3), "stale": reason is not None,
                "stale_reason": reason, "generated_at": view.generated_at}

    def load(self, active_requests: int) -> dict[str, Any]:
        """The autoscaler's input (see gateway.py's docstring)."""
        load = self.table.load(self.report_max_age)
        load["registry_stale"] = self.registry_state()["stale"]
        load["active_requests"] = active_requests
        return load

    def add_extension(self, extension: Any) -> None:
        self.extensions.append(extension)


class RouteMap:
    """Which route a request goes to: by path prefix, else by the JSON body's `model`."""

    def __init__(self, routes: Iterable[Route]) -> None:
        routes = list(routes)
        self.by_model = {route.model: route for route in routes if route.model is not None}
        # Longest first, so /sd/xl wins over /sd for /sd/xl/run.
        self.prefixes = sorted(((route.prefix, route) for route in routes if route.prefix is not None),
                               key=lambda pair: len(pair[0]), reverse=True)

    def by_path(self, path: str) -> tuple[Route | None, str]:
        """(the prefix route for `path`, the path the replica sees) or (None, path)."""
        for prefix, route in self.prefixes:
            if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
                rest = path[len(prefix):]
                return route, rest if rest.startswith("/") else "/" + rest
        return None, path

    @property
    def models(self) -> list[str]:
        return sorted(self.by_model)

    @property
    def routes_by_model(self) -> bool:
        return bool(self.by_model)
