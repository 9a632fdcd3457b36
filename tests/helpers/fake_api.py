"""Fake platform records for the `responses`-based unit tests: endpoint URLs, API records, pages.

The `api` fixture (ordered, every call used) and `fast_read_back` are in conftest.py."""

from __future__ import annotations

from typing import Any

from responses import matchers

from helpers import TEST_TOKEN, envelope, url

IMAGES = url("/api/v1/dev/image/private/list")
STOCK = url("/api/v1/dev/machine/gpu_stock")
REGION_STOCK = url("/api/v1/dev/machine/region/gpu_stock")
DEPLOYMENTS = url("/api/v1/dev/deployment/list")
DEPLOYMENT = url("/api/v1/dev/deployment")
CONTAINERS = url("/api/v1/dev/deployment/container/list")
EVENTS = url("/api/v1/dev/deployment/container/event/list")
STOP_CONTAINER = url("/api/v1/dev/deployment/container/stop")
REPLICA_NUM = url("/api/v1/dev/deployment/replica_num")
OPERATE = url("/api/v1/dev/deployment/operate")
BLACKLIST = url("/api/v1/dev/deployment/blacklist")
WALLET = url("/api/v1/dev/wallet/balance")
WECHAT = url("/api/v1/wechat/message/send")

DEP_UUID = "833f1cd5a764fa3"
OTHER_UUID = "53a677bb3e281b8"
MACHINE = "f94411a60c"
CONTAINER_UUID = f"{DEP_UUID}-{MACHINE}-a394fb30"
PASSWORD = "s3cret-Root-Pass"
AUTH = matchers.header_matcher({"Authorization": TEST_TOKEN})


def page(items: list[Any], page_index: int = 1, max_page: int = 1, **extra: Any) -> dict[str, Any]:
    return envelope({"list": list(items), "page_index": page_index, "page_size": 100, "max_page": max_page, "offset": 0, **extra})


def deployment(uuid: str = DEP_UUID, name: str = "svc", kind: str = "ReplicaSet", status: str = "running", replica_num: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "id": 1, "uid": 58, "uuid": uuid, "name": name, "deployment_type": kind, "status": status,
        "replica_num": replica_num, "parallelism_num": 1 if kind != "ReplicaSet" else 0,
        "starting_num": 0, "running_num": replica_num, "finished_num": 0,
        "image_uuid": "image-db8346e037",
        "template": {
            "gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118,
            "memory_size_from": 1073741824, "memory_size_to": 274877906944,
            "cpu_num_from": 1, "cpu_num_to": 100, "price_from": 100, "price_to": 9000,
        },
        "price_estimates": 3762,
        "created_at": "2026-01-05T20:34:07+08:00", "updated_at": "2026-01-05T20:34:07+08:00", "stopped_at": None,
        **extra,
    }


def container(uuid: str = CONTAINER_UUID, status: str = "running", machine: str = MACHINE) -> dict[str, Any]:
    return {
        "id": 195, "uuid": uuid, "machine_id": machine, "deployment_uuid": uuid[:15], "status": status,
        "gpu_name": "RTX 4090", "gpu_num": 1, "cpu_num": 12, "memory_size": 64424509440,
        "image_uuid": "image-db8346e037", "price": 1881, "data_center": "westDC2",
        "info": {
            "ssh_command": "ssh -p 21305 root@region-1.autodl.com", "root_password": PASSWORD,
            "service_6006_port_url": f"https://{uuid}-6006.example", "service_url": "https://region-1.autodl.com:21294",
        },
        "started_at": "2026-01-05T20:35:00+08:00", "stopped_at": None,
        "created_at": "2026-01-05T20:34:07+08:00", "updated_at": "2026-01-05T20:35:00+08:00",
    }


def body(**fields: Any):
    return matchers.json_params_matcher(fields)


def list_body(**fields: Any):
    """A paginated list request for page 1 of 100."""
    return matchers.json_params_matcher({**fields, "page_index": 1, "page_size": 100})


def expect_deployment(api, item: dict[str, Any] | None = None, **filters: Any) -> None:
    """The resolve lookup: deployment list filtered by uuid or name."""
    filters = filters or {"deployment_uuid": DEP_UUID}
    api.post(DEPLOYMENTS, json=page([item] if item else []), match=[list_body(**filters), AUTH])


