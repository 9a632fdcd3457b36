"""The gateway's replica table: membership, in-flight counts, ejection, and the request queue.

One `ReplicaTable` per gateway, touched only from its event loop (no locks):

- `update(items)` sets membership from registry items (identity: container_uuid). A replica
  that leaves with requests in flight is kept as `draining` until they end, so counts never
  go negative and never leak (SkyPilot #10444).
- `acquire(exclude)` hands out a `Ticket` for the replica the policy picks among the
  candidates (a policy with `choices` gets that many drawn at random from the routable
  replicas, skipping unusable ones, so a request costs the same at 3 or 3,000 replicas;
  only when draws keep missing is every candidate listed); when there is none (every replica at `max_inflight_per_replica`, or no replica
  at all) the request waits in a bounded FIFO queue, and is answered `Overloaded` /
  `NoReplicas` when the queue is full or `queue_timeout` passes. A later `update` (scale-up),
  `finish` or `readmit` serves the queue in order.
- `finish(ticket, outcome)` ends a request (idempotent); `eject(replica)` takes a failing
  replica out for `eject_seconds`, after which a good health probe (`readmit`) or, without
  health probes, the end of the cool-down brings it back.
- `load()` is what an autoscaler reads: in-flight, queued, reported running/waiting, replicas
  by state.
- A replica that has left for good (scale-down, a replaced container) moves to `departed`
  with its counters, so the gateway's totals still add up after it; one that comes back
  continues its counters.

`ledgers.InflightLedger` is the seam for sharing in-flight counts across gateways (e.g. in
Redis): the table calls `request_started`/`request_finished`, tells it the registry's
replicas (`track`), and copies its snapshot (`remote_counts()`) into
`Replica.remote_inflight` when a new one is out (`sync_remote`), which `least_inflight` and
`queue_aware` add to their scores.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .ledgers import InflightLedger
from .load_report import LoadReport
from .policies import Policy

OUTCOMES = ("success", "error", "failure", "cancelled")
# Departed replicas kept by name (status and the summary list them); older ones are folded
# into one aggregate. An autoscaler replacing a replica every few minutes stays within this
# for hours, and a status document stays small whatever the churn.
DEPARTED_KEPT = 100
STATES = ("ready", "ejected", "unhealthy", "draining")
# Draws per wanted candidate before the table lists every candidate instead: with half the
# replicas unusable (ejected, full, tried), 4 draws each miss 1 time in 16; the scan is right
# whatever the mix, and is what a table of a few replicas costs anyway.
DRAWS_PER_CHOICE = 4


class NoReplicas(Exception):
    """No replica can take the request (none registered, none healthy, or all already tried)."""


class Overloaded(Exception):
    """Every replica is at its in-flight limit and the queue is full or the wait timed out."""


class Replica:
    """One container behind the gateway (counters survive URL changes and a brief absence)."""

    def __init__(self, container_uuid: str) -> None:
        self.container_uuid = container_uuid
        self.url = ""
        self.machine_id: str | None = None
        self.gpu_name: str | None = None
        self.healthy = True  # the registry's word (its health probes)
        self.in_registry = True
        self.inflight = 0
        self.remote_inflight = 0
        self.report: LoadReport | None = None
        self.report_error: str | None = None
        self.sent_since_report = 0
        self.report_generation = 0
        self.ejected_at: float | None = None
        self.ejected_until: float | None = None
        self.awaiting_probe = False
        self.ejections = 0
        self.retries = 0  # requests that failed here and were retried elsewhere
        self.service_seconds: float | None = None  # learned time per request (EWMA, see finish)
        self.service_measured_alone = False  # service_seconds comes from requests that ran alone
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.departed_at: float | None = None  # when it left the table for good (clock)

    def is_ejected(self, now: float) -> bool:
        if self.ejected_until is None:
            return False
        if now < self.ejected_until or self.awaiting_probe:
            return True
        self.ejected_until = self.ejected_at = None  # cool-down over, no probe to wait for
        return False

    def state(self, now: float) -> str:
        if not self.in_registry:
            return "draining"
        if not self.healthy:
            return "unhealthy"
        return "ejected" if self.is_ejected(now) else "ready"


@dataclass
class Ticket:
    """One request's hold on a replica; `finish` it exactly once (again is harmless)."""

    replica: Replica
    generation: int
    ahead: float = 0.0  # the policy's load_of(replica) when the request was sent
    started_at: float = 0.0
    finished: bool = False


