"""Which machines keep killing a deployment's containers: failure evidence per machine.

AutoDL's best-practice guide: when containers scheduled onto one host regularly fail, put
that host on the scheduling blacklist. The API does not say why a container stopped, so a
failure is inferred from its timeline (container record, backed by its events):

- `never_running`: it stopped without ever reaching `running` (image pull, start-up);
- `exited_early`: it ran for less than `min_uptime` seconds;
- `exited` (ReplicaSet only): a service is meant to run until stopped, so any exit counts.
  A stop by the user (stop_container.py, scaling down) looks the same in the API and is
  counted too; containers stopped by stopping the whole deployment are not. So for a
  ReplicaSet the evidence must be read before blacklisting (find_faulty_hosts says so).

Evidence is capped per machine (`max_evidence`, the most recent failures); `failures` and
`evidence_total` still count them all. The second half plans and applies the blacklisting
of the machines found (one container per machine), and reads the blacklist back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from . import api, resolve
from .containers import LIVE_STATUSES, STOPPING_STATUSES, container_summary, machine_of
from .effects import Change, apply_change, took_effect_of
from ..core.errors import AutoDLError, ErrorType
from ..core.output import Progress
from ..core.clock import in_platform_zone
from .resolve import BLACKLIST_EXPIRY_NOTE, blacklist_expiry, verify_blacklisted

RUNNING = "running"
REPLICA_SET = "ReplicaSet"

REPLICA_SET_CAVEAT = (
    "ReplicaSet 的任何退出都计为失败 (reason=exited), 包括用户主动停止的容器 (缩容、set_replicas.py、"
    "stop_container.py): API 里它们和异常退出看起来一样。拉黑 (--apply) 之前先看 items[].evidence (不加 --apply "
    "运行时输出) 的 reason 与 stopped_at, 排除人为停止造成的计数。"
)


def parse_timestamp(value: Any) -> datetime | None:
    """An API timestamp (RFC 3339) as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()


def _first_event_at(events: list[dict[str, Any]], statuses: tuple[str, ...]) -> datetime | None:
    times = [parse_timestamp(e.get("created_at")) for e in events if e.get("status") in statuses]
    return min((t for t in times if t), default=None)


