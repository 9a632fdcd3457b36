"""Selection in the replica table: policies that compare a few replicas get them drawn at
random from the routable ones (no per-request list of every replica), fall back to the full
candidate list when draws keep missing, and the in-flight counts stay right whatever joins,
leaves, fails or is abandoned. Remote counts are copied per ledger snapshot, not per request."""

from __future__ import annotations

import collections
import random

import pytest

pytest.importorskip("aiohttp")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autodl_esd.serving.routing.ledgers import InflightLedger  # noqa: E402
from autodl_esd.serving.routing.policies import POLICIES, LeastInflight, Random  # noqa: E402
from autodl_esd.serving.routing.replicas import ReplicaTable  # noqa: E402
from helpers.loop_thread import item  # noqa: E402


class Recording:
    """Wraps a policy class: remembers the candidates each choice was made among."""

    def __init__(self, policy_class, rng_seed: int = 1):
        self.policy = policy_class(random.Random(rng_seed))
        self.seen: list[list[str]] = []
        original = self.policy.select_replica

        def select(candidates):
            self.seen.append([r.container_uuid for r in candidates])
            return original(candidates)

        self.policy.select_replica = select


def names(count: int) -> list[str]:
    return [f"r{index:04d}" for index in range(count)]


def table_of(count: int, policy, **kwargs) -> ReplicaTable:
    table = ReplicaTable(policy, **kwargs)
    table.update([item(uuid, f"http://{uuid}") for uuid in names(count)])
    return table


def test_least_inflight_compares_two_drawn_replicas_and_takes_the_less_loaded():
    recording = Recording(LeastInflight)
    table = table_of(300, recording.policy)
    for index, replica in enumerate(table.replicas.values()):
        replica.inflight = index % 7
    for _ in range(500):
        ticket = table.try_start()
        pair = recording.seen[-1]
        assert len(pair) == 2 and pair[0] != pair[1]  # two distinct replicas, not all 300
        other = table.replicas[pair[1] if pair[0] == ticket.replica.container_uuid else pair[0]]
        assert ticket.replica.inflight - 1 <= other.inflight  # the one taken had no more before it
        table.finish(ticket, "success")


def test_draws_skip_unusable_replicas_and_keep_every_usable_one_equally_likely():
    recording = Recording(Random, rng_seed=7)
    clock = [0.0]
    table = table_of(20, recording.policy, max_inflight_per_replica=1, eject_seconds=60, clock=lambda: clock[0])
    replicas = list(table.replicas.values())
    for replica in replicas[:5]:
        table.eject(replica, "test")
    held = [table.start(replica) for replica in replicas[5:10]]  # at the per-replica limit
    excluded = frozenset(r.container_uuid for r in replicas[10:12])
    usable = {r.container_uuid for r in replicas[12:]}
    picks = collections.Counter()
    for _ in range(8000):
        ticket = table.try_start(excluded)
        picks[ticket.replica.container_uuid] += 1
        table.finish(ticket, "success")
    assert set(picks) == usable  # never ejected, full or excluded ones
    expected = 8000 / len(usable)
    assert all(abs(count - expected) < 0.15 * expected for count in picks.values()), picks
    # Mostly drawn; with 12 of 20 unusable a few draws miss 4 times and the usable ones are listed.
    assert all(len(seen) in (1, len(usable)) for seen in recording.seen)
    assert sum(len(seen) == 1 for seen in recording.seen) > 0.8 * len(recording.seen)
    for ticket in held:
        table.finish(ticket, "success")


def test_when_draws_keep_missing_every_candidate_is_listed():
    recording = Recording(LeastInflight)
    clock = [0.0]
    table = table_of(300, recording.policy, eject_seconds=60, clock=lambda: clock[0])
    replicas = list(table.replicas.values())
    for replica in replicas[2:]:
        table.eject(replica, "test")
    replicas[0].inflight = 3
    for _ in range(50):
        ticket = table.try_start()
        assert ticket.replica is replicas[1]  # the less loaded of the only two usable ones
        table.finish(ticket, "success")
    assert ["r0000", "r0001"] in recording.seen or ["r0001", "r0000"] in recording.seen
    # Every replica ejected: the fallback is the scan's panic mode, the one ejected longest ago.
    clock[0] += 1
    table.eject(replicas[0], "test")
    clock[0] += 1
    table.eject(replicas[1], "test")
    assert table.try_start().replica is replicas[2]


