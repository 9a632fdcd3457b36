"""Spend so far: run time x price per container (released ones included), per deployment.

A container bills from `started_at` (it reached running) until `stopped_at`; one that is
still up bills until the platform's "now" (see core.clock.platform_now). `--since` clips every
interval to start no earlier than that instant. Prices are yuan x 1000 per card-hour, so a
container bills `price x gpu_num` per hour (see estimate.CONTAINER_PRICE_BASIS).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from ..platform import api
from .estimate import CONTAINER_PRICE_BASIS
from ..core.errors import AutoDLError
from ..core.clock import iso, parse_timestamp, platform_now
from ..platform.containers import LIVE_STATUSES, container_hourly_units, container_summary, price_per_card_units
from ..platform.resolve import deployment_summary
from ..platform.units import yuan_from_price_units

# Statuses in which a container without stopped_at is still billing (it holds its GPUs).
BILLING_STATUSES = ("running", "shutting_down")


def billed_interval(container: dict[str, Any], now: datetime, since: datetime | None = None) -> tuple[datetime | None, datetime | None]:
    """(start, end) of what this container has billed, clipped to `since`; (None, None) if nothing."""
    started = parse_timestamp(container.get("started_at"))
    if started is None:
        return None, None
    stopped = parse_timestamp(container.get("stopped_at"))
    if stopped is None:
        if container.get("status") in BILLING_STATUSES:
            stopped = now
        else:  # ended without a stop time: its last update is the best bound we have
            stopped = parse_timestamp(container.get("updated_at")) or now
    start = max(started, since) if since else started
    end = min(stopped, now)
    if end <= start:
        return None, None
    return start, end


def container_spend(container: dict[str, Any], now: datetime, since: datetime | None = None) -> dict[str, Any]:
    start, end = billed_interval(container, now, since)
    hours = (end - start).total_seconds() / 3600.0 if start and end else 0.0
    price = container_hourly_units(container)
    per_card = price_per_card_units(container)
    row = {
        "container_uuid": container.get("uuid"),
        "status": container.get("status"),
        "gpu_name": container.get("gpu_name"),
        "gpu_num": container.get("gpu_num"),
        "price_yuan": None if per_card is None else round(yuan_from_price_units(per_card), 3),
        "hourly_yuan": None if price is None else round(yuan_from_price_units(price), 3),
        "started_at": container.get("started_at"),
        "stopped_at": container.get("stopped_at"),
        "run_hours": round(hours, 4),
        "cost_yuan": None if price is None else round(yuan_from_price_units(price) * hours, 3),
    }
    if price is None and hours:
        row["note"] = "容器没有 price 字段, 无法计算费用"
    return row


def deployment_spend(deployment: dict[str, Any], containers: Iterable[dict[str, Any]], now: datetime,
                     since: datetime | None = None) -> dict[str, Any]:
    rows = [container_spend(c, now, since) for c in containers]
    running = [c for c in rows if c["status"] == "running"]
    estimates = deployment.get("price_estimates")
    return {
        "deployment_uuid": deployment.get("uuid"),
        "name": deployment.get("name"),
        "deployment_type": deployment.get("deployment_type"),
        "status": deployment.get("status"),
        "cost_yuan": round(sum(r["cost_yuan"] or 0.0 for r in rows), 3),
        # Summed over containers: two containers for an hour are two container-hours.
        "container_hours": round(sum(r["run_hours"] for r in rows), 4),
        "current_hourly_yuan": round(sum(r["hourly_yuan"] or 0.0 for r in running), 3),
        "running_containers": len(running),
        "price_estimates_yuan": round(yuan_from_price_units(estimates), 3)
        if isinstance(estimates, (int, float)) and not isinstance(estimates, bool) else None,
        "container_count": len(rows),
        "containers": rows,
    }


def spend_report(client: Any, deployments: list[dict[str, Any]], now_of: Any, since: datetime | None = None) -> dict[str, Any]:
    """Spend of each deployment and the totals; `now_of()` gives the platform's now after the reads."""
    containers = {d["uuid"]: api.list_containers(client, d["uuid"], released=True) for d in deployments}
    now = now_of()
    items = [deployment_spend(d, containers[d["uuid"]], now, since) for d in deployments]
    return {
        "items": items,
        "count": len(items),
        "totals": {
            "deployments": len(items),
            "containers": sum(i["container_count"] for i in items),
            "cost_yuan": round(sum(i["cost_yuan"] for i in items), 3),
            "container_hours": round(sum(i["container_hours"] for i in items), 4),
            "current_hourly_yuan": round(sum(i["current_hourly_yuan"] for i in items), 3),
            "running_containers": sum(i["running_containers"] for i in items),
        },
        "since": iso(since),
        "as_of": iso(now),
        "basis": SPEND_BASIS,
    }


