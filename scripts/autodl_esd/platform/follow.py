"""Waiting on an existing deployment: N containers running, or a Job/Container finished.

Shared by set_replicas.py --wait, queue_submit.py --wait-finished and container_events.py
--follow --until finished (and anything else that must follow a deployment it did not just
create, e.g. a guard). A wait never changes anything: a timeout is `startup_timeout` with
the deployment_uuid, and its hint says the deployment exists and must not be resubmitted.

The platform reports no exit code: "finished" means the container's command ended, not that
the program succeeded. Success must be read from the program's own outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from . import api
from .containers import STOPPING_STATUSES
from ..core.errors import ApiError, AutoDLError, ErrorType
from ..core.output import Progress
from ..core.polling import ReadErrors, failed_reads_text
from .resolve import deployment_by_uuid

RUNNING = "running"
STOPPED = "stopped"

NO_EXIT_CODE_NOTE = (
    "平台不报告容器的退出码: finished 只表示命令结束了, 不表示程序成功。成功与否要看程序自己的输出 "
    "(例如 cmd 末尾写一个标记文件或结果文件到文件存储, 见 SKILL.md)。"
)


@dataclass
class Clock:
    """Time and sleep, replaceable in tests."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def finish_target(deployment: dict[str, Any]) -> int:
    """How many containers must finish: Job replica_num, Container 1."""
    if deployment.get("deployment_type") == "Job":
        return int(deployment.get("replica_num") or 1)
    return 1


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        began = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        ended = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((ended - began).total_seconds(), 1)


def run_record(container: dict[str, Any]) -> dict[str, Any]:
    """One container of a finished deployment: where it ran and for how long."""
    started, stopped = container.get("started_at"), container.get("stopped_at")
    return {
        "container_uuid": container.get("uuid"),
        "status": container.get("status"),
        "machine_id": container.get("machine_id"),
        "started_at": started,
        "stopped_at": stopped,
        "run_seconds": _seconds_between(started, stopped) if started and stopped else None,
    }


def _deployment(client: Any, deployment_uuid: str) -> dict[str, Any]:
    found = deployment_by_uuid(client, deployment_uuid)
    if found is None:
        raise AutoDLError(ErrorType.NOT_FOUND, f"等待期间部署 {deployment_uuid} 不见了 (被删除?)。",
                          "用 list_deployments.py 确认; 被删除的部署无法再查看其容器。", {"deployment_uuid": deployment_uuid})
    return found


def finish_counts(deployment: dict[str, Any]) -> dict[str, Any]:
    return {key: deployment.get(key) for key in ("status", "replica_num", "parallelism_num", "starting_num", "running_num", "finished_num")}