def test_policies_without_choices_still_see_every_candidate():
    recording = Recording(POLICIES["round_robin"])
    table = table_of(5, recording.policy)
    picks = [table.try_start().replica.container_uuid for _ in range(5)]
    assert sorted(picks) == names(5)
    assert all(len(seen) == 5 for seen in recording.seen)


OPERATIONS = st.lists(st.tuples(st.sampled_from(["update", "start", "finish", "eject", "abandon"]),
                                st.integers(0, 2 ** 16)), min_size=1, max_size=60)


@seed(20261206)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(OPERATIONS)
def test_inflight_counts_stay_exact_through_joins_leaves_failures_and_cancellations(operations):
    clock = [0.0]
    table = table_of(6, LeastInflight(random.Random(3)), max_inflight_per_replica=3, eject_seconds=5,
                     clock=lambda: clock[0])
    universe = names(12)
    live: list = []
    for kind, value in operations:
        clock[0] += 0.5
        rng = random.Random(value)
        if kind == "update":  # replicas join and leave, some unhealthy
            chosen = rng.sample(universe, rng.randint(0, len(universe)))
            table.update([item(uuid, f"http://{uuid}", healthy=rng.random() > 0.2) for uuid in chosen])
        elif kind == "start":
            exclude = frozenset(rng.sample(universe, rng.randint(0, 3)))
            ticket = table.try_start(exclude)
            if ticket is not None:
                assert ticket.replica.container_uuid not in exclude
                assert ticket.replica.in_registry and ticket.replica.healthy
                live.append(ticket)
        elif kind in ("finish", "abandon") and live:
            ticket = live.pop(value % len(live))
            table.finish(ticket, None if kind == "abandon" else rng.choice(["success", "error", "failure", "cancelled"]))
        elif kind == "eject" and table.replicas:
            table.eject(rng.choice(list(table.replicas.values())), "test")
        holding = collections.Counter(t.replica.container_uuid for t in live)
        for replica in table.all_replicas():
            assert replica.inflight == holding[replica.container_uuid]
            assert replica.inflight <= 3
        assert {r.container_uuid for r in table._routable} == {u for u, r in table.replicas.items() if r.healthy}
    for ticket in live:
        table.finish(ticket, "cancelled")
    assert all(r.inflight == 0 for r in table.all_replicas()) and table.draining == {}


class SnapshotLedger(InflightLedger):
    def __init__(self):
        self.generation = 0
        self.counts: dict[str, int] = {}
        self.tracked: set[str] = set()
        self.reads = 0

    def track(self, container_uuids):
        self.tracked = set(container_uuids)

    def remote_counts(self):
        self.reads += 1
        return self.counts


def test_remote_counts_are_copied_once_per_ledger_snapshot_not_per_request():
    ledger = SnapshotLedger()
    table = table_of(2, LeastInflight(random.Random(1)), ledger=ledger)
    assert ledger.tracked == set(names(2))  # the ledger knows what to count before any request
    for _ in range(20):
        table.finish(table.try_start(), "success")
    assert ledger.reads == 0  # nothing new: no copies
    ledger.counts, ledger.generation = {"r0000": 5}, 1
    picks = {table.try_start().replica.container_uuid for _ in range(4)}
    assert ledger.reads == 1 and picks == {"r0001"}  # 1..4 of ours stay below the other's 5
    assert [r.remote_inflight for r in table.replicas.values()] == [5, 0]
    table.update([item(uuid, f"http://{uuid}") for uuid in names(3)])  # a replica joins
    assert ledger.tracked == set(names(3))
    ledger.counts, ledger.generation = {"r0002": 2}, 2
    table.sync_remote()
    assert [r.remote_inflight for r in table.replicas.values()] == [0, 0, 2]


def test_a_route_applies_a_newer_registry_view_only_when_its_replicas_changed():
    from dataclasses import replace

    from autodl_esd.serving.routing.routes import Route, RouteOptions
    from autodl_esd.serving.routing.sources import StaticSource

    source = StaticSource([item("a", "http://a")])
    route = Route("default", source, RouteOptions())
    route.refresh_registry()
    applied = []
    update = route.table.update
    route.table.update = lambda items: (applied.append(len(items)), update(items))
    source._view = replace(source._view, read_at=source._view.read_at + 1)  # newer, the same replicas
    route.refresh_registry()
    assert applied == [] and route.view is source._view
    source.set([item("a", "http://a"), item("b", "http://b")])
    route.refresh_registry()
    assert applied == [2] and sorted(route.table.replicas) == ["a", "b"]
