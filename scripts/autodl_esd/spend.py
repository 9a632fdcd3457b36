"""Spend so far: run time x price per container (released ones included), per deployment.

A container bills from `started_at` (it reached running) until `stopped_at`; one that is
still up bills until the platform's "now" (see timeline.platform_now). `--since` clips every
interval to start no earlier than that instant. Prices are yuan x 1000 per hour, read as the
container's whole hourly rate (see cost.CONTAINER_PRICE_BASIS).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from . import api
from .cost import CONTAINER_PRICE_BASIS
from .timeline import iso, parse_timestamp
from .units import yuan_from_price_units

# Statuses in which a container without stopped_at is still billing (it holds its GPUs).
BILLING_STATUSES = ("running", "shutting_down")


def _price_units(container: dict[str, Any]) -> float | None:
    price = container.get("price")
    if isinstance(price, (int, float)) and not isinstance(price, bool) and price >= 0:
        return float(price)
    return None


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
    price = _price_units(container)
    row = {
        "container_uuid": container.get("uuid"),
        "status": container.get("status"),
        "gpu_name": container.get("gpu_name"),
        "gpu_num": container.get("gpu_num"),
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
        "basis": "费用 = 运行时长 (started_at 到 stopped_at, 仍在运行的算到平台当前时间) × 容器 price; " + CONTAINER_PRICE_BASIS,
    }
