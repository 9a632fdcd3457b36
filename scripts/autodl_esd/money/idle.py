"""Is a service idle? Read from the serving gateway's Prometheus metrics.

The gateway (`serve_gateway.py`) exports `http_server_request_duration_seconds` (a
histogram: its `_count` samples count finished requests) and `http_server_active_requests`
(a gauge of requests in flight) at `/_gateway/metrics`. A service is idle while the request
count does not move and nothing is in flight. The text is parsed by prometheus_client (the
format has escaping and type rules not worth re-implementing).

The gateway counts every request it serves, its own metrics page included: while the page
renders, the scrape itself is the one request in flight, and once answered it adds one to
the count. So the guard discounts exactly its own scrape: one active request, and one more
finished request per reading since the last. (Another scraper, e.g. a Prometheus server,
then keeps the service looking busy: the safe direction. `--idle-url` must be the
gateway's page, which counts scrapes this way.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..core.deps import require
from ..core.errors import AutoDLError, ErrorType

REQUEST_HISTOGRAM = "http_server_request_duration_seconds"
ACTIVE_REQUESTS = "http_server_active_requests"
# Requests of our own in each reading: the scrape in flight, and (once done) its count.
OWN_REQUESTS_PER_READING = 1
# A metrics page answers at once or the gateway is in trouble; don't hold the guard's loop.
METRICS_TIMEOUT_SECONDS = 10.0


@dataclass
class Activity:
    requests_total: float  # finished requests since the gateway started (scrapes included)
    active: float  # requests in flight now (this scrape included)


def parse_activity(text: str) -> Activity:
    """The two figures from a metrics page; a page without the request histogram is an error
    (a wrong URL must not look like an idle service)."""
    require("prometheus_client")  # heavy, loaded on first use; dependency_missing when absent
    from prometheus_client import parser
    total: float | None = None
    active = 0.0
    try:
        families = list(parser.text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as error:
        raise ValueError(f"不是 Prometheus 文本格式: {error}") from None
    for family in families:
        if family.name == REQUEST_HISTOGRAM:
            counts = [s.value for s in family.samples if s.name == f"{REQUEST_HISTOGRAM}_count"]
            total = (total or 0.0) + sum(counts)
        elif family.name == ACTIVE_REQUESTS:
            active += sum(s.value for s in family.samples if s.name == ACTIVE_REQUESTS)
    if total is None:
        raise ValueError(f"指标中没有 {REQUEST_HISTOGRAM} (请求计数), 这不像网关的 /_gateway/metrics")
    return Activity(total, active)


def read_activity(url: str) -> Activity:
    """Fetch and parse the metrics page; failures are api_error-like AutoDLErrors."""
    requests = require("requests")
    try:
        response = requests.get(url, timeout=METRICS_TIMEOUT_SECONDS)
        response.raise_for_status()
        return parse_activity(response.text)
    except (requests.RequestException, ValueError) as error:
        raise AutoDLError(ErrorType.API_ERROR, f"无法读取网关指标 {url}: {error}",
                          "确认 --idle-url 指向 serve_gateway.py 的 /_gateway/metrics 且网关在运行。",
                          {"code": None, "msg": str(error), "http_status": None, "retryable": True}) from None


@dataclass
class IdleTracker:
    """How long the request count has stood still with nothing in flight (wall-clock seconds:
    the gateway serves in real time, whatever the platform's clock says)."""

    last_total: float | None = None
    quiet_since: float | None = None  # epoch seconds

    def observe(self, activity: Activity, now: float | None = None) -> float:
        """Record one reading; returns the seconds the service has been idle (0 if busy)."""
        now = time.time() if now is None else now
        # Our previous scrape finished since then: one request is ours (see the module doc).
        moved = (self.last_total is None or activity.requests_total < self.last_total
                 or activity.requests_total > self.last_total + OWN_REQUESTS_PER_READING)
        self.last_total = activity.requests_total
        others_active = activity.active - OWN_REQUESTS_PER_READING
        if others_active > 0 or moved or self.quiet_since is None:
            # Busy, a request finished since last time, or the first reading: idle starts now.
            self.quiet_since = now
            return 0.0
        return max(0.0, now - self.quiet_since)

    def to_state(self) -> dict[str, Any]:
        return {"last_total": self.last_total, "quiet_since": self.quiet_since}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "IdleTracker":
        state = state or {}
        return cls(state.get("last_total"), state.get("quiet_since"))
