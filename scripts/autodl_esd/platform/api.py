"""Typed calls for every elastic-deployment endpoint (paths, bodies, pagination)."""

from __future__ import annotations

from typing import Any, Iterator

from urllib.parse import urlsplit

from ..core.http import ApiClient
from .stock import StockByGpu, merge_stock, normalize_stock

IMAGES_PATH = "/api/v1/dev/image/private/list"
DEPLOYMENT_PATH = "/api/v1/dev/deployment"
DEPLOYMENTS_PATH = "/api/v1/dev/deployment/list"
EVENTS_PATH = "/api/v1/dev/deployment/container/event/list"
CONTAINERS_PATH = "/api/v1/dev/deployment/container/list"
STOP_CONTAINER_PATH = "/api/v1/dev/deployment/container/stop"
REPLICA_NUM_PATH = "/api/v1/dev/deployment/replica_num"
OPERATE_PATH = "/api/v1/dev/deployment/operate"
BLACKLIST_PATH = "/api/v1/dev/deployment/blacklist"
DDP_OVERVIEW_PATH = "/api/v1/dev/deployment/ddp/overview"
SYSTEM_IMAGES_PATH = "/api/v2/image/list"  # private cloud only
GLOBAL_STOCK_PATH = "/api/v1/dev/machine/gpu_stock"
REGION_STOCK_PATH = "/api/v1/dev/machine/region/gpu_stock"

# Hosts whose dialect is documented. The public cloud documents only the region stock route;
# the global GET machine/gpu_stock is documented for the private cloud alone (references/platform-endpoints.md,
# 地区 GPU 库存).
HOST_DIALECTS = {"api.autodl.com": "public", "private.autodl.com": "private"}
# The public cloud's documented region codes (references/platform-api.md, 地区代码); recorded live runs
# got Success from all eleven. Stock "everywhere" on the public cloud is their sum.
PUBLIC_REGIONS = ("westDC2", "westDC3", "beijingDC1", "beijingDC2", "beijingDC3", "beijingDC4",
                  "neimengDC1", "neimengDC3", "foshanDC1", "chongqingDC1", "yangzhouDC1")

# Large pages keep "fetch everything" to a few calls; the maximum is undocumented and 100
# is what the platform's own samples and console use without complaint.
PAGE_SIZE = 100
# A guard against a server that keeps answering "more pages" forever.
MAX_PAGES = 1000
# Keys of a list response besides `list`, returned when a caller asks for one page.
PAGING_KEYS = ("page_index", "page_size", "max_page", "offset", "result_total")
# Public-cloud limits of the blacklist's expire_in_minutes (1 minute to 30 days) live in
# units, where the argument parser reads them without importing the HTTP client.
from .units import BLACKLIST_MAX_EXPIRE_MINUTES


def iter_pages(client: ApiClient, path: str, body: dict[str, Any] | None = None, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
    """Yield every item of a paginated list, pages 1..max_page."""
    for page_index in range(1, MAX_PAGES + 1):
        data = client.post(path, {**(body or {}), "page_index": page_index, "page_size": page_size}) or {}
        items = data.get("list") or []
        yield from items
        max_page = data.get("max_page")
        if not items or (isinstance(max_page, int) and page_index >= max_page):
            return
        if max_page is None and len(items) < page_size:
            return


def fetch_page(client: ApiClient, path: str, body: dict[str, Any], page_index: int, page_size: int) -> dict[str, Any]:
    """One page as the platform returned it (list plus paging keys)."""
    return client.post(path, {**body, "page_index": page_index, "page_size": page_size}) or {}


def image_name(image: dict[str, Any]) -> str | None:
    """Sources disagree on the key: `image_name` (public) or `name` (private)."""
    return image.get("image_name") or image.get("name")


def list_images(client: ApiClient) -> list[dict[str, Any]]:
    return list(iter_pages(client, IMAGES_PATH))


def list_system_images(client: ApiClient) -> list[dict[str, Any]]:
    """The private cloud's base images (`base-image-...`); the public cloud answers 404."""
    return list(iter_pages(client, SYSTEM_IMAGES_PATH))


def ddp_overview(client: ApiClient, deployment_uuid: str) -> list[dict[str, Any]]:
    """Duration packages bought for a deployment; `total`/`balance` are seconds."""
    return client.get(DDP_OVERVIEW_PATH, {"deployment_uuid": deployment_uuid}) or []


def global_stock(client: ApiClient) -> tuple[StockByGpu, Any]:
    raw = client.get(GLOBAL_STOCK_PATH)
    return normalize_stock(raw), raw


def region_stock(
    client: ApiClient, regions: list[str], filters: dict[str, Any] | None = None
) -> tuple[StockByGpu, dict[str, Any]]:
    """Stock summed over regions; the endpoint takes one `region_sign` per call, plus optional
    template filters (gpu_name_set, cpu/memory/price/CUDA ranges) to count only hosts that fit."""
    raw_by_region = {region: client.post(REGION_STOCK_PATH, {**(filters or {}), "region_sign": region}) for region in regions}
    return merge_stock(normalize_stock(raw) for raw in raw_by_region.values()), raw_by_region


def host_dialect(host: str) -> str | None:
    """`public` / `private` for a documented host, else None (a simulator, a custom cluster)."""
    return HOST_DIALECTS.get(urlsplit(host).hostname or "")


def stock_regions(client: ApiClient, regions: list[str] | None = None) -> list[str] | None:
    """The regions a stock read asks: the ones given; on the public cloud without any, every
    documented region (it has no documented global route); else None (the global route)."""
    if regions:
        return list(regions)
    return list(PUBLIC_REGIONS) if host_dialect(client.host) == "public" else None


def gpu_stock(client: ApiClient, regions: list[str] | None = None) -> tuple[StockByGpu, Any]:
    regions = stock_regions(client, regions)
    return region_stock(client, regions) if regions else global_stock(client)


def list_deployments(
    client: ApiClient, *, name: str | None = None, status: str | None = None, deployment_uuid: str | None = None
) -> list[dict[str, Any]]:
    body = {key: value for key, value in {"name": name, "status": status, "deployment_uuid": deployment_uuid}.items() if value}
    return list(iter_pages(client, DEPLOYMENTS_PATH, body))


def create_deployment(client: ApiClient, request: dict[str, Any]) -> str:
    """Never retried here: a lost answer may still have created it (see submit.reconcile)."""
    data = client.post(DEPLOYMENT_PATH, request, idempotent=False) or {}
    return str(data["deployment_uuid"])


def list_containers(
    client: ApiClient,
    deployment_uuid: str,
    *,
    statuses: list[str] | None = None,
    released: bool | None = None,
    container_uuid: str | None = None,
) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"deployment_uuid": deployment_uuid}
    if statuses:
        body["status"] = statuses
    if released is not None:
        body["released"] = released
    if container_uuid:
        body["container_uuid"] = container_uuid
    return list(iter_pages(client, CONTAINERS_PATH, body))


