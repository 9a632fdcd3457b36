"""What a deployment may cost per hour, before and after it is created.

Prices on the platform are integers in yuan x 1000 per hour. A config's `price_from` /
`price_to` bound the base price of ONE GPU (the console shows per-card prices and the
simulator filters hosts that way), so a container with `gpu_num` cards costs up to
`price_to x gpu_num`, and a deployment up to that times the containers it runs at once.
Once containers run, their `price` fields (and the deployment's `price_estimates`) give the
real rate. A container's `price` is on the same per-card basis as price_from/price_to (the
decision and its evidence: references/money.md, 计费口径), so a container costs `price x gpu_num`
per hour (platform.containers.container_hourly_units).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..core.errors import AutoDLError, ErrorType
from ..platform.containers import container_hourly_units
from ..platform.units import yuan_from_price_units

# "A few hours": below this many hours of balance at the worst-case rate the plan warns,
# since arrears force-stop every container and a top-up takes a person to act.
LOW_BALANCE_HOURS = 3.0

PRICE_BASIS = "price_from/price_to 是每张 GPU 每小时的基础价格 (接口单位 元×1000, 如 9000 = 9 元/卡/时)"
# price_estimates is a rate, not a total: a finished Job shows 0 beside a non-zero cost_yuan.
PRICE_ESTIMATES_BASIS = ("部署的 price_estimates (list_deployments/cost_report 的 price_estimates_yuan) 是它正在运行的容器"
                         "现在每小时的费率之和 (元/时), 不是已花的钱: 没有容器在运行时为 0 (如 Job 已结束), 已花多少看 cost_report.py 的 cost_yuan")
CONTAINER_PRICE_BASIS = ("容器的 price 与 price_from/price_to 同一口径, 是每张 GPU 每小时的价格 (元×1000), "
                         "容器每小时 = price × gpu_num; " + PRICE_ESTIMATES_BASIS)


def concurrent_containers(config: dict[str, Any]) -> int:
    """How many containers run at the same time at most (what bills in parallel)."""
    kind = config.get("deployment_type")
    if kind == "ReplicaSet":
        return int(config.get("replica_num") or 0)
    if kind == "Job":
        return min(int(config.get("parallelism_num") or 0), int(config.get("replica_num") or 0))
    return 1


def _yuan(units: float) -> float:
    return round(yuan_from_price_units(units), 3)


def cost_bounds(config: dict[str, Any]) -> dict[str, Any]:
    """Hourly bounds (yuan) a validated config allows: per GPU, per container, whole deployment."""
    template = config["container_template"]
    gpu_num = int(template["gpu_num"])
    low, high = int(template["price_from"]), int(template["price_to"])
    running = concurrent_containers(config)
    kind = config["deployment_type"]
    worst = _yuan(high * gpu_num * running)
    notes = {
        "ReplicaSet": f"ReplicaSet 不会自己停止: 每运行 1 小时最多 {worst:g} 元, 直到停止或缩容; 长期运行请加守护 (guard_deployment.py)。",
        "Job": f"Job 共 {config.get('replica_num')} 个容器, 同时最多 {running} 个; 每小时最多 {worst:g} 元, 总花费取决于每个容器运行多久。",
        "Container": f"单个容器, 每小时最多 {worst:g} 元, 直到它的命令结束或被停止。",
    }
    return {
        "currency": "CNY",
        "price_basis": PRICE_BASIS,
        "per_gpu_hourly_yuan": {"min": _yuan(low), "max": _yuan(high)},
        "gpu_num": gpu_num,
        "per_container_hourly_yuan": {"min": _yuan(low * gpu_num), "max": _yuan(high * gpu_num)},
        "concurrent_containers": running,
        "hourly_yuan": {"min": _yuan(low * gpu_num * running), "max": worst},
        "worst_case_hourly_yuan": worst,
        "expected_hourly_yuan": None,
        "expected_basis": ("创建前平台不报实际价格 (库存接口不含价格): 实际单价在 price_from..price_to 之间, 以容器运行后的 price 为准; "
                           "price_to 就是你愿意付的单卡上限, 调低它即收窄最坏情况。"),
        "note": notes.get(kind, notes["Container"]),
    }


def running_rate(containers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The real hourly rate of the running containers, from their `price` fields."""
    running = [c for c in containers if c.get("status") == "running"]
    rates = [r for r in (container_hourly_units(c) for c in running) if r is not None]
    return {
        "running_containers": len(running),
        "hourly_yuan": _yuan(sum(rates)),
        "basis": CONTAINER_PRICE_BASIS,
        **({"unpriced_containers": len(running) - len(rates)} if len(rates) < len(running) else {}),
    }


def with_observed_rate(cost: dict[str, Any], containers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The plan's cost with the expected rate filled in from containers that now run."""
    rate = running_rate(containers)
    if not rate["running_containers"]:
        return cost
    return {**cost, "expected_hourly_yuan": rate["hourly_yuan"],
            "expected_basis": f"{rate['running_containers']} 个运行中容器的 price × gpu_num 之和; " + CONTAINER_PRICE_BASIS}


def balance_cover(balance_yuan: float, worst_case_hourly_yuan: float) -> dict[str, Any]:
    """How many hours the balance lasts at the worst-case rate, and whether that is low."""
    if worst_case_hourly_yuan <= 0:
        return {"hours_at_worst_case": None, "low": False}
    hours = round(max(balance_yuan, 0.0) / worst_case_hourly_yuan, 2)
    return {"hours_at_worst_case": hours, "low": hours < LOW_BALANCE_HOURS}


def over_budget_problem(cost: dict[str, Any], max_hourly_yuan: float) -> dict[str, str] | None:
    """The validation problem when the worst case exceeds --max-hourly-cost, else None."""
    worst = cost["worst_case_hourly_yuan"]
    if worst <= max_hourly_yuan:
        return None
    per_gpu = cost["per_gpu_hourly_yuan"]["max"]
    return {
        "path": "container_template.price_to",
        "message": (
            f"最坏情况每小时 {worst:g} 元 (price_to {per_gpu:g} 元/卡/时 × gpu_num {cost['gpu_num']} × "
            f"同时运行 {cost['concurrent_containers']} 个容器), 超过 --max-hourly-cost {max_hourly_yuan:g} 元。"
        ),
        "hint": "降低 container_template.price_to、gpu_num 或 replica_num / parallelism_num, 或 (用户同意后) 提高 --max-hourly-cost。",
    }


def refuse_over_budget(config: dict[str, Any], max_hourly_yuan: float) -> None:
    """--max-hourly-cost: a worst case above the limit is a validation_error, raised before
    any network call (nothing has been sent, so nothing needs checking afterwards)."""
    cost = cost_bounds(config)
    problem = over_budget_problem(cost, max_hourly_yuan)
    if problem:
        raise AutoDLError(
            ErrorType.VALIDATION_ERROR,
            f"最坏情况每小时 {cost['worst_case_hourly_yuan']:g} 元, 超过 --max-hourly-cost {max_hourly_yuan:g} 元, 没有提交。",
            "把 details.cost 告诉用户; 按 details.errors 的 hint 调低配置, 或经用户同意后提高上限。此时尚未调用任何接口。",
            {"errors": [problem], "cost": cost, "max_hourly_cost_yuan": max_hourly_yuan},
        )