def wait_finished(
    client: Any,
    deployment_uuid: str,
    *,
    timeout: float,
    interval: float,
    progress: Progress,
    target: int | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Follow a Job/Container deployment until `finished_num` reaches the target or it stops.

    `timeout` 0 waits without limit. Returns the counts, why the wait ended
    (`target_reached` or `deployment_stopped`) and each container's run time; `warnings`
    when some reads failed on the way (they never end the wait before `timeout`).
    """
    clock = clock or Clock()
    started = clock.now()
    errors = ReadErrors(progress, "查询部署")
    deployment: dict[str, Any] | None = None
    goal: int | None = target
    while True:
        try:
            deployment = _deployment(client, deployment_uuid)
            if deployment.get("deployment_type") == "ReplicaSet":
                raise AutoDLError(ErrorType.USAGE_ERROR, f"部署 {deployment_uuid} 是 ReplicaSet: 服务一直运行, 没有\"完成\"。",
                                  "等 ReplicaSet 的容器运行用 container_events.py --follow --until running。",
                                  {"deployment_uuid": deployment_uuid, "deployment_type": "ReplicaSet"})
            goal = target or finish_target(deployment)
            finished = deployment.get("finished_num") or 0
            if finished >= goal or deployment.get("status") == STOPPED:
                containers = api.list_containers(client, deployment_uuid, released=True)
                errors.reset()
                return {
                    "deployment_uuid": deployment_uuid,
                    "finished": finished >= goal,
                    "ended_by": "target_reached" if finished >= goal else "deployment_stopped",
                    "target_finished": goal,
                    "counts": finish_counts(deployment),
                    "containers": [run_record(c) for c in containers],
                    "waited_seconds": round(clock.now() - started, 1),
                    "exit_code_note": NO_EXIT_CODE_NOTE,
                    **_warnings(errors),
                }
            errors.reset()
        except ApiError as error:
            errors.record(error)
        elapsed = clock.now() - started
        if timeout and elapsed >= timeout:
            done = "?" if deployment is None else deployment.get("finished_num") or 0
            raise AutoDLError(
                ErrorType.STARTUP_TIMEOUT,
                f"部署 {deployment_uuid} 在 {timeout:g} 秒内只完成了 {done}/{goal or '?'} 个容器, 部署仍然存在。"
                + failed_reads_text(errors),
                "部署已存在并可能仍在运行 (也在计费), 不要重新提交: 稍后用 container_events.py --deployment-uuid "
                f"{deployment_uuid} --follow --until finished 继续等, 或用 list_containers.py 查看进度。",
                {"deployment_uuid": deployment_uuid, "target_finished": goal,
                 "counts": None if deployment is None else finish_counts(deployment),
                 "elapsed_seconds": round(elapsed, 1), **errors.details()},
            )
        if deployment is not None:
            progress.status(f"等待完成 {deployment.get('finished_num') or 0}/{goal}: 运行中 {deployment.get('running_num')}, "
                            f"启动中 {deployment.get('starting_num')}, {elapsed:.0f}s")
        clock.sleep(min(interval, timeout - elapsed) if timeout else interval)


def wait_running_count(
    client: Any,
    deployment_uuid: str,
    target: int,
    *,
    timeout: float,
    interval: float,
    progress: Progress,
    clock: Clock | None = None,
    read_errors: ReadErrors | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Poll until exactly `target` containers run: (running, live containers, seconds waited).

    Failed reads are recorded in `read_errors` (pass one to report them) and never end the
    wait before `timeout`; only a successful read can end it.
    """
    clock = clock or Clock()
    started = clock.now()
    errors = read_errors or ReadErrors(progress, "查询容器")
    live: list[dict[str, Any]] | None = None
    while True:
        try:
            live = api.list_containers(client, deployment_uuid)
            errors.reset()
            fresh = True
        except ApiError as error:
            errors.record(error)
            fresh = False
        running = [c for c in live or [] if c.get("status") == RUNNING]
        elapsed = clock.now() - started
        if fresh and len(running) == target:
            return running, live or [], elapsed
        if timeout and elapsed >= timeout:
            seen = "没能读到容器" if live is None else f"运行中的容器是 {len(running)} 个, 还不是 {target} 个"
            raise AutoDLError(
                ErrorType.STARTUP_TIMEOUT,
                f"{timeout:g} 秒内{seen}; 部署 {deployment_uuid} 仍然存在。" + failed_reads_text(errors),
                "副本数已经改好 (平台会继续调整), 不要重复执行: 稍后用 list_containers.py 查看, 或用 "
                "container_events.py 看新容器卡在哪个阶段。",
                {"deployment_uuid": deployment_uuid, "running": None if live is None else len(running),
                 "target_running": target, "statuses": sorted({str(c.get("status")) for c in live or []}),
                 "elapsed_seconds": round(elapsed, 1), **errors.details()},
            )
        if live is not None:
            phases = ", ".join(str(c.get("status")) for c in live) or "无容器"
            progress.status(f"等待运行中的容器 = {target}: 现在 {len(running)} ({phases}), {elapsed:.0f}s")
        clock.sleep(min(interval, timeout - elapsed) if timeout else interval)


def _warnings(errors: ReadErrors) -> dict[str, Any]:
    warning = errors.warning()
    return {"warnings": [warning]} if warning else {}


def stopped_since(before: list[dict[str, Any]], live_now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers live (not already stopping) in `before` that are stopping or gone now."""
    still = {c.get("uuid") for c in live_now if c.get("status") not in STOPPING_STATUSES}
    return [{"container_uuid": c.get("uuid"), "machine_id": c.get("machine_id"), "gpu_name": c.get("gpu_name"),
             "status_before": c.get("status"), "started_at": c.get("started_at")}
            for c in before if c.get("uuid") not in still and c.get("status") not in STOPPING_STATUSES]
