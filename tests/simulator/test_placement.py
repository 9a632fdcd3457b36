"""Placement and the pass budget at scale (issue 22): the same choices as before, in less work.

The world places a batch of containers with a heap of hosts by free GPUs and splits big
changes into passes (WORK_PER_PASS). These tests drive World directly on a clock that moves
only when told, and compare it with a reference world that places one container at a time
by rescanning every host, as the simulator did before: same hosts, same reuse, same order.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import world as world_module
from simulator.cluster import ClusterSpec, Image, Machine, PlacementFilter
from simulator.controllers import JOB, REPLICA_SET, NewDeployment
from simulator.world import NoCapacity, World

IMAGE = "image-0a1b2c3d4e"
GPU_NAMES = ("RTX 4090", "A800", "L20")
REGIONS = ("westDC2", "beijingDC1")


class ManualClock:
    """Simulated time that moves only when a test says so."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> float:
        return self.seconds


class ReferenceWorld(World):
    """The world as it was before issue 22: every controller step visits every deployment,
    and every container rescans every host, counting used GPUs from the live containers and
    the occupancy list (no dirty sets, no indexes, no heap)."""

    def _reconcile(self):
        self._dirty, self._capacity_freed = set(), False
        for deployment in list(self.deployments.values()):
            self._reconcile_one(deployment)

    def _scanned_free_gpus(self, machine: Machine) -> int:
        used = sum(c.gpu_num for c in self._live.values() if c.machine_id == machine.machine_id)
        used += sum(o.gpus for o in self.occupancy if o.machine_id == machine.machine_id)
        return max(0, machine.gpu_num - used)

    def _start_containers(self, deployment, count):
        placement = deployment.spec.placement
        started = 0
        for _ in range(count):
            machines = [m for m in self.machines.values()
                        if m.machine_id not in self.blacklist and placement.selects(m)
                        and self._scanned_free_gpus(m) >= placement.gpu_num]
            if not machines:
                break
            entry = None
            if deployment.spec.reuse_container:
                on_candidates = {m.machine_id for m in machines}
                entry = next((e for e in reversed(self.pool)
                              if e.machine_id in on_candidates and e.image_uuid == deployment.spec.image_uuid
                              and (deployment.spec.reuse_scope == "all" or e.deployment_uuid == deployment.uuid)),
                             None)
            if entry is not None:
                self.pool.remove(entry)
                machine = self.machines[entry.machine_id]
            else:
                machine = max(machines, key=self._scanned_free_gpus)
            self._create_container(deployment, machine, entry)
            started += 1
        return started


def machine(index: int, gpu_name: str = "RTX 4090", gpu_num: int = 8, region: str = "westDC2",
            price: int = 1980, max_cuda: int = 124) -> Machine:
    return Machine(machine_id=f"{index:010x}", region=region, gpu_name=gpu_name, gpu_num=gpu_num,
                   cpu_num=12 * gpu_num, memory_gb=60 * gpu_num, price=price, max_cuda=max_cuda)