def container_timeline(container: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """When the container started running and stopped, from its record or else its events.

    The stop is the moment it began shutting down (its process ended), not when the
    shutdown finished.
    """
    started = parse_timestamp(container.get("started_at")) or _first_event_at(events, (RUNNING,))
    stopped = _first_event_at(events, STOPPING_STATUSES) or parse_timestamp(container.get("stopped_at"))
    if stopped is None and container.get("status") in STOPPING_STATUSES:
        stopped = parse_timestamp(container.get("updated_at"))
    uptime = (stopped - started).total_seconds() if started and stopped else None
    return {"started": started, "stopped": stopped, "uptime_seconds": uptime}


def failure_reason(timeline: dict[str, Any], deployment_type: str | None, min_uptime: float) -> str | None:
    """Why a stopped container counts against its machine, or None when it does not."""
    if timeline["started"] is None:
        return "never_running"
    if timeline["uptime_seconds"] is not None and timeline["uptime_seconds"] < min_uptime:
        return "exited_early"
    if deployment_type == REPLICA_SET:
        return "exited"
    return None


def evidence_as_of(containers: list[dict[str, Any]], events: list[dict[str, Any]]) -> str | None:
    """The platform time the evidence runs to: the latest stamp in the records and events read.

    A preview and a later --apply read the platform at different moments; comparing their
    as_of says whether the apply saw newer evidence than the user agreed to.
    """
    stamps = [parse_timestamp(event.get("created_at")) for event in events]
    for container in containers:
        stamps += [parse_timestamp(container.get(key)) for key in ("created_at", "started_at", "stopped_at", "updated_at")]
    latest = max((stamp for stamp in stamps if stamp), default=None)
    return in_platform_zone(latest) if latest else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _machine_id(container: dict[str, Any]) -> str:
    """The record's machine_id, else the middle part of its uuid (`<deployment>-<machine>-<8 hex>`)."""
    uuid = container.get("uuid") or ""
    return container.get("machine_id") or (uuid.split("-")[1] if uuid.count("-") == 2 else "unknown")


def hosts_examined(containers: list[dict[str, Any]], machines: list[dict[str, Any]], min_failures: int) -> list[dict[str, Any]]:
    """Every machine that hosted one of the containers read, healthy ones included, with its
    counts: `containers` read on it, `live` now, `stopped_in_window` and `failures` (from
    analyse_machines' `machines`), and `verdict` faulty | below_threshold | healthy. Most
    failures first, then the most containers: a machine that ran many without failing is the
    evidence that the failures elsewhere are the host's, not the image's."""
    examined: dict[str, dict[str, Any]] = {}

    def entry(machine_id: str, source: dict[str, Any]) -> dict[str, Any]:
        return examined.setdefault(machine_id, {
            "machine_id": machine_id, "gpu_name": source.get("gpu_name"), "data_center": source.get("data_center"),
            "containers": 0, "live": 0, "stopped_in_window": 0, "failures": 0})

    for container in containers:
        host = entry(_machine_id(container), container)
        host["containers"] += 1
        host["live"] += container.get("status") in LIVE_STATUSES
    for machine in machines:
        host = entry(machine["machine_id"], machine)
        host.update(stopped_in_window=machine["stopped_containers"], failures=machine["failures"])
    for host in examined.values():
        host["verdict"] = "faulty" if host["failures"] >= min_failures else "below_threshold" if host["failures"] else "healthy"
    return sorted(examined.values(), key=lambda h: (-h["failures"], -h["containers"], h["machine_id"]))


def analyse_machines(
    deployment: dict[str, Any],
    containers: list[dict[str, Any]],
    events: list[dict[str, Any]],
    *,
    min_uptime: float,
    lookback: timedelta,
    now: datetime | None = None,
    max_evidence: int | None = None,
) -> list[dict[str, Any]]:
    """Per machine that hosted a stopped container in the window: its failures, worst first.

    `evidence` lists failures oldest first, only the `max_evidence` most recent when given;
    `evidence_total` is how many there were.
    """
    now = now or datetime.now().astimezone()
    since = now - lookback
    deployment_stopped = parse_timestamp(deployment.get("stopped_at"))
    events_of: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        events_of.setdefault(event.get("deployment_container_uuid"), []).append(event)

    machines: dict[str, dict[str, Any]] = {}
    for container in containers:
        uuid = container.get("uuid")
        own_events = events_of.get(uuid, [])
        stopping = container.get("status") in STOPPING_STATUSES or any(e.get("status") in STOPPING_STATUSES for e in own_events)
        if not uuid or not stopping:
            continue
        timeline = container_timeline(container, own_events)
        if timeline["stopped"] is not None and timeline["stopped"] < since:
            continue
        machine_id = _machine_id(container)
        machine = machines.setdefault(machine_id, {
            "machine_id": machine_id, "gpu_name": container.get("gpu_name"), "data_center": container.get("data_center"),
            "failures": 0, "failure_reasons": {}, "stopped_containers": 0, "evidence_total": 0, "evidence": [], "blacklist_via": None,
        })
        machine["stopped_containers"] += 1
        stopped_with_deployment = (
            deployment_stopped is not None and timeline["stopped"] is not None and timeline["stopped"] >= deployment_stopped
        )
        reason = None if stopped_with_deployment else failure_reason(timeline, deployment.get("deployment_type"), min_uptime)
        if reason is None:
            continue
        machine["failures"] += 1
        machine["failure_reasons"][reason] = machine["failure_reasons"].get(reason, 0) + 1
        machine["evidence"].append((timeline["stopped"], {
            "container_uuid": uuid,
            "status": container.get("status"),
            "reason": reason,
            "created_at": container.get("created_at"),
            "started_at": _iso(timeline["started"]),
            "stopped_at": _iso(timeline["stopped"]),
            "uptime_seconds": None if timeline["uptime_seconds"] is None else round(timeline["uptime_seconds"], 1),
        }))
    for machine in machines.values():
        # Oldest first by the moment it stopped (compared as instants, whatever the offset);
        # an unknown stop time sorts first, as the least recent.
        def recency(pair: tuple[datetime | None, dict[str, Any]]) -> tuple[bool, datetime]:
            return pair[0] is not None, pair[0] or now

        ordered = [item for _, item in sorted(machine["evidence"], key=recency)]
        machine["evidence_total"] = len(ordered)
        # Blacklisting goes through a container: the latest failure on that machine.
        latest = max(machine["evidence"], key=recency, default=None)
        machine["blacklist_via"] = latest[1]["container_uuid"] if latest else None
        machine["evidence"] = ordered[-max_evidence:] if max_evidence and len(ordered) > max_evidence else ordered
    return sorted(machines.values(), key=lambda m: (-m["failures"], m["machine_id"]))


# --- blacklisting the machines found --------------------------------------------------

def machine_id_flags(plan: list[dict]) -> str:
    """The --machine-id flags that make --apply --yes act on exactly these machines."""
    return " ".join(f"--machine-id {step['machine_id']}" for step in plan)


def select_named_machines(faulty: list[dict], named: list[str] | None, as_of: str | None) -> tuple[list[dict], list[str]]:
    """(the faulty machines the user named, the faulty ones left out); named machines that
    are not faulty now are refused: the evidence moved since the preview (`as_of`)."""
    if not named:
        return faulty, []
    by_id = {machine["machine_id"]: machine for machine in faulty}
    missing = [machine_id for machine_id in dict.fromkeys(named) if machine_id not in by_id]
    if missing:
        raise AutoDLError(
            ErrorType.USAGE_ERROR,
            f"--machine-id 指定的主机不在当前的故障主机列表中: {', '.join(missing)}; 什么都没有拉黑。",
            "证据在预览之后变了 (时间窗滑动、阈值不同或部署不同): 不加 --apply 重新运行查看当前列表 "
            "(details.faulty_now), 与用户确认后再用 --machine-id 指定。",
            {"not_faulty_now": missing, "faulty_now": list(by_id), "as_of": as_of},
        )
    chosen = [by_id[machine_id] for machine_id in dict.fromkeys(named)]
    left_out = [machine["machine_id"] for machine in faulty if machine["machine_id"] not in set(named)]
    return chosen, left_out


def confirmation_hint(plan: list[dict], replica_set: bool, expire_minutes: int | None) -> str:
    """What --yes would do, host by host, for the user to agree to."""
    hosts = "; ".join(
        f"{step['machine_id']} ({step['data_center'] or '未知机房'}, {step['gpu_name'] or '未知 GPU'}, 失败 {step['failures']} 次)"
        for step in plan
    )
    expiry = f"{expire_minutes} 分钟后自动解除 (私有云固定 24 小时)。" if expire_minutes else "默认 24 小时后自动解除。"
    check = REPLICA_SET_CAVEAT if replica_set else "先看 items[].evidence (不加 --apply 运行时输出) 确认失败属实。"
    return (
        f"加 --yes 会把这些主机加入调度黑名单: {hosts}。之后不再往它们调度新容器, 已在上面运行的容器不受影响; "
        f"{expiry}{check} 把这些告诉用户, 得到明确同意后加 --yes {machine_id_flags(plan)} 重新执行 "
        "(--machine-id 保证只拉黑这里列出的主机, 即使之后又有新的主机达到阈值)。"
    )


def blacklist_plan(machine: dict, comment: str | None) -> dict:
    return {
        "machine_id": machine["machine_id"],
        "data_center": machine["data_center"],
        "gpu_name": machine["gpu_name"],
        "container_uuid": machine["blacklist_via"],
        "failures": machine["failures"],
        "failure_reasons": machine["failure_reasons"],
        "comment": comment or f"find_faulty_hosts: {machine['failures']} 个容器异常退出",
    }


def apply_blacklist(client: Any, plan: list[dict], expire_minutes: int | None, progress: Progress) -> dict[str, Any]:
    """Blacklist each planned machine through its container, then read the blacklist back."""
    applied: list[dict[str, Any]] = []
    for step in plan:
        machine_id = step["machine_id"]
        try:
            apply_change(Change(
                what=f"把主机 {machine_id} 加入调度黑名单",
                send=lambda: api.add_to_blacklist(client, step["container_uuid"], comment=step["comment"], expire_in_minutes=expire_minutes),
                fetch=lambda: api.list_blacklist(client),
                done=lambda items: any(item.get("machine_id") == machine_id for item in items),
                check="python3 scripts/list_blacklist.py (公有云; 私有云没有列表接口, 在控制台查看)",
                ids={"container_uuid": step["container_uuid"], "machine_id": machine_id},
            ), client, progress, verify=lambda: (None, {}))  # all machines are read back at once below
        except AutoDLError as error:  # say what was already done before reporting the failure
            error.details.update({"applied": applied, "failed_machine": step["machine_id"]})
            raise
        progress.log(f"已拉黑主机 {step['machine_id']} (经由容器 {step['container_uuid']})")
        applied.append({**step, **blacklist_expiry(expire_minutes)})
    entries, verification = verify_blacklisted(client, [step["machine_id"] for step in applied])
    for step in applied:
        step["blacklist_entry"] = entries[step["machine_id"]]
    return {"applied": applied, **verification, "expiry_note": BLACKLIST_EXPIRY_NOTE}


# --- replicas left on a blacklisted machine --------------------------------------------

def still_on_machine(client: Any, deployment_uuid: str, machine_id: str) -> list[dict[str, Any]]:
    """The deployment's live containers on `machine_id`: a blacklisting does not move them."""
    return [container_summary(c) for c in api.list_containers(client, deployment_uuid)
            if c.get("status") in LIVE_STATUSES and machine_of(c) == machine_id]


def move_command(container_uuid: str) -> str:
    # Without --decrease-one-replica-num the platform schedules a replacement, and the
    # blacklist keeps that replacement off this machine.
    return f"python3 scripts/stop_container.py --container-uuid {container_uuid}"


def move_replicas(client: Any, containers: list[dict[str, Any]], deployment_uuid: str, progress: Progress,
                  partial: dict[str, Any]) -> list[dict[str, Any]]:
    """Stop each container (a replacement lands elsewhere); one outcome per container."""
    outcomes: list[dict[str, Any]] = []
    partial["moved"] = outcomes
    for container in containers:
        uuid = container["container_uuid"]
        in_flight: dict[str, Any] = {}
        partial["moving"] = in_flight
        try:
            _after, report = apply_change(Change(
                what=f"停止容器 {uuid} (让替补容器调度到其他主机)",
                send=lambda uuid=uuid: api.stop_container(client, uuid, decrease_one_replica_num=False),
                # Through the module, like api.*: looked up at each call (tests replace it there).
                fetch=lambda uuid=uuid: resolve.resolve_container(client, uuid, deployment_uuid),
                done=lambda record: record.get("status") in STOPPING_STATUSES,
                check=f"python3 scripts/list_containers.py --deployment-uuid {deployment_uuid} --released",
                ids={"container_uuid": uuid},
            ), client, progress, in_flight)
        except AutoDLError as error:
            partial.pop("moving", None)
            outcomes.append({"container_uuid": uuid, "outcome": "failed", "took_effect": took_effect_of(error),
                             "error_type": error.error_type.value, "message": error.message,
                             **({"check": error.details["check"]} if "check" in error.details else {})})
            continue
        partial.pop("moving", None)  # an interrupt keeps it: that stop may have been sent
        outcomes.append({"container_uuid": uuid, "outcome": "done", **report})
        progress.log(f"已停止容器 {uuid}, 平台会在其他主机上补一个")
    return outcomes
