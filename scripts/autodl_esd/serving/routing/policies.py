"""How the gateway picks a replica per request: small policy classes, SkyPilot/Ray style.

A policy sees the candidates the gateway may send to (healthy, in the registry, not ejected,
under `--max-inflight-per-replica`, not tried already by this request), or `choices` of them
drawn at random when the policy only compares a few, and returns one. It is
told when a request starts and finishes on a replica and when a load report arrives, so a
new policy is a few lines:

    class Fewest(Policy):
        name = "fewest"
        def select_replica(self, candidates):
            return min(candidates, key=lambda r: r.inflight)

    POLICIES["fewest"] = Fewest

Everything here runs on the gateway's event loop: no I/O, no blocking. It sits at the bottom
of the gateway's imports: a candidate is anything shaped like `ReplicaView` (the replica
table's `Replica` is), which exposes `inflight` (this gateway), `remote_inflight` (other
gateways, when a shared ledger fills it in), `report` (the replica's last `LoadReport`),
`sent_since_report` (this gateway's requests started after that report and still running)
and `service_seconds` (its learned time per request, see `replicas.learn_service_time`).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from typing import Callable, Optional, Protocol, Sequence

from .load_report import LoadReport


class ReplicaView(Protocol):
    """What a policy reads of a replica."""

    container_uuid: str
    inflight: int
    remote_inflight: int
    report: Optional[LoadReport]
    sent_since_report: int
    service_seconds: Optional[float]


class Policy:
    """Base class: pick one of `candidates` (never empty); hooks default to nothing.

    `choices`: a policy that compares a few candidates drawn at random (least_inflight: two)
    says how many, and the replica table draws them without listing every replica, so its
    cost does not grow with the registry. None (the default): it sees every candidate.
    """

    name = ""
    choices: Optional[int] = None
    # True for a policy that routes by the request's affinity key (the gateway computes one
    # only then: it means parsing the request body).
    uses_affinity = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select_replica(self, candidates: Sequence[ReplicaView]) -> ReplicaView:
        raise NotImplementedError

    def select(self, candidates: Sequence[ReplicaView], key: int | None = None) -> ReplicaView:
        """What the replica table calls: `key` is the request's affinity key (llm_request),
        None without one; a policy that does not route by it ignores it."""
        return self.select_replica(candidates)

    def load_of(self, replica: ReplicaView) -> float:
        """The work ahead of a new request on `replica`, as this policy sees it (before it is
        sent); the table learns the replica's time per request (`service_seconds`) from
        requests that had none ahead (replicas.learn_service_time)."""
        return replica.inflight + replica.remote_inflight

    def on_request_start(self, replica: ReplicaView) -> None:
        """A request was just sent to `replica` (its counters are already updated)."""

    def on_request_finish(self, replica: ReplicaView, outcome: str) -> None:
        """A request on `replica` ended: outcome is success, error (HTTP 5xx), failure, or cancelled."""

    def on_load_report(self, replica: ReplicaView, report: LoadReport) -> None:
        """`replica` reported its queue (already stored as replica.report)."""

    def status(self) -> dict:
        """What /_gateway/status shows of the policy's own state (nothing by default)."""
        return {}

    def _two_choices(self, candidates: Sequence[ReplicaView], score: Callable[[ReplicaView], float]) -> ReplicaView:
        # Power of two choices: nearly as good as the global minimum, without herding every
        # concurrent request (or every gateway reading the same reports) onto one replica.
        # sample() returns the pair in random order, so min() breaks ties randomly.
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) == 2:  # the table's draw (or a pair): only the order is left to chance
            first, second = candidates if self.rng.random() < 0.5 else reversed(candidates)
        else:
            first, second = self.rng.sample(list(candidates), 2)
        return first if score(first) <= score(second) else second


class LeastInflight(Policy):
    """Power of two choices on in-flight requests (this gateway's, plus other gateways' when shared)."""

    name = "least_inflight"
    choices = 2

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
    choices = 1

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

    def score(self, replica: ReplicaView, now: float) -> float:
        report = replica.report
        if report is None or now - report.at > self.max_report_age:
            return replica.inflight + replica.remote_inflight
        return report.queue + replica.sent_since_report

    def load_of(self, replica: ReplicaView) -> float:
        return self.score(replica, self.clock())

    def select_replica(self, candidates):
        now = self.clock()
        timed = all(r.service_seconds for r in candidates)
        scored = [((self.score(r, now) + 1) * (r.service_seconds if timed else 1.0), self.rng.random(), r)
                  for r in candidates]
        return min(scored, key=lambda item: item[:2])[2]


