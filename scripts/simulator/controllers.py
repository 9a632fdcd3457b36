"""Deployments, containers and the three controllers that decide how many containers to run.

- ReplicaSet keeps `replica_num` containers up: exited or crashed ones are replaced, extra
  ones are stopped newest first.
- Job runs containers until `replica_num` of them exit 0, at most `parallelism_num` at a
  time. A container that fails (non-zero exit, crash, or stopped by the user) does not count
  as a completion and is retried; finished containers are never restarted.
- Container runs exactly one container once, whatever its exit code.

A Job or Container deployment whose work is done reports status `stopped`: the API facts
only confirm `running` and `stopped` as deployment statuses (`finished` is unconfirmed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cluster import PlacementFilter
from .lifecycle import RUNNING, SHUTDOWN, STARTUP_PHASES

REPLICA_SET, JOB, CONTAINER = "ReplicaSet", "Job", "Container"
DEPLOYMENT_TYPES = (REPLICA_SET, JOB, CONTAINER)
DEPLOYMENT_RUNNING, DEPLOYMENT_STOPPED = "running", "stopped"

# Statuses that count as a replica: started or starting, and not yet asked to stop.
_COUNTED = (*STARTUP_PHASES, RUNNING)


@dataclass
class NewDeployment:
    """A validated create request, in request units (memory in GB)."""

    name: str
    deployment_type: str
    replica_num: int
    parallelism_num: int
    reuse_container: bool
    reuse_scope: str  # "all" | "deployment"
    image_uuid: str
    cmd: str
    placement: PlacementFilter
    template: dict[str, Any]  # as submitted, for the list endpoint
    dialect: str  # "private" | "public": which template style was used
    port_protocols: dict[str, str]


@dataclass
class Event:
    container_uuid: str
    status: str
    at: float  # simulated seconds


@dataclass
class Deployment:
    id: int
    uuid: str
    spec: NewDeployment
    replica_num: int
    created_at: float
    updated_at: float
    status: str = DEPLOYMENT_RUNNING
    stopped_at: float | None = None
    deleted: bool = False
    completions: int = 0  # Job: containers that exited 0
    containers_started: int = 0
    events: list[Event] = field(default_factory=list)
    # Events trimmed from the front (see World.record_event): offsets stay absolute, so
    # event i of the history is events[i - events_base]; per container likewise.
    events_base: int = 0
    events_trimmed_by_container: dict[str, int] = field(default_factory=dict)

    @property
    def deployment_type(self) -> str:
        return self.spec.deployment_type


@dataclass
class Container:
    id: int
    uuid: str
    deployment_uuid: str
    machine_id: str
    gpu_name: str
    gpu_num: int
    cpu_num: int
    memory_gb: int
    price: int
    image_uuid: str
    data_center: str
    root_password: str
    ssh_port: int
    custom_port: int
    created_at: float
    status: str
    phase_ends_at: float | None  # simulated instant of the next transition; None = no timer
    updated_at: float
    reusable: bool  # enters the reuse pool when it reaches `shutdown`
    reused_from: str | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    planned_exit_code: int = 0
    exit_code: int | None = None
    stop_reason: str | None = None  # "exited" | "stopped" | "crashed"
    files: dict[str, str] = field(default_factory=dict)

    @property
    def counts_as_replica(self) -> bool:
        return self.status in _COUNTED

    @property
    def is_live(self) -> bool:
        return self.status != SHUTDOWN


def containers_to_start(deployment: Deployment, live: list[Container]) -> int:
    """How many new containers the controller wants right now (`live`: not yet shut down)."""
    if deployment.status != DEPLOYMENT_RUNNING or deployment.deleted:
        return 0
    counted = sum(1 for c in live if c.counts_as_replica)
    if deployment.deployment_type == REPLICA_SET:
        return max(0, deployment.replica_num - counted)
    if deployment.deployment_type == JOB:
        remaining = deployment.replica_num - deployment.completions - counted
        room = deployment.spec.parallelism_num - counted
        return max(0, min(remaining, room))
    return 0 if deployment.containers_started else 1


def containers_to_stop(deployment: Deployment, live: list[Container]) -> list[Container]:
    """ReplicaSet surplus after a scale-down, newest first."""
    if deployment.deployment_type != REPLICA_SET:
        return []
    counted = [c for c in live if c.counts_as_replica]
    surplus = len(counted) - deployment.replica_num
    if surplus <= 0:
        return []
    return sorted(counted, key=lambda c: (c.created_at, c.id), reverse=True)[:surplus]


def work_is_done(deployment: Deployment, live: list[Container]) -> bool:
    """A Job with all completions, or a Container whose one container has ended."""
    if live:
        return False
    if deployment.deployment_type == JOB:
        return deployment.completions >= deployment.replica_num
    if deployment.deployment_type == CONTAINER:
        return deployment.containers_started > 0
    return False
