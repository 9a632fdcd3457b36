"""The autoscaler's actuator: reads one ReplicaSet and its containers, changes its `replica_num`.

`ReplicaScaler` observes the deployment (`PlatformView`: replica_num, running and starting
containers, their price, the rate paid now), checks GPU stock before a scale-up, sets
`replica_num`, replaces a faulty container and blacklists a host. It can only change the
one deployment it was given: it has no way to create another. Every mutation reports what
is known of its effect (`took_effect`: true / false / "unknown"), as the exactly-once rule
asks. `startup_bounds` is what it may spend, for the `--yes` confirmation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ...core.errors import ApiError, AutoDLError, ErrorType
from ...core.output import Progress
from ...money.estimate import cost_bounds
from ...money.spend import BILLING_STATUSES
from ...platform import api
from ...platform.containers import STOPPING_STATUSES, container_hourly_units
from ...platform.effects import Change, apply_change, took_effect_of
from ...platform.resolve import deployment_by_uuid
from ...platform.stock import requested_stock
from ...platform.units import yuan_from_price_units
from .policy import AutoscaleConfig, hourly_cap_replicas

RUNNING = "running"
STARTING_STATUSES = ("creating", "created", "starting", "oss_merged")


@dataclass
class PlatformView:
    replica_num: int
    status: str
    running: list  # container records
    starting: int
    live: int  # starting + running (what counts as a replica)
    price_per_replica: Optional[float]  # yuan per hour, the dearest running container
    hourly_rate: float  # yuan per hour being paid now (running and shutting-down containers)


def _price_yuan(container: dict) -> Optional[float]:
    """The replica's whole hourly price: the per-card `price` x gpu_num (containers.container_hourly_units)."""
    price = container_hourly_units(container)
    return yuan_from_price_units(price) if price else None


