"""The AutoDL elastic-deployment endpoints: request validation and response shapes.

Every handler takes the request parameters (the JSON body, or the query string for GET) and
returns the envelope's `data`, or raises ApiError for a business error. Conventions follow
the API facts: memory in requests is GB and in responses bytes, prices are yuan x 1000 per
hour, `page_index` starts at 1 (0 is read as 1), and `offset` skips that many items before
paging starts (so an event poller can advance it). Lists are newest first, except events,
which are oldest first. Business error messages are Chinese like the platform's.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from . import lifecycle as lc
from .account import Account
from .cluster import GIB, Image, PlacementFilter
from .controllers import (
    CONTAINER,
    DEPLOYMENT_RUNNING,
    DEPLOYMENT_STOPPED,
    DEPLOYMENT_TYPES,
    JOB,
    REPLICA_SET,
    Container,
    Deployment,
    Event,
    NewDeployment,
)
from .world import NoCapacity, NotFound, World

# The account id shown as `uid` on deployments (a single simulated account).
ACCOUNT_UID = 1000
# Largest page the simulator serves; no source documents a limit, larger asks are refused
# rather than silently truncated so a client never mistakes a clipped page for everything.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 10
# Blacklist expiry: 24 h by default, 30 days at most (public docs); private docs: fixed 24 h.
BLACKLIST_DEFAULT_MINUTES = 1440
BLACKLIST_MAX_MINUTES = 43200
# Integer fields decode into int64 on the platform; bigger JSON numbers do not fit.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Widest ranges used when a stock filter is not given.
_ANY = 10**12

OUT_OF_STOCK_MSG = "当前算力规格暂无库存"


class ApiError(Exception):
    """A non-Success envelope; business errors travel with HTTP 200."""

    def __init__(self, code: str, msg: str, http_status: int = 200) -> None:
        super().__init__(msg)
        self.code, self.msg, self.http_status = code, msg, http_status


def bad_parameter(detail: str) -> ApiError:
    return ApiError("RequestParameterIsWrong", f"请求参数错误：{detail}")


def not_found(what: str) -> ApiError:
    return ApiError("RecordNotFoundError", f"未查询到相关{what}")


# ----- parameter readers -------------------------------------------------------------------

_MISSING = object()


def _get(params: dict, key: str, required: bool) -> Any:
    value = params.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise bad_parameter(f"缺少必填字段 {key}")
        return _MISSING
    return value


def read_int(params: dict, key: str, *, required: bool = False, default: int = 0,
             minimum: int | None = 0, maximum: int | None = None) -> int:
    value = _get(params, key, required)
    if value is _MISSING:
        return default
    # JSON types are strict, as a Go backend decoding into int fields is: "118" or 5.0 is a
    # parameter error, so a client that sends them finds out here, not on the platform.
    # (No GET route takes an integer, so query strings never reach this.)
    if not isinstance(value, int) or isinstance(value, bool) or not INT64_MIN <= value <= INT64_MAX:
        raise bad_parameter(f"{key} 必须是整数")
    if minimum is not None and value < minimum:
        raise bad_parameter(f"{key} 不能小于 {minimum}")
    if maximum is not None and value > maximum:
        raise bad_parameter(f"{key} 不能大于 {maximum}")
    return value


def read_bool(params: dict, key: str, default: bool = False) -> bool:
    value = _get(params, key, False)
    if value is _MISSING:
        return default
    if not isinstance(value, bool):
        raise bad_parameter(f"{key} 必须是 true 或 false")
    return value


def read_str(params: dict, key: str, *, required: bool = False, default: str = "") -> str:
    value = _get(params, key, required)
    if value is _MISSING:
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise bad_parameter(f"{key} 必须是非空字符串")
    return value


def read_choice(params: dict, key: str, choices: tuple[str, ...], *, required: bool = False,
                default: str = "") -> str:
    value = read_str(params, key, required=required, default=default)
    if value not in choices and not (value == "" and not required):
        raise bad_parameter(f"{key} 只能是 {' | '.join(choices)}")
    return value


def read_str_list(params: dict, key: str, *, required: bool = False) -> list[str]:
    value = _get(params, key, required)
    if value is _MISSING:
        return []
    if (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)
            or (required and not value)):
        raise bad_parameter(f"{key} 必须是非空字符串列表")
    return value


def read_range(params: dict, prefix: str, *, required: bool) -> tuple[int, int]:
    """`<prefix>_from` / `<prefix>_to`; an absent bound, or an optional upper bound of 0
    (B4: zero means "no filter"), leaves that side open."""
    low = read_int(params, f"{prefix}_from", required=required, default=0)
    high = read_int(params, f"{prefix}_to", required=required, default=_ANY)
    if high == 0 and not required:
        high = _ANY
    if low > high:
        raise bad_parameter(f"{prefix}_from 不能大于 {prefix}_to")
    return low, high


def paginate(items: list, params: dict, render: Callable[[Any], Any] = lambda item: item,
             base: int = 0) -> dict[str, Any]:
    """One page of `items`; only that page goes through `render`, so a long history (a
    crash loop's events) costs a poller one page of formatting, not the whole list.
    `base` counts items trimmed from the front: `offset` stays absolute (offset < base
    starts at the oldest item still kept) and result_total counts the trimmed ones too."""
    page_index = max(1, read_int(params, "page_index", default=1))
    page_size = read_int(params, "page_size", default=DEFAULT_PAGE_SIZE, minimum=1,
                         maximum=MAX_PAGE_SIZE)
    offset = read_int(params, "offset", default=0)
    remaining = items[max(0, offset - base):]
    start = (page_index - 1) * page_size
    return {
        "list": [render(item) for item in remaining[start:start + page_size]],
        "page_index": page_index,
        "page_size": page_size,
        "max_page": math.ceil(len(remaining) / page_size),
        "offset": max(offset, base),  # where this page starts: past trimmed items when offset < base
        "result_total": base + len(items),
    }


# ----- the endpoints -----------------------------------------------------------------------

class Api:
    """Endpoint handlers bound to one World; `base_url` is called when URLs are rendered."""

    def __init__(self, world: World, dialect: str, stock_shape: str, base_url: Callable[[], str],
                 account: Account | None = None,
                 service_address: Callable[[str], str] | None = None) -> None:
        self.world = world
        self.account = account or Account()
        self.dialect = dialect
        self.stock_shape = stock_shape
        self.base_url = base_url
        # container uuid -> its own service base URL (Simulator service_ports), else None.
        self.service_address = service_address

    def _ts(self, simulated: float | None) -> str | None:
        return None if simulated is None else self.world.clock.timestamp(simulated)

    # images

    def list_private_images(self, params: dict) -> dict:
        items = []
        for index, image in enumerate(self.world.images):
            # Images were saved on successive days before the simulation started.
            saved = self._ts(-86400.0 * (len(self.world.images) - index))
            item = {"id": index + 1, "image_uuid": image.image_uuid}
            # The name key is the dialects' best-known difference (§11): public `image_name`,
            # private `name`; "both" shows both.
            if self.dialect != "private":
                item["image_name"] = image.name
            if self.dialect != "public":
                item["name"] = image.name
            # Recorded public records carry only id, image_name and image_uuid (§15).
            items.append(item if self.dialect == "public" else {**item, "status": "finished", "created_at": saved, "updated_at": saved})
        return paginate(items, params)

    def list_system_images(self, params: dict) -> dict:
        items = [{
            "image_uuid": image.image_uuid, "name": image.name, "url": "",
            "cuda_version": image.cuda_version, "chip_corp": "nvidia", "cpu_arch": "x86",
        } for image in self.world.base_images]
        return paginate(items, params)

    def _image(self, image_uuid: str) -> Image:
        for image in (*self.world.images, *self.world.base_images):
            if image.image_uuid == image_uuid:
                return image
        raise ApiError("BadRequest", "镜像不存在")

    # deployments

    def create_deployment(self, params: dict) -> dict:
        spec = self._parse_create(params)
        with self.world.current():
            try:
                deployment = self.world.create_deployment(spec)
            except NoCapacity:
                raise ApiError("BadRequest", OUT_OF_STOCK_MSG) from None
        self.world.settle()  # the answer comes once every replica that fits has started
        return {"deployment_uuid": deployment.uuid}

    def _parse_create(self, params: dict) -> NewDeployment:
        name = read_str(params, "name", required=True)
        deployment_type = read_choice(params, "deployment_type", DEPLOYMENT_TYPES, required=True)
        template = _get(params, "container_template", True)
        if not isinstance(template, dict):
            raise bad_parameter("container_template 必须是对象")
        replica_num = parallelism_num = 1
        if deployment_type in (REPLICA_SET, JOB):
            replica_num = read_int(params, "replica_num", required=True, minimum=1)
            parallelism_num = 0
        if deployment_type == JOB:
            parallelism_num = read_int(params, "parallelism_num", required=True, minimum=1)

        # Sources disagree on where these live (top level or template): accept both.
        def either(key: str) -> dict:
            return params if key in params else template

        reuse = read_bool(either("reuse_container"), "reuse_container")
        reuse_scope = read_choice(either("reuse_container_scope"), "reuse_container_scope",
                                  ("all", "deployment"), default="all")
        protocols = {
            key: read_choice(either(key), key, ("http", "tcp"), default="http")
            for key in ("service_6006_port_protocol", "service_6008_port_protocol")
        }
        gpu_name_set = read_str_list(template, "gpu_name_set", required=True)
        gpu_num = read_int(template, "gpu_num", required=True, minimum=1)
        cpu = read_range(template, "cpu_num", required=True)
        memory = read_range(template, "memory_size", required=True)
        price = read_range(template, "price", required=True)
        image_uuid = read_str(template, "image_uuid", required=True)
        cmd = read_str(template, "cmd", required=True)
        cmd_before_shutdown = read_str(either("cmd_before_shutdown"), "cmd_before_shutdown")
        dialect, min_cuda, regions, cuda_fields = self._read_dialect(template, deployment_type)
        image = self._image(image_uuid)

        shown = {
            "gpu_name_set": gpu_name_set, "gpu_num": gpu_num,
            "image_uuid": image_uuid, "image_name": image.name, "cmd": cmd,
            "memory_size_from": memory[0] * GIB, "memory_size_to": memory[1] * GIB,
            "cpu_num_from": cpu[0], "cpu_num_to": cpu[1],
            "price_from": price[0], "price_to": price[1], **cuda_fields,
        }
        if cmd_before_shutdown:
            shown["cmd_before_shutdown"] = cmd_before_shutdown
        return NewDeployment(
            name=name, deployment_type=deployment_type, replica_num=replica_num,
            parallelism_num=parallelism_num, reuse_container=reuse, reuse_scope=reuse_scope,
            image_uuid=image_uuid, cmd=cmd,
            placement=PlacementFilter(
                gpu_name_set=tuple(gpu_name_set), gpu_num=gpu_num,
                cpu_num_from=cpu[0], cpu_num_to=cpu[1],
                memory_gb_from=memory[0], memory_gb_to=memory[1],
                price_from=price[0], price_to=price[1],
                min_cuda=min_cuda, regions=tuple(regions),
            ),
            template=shown, dialect=dialect, port_protocols=protocols,
        )

    def _read_dialect(self, template: dict, deployment_type: str) -> tuple[str, int, list[str], dict]:
        """Public templates name regions (dc_list) and a CUDA range; private ones one cuda_v."""
        if self.dialect == "private":
            return self._read_private(template)
        if "dc_list" in template:
            regions = read_str_list(template, "dc_list", required=True)
            if "cuda_v_from" in template or "cuda_v_to" in template or deployment_type != CONTAINER:
                low, high = read_range(template, "cuda_v", required=True)
                return "public", low, regions, {"dc_list": regions, "cuda_v_from": low, "cuda_v_to": high}
            # B1: the official Container example still uses a single cuda_v.
            cuda_v = read_int(template, "cuda_v", required=True)
            return "public", cuda_v, regions, {"dc_list": regions, "cuda_v": cuda_v}
        if self.dialect == "public":
            raise bad_parameter("缺少必填字段 container_template.dc_list")
        return self._read_private(template, strict=True)

    def _read_private(self, template: dict, strict: bool = False) -> tuple[str, int, list[str], dict]:
        """One cuda_v, no regions. The private dialect accepts a public template's dc_list and
        cuda_v_from/cuda_v_to and ignores them (facts §15: the upstream skill sends them on every
        private create and reports it working); "both" (`strict`) reads a template without
        dc_list as private and so still refuses a CUDA range without cuda_v."""
        if strict and "cuda_v_from" in template and "cuda_v" not in template:
            raise bad_parameter("私有云部署使用 cuda_v（0 表示不限），不支持 cuda_v_from/cuda_v_to")
        if not strict and template.get("cuda_v") is None and ("cuda_v_from" in template or "cuda_v_to" in template):
            read_range(template, "cuda_v", required=True)  # well-formed, then ignored
            cuda_v = 0  # no single cuda_v: any driver, like cuda_v 0
        else:
            cuda_v = read_int(template, "cuda_v", required=True)
        if not strict and "dc_list" in template:
            read_str_list(template, "dc_list")  # well-formed, then ignored: no regions here
        region_sign = read_str(template, "region_sign")
        return "private", cuda_v, [region_sign] if region_sign else [], {"cuda_v": cuda_v}

    def list_deployments(self, params: dict) -> dict:
        name = read_str(params, "name")
        status = read_choice(params, "status", (DEPLOYMENT_RUNNING, DEPLOYMENT_STOPPED))
        uuid = read_str(params, "deployment_uuid")
        with self.world.current():
            chosen = [
                d for d in reversed(self.world.deployments.values())
                if not d.deleted
                and (not name or d.spec.name == name)
                and (not status or d.status == status)
                and (not uuid or d.uuid == uuid)
            ]
            return paginate(chosen, params, self._deployment_view)

    def _deployment_view(self, deployment: Deployment) -> dict:
        own = self.world.containers_of(deployment.uuid)
        spec = deployment.spec
        view = {
            "id": deployment.id, "uid": ACCOUNT_UID, "uuid": deployment.uuid,
            "name": spec.name, "deployment_type": spec.deployment_type,
            "status": deployment.status,
            "replica_num": deployment.replica_num, "parallelism_num": spec.parallelism_num,
            "reuse_container": spec.reuse_container,
            "starting_num": sum(1 for c in own if c.status in lc.STARTUP_PHASES),
            "running_num": sum(1 for c in own if c.status == lc.RUNNING),
            "finished_num": sum(1 for c in own if c.status == lc.SHUTDOWN),
            "image_uuid": spec.image_uuid,
            "template": dict(spec.template),
            "price_estimates": sum(c.price * c.gpu_num for c in own if c.status == lc.RUNNING),  # whole hourly rate
            "created_at": self._ts(deployment.created_at),
            "updated_at": self._ts(deployment.updated_at),
            "stopped_at": self._ts(deployment.stopped_at),
        }
        if self.dialect != "private":  # public-only fields (facts §11, §15)
            view["reuse_container_scope"] = spec.reuse_scope
            view.update(spec.port_protocols)
        if spec.dialect == "public":
            view["dc_list"] = list(spec.placement.regions)
            view["gpu_name_set"] = list(spec.placement.gpu_name_set)
        return view

    def _deployment(self, params: dict) -> Deployment:
        uuid = read_str(params, "deployment_uuid", required=True)
        try:
            return self.world.deployment(uuid)
        except NotFound:
            raise not_found("部署") from None

    def set_replica_num(self, params: dict) -> None:
        replica_num = read_int(params, "replica_num", required=True, minimum=0)
        with self.world.current():
            deployment = self._deployment(params)
            if deployment.deployment_type != REPLICA_SET:
                raise ApiError("BadRequest", "仅 ReplicaSet 类型的部署支持设置副本数")
            if deployment.status != DEPLOYMENT_RUNNING:
                raise ApiError("BadRequest", "部署已停止，无法设置副本数")
            self.world.set_replica_num(deployment, replica_num)
        self.world.settle()

    def operate_deployment(self, params: dict) -> None:
        operate = read_str(params, "operate", required=True)
        if operate != "stop":
            raise bad_parameter("operate 仅支持 stop")
        with self.world.current():
            self.world.stop_deployment(self._deployment(params))
        self.world.settle()

    def delete_deployment(self, params: dict) -> None:
        with self.world.current():
            self.world.delete_deployment(self._deployment(params))
        self.world.settle()

    def duration_packages(self, params: dict) -> list:
        with self.world.lock:
            self._deployment(params)
            return []  # the simulated account owns no GPU-time packages

    # containers

    def list_containers(self, params: dict) -> dict:
        container_uuid = read_str(params, "container_uuid")
        statuses = read_str_list(params, "status")
        unknown = [s for s in statuses if s not in lc.ALL_STATUSES]
        if unknown:
            raise bad_parameter(f"未知的容器状态 {', '.join(unknown)}")
        released = read_bool(params, "released")
        gpu_name = read_str(params, "gpu_name")
        # Memory filters are in GB, like every other request field.
        cpu = read_range(params, "cpu_num", required=False)
        memory = read_range(params, "memory_size", required=False)
        price = read_range(params, "price", required=False)
        with self.world.current():
            deployment = self._deployment(params)
            chosen = [
                c for c in reversed(self.world.containers_of(deployment.uuid))
                if (released or c.is_live)
                and (not container_uuid or c.uuid == container_uuid)
                and (not statuses or c.status in statuses)
                and (not gpu_name or c.gpu_name == gpu_name)
                and _within(c.cpu_num, cpu) and _within(c.memory_gb, memory)
                and _within(c.price, price)
            ]
            return paginate(chosen, params, self.container_view)

    def container_view(self, container: Container) -> dict:
        if self.service_address is not None:
            service = self.service_address(container.uuid)
        else:
            service = f"{self.base_url()}/svc/{container.uuid}"
        proxy_host = f"{container.data_center.lower()}.sim.autodl.local"
        view = {
            "id": container.id, "uuid": container.uuid,
            "machine_id": container.machine_id,
            "deployment_uuid": container.deployment_uuid,
            "status": container.status,
            "gpu_name": container.gpu_name, "gpu_num": container.gpu_num,
            "cpu_num": container.cpu_num, "memory_size": container.memory_gb * GIB,
            "image_uuid": container.image_uuid, "price": container.price,
            "data_center": container.data_center,
            "info": self._container_info(container, service, proxy_host),
            "started_at": self._ts(container.started_at),
            "stopped_at": self._ts(container.stopped_at),
            "created_at": self._ts(container.created_at),
            "updated_at": self._ts(container.updated_at),
        }
        if self.dialect == "private":
            del view["data_center"]  # a public-only field: the private cloud has no regions
        return view

    def _container_info(self, container: Container, service: str, proxy_host: str) -> dict:
        """SSH access plus the service addresses of the dialect (§11): public 6006/6008 port
        URLs, private service_url/proxy_host/custom_port; "both" shows all of them."""
        info: dict[str, Any] = {
            "ssh_command": f"ssh -p {container.ssh_port} root@{proxy_host}",
            "root_password": container.root_password,
        }
        if self.dialect != "public":
            info.update(service_url=service, proxy_host=proxy_host, custom_port=container.custom_port)
        if self.dialect != "private":
            # With service_ports one port is one service, so both names point at it.
            ports = ("", "") if self.service_address is not None else ("/p6006", "/p6008")
            info.update(service_6006_port_url=service + ports[0], service_6008_port_url=service + ports[1])
        return info

    def list_events(self, params: dict) -> dict:
        container_uuid = read_str(params, "deployment_container_uuid")
        with self.world.current():
            deployment = self._deployment(params)
            if container_uuid:
                events = [e for e in deployment.events if e.container_uuid == container_uuid]
                base = deployment.events_trimmed_by_container.get(container_uuid, 0)
            else:
                events, base = deployment.events, deployment.events_base
            return paginate(events, params, self._event_view, base=base)

    def _event_view(self, event: Event) -> dict:
        return {"deployment_container_uuid": event.container_uuid, "status": event.status,
                "created_at": self._ts(event.at)}

    def _container(self, params: dict) -> Container:
        uuid = read_str(params, "deployment_container_uuid", required=True)
        try:
            return self.world.container(uuid)
        except NotFound:
            raise not_found("容器") from None

    def stop_container(self, params: dict) -> None:
        decrease = read_bool(params, "decrease_one_replica_num")
        no_cache = read_bool(params, "no_cache")
        read_str(params, "cmd_before_shutdown")  # accepted; the simulator runs no commands
        with self.world.current():
            container = self._container(params)
            self.world.stop_container(container.uuid, decrease, no_cache)
        self.world.settle()

    # blacklist

    def add_blacklist(self, params: dict) -> None:
        comment = read_str(params, "comment")
        minutes = read_int(params, "expire_in_minutes", default=BLACKLIST_DEFAULT_MINUTES,
                           minimum=1, maximum=BLACKLIST_MAX_MINUTES)
        if self.dialect == "private":
            minutes = BLACKLIST_DEFAULT_MINUTES  # private docs: fixed 24 h expiry
        with self.world.current():
            self.world.add_blacklist(self._container(params), minutes, comment)

    def list_blacklist(self, params: dict) -> list:
        with self.world.current():
            return [{
                "created_at": self._ts(e.created_at), "updated_at": self._ts(e.updated_at),
                "data_center": e.data_center, "expired_time": self._ts(e.expires_at),
                "machine_id": e.machine_id, "msg": e.msg,
            } for e in self.world.blacklist.values()]

    # stock

    def global_stock(self, params: dict) -> list | dict:
        with self.world.current():
            stock = self.world.stock_by_gpu()
        if self.stock_shape == "dict":
            return {name: {"gpu_name": name, "idle_gpu_num": s["idle_gpu_num"],
                           "total_gpu_num": s["total_gpu_num"]} for name, s in stock.items()}
        return [{name: {"idle_gpu_num": s["idle_gpu_num"], "total_gpu_num": s["total_gpu_num"]}}
                for name, s in stock.items()]

    def region_stock(self, params: dict) -> list:
        region_sign = read_str(params, "region_sign")
        regions = set(read_str_list(params, "dc_list")) | ({region_sign} if region_sign else set())
        if not regions:
            raise bad_parameter("缺少必填字段 region_sign")
        gpu_names = set(read_str_list(params, "gpu_name_set"))
        cuda = read_range(params, "cuda_v", required=False)
        cpu = read_range(params, "cpu_num", required=False)
        memory = read_range(params, "memory_size", required=False)
        price = read_range(params, "price", required=False)

        def wanted(machine) -> bool:
            # Filters describe a one-GPU scheduling unit, the granularity stock is counted in.
            return (machine.region in regions
                    and (not gpu_names or machine.gpu_name in gpu_names)
                    and machine.max_cuda >= cuda[0]
                    and _within(machine.cpu_per_gpu, cpu)
                    and _within(machine.memory_gb_per_gpu, memory)
                    and _within(machine.price, price))

        with self.world.current():
            stock = self.world.stock_by_gpu(wanted)
        return [{name: s} for name, s in stock.items()]


    # account

    def wallet_balance(self, params: dict) -> dict:
        with self.world.current():
            return self.account.wallet(self.world.containers.values(), self.world.now)

    def send_wechat_message(self, params: dict) -> None:
        title = read_str(params, "title", required=True)
        name = read_str(params, "name")
        content = read_str(params, "content")
        refusal = self.account.record_message(title, name, content, self.world.clock.now())
        if refusal:
            raise ApiError("BadRequest", refusal)


def _within(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]