# Weight of the newest duration sample in Replica.service_seconds: about the last ten
# requests count, so a replica that slows down (thermal, a longer prompt mix) is noticed.
SERVICE_TIME_WEIGHT = 0.2


def learn_service_time(replica: Replica, duration: float, ahead: float) -> None:
    """Learn a replica's time per request from requests that had it to themselves.

    Dividing a contended request's duration by the work ahead of it is right only for a
    server that takes one request at a time. A batching engine (vLLM) serves ten requests
    in little more than the time of one, so that quotient makes the busiest replica look
    the fastest and queue_aware would pile everything onto it. A request with nothing
    ahead measures the replica itself, whatever its engine. Until one has, the plain
    duration stands in: it can only over-state the time, so it draws less traffic until
    a request runs alone."""
    alone = ahead < 1
    if replica.service_measured_alone and not alone:
        return
    previous = replica.service_seconds
    if previous is None or (alone and not replica.service_measured_alone):
        replica.service_seconds = duration  # the first sample, or the first one taken alone
    else:
        replica.service_seconds = previous + SERVICE_TIME_WEIGHT * (duration - previous)
    replica.service_measured_alone = replica.service_measured_alone or alone


@dataclass
class _Waiter:
    future: asyncio.Future
    exclude: frozenset
    key: int | None = None
    since: float = field(default_factory=time.monotonic)


