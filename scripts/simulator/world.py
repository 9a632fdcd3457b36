"""All mutable simulator state behind one lock, advanced on a simulated clock.

Time moves in two ways: a background ticker and every API call bring the world up to the
clock's "now" (`sync`). Advancing is event driven: the world jumps from one due transition
to the next, so events carry the exact simulated instant they happened at, and a long
`advance()` still runs every controller step in order.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any, Callable

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
# Upper bound on transitions processed in one sync, so a huge advance() cannot hang a request.
MAX_STEPS_PER_SYNC = 100_000
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
        self._gpus_used: dict[str, int] = {}  # machine_id -> GPUs held by live containers
        self.pool: list[PoolEntry] = []
        self.blacklist: dict[str, BlacklistEntry] = {}
        self.occupancy: list[Occupancy] = []
        self._rng = random.Random(seed)
        self._next_id = {"deployment": 1, "container": 1}
        for load in spec.background_load:
            self.occupy(load.gpu_name, load.gpus, load.until_seconds)

    # ----- time -------------------------------------------------------------------------

    def sync(self) -> None:
        """Bring the world up to the clock's current simulated time."""
        with self.lock:
            target = self.clock.now()
            for _ in range(MAX_STEPS_PER_SYNC):
                due = self._next_due_time()
                if due is None or due > target:
                    break
                self.now = max(self.now, due)
                self._fire_due()
                self._reconcile()
            self.now = max(self.now, target)
            self._expire_pool_and_blacklist()
            self._reconcile()

    def _next_due_time(self) -> float | None:
        times = [c.phase_ends_at for c in self._live.values() if c.phase_ends_at is not None]
        times += [o.until for o in self.occupancy if o.until is not None]
        return min(times, default=None)

    def _fire_due(self) -> None:
        self.occupancy = [o for o in self.occupancy if o.until is None or o.until > self.now]
        for container in list(self._live.values()):
            while container.phase_ends_at is not None and container.phase_ends_at <= self.now:
                self._transition(container, container.phase_ends_at)

    def _expire_pool_and_blacklist(self) -> None:
        self.pool = [p for p in self.pool if p.stopped_at + REUSE_POOL_SECONDS > self.now]
        for machine_id in [m for m, e in self.blacklist.items() if e.expires_at <= self.now]:
            del self.blacklist[machine_id]

    # ----- container state machine ------------------------------------------------------

    def _transition(self, container: Container, at: float) -> None:
        if container.status in lc.STARTUP_PHASES:
            status = lc.next_phase(container.status)
            if status == lc.RUNNING:
                self._enter_running(container, at)
            else:
                container.phase_ends_at = at + lc.PHASE_SECONDS[status]
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
        container.phase_ends_at = None if seconds is None else at + seconds
        # A boot log that survives reuse, so a reused container visibly keeps old files.
        history = container.files.get("/root/.sim_boot_history", "")
        container.files["/root/.sim_boot_history"] = history + container.uuid + "\n"

    def _begin_shutdown(self, container: Container, at: float, exit_code: int, reason: str) -> None:
        container.exit_code = exit_code
        container.stop_reason = reason
        container.phase_ends_at = at + lc.PHASE_SECONDS[lc.SHUTTING_DOWN]
        self._set_status(container, lc.SHUTTING_DOWN, at)

    def _finish_shutdown(self, container: Container, at: float) -> None:
        container.phase_ends_at = None
        container.stopped_at = at
        self._set_status(container, lc.SHUTDOWN, at)
        del self._live[container.uuid]
        self._gpus_used[container.machine_id] -= container.gpu_num
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

    def _live_by_deployment(self) -> dict[str, list[Container]]:
        """Live containers grouped by deployment, in `_live` order: one pass, not one per deployment."""
        grouped: dict[str, list[Container]] = {}
        for container in self._live.values():
            grouped.setdefault(container.deployment_uuid, []).append(container)
        return grouped

    def _reconcile(self) -> None:
        # Grouped once up front: a deployment's turn only adds containers of its own, so each
        # list equals what a fresh scan of `_live` would find when that deployment's turn comes.
        live_by_deployment = self._live_by_deployment()
        for deployment in self.deployments.values():
            if deployment.status != DEPLOYMENT_RUNNING or deployment.deleted:
                continue
            live = live_by_deployment.get(deployment.uuid, [])
            for container in containers_to_stop(deployment, live):
                self._stop(container, STOPPED_EXIT_CODE, "stopped")
            if work_is_done(deployment, live):
                self._mark_stopped(deployment)
                continue
            for _ in range(containers_to_start(deployment, live)):
                if not self._start_container(deployment):
                    break  # nothing fits now; a later tick retries

    def _mark_stopped(self, deployment: Deployment) -> None:
        deployment.status = DEPLOYMENT_STOPPED
        deployment.stopped_at = deployment.updated_at = self.now

    def free_gpus(self, machine: Machine) -> int:
        used = self._gpus_used.get(machine.machine_id, 0)
        used += sum(o.gpus for o in self.occupancy if o.machine_id == machine.machine_id)
        return max(0, machine.gpu_num - used)

    def _candidates(self, placement: PlacementFilter) -> list[Machine]:
        return [
            m for m in self.machines.values()
            if m.machine_id not in self.blacklist
            and placement.selects(m)
            and self.free_gpus(m) >= placement.gpu_num
        ]

    def _reusable_entry(self, deployment: Deployment, machines: list[Machine]) -> PoolEntry | None:
        if not deployment.spec.reuse_container:
            return None
        on_candidates = {m.machine_id for m in machines}
        for entry in reversed(self.pool):  # most recently stopped first
            if (entry.machine_id in on_candidates
                    and entry.image_uuid == deployment.spec.image_uuid
                    and (deployment.spec.reuse_scope == "all"
                         or entry.deployment_uuid == deployment.uuid)):
                return entry
        return None

    def can_place(self, placement: PlacementFilter) -> bool:
        return bool(self._candidates(placement))

    def _start_container(self, deployment: Deployment) -> bool:
        machines = self._candidates(deployment.spec.placement)
        if not machines:
            return False
        entry = self._reusable_entry(deployment, machines)
        if entry is not None:
            self.pool.remove(entry)
            machine = self.machines[entry.machine_id]
        else:
            # Spread load: the host with the most free GPUs (first listed wins ties).
            machine = max(machines, key=self.free_gpus)
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
            phase_ends_at=self.now + creating,
            updated_at=self.now,
            reusable=deployment.spec.reuse_container,
            reused_from=entry.container_uuid if entry else None,
            files=dict(entry.files) if entry else {},
        )
        self.containers[container.uuid] = container
        self._live[container.uuid] = container
        self._by_deployment.setdefault(deployment.uuid, []).append(container)
        self._gpus_used[machine.machine_id] = self._gpus_used.get(machine.machine_id, 0) + gpu_num
        deployment.containers_started += 1
        self.record_event(deployment, Event(container.uuid, lc.CREATING, self.now))
        return True

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
        with self.lock:
            self.sync()
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
            self._reconcile()
            return deployment

    def stop_container(self, container_uuid: str, decrease_one_replica_num: bool, no_cache: bool) -> None:
        with self.lock:
            self.sync()
            container = self.container(container_uuid)
            deployment = self.deployments[container.deployment_uuid]
            if no_cache:
                container.reusable = False
            if self._stop(container, STOPPED_EXIT_CODE, "stopped"):
                if decrease_one_replica_num and deployment.deployment_type == REPLICA_SET:
                    deployment.replica_num = max(0, deployment.replica_num - 1)
                deployment.updated_at = self.now
            self._reconcile()

    def set_replica_num(self, deployment: Deployment, replica_num: int) -> None:
        with self.lock:
            deployment.replica_num = replica_num
            deployment.updated_at = self.now
            self._reconcile()

    def stop_deployment(self, deployment: Deployment) -> None:
        with self.lock:
            if deployment.status == DEPLOYMENT_RUNNING:
                self._mark_stopped(deployment)
            for container in [c for c in self._live.values() if c.deployment_uuid == deployment.uuid]:
                self._stop(container, STOPPED_EXIT_CODE, "stopped")

    def delete_deployment(self, deployment: Deployment) -> None:
        with self.lock:
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
        with self.lock:
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
        with self.lock:
            until = None if seconds is None else self.now + seconds
            taken = 0
            for machine in self.machines.values():
                if machine.gpu_name != gpu_name or taken >= count:
                    continue
                grab = min(self.free_gpus(machine), count - taken)
                if grab > 0:
                    self.occupancy.append(Occupancy(machine.machine_id, grab, until))
                    taken += grab
            return taken

    def release_occupied(self) -> None:
        with self.lock:
            self.occupancy.clear()
            self._reconcile()

    def crash(self, container_uuid: str, exit_code: int) -> bool:
        """Kill a live container as if its process died; False if it was already stopping."""
        with self.lock:
            self.sync()
            crashed = self._stop(self.container(container_uuid), exit_code, "crashed")
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