def list_events(
    client: ApiClient, deployment_uuid: str, *, offset: int = 0, container_uuid: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Events after `offset`, oldest first, and the offset to poll from next time."""
    body: dict[str, Any] = {"deployment_uuid": deployment_uuid}
    if container_uuid:
        body["deployment_container_uuid"] = container_uuid
    events: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        data = client.post(EVENTS_PATH, {**body, "page_index": 1, "page_size": PAGE_SIZE, "offset": offset + len(events)}) or {}
        batch = data.get("list") or []
        events.extend(batch)
        if len(batch) < PAGE_SIZE:
            break
    return events, offset + len(events)


def stop_container(
    client: ApiClient,
    container_uuid: str,
    *,
    decrease_one_replica_num: bool = False,
    no_cache: bool | None = None,
    cmd_before_shutdown: str | None = None,
) -> None:
    body: dict[str, Any] = {"deployment_container_uuid": container_uuid, "decrease_one_replica_num": decrease_one_replica_num}
    if no_cache is not None:  # public-cloud field; left out so the private cloud never sees it
        body["no_cache"] = no_cache
    if cmd_before_shutdown:
        body["cmd_before_shutdown"] = cmd_before_shutdown
    # With decrease_one_replica_num a repeated call could lower replica_num twice: never
    # retried blindly; a lost answer is settled by reading back (effects.apply_change).
    client.put(STOP_CONTAINER_PATH, body, idempotent=not decrease_one_replica_num)


def set_replica_num(client: ApiClient, deployment_uuid: str, replica_num: int) -> None:
    client.put(REPLICA_NUM_PATH, {"deployment_uuid": deployment_uuid, "replica_num": replica_num})


def stop_deployment(client: ApiClient, deployment_uuid: str) -> None:
    client.put(OPERATE_PATH, {"deployment_uuid": deployment_uuid, "operate": "stop"})


def delete_deployment(client: ApiClient, deployment_uuid: str) -> None:
    client.delete(DEPLOYMENT_PATH, {"deployment_uuid": deployment_uuid})


def add_to_blacklist(
    client: ApiClient, container_uuid: str, *, comment: str | None = None, expire_in_minutes: int | None = None
) -> None:
    body: dict[str, Any] = {"deployment_container_uuid": container_uuid}
    if comment:
        body["comment"] = comment
    if expire_in_minutes is not None:  # public-cloud field; the private cloud expires after 24 h
        body["expire_in_minutes"] = expire_in_minutes
    client.post(BLACKLIST_PATH, body)


def list_blacklist(client: ApiClient) -> list[dict[str, Any]]:
    """Active entries; `data` is documented as a list (null when empty), a page object is accepted too."""
    data = client.get(BLACKLIST_PATH) or []
    return (data.get("list") or []) if isinstance(data, dict) else data


# --- account: wallet and WeChat (money and time) ---------------------------------------

WALLET_BALANCE_PATH = "/api/v1/dev/wallet/balance"
# Served by the www host (https://www.autodl.com), not the developer API host.
WECHAT_MESSAGE_PATH = "/api/v1/wechat/message/send"


def wallet_balance(client: ApiClient) -> dict[str, Any]:
    """`assets` (balance), `accumulate` (spend so far), `voucher_balance`: yuan x 1000."""
    return client.post(WALLET_BALANCE_PATH, {}) or {}


def send_wechat_message(client: ApiClient, title: str, content: str | None = None, name: str | None = None) -> Any:
    """Not retried: a lost answer may still have delivered the message (and used the quota)."""
    body: dict[str, Any] = {"title": title}
    if name:
        body["name"] = name
    if content:
        body["content"] = content
    return client.post(WECHAT_MESSAGE_PATH, body, idempotent=False)