def new_deployment(gpu_names=("RTX 4090",), gpu_num: int = 1, replica_num: int = 1, regions=(),
                   price=(0, 100_000), min_cuda: int = 0, reuse: bool = False, scope: str = "all",
                   deployment_type: str = REPLICA_SET, cmd: str = "sleep infinity") -> NewDeployment:
    placement = PlacementFilter(gpu_name_set=tuple(gpu_names), gpu_num=gpu_num, cpu_num_from=1, cpu_num_to=10_000,
                                memory_gb_from=1, memory_gb_to=100_000, price_from=price[0], price_to=price[1],
                                min_cuda=min_cuda, regions=tuple(regions))
    return NewDeployment(name="placed", deployment_type=deployment_type, replica_num=replica_num,
                         parallelism_num=max(1, replica_num // 2), reuse_container=reuse, reuse_scope=scope,
                         image_uuid=IMAGE, cmd=cmd,
                         placement=placement, template={}, dialect="private", port_protocols={})


def make_world(machines: list[Machine], world_class: type[World] = World) -> World:
    spec = ClusterSpec(machines=machines, images=[Image(IMAGE, "serve")])
    return world_class(spec, ManualClock(), seed=3)


def hosts_of(world: World, deployment) -> list[str]:
    return [c.machine_id for c in world.containers_of(deployment.uuid)]


def shape(world: World) -> list[tuple]:
    """Everything placement decides, and what follows from it (ids, uuids, reuse, statuses)."""
    return [(c.uuid, c.machine_id, c.reused_from, c.status, c.created_at) for c in world.containers.values()]


# ----- representative cases -------------------------------------------------------------------

def test_a_batch_spreads_to_the_roomiest_host_first_listed_winning_ties():
    world = make_world([machine(1, gpu_num=4), machine(2, gpu_num=4), machine(3, gpu_num=2)])
    deployment = world.create_deployment(new_deployment(replica_num=5))
    a, b = f"{1:010x}", f"{2:010x}"
    assert hosts_of(world, deployment) == [a, b, a, b, a]


def test_a_batch_never_splits_a_container_over_hosts_and_stops_when_none_has_room():
    world = make_world([machine(1, gpu_num=4), machine(2, gpu_num=2)])
    deployment = world.create_deployment(new_deployment(gpu_num=3, replica_num=3))
    assert hosts_of(world, deployment) == [f"{1:010x}"]
    world.clock.seconds = 3600
    world.settle()
    assert hosts_of(world, deployment) == [f"{1:010x}"]  # still no room: nothing more starts


@pytest.mark.parametrize("request_, chosen", [
    (dict(gpu_names=("A800",)), 2),  # only the A800 host has the model
    (dict(regions=("beijingDC1",)), 3),  # region filter
    (dict(min_cuda=125), 4),  # only one driver reaches CUDA 12.5
    (dict(price=(0, 1500)), 5),  # only one host under the price cap
    (dict(gpu_names=("A800", "RTX 4090"), regions=("beijingDC1",)), 3),
])
def test_filters_pick_the_only_qualifying_host(request_, chosen):
    world = make_world([
        machine(1, gpu_num=8),  # the roomiest: chosen unless a filter excludes it
        machine(2, gpu_name="A800", gpu_num=4),
        machine(3, gpu_num=2, region="beijingDC1"),
        machine(4, gpu_num=2, max_cuda=125),
        machine(5, gpu_num=2, price=1200),
    ])
    deployment = world.create_deployment(new_deployment(**request_))
    assert hosts_of(world, deployment) == [f"{chosen:010x}"]


def test_reuse_prefers_the_most_recently_stopped_container_whose_host_has_room():
    world = make_world([machine(1, gpu_num=2), machine(2, gpu_num=8)])
    first = world.create_deployment(new_deployment(replica_num=3, reuse=True))
    assert hosts_of(world, first) == [f"{2:010x}"] * 3
    world.clock.seconds = 30
    world.sync()
    world.set_replica_num(first, 0)
    world.clock.seconds = 40
    world.sync()
    assert len(world.pool) == 3
    blocker = world.create_deployment(new_deployment(replica_num=6))  # leaves host 2 two cards
    assert hosts_of(world, blocker) == [f"{2:010x}"] * 6
    newest = [entry.container_uuid for entry in reversed(world.pool)]
    second = world.create_deployment(new_deployment(replica_num=3, reuse=True))
    containers = world.containers_of(second.uuid)
    # Host 2 has room for two: the two most recently stopped come back there; the third starts fresh.
    assert [c.reused_from for c in containers[:2]] == newest[:2]
    assert containers[2].reused_from is None and containers[2].machine_id == f"{1:010x}"


# ----- the same world as visiting every deployment and host -----------------------------------------------

machines_strategy = st.lists(
    st.builds(dict, gpu_name=st.sampled_from(GPU_NAMES), gpu_num=st.sampled_from((1, 2, 4, 8)),
              region=st.sampled_from(REGIONS), price=st.sampled_from((900, 1500, 1980)),
              max_cuda=st.sampled_from((118, 121, 124))),
    min_size=1, max_size=8)
deployment_strategy = st.builds(
    dict, gpu_names=st.lists(st.sampled_from(GPU_NAMES), min_size=1, max_size=3, unique=True),
    gpu_num=st.sampled_from((1, 1, 2, 4)), replica_num=st.integers(0, 12),
    regions=st.sampled_from(((), ("westDC2",), REGIONS)), price=st.sampled_from(((0, 100_000), (0, 1500))),
    min_cuda=st.sampled_from((0, 121)), reuse=st.booleans(), scope=st.sampled_from(("all", "deployment")),
    deployment_type=st.sampled_from((REPLICA_SET, REPLICA_SET, JOB)),
    # Serving for ever, exiting (replaced, or a Job's completion), crash-looping.
    cmd=st.sampled_from(("sleep infinity", "sleep 40", "exit 1")))
# A few deployments first, then a mix of what clients and the test controls do.
operations = st.tuples(st.lists(st.tuples(st.just("create"), deployment_strategy), min_size=1, max_size=4), st.lists(st.one_of(
    st.tuples(st.just("create"), deployment_strategy),
    st.tuples(st.just("scale"), st.integers(0, 20), st.integers(0, 16)),
    st.tuples(st.just("stop"), st.integers(0, 200), st.booleans()),
    st.tuples(st.just("crash"), st.integers(0, 200)),
    st.tuples(st.just("advance"), st.sampled_from((1.0, 3.0, 10.0, 30.0, 400.0))),
    st.tuples(st.just("occupy"), st.sampled_from(GPU_NAMES), st.integers(1, 10), st.sampled_from((None, 50.0))),
    st.tuples(st.just("release")),
    st.tuples(st.just("blacklist"), st.integers(0, 200), st.sampled_from((0.5, 5.0))),
    st.tuples(st.just("stop_deployment"), st.integers(0, 20)),
), min_size=3, max_size=25)).map(lambda parts: parts[0] + parts[1])


def apply(world: World, operation: tuple) -> str:
    """Carry out one operation; returns what happened, for comparison across worlds."""
    kind, *args = operation
    running = [d for d in world.deployments.values() if d.status == "running" and not d.deleted]
    live = [c for c in world.containers.values() if c.counts_as_replica]
    if kind == "create":
        try:
            return world.create_deployment(new_deployment(**args[0])).uuid
        except NoCapacity:
            return "no capacity"
    if kind == "scale" and running:
        world.set_replica_num(running[args[0] % len(running)], args[1])
    elif kind == "stop" and live:
        world.stop_container(live[args[0] % len(live)].uuid, args[1], no_cache=False)
    elif kind == "crash" and live:
        world.crash(live[args[0] % len(live)].uuid, 1)
    elif kind == "advance":
        world.clock.seconds += args[0]
    elif kind == "occupy":
        return str(world.occupy(*args))
    elif kind == "release":
        world.release_occupied()
    elif kind == "blacklist" and live:
        world.add_blacklist(live[args[0] % len(live)], args[1], "")
    elif kind == "stop_deployment" and running:
        world.stop_deployment(running[args[0] % len(running)])
    return ""


def run(world: World, ops: list[tuple]) -> list:
    """Apply the operations, the world settled after each but a clock move: the next one then
    meets a world behind the clock, as an API call after a quiet spell does."""
    trace = []
    for operation in [*ops, ("settle",)]:
        trace.append(apply(world, operation))
        if operation[0] != "advance":
            world.settle()
            trace.append(shape(world))
            trace.append({machine_id: world.free_gpus(m) for machine_id, m in world.machines.items()})
    return trace


def cluster(specs: list[dict]) -> list[Machine]:
    return [machine(index, **spec) for index, spec in enumerate(specs, start=1)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machines_strategy, operations)
def test_the_world_matches_the_one_that_visited_everything(specs, ops):
    assert run(make_world(cluster(specs)), ops) == run(make_world(cluster(specs), ReferenceWorld), ops)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machines_strategy, operations)
