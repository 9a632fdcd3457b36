"""How containers are shown to a user or an agent: service URLs surfaced, secrets redacted."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (--help imports this module)
if TYPE_CHECKING:
    from typing import Any

from ..core.output import REDACTED
from .units import gb_from_bytes, yuan_from_price_units

# Keys of a container's `info` that carry a reachable service address, in the order a
# client should prefer them (public cloud names first; the private cloud uses service_url).
SERVICE_URL_KEYS = ("service_6006_port_url", "service_6008_port_url", "service_url")
LIVE_STATUSES = ("creating", "created", "starting", "oss_merged", "running")
# Every documented container status, in lifecycle order (references/platform-api.md, 容器状态).
CONTAINER_STATUSES = (*LIVE_STATUSES, "shutting_down", "shutdown")
STOPPING_STATUSES = ("shutting_down", "shutdown")


def price_per_card_units(container: dict[str, Any]) -> float | None:
    """The container's `price` (yuan x 1000 per card-hour, the same basis as the template's
    price_from/price_to; references/money.md, 计费口径), or None when absent or not a number."""
    price = container.get("price")
    if isinstance(price, (int, float)) and not isinstance(price, bool) and price >= 0:
        return float(price)
    return None


def container_hourly_units(container: dict[str, Any]) -> float | None:
    """What the whole container costs per hour (yuan x 1000): its per-card `price` x `gpu_num`.
    A record without a usable gpu_num counts as one card (every documented sample has it)."""
    price = price_per_card_units(container)
    if price is None:
        return None
    cards = container.get("gpu_num")
    cards = cards if isinstance(cards, int) and not isinstance(cards, bool) and cards > 0 else 1
    return price * cards


def containers_in_status(events: list[dict[str, Any]], status: str) -> list[str]:
    """Containers (first-seen order) that reached `status` and, for a live status, have not stopped since.

    Events are oldest first. A replica that ran and then crashed is not running any more,
    so waiting for N `running` containers must not count it.
    """
    reached: dict[str, bool] = {}
    for event in events:
        uuid = event.get("deployment_container_uuid")
        if not uuid:
            continue
        if event.get("status") == status:
            reached[uuid] = True
        elif uuid in reached and status in LIVE_STATUSES and event.get("status") in STOPPING_STATUSES:
            reached[uuid] = False
    return [uuid for uuid, still in reached.items() if still]


def service_urls(container: dict[str, Any]) -> dict[str, str]:
    info = container.get("info") or {}
    if not isinstance(info, dict):
        return {}  # a malformed record has no usable service URL
    return {key: info[key] for key in SERVICE_URL_KEYS if info.get(key)}


def primary_service_url(container: dict[str, Any], port: int | None = None) -> str | None:
    """The URL a client should call: the one for `port` (6006/6008) when asked, else the first."""
    urls = service_urls(container)
    if port is not None and urls.get(f"service_{port}_port_url"):
        return urls[f"service_{port}_port_url"]
    return next(iter(urls.values()), None)


def redact_container(container: dict[str, Any], show_password: bool = False) -> dict[str, Any]:
    """The API record with `root_password` hidden, memory also in GB and price also in yuan:
    `price_yuan` per card-hour (the API's `price`) and `hourly_yuan` for the whole container
    (`price` x `gpu_num`), named like list_deployments' `*_yuan`."""
    shown = dict(container)
    info = dict(shown.get("info") or {})
    if "root_password" in info and not show_password:
        info["root_password"] = REDACTED
    if info:
        shown["info"] = info
    if isinstance(shown.get("memory_size"), int):
        shown["memory_size_gb"] = gb_from_bytes(shown["memory_size"])
    price = price_per_card_units(shown)
    if price is not None:
        shown["price_yuan"] = round(yuan_from_price_units(price), 3)
        shown["hourly_yuan"] = round(yuan_from_price_units(container_hourly_units(shown)), 3)
    return shown


def container_view(container: dict[str, Any], show_password: bool = False) -> dict[str, Any]:
    """A list item: the redacted API record plus its service URLs surfaced.

    `container_uuid` repeats the record's `uuid` under the name every other script uses
    (and `--container-uuid` takes), so an agent never has to guess which key to copy.
    """
    return {
        "container_uuid": container.get("uuid"),
        **redact_container(container, show_password),
        "service_urls": service_urls(container),
    }


def container_summary(container: dict[str, Any], show_password: bool = False) -> dict[str, Any]:
    """The few fields a person needs to reach a running container."""
    info = container.get("info") or {}
    summary = {
        "container_uuid": container.get("uuid"),
        "status": container.get("status"),
        "machine_id": container.get("machine_id"),
        "gpu_name": container.get("gpu_name"),
        "gpu_num": container.get("gpu_num"),
        "data_center": container.get("data_center"),
        "service_urls": service_urls(container),
        "ssh_command": info.get("ssh_command"),
        "started_at": container.get("started_at"),
    }
    if "root_password" in info:
        summary["root_password"] = info["root_password"] if show_password else REDACTED
    return summary


def machine_of(container: dict[str, Any]) -> str | None:
    """The machine a container runs on: its record's machine_id, else the middle of its uuid."""
    uuid = container.get("uuid") or ""
    return container.get("machine_id") or (uuid.split("-")[1] if uuid.count("-") == 2 else None)


def released_hidden_warning(items: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, Any] | None:
    """An empty list (without --released) of a deployment whose containers have finished:
    they are released, and only --released lists them. The count is the deployment record's
    `finished_num` (no extra call); a stopped deployment without it says so without a count."""
    if items:
        return None
    finished = deployment.get("finished_num")
    finished = finished if isinstance(finished, int) and not isinstance(finished, bool) else None
    if not finished and not (finished is None and deployment.get("status") == "stopped"):
        return None
    how_many = f"{finished} 个" if finished else ""
    return {
        "code": "released_containers_hidden", "path": "--released",
        "message": f"没有未释放的容器, 但这个部署有 {how_many}已结束 (已释放) 的容器: 默认不列出它们。",
        "hint": "加 --released 列出已释放的容器 (运行时长、机器); 花费看 cost_report.py。",
        "released_count": finished,
    }


def single_machine_warning(containers: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str] | None:
    """A warning when every running replica of a ReplicaSet shares one machine: one host
    failure (or blacklisting) takes the whole service down at once."""
    if deployment.get("deployment_type") not in (None, "ReplicaSet"):
        return None
    running = [c for c in containers if c.get("status") == "running"]
    machines = {machine_of(c) for c in running}
    if len(running) < 2 or len(machines) != 1 or None in machines:
        return None
    machine = next(iter(machines))
    # Only a note: this host may be the one healthy machine left (e.g. just after the
    # faulty one was blacklisted), so no command that acts on it is offered ready to run.
    return {
        "code": "single_machine", "path": "machine_id",
        "message": f"全部 {len(running)} 个运行中的副本都在同一台主机 {machine} 上: 这台主机出故障时服务整体不可用。",
        "hint": "只是提醒, 通常接受现状即可 (同一主机延迟更低), 不要为此拉黑这台主机: 它可能是现在唯一能用的主机。"
                f"用户确实要分散时, 先用 gpu_stock.py 确认别的主机有空闲卡; 拉黑主机 {machine} 并挪走副本 "
                f"(blacklist_host.py --container-uuid <其中一个> --move-replicas) 会停掉它上面全部 {len(running)} 个副本, "
                "服务中断到替补在别的主机上运行为止, 没有别的主机可调度时一直中断; 先不加确认运行, 看它的预览。",
    }
