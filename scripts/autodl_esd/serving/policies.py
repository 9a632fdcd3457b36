"""How the gateway picks a replica per request: small policy classes, SkyPilot/Ray style.

A policy sees the candidates the gateway may send to (healthy, in the registry, not ejected,
under `--max-inflight-per-replica`, not tried already by this request) and returns one. It is
told when a request starts and finishes on a replica and when a load report arrives, so a
new policy is a few lines:

    class Fewest(Policy):
        name = "fewest"
        def select_replica(self, candidates):
            return min(candidates, key=lambda r: r.inflight)

    POLICIES["fewest"] = Fewest

Everything here runs on the gateway's event loop: no I/O, no blocking. A `Replica`
(serving.replicas) exposes `inflight` (this gateway), `remote_inflight` (other gateways,
when a shared ledger fills it in), `report` (the replica's last `LoadReport`) and
`sent_since_report` (this gateway's requests started after that report and still running).

Load reports (`parse_load_report`): Prometheus text with vLLM's `vllm:num_requests_running`
and `vllm:num_requests_waiting` (samples summed over labels, e.g. several models), or JSON
`{"running": N, "waiting": M}`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from .replicas import Replica

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
# A load report bigger than this is not a metrics page we understand; reading more would let
# one replica make every gateway poll allocate without bound.
MAX_LOAD_REPORT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoadReport:
    """A replica's own view of its queue, and when (gateway's monotonic clock) it was read."""

    running: float
    waiting: float
    at: float

    @property
    def queue(self) -> float:
        return self.running + self.waiting


class LoadReportError(ValueError):
    """The load path answered something that is not a load report."""


def parse_load_report(body: bytes, content_type: str, at: float) -> LoadReport:
    """A LoadReport from a JSON body or Prometheus text; raises LoadReportError otherwise."""
    if len(body) > MAX_LOAD_REPORT_BYTES:
        raise LoadReportError(f"load report larger than {MAX_LOAD_REPORT_BYTES} bytes")
    text = body.decode("utf-8", "replace")
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as error:
            raise LoadReportError(f"load report is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise LoadReportError("JSON load report must be an object {running, waiting}")
        return LoadReport(_count(document.get("running"), "running"), _count(document.get("waiting"), "waiting"), at)
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (VLLM_RUNNING, VLLM_WAITING):
                    totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError) as error:
        raise LoadReportError(f"load report is neither JSON nor Prometheus text: {error}") from None
    if VLLM_RUNNING not in totals and VLLM_WAITING not in totals:
        raise LoadReportError(f"metrics carry neither {VLLM_RUNNING} nor {VLLM_WAITING}")
    return LoadReport(_count(totals.get(VLLM_RUNNING, 0.0), "running"), _count(totals.get(VLLM_WAITING, 0.0), "waiting"), at)


def _count(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LoadReportError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Policy:
    """Base class: pick one of `candidates` (never empty); hooks default to nothing."""

    name = ""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select_replica(self, candidates: Sequence["Replica"]) -> "Replica":
        raise NotImplementedError

    def load_of(self, replica: "Replica") -> float:
        """The work ahead of a new request on `replica`, as this policy sees it (before it is
        sent); the table learns the replica's time per request (`Replica.service_seconds`)
        from requests that had none ahead (replicas.learn_service_time)."""
        return replica.inflight + replica.remote_inflight

    def on_request_start(self, replica: "Replica") -> None:
        """A request was just sent to `replica` (its counters are already updated)."""

    def on_request_finish(self, replica: "Replica", outcome: str) -> None:
        """A request on `replica` ended: outcome is success, error (HTTP 5xx), failure, or cancelled."""

    def on_load_report(self, replica: "Replica", report: LoadReport) -> None:
        """`replica` reported its queue (already stored as replica.report)."""

    def _two_choices(self, candidates: Sequence["Replica"], score: Callable[["Replica"], float]) -> "Replica":
        # Power of two choices: nearly as good as the global minimum, without herding every
        # concurrent request (or every gateway reading the same reports) onto one replica.
        # sample() returns the pair in random order, so min() breaks ties randomly.
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(list(candidates), 2)
        return min((first, second), key=score)


class LeastInflight(Policy):
    """Power of two choices on in-flight requests (this gateway's, plus other gateways' when shared)."""

    name = "least_inflight"

    def select_replica(self, candidates):
        return self._two_choices(candidates, lambda r: r.inflight + r.remote_inflight)


class RoundRobin(Policy):
    """Each candidate in turn, what nginx would do; blind to load."""

    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._next = 0

    def select_replica(self, candidates):
        replica = candidates[self._next % len(candidates)]
        self._next += 1
        return replica


class Random(Policy):
    name = "random"

    def select_replica(self, candidates):
        return self.rng.choice(list(candidates))


class QueueAware(Policy):
    """The replica's own load report decides: reported running+waiting plus what this gateway
    sent since that report (without a fresh report: in-flight counts). Once every candidate
    has a measured time per request (from requests that ran alone), the queue is weighted by
    it — the expected wait on a one-at-a-time server, so a GPU twice as fast may carry a
    queue twice as long; on a batching engine, whose queue costs less than that, the weight
    only spreads the load more evenly.

    Every replica is scored (there are few, and a GPU queue is worth a full look); ties are
    broken at random so gateways reading the same report do not all pick the same replica.
    """

    name = "queue_aware"

    def __init__(self, rng: random.Random | None = None, max_report_age: float = math.inf,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(rng)
        self.max_report_age = max_report_age
        self.clock = clock or time.monotonic

    def score(self, replica: "Replica", now: float) -> float:
        report = replica.report
        if report is None or now - report.at > self.max_report_age:
            return replica.inflight + replica.remote_inflight
        return report.queue + replica.sent_since_report

    def load_of(self, replica: "Replica") -> float:
        return self.score(replica, self.clock())

    def select_replica(self, candidates):
        now = self.clock()
        timed = all(r.service_seconds for r in candidates)
        scored = [((self.score(r, now) + 1) * (r.service_seconds if timed else 1.0), self.rng.random(), r)
                  for r in candidates]
        return min(scored, key=lambda item: item[:2])[2]


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (LeastInflight, RoundRobin, Random, QueueAware)}
DEFAULT_POLICY = LeastInflight.name
