"""All mutable simulator state behind one lock, advanced on a simulated clock.

Time moves in two ways: a background ticker and every API call bring the world up to the
clock's "now" (`sync`). Advancing is event driven: the world jumps from one due transition
to the next, so events carry the exact simulated instant they happened at, and a long
`advance()` still runs every controller step in order.

The work stays linear in what happens (issue 22): timers wait in a heap, and a controller
step visits only the deployments that may want something (their containers changed, their
spec changed, or they found no room and GPUs came free). One pass under the lock does at
most WORK_PER_PASS transitions, starts and stops; `settle()` runs passes until the world is
caught up, releasing the lock between them, so a PUT that starts 10,000 containers never
stalls other requests for long. Between passes the world is briefly behind the clock, at an
exact earlier instant, as a real platform's controllers lag behind its API.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from . import lifecycle as lc
from .clock import SimClock
from .cluster import ClusterSpec, Image, Machine, PlacementFilter
from .controllers import (
    DEPLOYMENT_RUNNING,
    DEPLOYMENT_STOPPED,
    JOB,
    REPLICA_SET,
    Container,
    Deployment,
    Event,
    NewDeployment,
    containers_to_start,
    containers_to_stop,
    work_is_done,
)

# Stopped containers stay reusable this long (the platform keeps them "at most 7 days").
REUSE_POOL_SECONDS = 7 * 24 * 3600
# Upper bound on controller steps (distinct instants) before a catch-up gives up on exact
# instants and jumps to the clock, so a huge advance() of a crash loop cannot hang for long.
MAX_STEPS_PER_SYNC = 100_000
# Transitions, container starts and stops one pass may do while it holds the lock: about
# 10-20 ms of work, so no request waits long behind another's (issue 22: <= 50 ms).
WORK_PER_PASS = 1000
# Exit code of a container stopped on request (SIGTERM's conventional 128 + 15).
STOPPED_EXIT_CODE = 143
# Events kept per deployment: a poller following from its offset never falls that far
# behind, while a crash-looping deployment cannot grow the simulator without bound. Trimmed
# a chunk at a time so appending stays cheap.
EVENTS_KEPT_PER_DEPLOYMENT = 10_000
EVENTS_TRIM_CHUNK = 1_000
# SSH and custom-service ports are drawn from the range a proxy host hands out.
PORT_RANGE = (20000, 60000)


class NoCapacity(Exception):
    """No machine can take the container right now."""


class NotFound(Exception):
    """Unknown (or deleted) deployment or container."""


@dataclass
class PoolEntry:
    """A stopped container kept for reuse: same host, its files survive."""

    container_uuid: str
    deployment_uuid: str
    machine_id: str
    image_uuid: str
    files: dict[str, str]
    stopped_at: float


@dataclass
class BlacklistEntry:
    machine_id: str
    data_center: str
    msg: str
    created_at: float
    updated_at: float
    expires_at: float


@dataclass
class Occupancy:
    """GPUs held by other tenants, so stock drops without any deployment of ours."""

    machine_id: str
    gpus: int
    until: float | None


class World:
    def __init__(self, spec: ClusterSpec, clock: SimClock, seed: int) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.now = 0.0
        self.default_job_seconds = spec.default_job_seconds
        self.machines: dict[str, Machine] = {m.machine_id: m for m in spec.machines}
        # GPU model -> its hosts in listing order, so a placement looks only at hosts of the
        # models it asks for (machines never change model).
        self._machines_by_gpu: dict[str, list[Machine]] = {}
        for machine in spec.machines:
            self._machines_by_gpu.setdefault(machine.gpu_name, []).append(machine)
        self._listing_order = {machine_id: index for index, machine_id in enumerate(self.machines)}
        self.images: list[Image] = list(spec.images)
        self.base_images: list[Image] = list(spec.base_images)
        self.deployments: dict[str, Deployment] = {}
        self.containers: dict[str, Container] = {}
        # Containers not yet shut down: the only ones with timers or GPUs, so the per-step
        # work stays small even after a crash loop has left thousands of dead containers.
        self._live: dict[str, Container] = {}
        # Indexes kept where containers are created and shut down, so listing a deployment
        # and placing a container cost the same at 10 or 10,000 containers (issue 22).
        self._by_deployment: dict[str, list[Container]] = {}  # every container, in creation order
        self._live_of: dict[str, dict[str, Container]] = {}  # deployment -> live, in creation order
        self._gpus_used: dict[str, int] = {}  # machine_id -> GPUs held by live containers
        # Pending phase ends: (instant, container id, sequence, container). The id orders
        # containers due at one instant by creation; an entry is current while it is the one
        # in _timer_of (a container stopped mid-phase leaves its old entry behind, skipped).
        self._timers: list[tuple[float, int, int, Container]] = []
        self._timer_of: dict[str, tuple[float, int, int, Container]] = {}
        self._timer_sequence = 0
        # Deployments whose controller must look again, by uuid: touched since their last
        # turn, deferred by a pass's budget, or starved (no room; retried when GPUs free up).
        self._dirty: set[str] = set()
        self._deferred: set[str] = set()
        self._starved: set[str] = set()
        self._capacity_freed = False
        self._work_left = WORK_PER_PASS
        self._steps_behind = 0  # controller steps since the world last caught up with the clock
        self.pool: list[PoolEntry] = []  # in the order containers stopped (oldest first)
        self.blacklist: dict[str, BlacklistEntry] = {}
        self.occupancy: list[Occupancy] = []
        self._occupied: dict[str, int] = {}  # machine_id -> GPUs other tenants hold
        self._occupancy_ends: float | None = None  # the earliest `until` in occupancy
        self._rng = random.Random(seed)
        self._next_id = {"deployment": 1, "container": 1}
        for load in spec.background_load:
            self.occupy(load.gpu_name, load.gpus, load.until_seconds)

    # ----- time -------------------------------------------------------------------------

    def sync(self) -> bool:
        """One pass: bring the world up to the clock's current simulated time, or as far as
        WORK_PER_PASS allows. True when caught up; False when behind (call again: `settle`).

        A pass that runs out of work stops where it is, at an exact instant: the next one
        first finishes that instant (its transitions, then the deferred controller work), so
        the outcome is the same as one long pass.
        """
        with self.lock:
            target = self.clock.now()
            self._work_left = WORK_PER_PASS
            while True:
                if self._deferred:
                    self._reconcile()
                    if self._deferred:
                        return False
                due = self._next_due_time()
                if due is None or due > target or self._steps_behind >= MAX_STEPS_PER_SYNC:
                    break
                if self._work_left <= 0:
                    return False
                self._steps_behind += 1
                self.now = max(self.now, due)
                self._fire_due()
                if self._work_left <= 0 and self._due_by(self.now):
                    return False
                self._reconcile()
            self._steps_behind = 0
            self.now = max(self.now, target)
            self._expire_pool_and_blacklist()
            self._reconcile()
            return not self._deferred

    def settle(self) -> None:
        """sync() until caught up, releasing the lock between passes so other requests get
        their turn. Call it without holding the lock (else the passes run back to back)."""
        while not self.sync():
            pass

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Hold the lock on a world caught up with the clock, so what a request reads or
        changes happens now, not at an instant the world has yet to leave. The catching up
        runs in passes, with the lock released between them."""
        while True:
            with self.lock:
                if self.sync():
                    yield
                    return

    def _due_by(self, instant: float) -> bool:
        self._drop_stale_timers()
        return bool(self._timers) and self._timers[0][0] <= instant

    def _drop_stale_timers(self) -> None:
        timers = self._timers
        while timers and self._timer_of.get(timers[0][3].uuid) is not timers[0]:
            heapq.heappop(timers)

    def _next_due_time(self) -> float | None:
        self._drop_stale_timers()
        times = [self._timers[0][0]] if self._timers else []
        if self._occupancy_ends is not None:
            times.append(self._occupancy_ends)
        return min(times, default=None)

    def _fire_due(self) -> None:
        if self._occupancy_ends is not None and self._occupancy_ends <= self.now:
            self.occupancy = [o for o in self.occupancy if o.until is None or o.until > self.now]
            self._occupancy_changed()
            self._capacity_freed = True
        timers = self._timers
        while self._work_left > 0 and self._due_by(self.now):
            entry = heapq.heappop(timers)
            at, container = entry[0], entry[3]
            del self._timer_of[container.uuid]
            self._work_left -= 1
            self._dirty.add(container.deployment_uuid)
            self._transition(container, at)

    def _schedule(self, container: Container, at: float | None) -> None:
        """Set when the container's current phase ends (None: no timer)."""
        container.phase_ends_at = at
        if at is None:
            self._timer_of.pop(container.uuid, None)
            return
        self._timer_sequence += 1
        entry = (at, container.id, self._timer_sequence, container)
        self._timer_of[container.uuid] = entry
        heapq.heappush(self._timers, entry)

    def _expire_pool_and_blacklist(self) -> None:
        kept = 0  # the pool is in stopping order, so expired entries are a prefix
        while kept < len(self.pool) and self.pool[kept].stopped_at + REUSE_POOL_SECONDS <= self.now:
            kept += 1
        del self.pool[:kept]
        for machine_id in [m for m, e in self.blacklist.items() if e.expires_at <= self.now]:
            del self.blacklist[machine_id]
            self._capacity_freed = True

    # ----- container state machine ------------------------------------------------------

    def _transition(self, container: Container, at: float) -> None:
        if container.status in lc.STARTUP_PHASES:
            status = lc.next_phase(container.status)
            if status == lc.RUNNING:
                self._enter_running(container, at)
            else:
                self._schedule(container, at + lc.PHASE_SECONDS[status])
            self._set_status(container, status, at)
        elif container.status == lc.RUNNING:
            # The command returned (or the faulty host killed it). A Job counts the
            # completion now, so it does not start a spare while this one shuts down.
            self._begin_shutdown(container, at, container.planned_exit_code, "exited")
            deployment = self.deployments[container.deployment_uuid]
            if deployment.deployment_type == JOB and container.exit_code == 0:
                deployment.completions += 1
        elif container.status == lc.SHUTTING_DOWN:
            self._finish_shutdown(container, at)

    def _enter_running(self, container: Container, at: float) -> None:
        deployment = self.deployments[container.deployment_uuid]
        plan = lc.plan_run(
            deployment.spec.cmd,
            keeps_running_by_default=deployment.deployment_type == REPLICA_SET,
            default_seconds=self.default_job_seconds,
        )
        seconds, exit_code = plan.seconds, plan.exit_code
        if self.machines[container.machine_id].faulty:
            crash_after = self._rng.uniform(*lc.FAULTY_CRASH_AFTER_SECONDS)
            if seconds is None or crash_after < seconds:
                seconds, exit_code = crash_after, lc.CRASH_EXIT_CODE
        container.started_at = at
        container.planned_exit_code = exit_code
        self._schedule(container, None if seconds is None else at + seconds)
        # A boot log that survives reuse, so a reused container visibly keeps old files.
        history = container.files.get("/root/.sim_boot_history", "")
        container.files["/root/.sim_boot_history"] = history + container.uuid + "\n"

    def _begin_shutdown(self, container: Container, at: float, exit_code: int, reason: str) -> None:
        container.exit_code = exit_code
        container.stop_reason = reason
        self._schedule(container, at + lc.PHASE_SECONDS[lc.SHUTTING_DOWN])
        self._set_status(container, lc.SHUTTING_DOWN, at)

    def _finish_shutdown(self, container: Container, at: float) -> None:
        self._schedule(container, None)
        container.stopped_at = at
        self._set_status(container, lc.SHUTDOWN, at)
        del self._live[container.uuid]
        del self._live_of[container.deployment_uuid][container.uuid]
        self._gpus_used[container.machine_id] -= container.gpu_num
        self._capacity_freed = True
        if container.reusable:
            self.pool.append(
                PoolEntry(container.uuid, container.deployment_uuid, container.machine_id,
                          container.image_uuid, dict(container.files), at)
            )

    def _set_status(self, container: Container, status: str, at: float) -> None:
        container.status = status
        container.updated_at = at
        deployment = self.deployments[container.deployment_uuid]
        self.record_event(deployment, Event(container.uuid, status, at))

    def _stop(self, container: Container, exit_code: int, reason: str) -> bool:
        """Ask a live container to stop now; False when it is already stopping/stopped."""
        if not container.counts_as_replica:
            return False
        self._begin_shutdown(container, self.now, exit_code, reason)
        return True

    # ----- controllers and placement ---------------------------------------------------

    def _reconcile(self) -> None:
        """A controller step: every deployment that may want something acts, in creation
        order, as if all were visited: the rest would do nothing (see `_reconcile_one`)."""
        chosen = self._dirty | self._deferred
        if self._capacity_freed:
            chosen |= self._starved
            self._capacity_freed = False
        self._dirty = set()
        for deployment in sorted((self.deployments[uuid] for uuid in chosen), key=lambda d: d.id):
            self._reconcile_one(deployment)

    def _reconcile_one(self, deployment: Deployment) -> None:
        """Bring one deployment toward what its controller wants, within the pass's budget.

        Afterwards it wants nothing more until its containers change, its spec changes (both
        mark it dirty), or, when left starved (no room), until GPUs come free; when the
        budget ran out first it is deferred to the next pass.
        """
        self._deferred.discard(deployment.uuid)
        self._starved.discard(deployment.uuid)
        live = list(self._live_of.get(deployment.uuid, {}).values())
        if deployment.status != DEPLOYMENT_RUNNING or deployment.deleted:
            # A stopped or deleted deployment keeps no replicas: stop what still counts.
            to_stop = [c for c in live if c.counts_as_replica]
        else:
            to_stop = containers_to_stop(deployment, live)
        budget = self._work_left
        for container in to_stop[:budget]:
            self._stop(container, STOPPED_EXIT_CODE, "stopped")
        self._work_left -= min(len(to_stop), budget)
        if len(to_stop) > budget:
            self._deferred.add(deployment.uuid)
            return
        if deployment.status != DEPLOYMENT_RUNNING or deployment.deleted:
            return
        if work_is_done(deployment, live):
            self._mark_stopped(deployment)
            return
        wanted = containers_to_start(deployment, live)
        if not wanted:
            return
        allowed = min(wanted, self._work_left)
        started = self._start_containers(deployment, allowed) if allowed else 0
        self._work_left -= started
        if started < allowed:
            self._starved.add(deployment.uuid)  # nothing fits now; retried when GPUs free up
        elif allowed < wanted:
            self._deferred.add(deployment.uuid)

    def _mark_stopped(self, deployment: Deployment) -> None:
        deployment.status = DEPLOYMENT_STOPPED
        deployment.stopped_at = deployment.updated_at = self.now

    def _touch(self, deployment: Deployment) -> None:
        """The deployment's controller must look again at the next step."""
        self._dirty.add(deployment.uuid)

    def free_gpus(self, machine: Machine) -> int:
        used = self._gpus_used.get(machine.machine_id, 0) + self._occupied.get(machine.machine_id, 0)
        return max(0, machine.gpu_num - used)

    def _occupancy_changed(self) -> None:
        """Rebuild what free_gpus and the timers read from the occupancy list."""
        self._occupied = {}
        for load in self.occupancy:
            self._occupied[load.machine_id] = self._occupied.get(load.machine_id, 0) + load.gpus
        self._occupancy_ends = min((o.until for o in self.occupancy if o.until is not None), default=None)

    def _candidates(self, placement: PlacementFilter) -> list[Machine]:
        """Hosts that qualify and have room now, in listing order."""
        hosts = [m for gpu_name in set(placement.gpu_name_set) for m in self._machines_by_gpu.get(gpu_name, ())]
        hosts.sort(key=lambda m: self._listing_order[m.machine_id])
        return [
            m for m in hosts
            if m.machine_id not in self.blacklist
            and placement.selects(m)
            and self.free_gpus(m) >= placement.gpu_num
        ]

    def _reusable_entries(self, deployment: Deployment, hosts: set[str]) -> Iterator[PoolEntry]:
        """Pool entries this deployment may reuse on those hosts, most recently stopped first."""
        if not deployment.spec.reuse_container:
            return iter(())
        return (
            entry for entry in reversed(self.pool)
            if entry.machine_id in hosts
            and entry.image_uuid == deployment.spec.image_uuid
            and (deployment.spec.reuse_scope == "all" or entry.deployment_uuid == deployment.uuid)
        )

    def can_place(self, placement: PlacementFilter) -> bool:
        return bool(self._candidates(placement))

    def _start_containers(self, deployment: Deployment, count: int) -> int:
        """Start up to `count` containers; returns how many found room.

        Each goes where placing them one at a time would put it: on the host of the most
        recently stopped reusable container whose host still has room, else on the host with
        the most free GPUs (the first listed wins ties). Only this deployment's own starts
        change free GPUs meanwhile, so the qualifying hosts are found once and kept in a heap
        by free GPUs, and the pool is walked once: linear in hosts + pool + containers.
        """
        gpu_num = deployment.spec.placement.gpu_num
        free = {m.machine_id: self.free_gpus(m) for m in self._candidates(deployment.spec.placement)}
        roomiest = [(-gpus, self._listing_order[machine_id], machine_id) for machine_id, gpus in free.items()]
        heapq.heapify(roomiest)
        # An entry skipped for lack of room never qualifies again in this batch: room only shrinks.
        reusable = self._reusable_entries(deployment, set(free))
        reused: list[PoolEntry] = []
        started = 0
        while started < count:
            entry = next((e for e in reusable if free[e.machine_id] >= gpu_num), None)
            if entry is not None:
                machine_id = entry.machine_id
                reused.append(entry)
            else:
                while roomiest and -roomiest[0][0] != free[roomiest[0][2]]:
                    heapq.heappop(roomiest)  # outdated: that host has taken containers since
                if not roomiest or free[roomiest[0][2]] < gpu_num:
                    break
                machine_id = roomiest[0][2]
            free[machine_id] -= gpu_num
            heapq.heappush(roomiest, (-free[machine_id], self._listing_order[machine_id], machine_id))
            self._create_container(deployment, self.machines[machine_id], entry)
            started += 1
        if reused:
            taken = {id(entry) for entry in reused}
            self.pool = [entry for entry in self.pool if id(entry) not in taken]
        return started

    def _create_container(self, deployment: Deployment, machine: Machine, entry: PoolEntry | None) -> None:
        gpu_num = deployment.spec.placement.gpu_num
        creating = lc.REUSED_CREATING_SECONDS if entry else lc.PHASE_SECONDS[lc.CREATING]
        container = Container(
            id=self._take_id("container"),
            uuid=f"{deployment.uuid}-{machine.machine_id}-{self._hex(8)}",
            deployment_uuid=deployment.uuid,
            machine_id=machine.machine_id,
            gpu_name=machine.gpu_name,
            gpu_num=gpu_num,
            cpu_num=machine.cpu_per_gpu * gpu_num,
            memory_gb=machine.memory_gb_per_gpu * gpu_num,
            price=machine.price,  # per card, like price_from/price_to (references/money.md, 计费口径)
            image_uuid=deployment.spec.image_uuid,
            data_center=machine.region,
            root_password=self._password(),
            ssh_port=self._rng.randint(*PORT_RANGE),
            custom_port=self._rng.randint(*PORT_RANGE),
            created_at=self.now,
            status=lc.CREATING,
            phase_ends_at=None,
            updated_at=self.now,
            reusable=deployment.spec.reuse_container,
            reused_from=entry.container_uuid if entry else None,
            files=dict(entry.files) if entry else {},
        )
        self._schedule(container, self.now + creating)
        self.containers[container.uuid] = container
        self._live[container.uuid] = container
        self._live_of.setdefault(deployment.uuid, {})[container.uuid] = container
        self._by_deployment.setdefault(deployment.uuid, []).append(container)
        self._gpus_used[machine.machine_id] = self._gpus_used.get(machine.machine_id, 0) + gpu_num
        deployment.containers_started += 1
        self.record_event(deployment, Event(container.uuid, lc.CREATING, self.now))

    # ----- operations used by the API and the test controls ---------------------------

    def containers_of(self, deployment_uuid: str) -> list[Container]:
        return list(self._by_deployment.get(deployment_uuid, ()))

    def deployment(self, deployment_uuid: str) -> Deployment:
        found = self.deployments.get(deployment_uuid)
        if found is None or found.deleted:
            raise NotFound(deployment_uuid)
        return found

    def container(self, container_uuid: str) -> Container:
        found = self.containers.get(container_uuid)
        if found is None or self.deployments[found.deployment_uuid].deleted:
            raise NotFound(container_uuid)
        return found

    def create_deployment(self, spec: NewDeployment) -> Deployment:
        """Commit a deployment and start what fits; refuse (NoCapacity) if nothing fits now."""
        with self.current():
            if not self.can_place(spec.placement):
                raise NoCapacity()
            uuid = self._hex(15)
            while uuid in self.deployments:
                uuid = self._hex(15)
            deployment = Deployment(
                id=self._take_id("deployment"), uuid=uuid, spec=spec,
                replica_num=spec.replica_num, created_at=self.now, updated_at=self.now,
            )
            self.deployments[uuid] = deployment
            self._touch(deployment)
            self._reconcile()
            return deployment

    def stop_container(self, container_uuid: str, decrease_one_replica_num: bool, no_cache: bool) -> None:
        with self.current():
            container = self.container(container_uuid)
            deployment = self.deployments[container.deployment_uuid]
            if no_cache:
                container.reusable = False
            if self._stop(container, STOPPED_EXIT_CODE, "stopped"):
                if decrease_one_replica_num and deployment.deployment_type == REPLICA_SET:
                    deployment.replica_num = max(0, deployment.replica_num - 1)
                deployment.updated_at = self.now
            self._touch(deployment)
            self._reconcile()

    def set_replica_num(self, deployment: Deployment, replica_num: int) -> None:
        with self.current():
            deployment.replica_num = replica_num
            deployment.updated_at = self.now
            self._touch(deployment)
            self._reconcile()

    def stop_deployment(self, deployment: Deployment) -> None:
        """Mark it stopped; its controller stops every replica (settle() finishes a big one)."""
        with self.current():
            if deployment.status == DEPLOYMENT_RUNNING:
                self._mark_stopped(deployment)
            self._touch(deployment)
            self._reconcile()

    def delete_deployment(self, deployment: Deployment) -> None:
        with self.current():
            self.stop_deployment(deployment)
            deployment.deleted = True
            # Nobody can ask for a deleted deployment's events any more (404): free them.
            deployment.events_base += len(deployment.events)
            deployment.events.clear()
            deployment.events_trimmed_by_container.clear()

    def record_event(self, deployment: Deployment, event: Event) -> None:
        """Append an event; past EVENTS_KEPT_PER_DEPLOYMENT the oldest are dropped (a crash
        loop runs for days), the way a platform keeps a bounded history."""
        deployment.events.append(event)
        if len(deployment.events) > EVENTS_KEPT_PER_DEPLOYMENT:
            dropped = deployment.events[:EVENTS_TRIM_CHUNK]
            del deployment.events[:EVENTS_TRIM_CHUNK]
            deployment.events_base += len(dropped)
            for old in dropped:
                trimmed = deployment.events_trimmed_by_container
                trimmed[old.container_uuid] = trimmed.get(old.container_uuid, 0) + 1

    def add_blacklist(self, container: Container, minutes: float, comment: str) -> None:
        with self.current():
            machine = self.machines[container.machine_id]
            previous = self.blacklist.get(machine.machine_id)
            self.blacklist[machine.machine_id] = BlacklistEntry(
                machine_id=machine.machine_id,
                data_center=machine.region,
                msg=comment,
                created_at=previous.created_at if previous else self.now,
                updated_at=self.now,
                expires_at=self.now + minutes * 60,
            )

    def occupy(self, gpu_name: str, count: int, seconds: float | None = None) -> int:
        """Let other tenants take up to `count` idle GPUs of a model; returns how many."""
        with self.current():
            until = None if seconds is None else self.now + seconds
            taken = 0
            for machine in self.machines.values():
                if machine.gpu_name != gpu_name or taken >= count:
                    continue
                grab = min(self.free_gpus(machine), count - taken)
                if grab > 0:
                    self.occupancy.append(Occupancy(machine.machine_id, grab, until))
                    taken += grab
            self._occupancy_changed()
            return taken

    def release_occupied(self) -> None:
        with self.current():
            self.occupancy.clear()
            self._occupancy_changed()
            self._capacity_freed = True
            self._reconcile()

    def crash(self, container_uuid: str, exit_code: int) -> bool:
        """Kill a live container as if its process died; False if it was already stopping."""
        with self.current():
            container = self.container(container_uuid)
            crashed = self._stop(container, exit_code, "crashed")
            self._touch(self.deployments[container.deployment_uuid])
            self._reconcile()
            return crashed

    def stock_by_gpu(self, machine_filter: Callable[[Machine], bool] = lambda m: True) -> dict[str, dict[str, Any]]:
        """Per GPU model: total and idle cards (per card, as the platform counts them)."""
        stock: dict[str, dict[str, Any]] = {}
        for machine in self.machines.values():
            if not machine_filter(machine):
                continue
            entry = stock.setdefault(machine.gpu_name, {
                "total_gpu_num": 0, "idle_gpu_num": 0,
                "chip_corp": machine.chip_corp, "cpu_arch": machine.cpu_arch,
            })
            entry["total_gpu_num"] += machine.gpu_num
            entry["idle_gpu_num"] += self.free_gpus(machine)
        return stock

    # ----- ids ---------------------------------------------------------------------------

    def _take_id(self, kind: str) -> int:
        value = self._next_id[kind]
        self._next_id[kind] += 1
        return value

    def _hex(self, length: int) -> str:
        return f"{self._rng.getrandbits(4 * length):0{length}x}"

    def _password(self) -> str:
        alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        return "".join(self._rng.choice(alphabet) for _ in range(12))