def expect_containers(api, items: list[dict[str, Any]], **filters: Any) -> None:
    api.post(CONTAINERS, json=page(items), match=[list_body(deployment_uuid=DEP_UUID, **filters), AUTH])


def ok(code: int, document: dict[str, Any], validator: Any) -> None:
    """A success document that validates against the result schema."""
    assert code == 0, document
    assert document["status"] == "success"
    validator.validate(document)


def failed(code: int, document: dict[str, Any], validator: Any, error_type: str, exit_code: int = 1) -> None:
    """An error document of this type and exit code that validates against the result schema."""
    assert (code, document["error_type"]) == (exit_code, error_type), document
    validator.validate(document)


def wallet(assets: int = 500_000, accumulate: int = 0, voucher_balance: int = 0,
           blocked_asset: int | None = None) -> dict[str, Any]:
    """A wallet-balance answer (yuan x 1000); the dry run reads it after its other checks. With
    `blocked_asset` it is the real 14-field shape (api facts section 15), else the 3 money fields."""
    data: dict[str, Any] = {"assets": assets, "accumulate": accumulate, "voucher_balance": voucher_balance}
    if blocked_asset is not None:
        data.update(id=1, uid=100001, blocked_asset=blocked_asset, available_coupon_num=0, to_expire_voucher_num=0,
                    certain_conditions_voucher_balance=0, remittance_code="", total_recharge_asset=assets + accumulate,
                    exclusive_transfer_account="", created_at="2026-09-01T10:00:00+08:00",
                    updated_at="2026-09-01T10:00:00+08:00")
    return envelope(data)


# ---- queue_submit against the fakes (the submit and exactly-once tests) --------------------
# Its fixtures, `config_file` (writes CONFIG) and `fake_time`, are in tests/deploy/conftest.py.

CREATE = DEPLOYMENT  # a create is a POST to the deployment path

IMAGE_UUID = "image-db8346e037"
NEW_UUID = "833f1cd5a764fa3"
FAST = ("--interval", "0.01", "--quiet")

CONFIG = {
    "name": "svc",
    "deployment_type": "ReplicaSet",
    "replica_num": 2,
    "container_template": {
        "gpu_name_set": ["RTX 4090"],
        "gpu_num": 1,
        "cuda_v": 118,
        "cpu_num_from": 1,
        "cpu_num_to": 100,
        "memory_size_from": 1,
        "memory_size_to": 256,
        "price_from": 100,
        "price_to": 9000,
        "image_uuid": IMAGE_UUID,
        "cmd": "cd /root && /root/miniconda3/bin/python app.py --port 6006",
    },
}


def stock_list(idle, total=8, name="RTX 4090"):
    return envelope([{name: {"idle_gpu_num": idle, "total_gpu_num": total}}])


def deployments(items=()):
    return envelope({"list": list(items), "page_index": 1, "page_size": 100, "max_page": 1, "result_total": len(items)})


def expect_checks(api, idle=0):
    """Image list, first stock poll, same-name lookup: the calls before any waiting."""
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID, "image_name": "app"}]))
    api.get(STOCK, json=stock_list(idle))
    api.post(DEPLOYMENTS, json=deployments(), match=[matchers.json_params_matcher({"name": "svc", "page_index": 1, "page_size": 100})])


def same_name(*uuids, status="running"):
    return deployments([{"uuid": uuid, "name": "svc", "status": status} for uuid in uuids])


def expect_create(api, before=None, after=None, **kwargs):
    """The name check right before the create, the create, and (for a created one) the look
    for duplicates after it."""
    if "body" not in kwargs:
        kwargs.setdefault("json", envelope({"deployment_uuid": NEW_UUID}))
    created = "body" not in kwargs and kwargs.get("status", 200) == 200 and kwargs["json"].get("code") == "Success"
    api.post(DEPLOYMENTS, json=before or deployments())
    api.post(
        CREATE,
        match=[
            matchers.json_params_matcher(CONFIG),
            matchers.header_matcher({"Authorization": TEST_TOKEN, "Content-Type": "application/json"}),
        ],
        **kwargs,
    )
    if created:
        api.post(DEPLOYMENTS, json=after or same_name(NEW_UUID))


def create_calls(api):
    return [c for c in api.calls if c.request.url == CREATE and c.request.method == "POST"]