SPEND_BASIS = "费用 = 运行时长 (started_at 到 stopped_at, 仍在运行的算到平台当前时间) × 容器 price × gpu_num; " + CONTAINER_PRICE_BASIS


def _merged(earlier: Iterable[dict[str, Any]], later: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Both reads of the container list, one record per container, the later read winning."""
    by_uuid: dict[Any, dict[str, Any]] = {}
    for record in (*earlier, *later):
        by_uuid[record.get("uuid") or id(record)] = record
    return list(by_uuid.values())


def cost_before_change(client: Any, deployment: dict[str, Any], seen: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """What a deployment has cost so far, for a stop/delete result: cost_report's computation
    on the container records (released ones included) read right before the change.

    After a delete the platform no longer lists the deployment, so cost_report shows
    nothing for it: this is the last figure anyone can get. One extra container-list read
    (paged, usually one page). `seen` are records already read (the live list), merged in
    case `released: true` answers only the released ones. A failed read is reported in
    the result, never an error: the stop/delete the user asked for matters more."""
    return cost_so_far(client, deployment, seen, basis=(
        "与 cost_report.py 的 cost_yuan 同一算法 (运行时长 × 容器 price × gpu_num), 用停止/删除请求发出前读到的容器记录 "
        "(含已释放的) 算到 as_of; 此后到容器真正停下的几秒仍按 hourly_yuan_before 计费。删除后 cost_report.py "
        "不再列出这个部署, 这就是它最后的花费。"),
        failed_hint="没能读到容器记录, 没有算出已花费用; 停止后可用 cost_report.py 查看, 删除后平台不再列出这个部署。")


def cost_so_far(client: Any, deployment: dict[str, Any], seen: Iterable[dict[str, Any]] = (), *, basis: str,
                failed_hint: str) -> dict[str, Any]:
    """`cost_so_far_yuan` and `cost_so_far`: cost_report's figure for one deployment now, from
    its container records (released ones included; `seen` merged in). A failed read gives
    None and the error, never an exception: the figure is extra, the caller's result is not."""
    try:
        records = _merged(seen, api.list_containers(client, deployment["uuid"], released=True))
    except AutoDLError as error:
        return {"cost_so_far_yuan": None, "cost_so_far": {"error": error.message, "hint": failed_hint}}
    now = platform_now(client)
    spend = deployment_spend(deployment, records, now)
    return {"cost_so_far_yuan": spend["cost_yuan"], "cost_so_far": {
        "as_of": iso(now),
        "container_hours": spend["container_hours"],
        "container_count": spend["container_count"],
        "hourly_yuan_before": spend["current_hourly_yuan"],
        "basis": basis,
    }}


def deployment_impact(client: Any, deployment: dict[str, Any], with_cost: bool = False) -> dict[str, Any]:
    """What stopping or deleting this deployment would touch: it and its live containers;
    `with_cost` adds what it has cost so far (`cost_before_change`, on the same container read)."""
    containers = api.list_containers(client, deployment["uuid"])
    live = [container_summary(c) for c in containers if c.get("status") in LIVE_STATUSES]
    impact = {"deployment": deployment_summary(deployment), "live_containers": live, "live_container_count": len(live)}
    if with_cost:
        impact.update(cost_before_change(client, deployment, containers))
    return impact