def test_a_small_pass_budget_gives_the_same_world_as_one_long_pass(specs, ops):
    whole = run(make_world(cluster(specs)), ops)
    with pass_budget(3):
        assert run(make_world(cluster(specs)), ops) == whole


# ----- passes: the lock is released between bounded pieces of work ----------------------------

@contextlib.contextmanager
def pass_budget(work: int):
    """WORK_PER_PASS for the block (a context manager: hypothesis runs many examples per test)."""
    saved = world_module.WORK_PER_PASS
    world_module.WORK_PER_PASS = work
    try:
        yield
    finally:
        world_module.WORK_PER_PASS = saved


def test_a_big_scale_up_is_started_a_pass_at_a_time(monkeypatch):
    monkeypatch.setattr(world_module, "WORK_PER_PASS", 5)
    world = make_world([machine(1, gpu_num=8), machine(2, gpu_num=8)])
    deployment = world.create_deployment(new_deployment(replica_num=1))
    assert world.sync() is True
    world.set_replica_num(deployment, 12)  # what is left of this pass's budget: 5 starts
    assert len(world.containers_of(deployment.uuid)) == 6
    assert world.sync() is False and len(world.containers_of(deployment.uuid)) == 11
    assert world.sync() is True and len(world.containers_of(deployment.uuid)) == 12


def test_a_big_scale_down_and_a_stop_are_stopped_a_pass_at_a_time(monkeypatch):
    world = make_world([machine(1, gpu_num=8), machine(2, gpu_num=8)])
    deployment = world.create_deployment(new_deployment(replica_num=12))
    monkeypatch.setattr(world_module, "WORK_PER_PASS", 5)
    assert world.sync() is True
    world.set_replica_num(deployment, 1)
    counted = lambda: sum(c.counts_as_replica for c in world.containers_of(deployment.uuid))  # noqa: E731
    assert counted() == 7
    world.settle()
    assert counted() == 1
    world.stop_deployment(deployment)
    world.settle()
    assert counted() == 0 and deployment.status == "stopped"


def test_transitions_due_at_one_instant_are_split_over_passes_and_the_instant_finished_first(monkeypatch):
    world = make_world([machine(1, gpu_num=8), machine(2, gpu_num=8)])
    deployment = world.create_deployment(new_deployment(replica_num=12))
    monkeypatch.setattr(world_module, "WORK_PER_PASS", 5)
    world.clock.seconds = 20  # every container's `creating` ends now
    assert world.sync() is False
    assert world.now == 20 and sum(c.status == "created" for c in world.containers.values()) == 5
    world.settle()
    assert {c.status for c in world.containers.values()} == {"created"}
    assert [e.status for e in deployment.events] == ["creating"] * 12 + ["created"] * 12