class ReplicaTable:
    def __init__(
        self,
        policy: Policy,
        *,
        max_inflight_per_replica: int = 0,
        max_queue: int = 0,
        queue_timeout: float = 0.0,
        eject_seconds: float = 10.0,
        probe_before_readmit: bool = False,
        ledger: InflightLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy
        self.max_inflight_per_replica = max_inflight_per_replica  # 0: no limit
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.eject_seconds = eject_seconds
        self.probe_before_readmit = probe_before_readmit
        self.ledger = ledger or InflightLedger()
        self.clock = clock
        self.on_change = on_change or (lambda message: None)
        self.replicas: dict[str, Replica] = {}
        self.draining: dict[str, Replica] = {}
        # In the registry and healthy: what draws come from (rebuilt when the registry changes).
        self._routable: list[Replica] = []
        self._remote_generation = self.ledger.generation
        self._waiters: deque[_Waiter] = deque()
        # Containers taken out of routing although the registry may still list them (the
        # autoscaler's scale to zero): registry updates do not bring them back; they leave
        # this set once the registry drops them, or when `restore` is called.
        self.withdrawn: set[str] = set()
        self.queue_rejections = 0  # answered 503 from the queue (full or timed out)
        self.departed: dict[str, Replica] = {}  # left for good, newest last (at most DEPARTED_KEPT)
        # Replicas beyond DEPARTED_KEPT, summed: totals keep adding up however many left.
        self.departed_beyond = {"replicas": 0, "requests": dict.fromkeys(OUTCOMES, 0), "retries": 0, "ejections": 0}

    # ---- membership ----------------------------------------------------------------------

    def update(self, items: Iterable[dict[str, Any]]) -> None:
        """Make the registry items the set of replicas (items without uuid or URL are skipped)."""
        items = list(items)
        listed = {item.get("container_uuid") for item in items}
        self.withdrawn &= listed
        fresh: dict[str, Replica] = {}
        for item in items:
            uuid, url = item.get("container_uuid"), item.get("url")
            if not isinstance(uuid, str) or not uuid or not isinstance(url, str) or uuid in fresh:
                continue
            if uuid in self.withdrawn:
                continue
            replica = self.replicas.get(uuid) or self.draining.pop(uuid, None) or self.departed.pop(uuid, None)
            if replica is None:
                replica = Replica(uuid)
                self.on_change(f"副本加入 {uuid} {url}")
            elif not replica.in_registry:
                self.on_change(f"副本回到注册表 {uuid}")
            replica.url = url.rstrip("/")
            replica.machine_id = item.get("machine_id")
            replica.gpu_name = item.get("gpu_name")
            # true or null (not probed) is usable; only an explicit false (a failing probe) is not
            replica.healthy = item.get("healthy") is not False
            replica.in_registry = True
            fresh[uuid] = replica
        for uuid, replica in self.replicas.items():
            if uuid in fresh:
                continue
            replica.in_registry = False
            if replica.inflight > 0:
                self.draining[uuid] = replica
                self.on_change(f"副本离开注册表 {uuid}, 等 {replica.inflight} 个进行中的请求结束")
            else:
                self.on_change(f"副本离开注册表 {uuid}")
                self._depart(replica)
        self.replicas = fresh
        self._routable = [replica for replica in fresh.values() if replica.healthy]
        self.ledger.track(fresh)
        self.dispatch()

    def withdraw_all(self) -> None:
        """Stop routing to every replica until the registry drops it (or `restore`)."""
        withdrawn = self.withdrawn | set(self.replicas)
        self.update([])
        self.withdrawn = withdrawn

    def restore(self) -> None:
        self.withdrawn.clear()

    def all_replicas(self) -> list[Replica]:
        return [*self.replicas.values(), *self.draining.values()]

    def _depart(self, replica: Replica) -> None:
        replica.departed_at = self.clock()
        self.departed.pop(replica.container_uuid, None)
        self.departed[replica.container_uuid] = replica
        while len(self.departed) > DEPARTED_KEPT:
            oldest = self.departed.pop(next(iter(self.departed)))
            beyond = self.departed_beyond
            beyond["replicas"] += 1
            beyond["retries"] += oldest.retries
            beyond["ejections"] += oldest.ejections
            for outcome, count in oldest.outcomes.items():
                beyond["requests"][outcome] += count

    # ---- selection -----------------------------------------------------------------------

    def candidates(self, exclude: frozenset = frozenset()) -> list[Replica]:
        """Replicas the policy may pick now. If every healthy untried one is ejected, the one
        ejected longest ago (trying beats failing the request outright; Envoy's panic mode)."""
        now = self.clock()
        limit = self.max_inflight_per_replica
        healthy = [r for uuid, r in self.replicas.items()
                   if r.healthy and uuid not in exclude and (not limit or r.inflight < limit)]
        ready = [r for r in healthy if not r.is_ejected(now)]
        if ready or not healthy:
            return ready
        return [min(healthy, key=lambda r: r.ejected_at or 0.0)]

    def could_serve(self, exclude: frozenset) -> bool:
        """Some healthy replica not in `exclude` exists (it may be busy right now)."""
        return any(r.healthy and uuid not in exclude for uuid, r in self.replicas.items())

    def try_start(self, exclude: frozenset = frozenset(), key: int | None = None) -> Ticket | None:
        self.sync_remote()
        wanted = self.policy.choices
        drawn = self._draw(wanted, exclude) if wanted else None
        if drawn is not None:
            return self.start(self.policy.select(drawn, key))
        candidates = self.candidates(exclude)
        if not candidates:
            return None
        return self.start(self.policy.select(candidates, key))

    def _draw(self, wanted: int, exclude: frozenset) -> list[Replica] | None:
        """`wanted` distinct usable replicas drawn uniformly from the routable ones, or None
        (fewer routable replicas than wanted, or the draws kept missing): then the caller
        lists every candidate. Rejecting unusable draws keeps each usable one equally likely,
        the same choice a sample of the full candidate list would make."""
        routable = self._routable
        size = len(routable)
        if size < wanted:
            return None
        now = self.clock()
        limit = self.max_inflight_per_replica
        randrange = self.policy.rng.randrange
        drawn: list[Replica] = []
        for _ in range(DRAWS_PER_CHOICE * wanted):
            replica = routable[randrange(size)]
            if (replica in drawn or replica.container_uuid in exclude or (limit and replica.inflight >= limit)
                    or replica.is_ejected(now)):
                continue
            drawn.append(replica)
            if len(drawn) == wanted:
                return drawn
        return None

    def sync_remote(self) -> None:
        """Copy other gateways' in-flight counts when the ledger has a new snapshot (a shared
        ledger refreshes every few tens of milliseconds; the local one never)."""
        generation = self.ledger.generation
        if generation == self._remote_generation:
            return
        self._remote_generation = generation
        counts = self.ledger.remote_counts()
        for replica in self.all_replicas():
            replica.remote_inflight = counts.get(replica.container_uuid, 0)

    def start(self, replica: Replica) -> Ticket:
        ahead = self.policy.load_of(replica)
        replica.inflight += 1
        replica.sent_since_report += 1
        self.ledger.request_started(replica.container_uuid)
        self.policy.on_request_start(replica)
        return Ticket(replica, replica.report_generation, ahead, self.clock())

    async def acquire(self, exclude: frozenset = frozenset(), key: int | None = None) -> Ticket:
        """A ticket now, or after waiting in the queue; raises NoReplicas / Overloaded.
        `key` is the request's affinity key for the policy (None: none)."""
        if not self._waiters:
            ticket = self.try_start(exclude, key)
            if ticket is not None:
                return ticket
        if exclude and not self.could_serve(exclude):
            raise NoReplicas("每个可用副本都已经试过")  # a retry never waits for the replica that failed
        if len(self._waiters) >= self.max_queue:
            self.queue_rejections += 1
            raise self._refusal(queue_full=True)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), exclude, key)
        self._waiters.append(waiter)
        try:
            done, _ = await asyncio.wait((waiter.future,), timeout=self.queue_timeout)
        except BaseException:  # the client went away while queued
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            self.queue_rejections += 1
            raise self._refusal(queue_full=False)
        return waiter.future.result()

    def _refusal(self, queue_full: bool) -> Exception:
        if not any(r.healthy for r in self.replicas.values()):
            return NoReplicas("没有已注册的健康副本" if self.replicas else "注册表中没有副本")
        return Overloaded("排队已满" if queue_full else f"排队超过 {self.queue_timeout:g} 秒")

    def _abandon(self, waiter: _Waiter) -> None:
        future = waiter.future
        if future.done() and not future.cancelled():
            self.finish(future.result(), None)  # a slot arrived too late: hand it back unused
            return
        future.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def dispatch(self) -> None:
        """Serve queued requests, oldest first, while replicas have room."""
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            ticket = self.try_start(waiter.exclude, waiter.key)
            if ticket is None:
                if not waiter.exclude:
                    break  # nothing free for anyone: keep FIFO order
                continue
            self._waiters.remove(waiter)
            waiter.future.set_result(ticket)

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.future.done())

    # ---- outcomes ------------------------------------------------------------------------

    def finish(self, ticket: Ticket, outcome: str | None) -> None:
        """End a request; outcome None means the ticket was never used (not counted)."""
        if ticket.finished:
            return
        ticket.finished = True
        replica = ticket.replica
        replica.inflight = max(0, replica.inflight - 1)
        if ticket.generation == replica.report_generation:
            replica.sent_since_report = max(0, replica.sent_since_report - 1)
        self.ledger.request_finished(replica.container_uuid)
        if outcome == "success":
            learn_service_time(replica, max(0.0, self.clock() - ticket.started_at), ticket.ahead)
        if outcome is not None:
            replica.outcomes[outcome] += 1
            self.policy.on_request_finish(replica, outcome)
        if replica.inflight == 0 and self.draining.get(replica.container_uuid) is replica:
            del self.draining[replica.container_uuid]
            self._depart(replica)
        self.dispatch()

    def eject(self, replica: Replica, reason: str) -> None:
        now = self.clock()
        if not replica.is_ejected(now):
            replica.ejections += 1
            self.on_change(f"副本被摘除 {self.eject_seconds:g} 秒 {replica.container_uuid}: {reason}")
        replica.ejected_at = now
        replica.ejected_until = now + self.eject_seconds
        replica.awaiting_probe = self.probe_before_readmit

    def due_for_probe(self) -> list[Replica]:
        """Ejected replicas whose cool-down is over and that wait for a good health probe."""
        now = self.clock()
        return [r for r in self.replicas.values()
                if r.awaiting_probe and r.ejected_until is not None and now >= r.ejected_until]

    def readmit(self, replica: Replica) -> None:
        if replica.ejected_until is not None:
            self.on_change(f"健康检查通过, 副本恢复 {replica.container_uuid}")
        replica.ejected_until = replica.ejected_at = None
        replica.awaiting_probe = False
        self.dispatch()

    def probe_failed(self, replica: Replica) -> None:
        """Still failing after its cool-down: another cool-down."""
        replica.ejected_until = self.clock() + self.eject_seconds

    def record_report(self, replica: Replica, report: LoadReport) -> None:
        replica.report = report
        replica.report_error = None
        replica.report_generation += 1
        replica.sent_since_report = 0
        self.policy.on_load_report(replica, report)

    # ---- what an autoscaler / status reads ----------------------------------------------

    def load(self, max_report_age: float) -> dict[str, Any]:
        """In-flight, queued and reported load; reports older than `max_report_age` are ignored."""
        now = self.clock()
        by_state = dict.fromkeys(STATES, 0)
        running = waiting = 0.0
        reports = 0
        for replica in self.all_replicas():
            by_state[replica.state(now)] += 1
            if replica.in_registry and replica.report is not None and now - replica.report.at <= max_report_age:
                running += replica.report.running
                waiting += replica.report.waiting
                reports += 1
        return {
            "inflight": sum(r.inflight for r in self.all_replicas()),
            "queued": self.queued,
            "reported_running": running,
            "reported_waiting": waiting,
            "replicas_reporting": reports,
            "replicas": len(self.replicas),
            "replicas_by_state": by_state,
        }