class ReplicaScaler:
    """Applies decisions to one ReplicaSet. Every mutation reports what is known of its
    effect (`took_effect`: true / false / "unknown"), as the exactly-once rule asks."""

    def __init__(self, client: Any, deployment: dict, *, log: Callable[[str], None] = lambda message: None,
                 progress: Optional[Progress] = None):
        self.client = client
        self.progress = progress or Progress(quiet=True)
        self.deployment = deployment
        self.deployment_uuid = deployment["uuid"]
        template = deployment.get("template") or {}
        self.gpu_names = list(template.get("gpu_name_set") or deployment.get("gpu_name_set") or [])
        self.gpu_num = int(template.get("gpu_num") or 1)
        self.regions = list(deployment.get("dc_list") or template.get("dc_list") or [])
        price_to = template.get("price_to")
        # Before any container runs, the template's price ceiling is the most one can cost:
        # price_to is per card, so a replica of gpu_num cards costs up to gpu_num times it.
        self.price_ceiling = (yuan_from_price_units(price_to) * self.gpu_num
                              if isinstance(price_to, (int, float)) and price_to > 0 else None)
        self.template = template
        self.last_price: Optional[float] = None
        self._log = log

    # ---- reading -------------------------------------------------------

    def observe(self) -> PlatformView:
        deployment = deployment_by_uuid(self.client, self.deployment_uuid)
        if deployment is None:
            raise deployment_gone(self.deployment_uuid)
        containers = api.list_containers(self.client, self.deployment_uuid)
        running = [c for c in containers if c.get("status") == RUNNING]
        starting = sum(1 for c in containers if c.get("status") in STARTING_STATUSES)
        prices = [p for p in (_price_yuan(c) for c in running) if p]
        if prices:
            self.last_price = max(prices)
        # Paid now: what the platform bills, as cost_report counts it (a container shutting
        # down still holds its GPUs until stopped_at).
        billing = [p for p in (_price_yuan(c) for c in containers if c.get("status") in BILLING_STATUSES) if p]
        return PlatformView(
            replica_num=int(deployment.get("replica_num") or 0),
            status=str(deployment.get("status")),
            running=running,
            starting=starting,
            live=len(running) + starting,
            price_per_replica=self.last_price or self.price_ceiling,
            hourly_rate=sum(billing),
        )

    def stock(self) -> tuple[int, dict]:
        """(replicas the stock can place now, the stock of the template's GPU types)."""
        stock, _ = api.gpu_stock(self.client, self.regions or None)
        wanted = requested_stock(stock, self.gpu_names) if self.gpu_names else stock
        placeable = sum(figures.get("idle", 0) // max(self.gpu_num, 1) for figures in wanted.values())
        return placeable, wanted

    # ---- changing ------------------------------------------------------

    def _apply(self, change: Change, verify: Optional[Callable[[], tuple]] = None) -> dict:
        """Send one mutation through effects.apply_change: {took_effect, ...} and never raises
        for the platform's answer (a refusal or a lost answer is reported, not thrown)."""
        try:
            _, report = apply_change(change, self.client, self.progress, verify=verify)
            return report
        except ApiError as error:
            outcome = {key: error.details[key] for key in ("check", "answer_lost", "last_seen") if key in error.details}
            outcome["took_effect"] = took_effect_of(error)  # false only for a refusal
            outcome["error"] = {"code": error.code, "msg": error.msg, "message": error.message}
            outcome["refused"] = not error.ambiguous
            return outcome

    def set_replicas(self, target: int) -> dict:
        """PUT replica_num (absolute, so a repeat cannot overshoot) and read it back."""
        uuid = self.deployment_uuid
        outcome = self._apply(Change(
            what=f"把部署 {uuid} 的副本数设为 {target}",
            send=lambda: api.set_replica_num(self.client, uuid, target),
            fetch=lambda: deployment_by_uuid(self.client, uuid),
            done=lambda d: d is not None and d.get("replica_num") == target,
            check=f"python3 scripts/list_deployments.py --deployment-uuid {uuid}",
            ids={"deployment_uuid": uuid},
        ))
        return {"requested_replica_num": target, **outcome}

    def replace(self, container_uuid: str) -> dict:
        """Stop one container and let the ReplicaSet start a replacement (count unchanged)."""

        def status() -> Optional[str]:
            rows = api.list_containers(self.client, self.deployment_uuid, container_uuid=container_uuid, released=True)
            return next((row.get("status") for row in rows if row.get("uuid") == container_uuid), None)

        outcome = self._apply(Change(
            what=f"停止故障副本 {container_uuid} (不减副本数, 平台会补一个)",
            send=lambda: api.stop_container(self.client, container_uuid, decrease_one_replica_num=False),
            fetch=status,
            done=lambda seen: seen in STOPPING_STATUSES,
            check=f"python3 scripts/list_containers.py --deployment-uuid {self.deployment_uuid}",
            ids={"container_uuid": container_uuid},
        ))
        return {"container_uuid": container_uuid, "decrease_one_replica_num": False, **outcome}

    def blacklist(self, container_uuid: str, machine_id: str) -> dict:
        outcome = self._apply(Change(
            what=f"把主机 {machine_id} 加入调度黑名单",
            send=lambda: api.add_to_blacklist(self.client, container_uuid, comment="autoscaler: repeated replica failures"),
            # Only after a lost answer: the list (public cloud only; on a private cluster the
            # looks fail and the outcome stays "unknown", never a guessed true).
            fetch=lambda: api.list_blacklist(self.client),
            done=lambda entries: any(entry.get("machine_id") == machine_id for entry in entries or []),
            seen=lambda entries: {"blacklisted": any(entry.get("machine_id") == machine_id for entry in entries or [])},
            check="python3 scripts/list_blacklist.py",
            ids={"machine_id": machine_id},
        ), verify=lambda: (None, {}))  # an answered add is the evidence: no list to read on a private cluster
        return {"machine_id": machine_id, "container_uuid": container_uuid, **outcome}


def deployment_gone(deployment_uuid: str) -> AutoDLError:
    return AutoDLError(
        ErrorType.NOT_FOUND,
        f"部署 {deployment_uuid} 已不存在, 自动扩缩容停止。",
        "用 list_deployments.py 确认部署是否被删除。",
        {"deployment_uuid": deployment_uuid},
    )



def startup_bounds(config: AutoscaleConfig, scaler: ReplicaScaler, current: int) -> dict:
    """What the autoscaler may do, for the confirmation (`--yes`) and the ready line."""
    price = scaler.last_price or scaler.price_ceiling
    cap = hourly_cap_replicas(config.max_hourly_cost, price)
    ceiling = config.max_replicas if cap is None else min(cap, config.max_replicas)
    bounds = {
        "deployment_uuid": scaler.deployment_uuid,
        "current_replica_num": current,
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "effective_max_replicas": ceiling,
        "price_per_replica_yuan": price,
        # The containers' reported price, or before any runs the template's price_to (the most one may cost).
        "price_source": "containers" if scaler.last_price else ("template_price_to" if price is not None else None),
        "max_hourly_cost_yuan": None if price is None else round(ceiling * price, 4),
        "budget_yuan": config.budget,
    }
    worst = template_worst_case(scaler, config.max_replicas)
    if worst is not None:
        bounds["worst_case_hourly_yuan"] = worst["worst_case_hourly_yuan"]
        bounds["worst_case"] = worst
    if config.max_hourly_cost is not None:
        bounds["hourly_cost_cap_yuan"] = config.max_hourly_cost
    if config.min_replicas == 0:
        bounds["scale_to_zero_after"] = config.zero_after
    return bounds


def template_worst_case(scaler: ReplicaScaler, replicas: int) -> Optional[dict]:
    """The most the template allows at `replicas` (price_to per card x gpu_num x replicas), the
    same figure the config's dry-run gives; today's container price may be far below it."""
    template = scaler.template
    price_to = template.get("price_to")
    if not isinstance(price_to, (int, float)) or isinstance(price_to, bool) or price_to <= 0:
        return None
    price_from = template.get("price_from")
    bounds = cost_bounds({"deployment_type": "ReplicaSet", "replica_num": replicas, "container_template": {
        "gpu_num": scaler.gpu_num, "price_to": price_to,
        "price_from": price_from if isinstance(price_from, (int, float)) and 0 <= price_from <= price_to else 0}})
    return {"worst_case_hourly_yuan": bounds["worst_case_hourly_yuan"], "replicas": replicas,
            "per_gpu_hourly_yuan_max": bounds["per_gpu_hourly_yuan"]["max"], "gpu_num": bounds["gpu_num"],
            "basis": "模板的 price_to (每卡每小时上限) × gpu_num × max_replicas, 与配置 dry-run 的最坏情况同一算法; "
                     "平台可能按这个上限内的任何价格分配容器"}