# cache_aware's bound: a replica may carry up to this factor times the mean in-flight load
# (rounded up) before its keys spill. 1.25 is the factor Mirrokni et al. found keeps
# most keys at home while capping the busiest server; HAProxy's hash-balance-factor 125.
DEFAULT_BALANCE_FACTOR = 1.25
# ...and a replica at most this many requests above the least-loaded one never spills: at
# low load the bound is one or two requests, and other gateways' counts may be one refresh
# (50 ms) old, so a request that just ended elsewhere would scatter sessions. One, not
# more: bench/llm_routing.py's workload without shared prefixes queues behind a larger one.
BALANCE_SLACK_REQUESTS = 1
_MASK64 = (1 << 64) - 1
# Container uuids whose hash is remembered; replicas change rarely, the bound only keeps a
# long churn (an autoscaler replacing containers for weeks) from growing the dict forever.
UUID_HASHES_KEPT = 4096


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit integer hash."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class CacheAware(Policy):
    """Requests with the same affinity key (llm_request: the X-Session-ID header, else the
    leading messages or prompt) go to the same replica, so its prefix cache (vLLM's automatic
    prefix caching) is hit again.

    Rendezvous (highest random weight) hashing of the key over the candidates' container
    uuids: every gateway ranks the replicas the same way, and a replica that leaves or joins
    moves only the keys it wins. Bounded load (consistent hashing with bounded loads; HAProxy's
    hash-balance-factor): when the chosen replica's load (in flight, other gateways' included)
    would pass ceil(balance_factor x the mean load after this request) and it is more than
    BALANCE_SLACK_REQUESTS above the least-loaded candidate, the request goes to that one. A request without a key: two choices, like
    least_inflight."""

    name = "cache_aware"
    uses_affinity = True

    def __init__(self, rng: random.Random | None = None, balance_factor: float = DEFAULT_BALANCE_FACTOR) -> None:
        super().__init__(rng)
        if not balance_factor >= 1.0:
            raise ValueError(f"balance_factor must be >= 1, got {balance_factor!r}")
        self.balance_factor = balance_factor
        self._uuid_hashes: dict[str, int] = {}
        self.spills = 0  # requests that went to the least-loaded replica because theirs was full

    def _uuid_hash(self, container_uuid: str) -> int:
        known = self._uuid_hashes.get(container_uuid)
        if known is None:
            if len(self._uuid_hashes) >= UUID_HASHES_KEPT:
                self._uuid_hashes.clear()
            digest = hashlib.blake2b(container_uuid.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            known = self._uuid_hashes[container_uuid] = int.from_bytes(digest, "big")
        return known

    def home(self, candidates: Sequence[ReplicaView], key: int) -> ReplicaView:
        """The replica `key` belongs to among `candidates`, load aside."""
        return max(candidates, key=lambda r: _mix64(key ^ self._uuid_hash(r.container_uuid)))

    def select(self, candidates, key=None):
        if len(candidates) == 1:
            return candidates[0]
        if key is None:
            return self.select_replica(candidates)
        chosen = self.home(candidates, key)
        load = chosen.inflight + chosen.remote_inflight
        total = sum(r.inflight + r.remote_inflight for r in candidates)
        if load + 1 <= math.ceil(self.balance_factor * (total + 1) / len(candidates)):
            return chosen
        least = min(candidates, key=lambda r: (r.inflight + r.remote_inflight, self.rng.random()))
        if load - (least.inflight + least.remote_inflight) <= BALANCE_SLACK_REQUESTS:
            return chosen
        self.spills += 1
        return least

    def select_replica(self, candidates):
        return self._two_choices(candidates, lambda r: r.inflight + r.remote_inflight)

    def status(self) -> dict:
        return {"balance_factor": self.balance_factor, "spilled_requests": self.spills}


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (LeastInflight, RoundRobin, Random, QueueAware, CacheAware)}
DEFAULT_POLICY = LeastInflight.name
