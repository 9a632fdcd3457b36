"""queue_submit's engine: check, wait for GPU stock, create exactly once, optionally follow.

The platform does not queue: a create while no host fits simply fails. So we poll stock
and submit when a requested GPU type has enough idle cards.

A create is sent again only after an answer that proves the first created nothing (the
platform's HTTP 200 business error, a refusal before the request went out). A create whose
answer is lost (timeout, reset, 5xx) may land minutes later, so it is never sent again:
the deployment is looked up by name until it appears or the reconcile window passes, and
then the run ends saying it may have been created. The run's progress is reported through
`on_state` so a durable record (submission.py) can resume it after a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable
from urllib.parse import urlsplit

from ..platform import api, effects
from . import waiting_runs
from ..platform.config import build_request, dialect_of
from ..platform.containers import container_summary, single_machine_warning
from ..platform.effects import watch
from ..core.errors import ApiError, AutoDLError, ErrorType, Interrupted, mark_change_sent
from ..platform.evidence import compare_config, existing_deployment
from ..platform.follow import finish_counts, wait_finished
from ..platform.lint import capacity_filters, lint_config, no_capacity_suggestion
from ..core.output import REDACTED, Progress
from ..core.clock import iso, now_timestamp, platform_now
from ..core.polling import PollFailures, ReadErrors, failed_reads_text
from ..platform.stock import StockByGpu, first_fit, requested_stock, same_model_names, similar_gpu_names

# Three tries cover a race with another tenant for the last cards; more than that means
# the conditions (price/cpu/memory ranges) exclude every host that has free cards.
MAX_CREATE_ATTEMPTS = 3
# Image pulls on a cold host can take several minutes; 15 minutes covers a large image.
DEFAULT_STARTUP_TIMEOUT_SECONDS = 900.0
# How many image names to put in an image_not_found error; enough to pick from.
MAX_IMAGES_LISTED = 50
# A create refused for its parameters fails the same way every time: retrying only delays
# the answer. Recognised by the platform's code or by the wording of its message.
PARAMETER_ERROR_CODES = {"RequestParameterIsWrong"}
PARAMETER_ERROR_FRAGMENTS = ("参数", "不支持", "缺少", "不存在", "格式")
# Template fields the region stock endpoint accepts as filters (references/platform-endpoints.md, 查询地区 GPU 库存).
STOCK_FILTER_KEYS = ("gpu_name_set", "cuda_v_from", "cuda_v_to", "cpu_num_from", "cpu_num_to",
                     "memory_size_from", "memory_size_to", "price_from", "price_to")
# Hosts whose dialect is known, to catch a config written for the other cloud.
HOST_DIALECTS = {"api.autodl.com": "public", "private.autodl.com": "private"}
# How long after the last create was sent a deployment it made may still appear. Measured
# on the simulator, creates committed up to 30 s after a 1 s client timeout; a real
# platform under load may be slower still. Five minutes of fresh looks (one a second)
# cost nothing next to buying a deployment twice. `--reconcile-window` changes it.
DEFAULT_RECONCILE_WINDOW_SECONDS = 300.0


def failure_kind(error: ApiError) -> str:
    """Why a create failed: `platform_fault` (5xx, transport), `rejected` (its parameters),
    or `no_capacity` (a race for the last cards, or conditions no free host meets)."""
    if error.retryable:
        return "platform_fault"
    if error.code in PARAMETER_ERROR_CODES or any(f in (error.msg or "") for f in PARAMETER_ERROR_FRAGMENTS):
        return "rejected"
    return "no_capacity"


@dataclass
class SubmitOptions:
    interval: float = 30.0
    timeout: float = 0.0  # 0 = wait for stock without limit
    dry_run: bool = False
    wait_running: bool = False
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS
    allow_duplicate_name: bool = False
    show_password: bool = False
    # Follow a Job/Container until finished (0 = no limit; queue_submit --wait-finished).
    wait_finished: bool = False
    finish_timeout: float = 0.0
    # Called once with the deployment_uuid right after the create (queue_submit --notify).
    on_created: Callable[[str], None] | None = None
    # After an ambiguous create: how long (from the send) to look for it by name.
    reconcile_window: float = DEFAULT_RECONCILE_WINDOW_SECONDS
    # Called with (state, fields) at each step, before the step's effect (submission.py's record).
    on_state: Callable[[str, dict[str, Any]], None] | None = None
    # Asked before each poll and before a create: True ends a waiting run with nothing sent.
    cancel_requested: Callable[[], bool] | None = None


class SubmissionCancelled(Exception):
    """A waiting run was asked to end (jobs.py --cancel); no create was sent."""


def duplicate_check(config: dict[str, Any], live: list[dict[str, Any]], allowed: bool) -> dict[str, Any]:
    """The dry run's answer to "would the name check refuse this?" (none, or the live one)."""
    if not live:
        return {"result": "none", "would_refuse": False}
    return {"result": "exists", "would_refuse": not allowed, "existing": existing_deployment(config, live[0]),
            "live_deployments": [d.get("uuid") for d in live],
            **({"note": "--allow-duplicate-name: 仍会提交第二个同名部署"} if allowed else {})}


def created_after(created_at: Any, started_at: str | None) -> bool | None:
    """Whether the platform stamped the deployment after this run began (None: unreadable)."""
    try:
        return datetime.fromisoformat(str(created_at).replace("Z", "+00:00")) >= datetime.fromisoformat(str(started_at))
    except (TypeError, ValueError):
        return None


def target_running(config: dict[str, Any]) -> int:
    """How many containers must run before a deployment counts as started."""
    kind = config["deployment_type"]
    if kind == "ReplicaSet":
        return config["replica_num"]
    if kind == "Job":
        return min(config["parallelism_num"], config["replica_num"])
    return 1


class Submitter:
    def __init__(
        self,
        client: Any,
        config: dict[str, Any],
        options: SubmitOptions,
        progress: Progress,
        partial: dict[str, Any],
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.template = config["container_template"]
        self.request = build_request(config)
        self.options = options
        self.progress = progress
        self.partial = partial  # reported on interrupt
        # effects' indirections (looked up at call time) so tests can run on a fake clock.
        self.clock = clock or (lambda: effects._now())
        self.sleep = sleep or (lambda seconds: effects._sleep(seconds))
        self.regions: list[str] | None = self.template.get("dc_list")
        self.gpu_names: list[str] = self.template["gpu_name_set"]
        self.gpu_num: int = self.template["gpu_num"]
        self.warnings = lint_config(config) + self._dialect_warnings()
        # Same-name deployments listed right before this run's first create was sent.
        self._known_before_send: set[Any] = set()
        self._sent_creates = 0
        self._ambiguous_creates = 0
        self._last_send_clock: float | None = None  # self.clock() when the last create was sent
        self._last_send_epoch: float | None = None  # the same on the wall clock (the record's)
        self._recovered_by: dict[str, Any] | None = None
        # Set by run(); +08:00 like the platform's created_at, so the two compare.
        # When this run began, on this machine's clock (labelled _local in results) and on the
        # platform's (from the Date header): created_at is compared with the platform's.
        self.submit_started_at: str | None = None
        self.submit_started_at_platform: str | None = None
        self.duplicate_check: dict[str, Any] = {"result": "none", "would_refuse": False}
        self._reconcile_report: dict[str, Any] | None = None
        self._reconcile_answered = True
        # Other queue_submit runs seen waiting for this name (waiting_runs.py; advisory only).
        self._host = str(getattr(client, "host", "") or "")
        self.other_waiters: list[dict[str, Any]] = []
        self._marker: Any = None

    def _dialect_warnings(self) -> list[dict[str, str]]:
        host = urlsplit(getattr(self.client, "host", "") or "").hostname or ""
        expected = HOST_DIALECTS.get(host)
        written = dialect_of(self.config)
        if expected is None or expected == written:
            return []
        names = {"public": "公有云 (有 dc_list, cuda_v_from/cuda_v_to)", "private": "私有云 (无 dc_list, cuda_v)"}
        return [{
            "code": "dialect_host_mismatch", "path": "container_template",
            "message": f"配置是{names[written]}写法, 但 AUTODL_HOST 是 {host} ({names[expected]})。",
            "hint": "按目标平台改写配置 (见 examples/ 中对应方言的示例), 或把 AUTODL_HOST 指向配置所写的平台; 否则平台会拒绝创建。",
        }]

    # --- checks -----------------------------------------------------------------------

    def check_image(self) -> None:
        image_uuid = self.template["image_uuid"]
        if image_uuid.startswith("base-image-"):
            images = self._system_images()
            if images is None:
                return
            where = "系统基础镜像"
        else:
            images, where = api.list_images(self.client), "账号的私有镜像"
        if any(image.get("image_uuid") == image_uuid for image in images):
            return
        available = [{"image_uuid": image.get("image_uuid"), "image_name": api.image_name(image)} for image in images]
        raise AutoDLError(
            ErrorType.IMAGE_NOT_FOUND,
            f"镜像 {image_uuid} 不在{where}中。",
            "从 details.available_images 中选择正确的 image_uuid (注意填 UUID, 不是镜像名称)。",
            {"requested": image_uuid, "available_images": available[:MAX_IMAGES_LISTED], "available_total": len(available)},
        )

    def _system_images(self) -> list[dict[str, Any]] | None:
        """The private cloud lists its base images; elsewhere they cannot be checked (None)."""
        unchecked = {
            "code": "base_image_unchecked", "path": "container_template.image_uuid",
            "message": "无法通过接口确认这个基础镜像存在 (公有云基础镜像没有列表接口)。",
            "hint": "核对 references/platform-api.md 的公共基础镜像 UUID。",
        }
        if self.regions:  # public dialect: /api/v2/image/list is a private-cloud console API
            self.warnings.append(unchecked)
            return None
        try:
            return api.list_system_images(self.client)
        except AutoDLError as error:
            if error.error_type not in (ErrorType.API_ERROR, ErrorType.AUTH_ERROR):
                raise
            self.progress.log(f"无法列出系统基础镜像 ({error.message}), 跳过镜像检查。")
            self.warnings.append(unchecked)
            return None

    def resolve_gpu_names(self, stock: StockByGpu) -> None:
        """A requested name the platform spells differently ("RTX 4090" where the private cloud
        says "NVIDIA GeForce RTX 4090") is replaced by the platform's one name for that card, in
        the config and so in the request sent, the dry run and the submission record; a warning
        names both. Two platform names for it stop the run before any create, with the fix."""
        resolved: list[str] = []
        renamed: list[tuple[str, str]] = []
        ambiguous: dict[str, list[str]] = {}
        for name in self.gpu_names:
            same = [] if name in stock else same_model_names(name, stock)
            if len(same) == 1:
                renamed.append((name, same[0]))
            elif same:
                ambiguous[name] = same
            chosen = same[0] if len(same) == 1 else name
            if chosen not in resolved:
                resolved.append(chosen)
        if ambiguous:
            choices = "; ".join(f"'{name}' → {' 或 '.join(repr(m) for m in names)}" for name, names in ambiguous.items())
            raise AutoDLError(
                ErrorType.GPU_TYPE_NOT_FOUND,
                f"gpu_name_set 中的型号在平台上有多个写法, 无法确定是哪一个: {choices}。本次没有创建。",
                "把配置 container_template.gpu_name_set 中的名称改成平台的写法之一 (逐字复制, 包括大小写和空格; "
                "都可以用就都写上), 见 details.candidates; 平台的型号名可用 gpu_stock.py 查看。",
                {"requested": self.gpu_names, "available_gpus": sorted(stock), "candidates": ambiguous},
            )
        if not renamed:
            return
        # The config object is the one the caller records: a resumed run sends the same names.
        self.template["gpu_name_set"] = resolved
        self.gpu_names = resolved
        self.request = build_request(self.config)
        for written, platform_name in renamed:
            self.warnings.append({
                "code": "gpu_name_resolved", "path": "container_template.gpu_name_set",
                "message": f"平台把 GPU 型号 '{written}' 写作 '{platform_name}' (按名称精确匹配): 本次请求已改用 '{platform_name}'。",
                "hint": f"把配置中的 '{written}' 改成 '{platform_name}' (从 gpu_stock.py 的输出复制), 这条警告就会消失。",
            })

    def check_gpu_types(self, stock: StockByGpu) -> None:
        """Names resolved to the platform's spelling first; then all names unknown is an error,
        some unknown a warning (they silently never match)."""
        self.resolve_gpu_names(stock)
        unknown = [name for name in self.gpu_names if name not in stock]
        did_you_mean = {name: similar_gpu_names(name, stock) for name in unknown}
        meant = "; ".join(f"'{name}' → {' / '.join(repr(m) for m in matches)}" for name, matches in did_you_mean.items() if matches)
        if len(unknown) == len(self.gpu_names):
            where = f" (地区: {', '.join(self.regions)})" if self.regions else ""
            raise AutoDLError(
                ErrorType.GPU_TYPE_NOT_FOUND,
                f"请求的 GPU 型号均不存在{where}: {self.gpu_names}",
                (f"你是否想写: {meant}; " if meant else "")
                + "从 details.available_gpus 中选择型号 (名称须完全一致, 包括大小写和空格)。",
                {"requested": self.gpu_names, "available_gpus": sorted(stock), "did_you_mean": did_you_mean, "stock": stock},
            )
        needed = target_running(self.config) * self.gpu_num
        existing = sum(figures["total"] for figures in requested_stock(stock, self.gpu_names).values())
        if needed > existing:
            self.warnings.append({
                "code": "more_cards_than_exist", "path": "replica_num",
                "message": f"同时运行需要 {needed} 张卡, 但所选型号总共只有 {existing} 张: 部分容器永远调度不上 (仍会计费运行的那部分)。",
                "hint": "减少 replica_num / parallelism_num 或 gpu_num, 或在 gpu_name_set 中增加型号。",
            })
        if unknown:
            self.warnings.append({
                "code": "unknown_gpu_name", "path": "container_template.gpu_name_set",
                "message": f"这些 GPU 型号不存在, 永远不会被调度: {unknown}",
                "hint": (f"你是否想写: {meant}; " if meant else "") + f"可用型号: {sorted(stock)}",
            })

    def http_request(self) -> dict[str, Any]:
        """The create exactly as it would be sent; the token is never shown."""
        return {
            "method": "POST",
            "url": str(getattr(self.client, "host", "") or "").rstrip("/") + api.DEPLOYMENT_PATH,
            "headers": {"Authorization": REDACTED, "Content-Type": "application/json"},
            "body": self.request,
        }

    def _filter_warnings(self, unfiltered: StockByGpu, filtered: StockByGpu) -> None:
        """Idle cards exist, but none on a host the config's filters accept: say which filters."""
        idle_anywhere = any(f["idle"] >= self.gpu_num for f in requested_stock(unfiltered, self.gpu_names).values())
        if idle_anywhere and first_fit(filtered, self.gpu_names, self.gpu_num) is None:
            self.warnings.append({
                "code": "filters_exclude_idle_hosts", "path": "container_template",
                "message": "所选型号有空闲卡, 但按配置的 CPU/内存/价格/CUDA 范围筛选后没有: 现在提交会一直等库存 (或创建失败)。",
                "hint": no_capacity_suggestion(self.config),
            })

    def check_name_free(self) -> None:
        same_name = self._same_name()
        live = [d for d in same_name if d.get("status") != "stopped"]
        if len(same_name) > len(live):
            self.warnings.append({
                "code": "stopped_deployment_with_same_name", "path": "name",
                "message": f"已有 {len(same_name) - len(live)} 个同名的已停止部署; 提交后按 --name 查找会有歧义。",
                "hint": "后续操作用输出里的 deployment_uuid; 旧部署不再需要时用 delete_deployment.py 删除, 或给新部署换个名字。",
            })
        self.duplicate_check = duplicate_check(self.config, live, self.options.allow_duplicate_name)
        if live and not self.options.allow_duplicate_name and not self.options.dry_run:
            evidence = existing_deployment(self.config, live[0])
            same = {True: "配置与本次相同 (same_config: true), 很可能就是上一次提交的结果",
                    False: "但配置与本次不同 (same_config: false, 见 details.differences), 可能是另一个同名部署",
                    None: "无法比较配置"}[evidence["same_config"]]
            raise AutoDLError(
                ErrorType.DEPLOYMENT_EXISTS,
                f"已有同名部署在运行: {self.config['name']} ({live[0].get('uuid')}, {evidence['status']}, "
                f"创建于 {evidence['created_at']}); {same}。本次没有创建。",
                "不要重复提交: 用 list_containers.py --deployment-uuid 查看它; "
                "确实需要第二个同名部署时加 --allow-duplicate-name。",
                {**{k: v for k, v in evidence.items() if k != "name"},
                 "live_deployments": [d.get("uuid") for d in live]},
            )

    # --- waiting ----------------------------------------------------------------------

    def poll_stock(self, filtered: bool = True) -> StockByGpu:
        """Stock of the requested types. Region stock (public dialect) takes the template's own
        filters, so what it counts is what this config can get; `filtered=False` counts every
        host (to tell a misspelt GPU name from one the filters exclude)."""
        if not self.regions:
            stock, _raw = api.global_stock(self.client)
            return stock
        stock, _raw = api.region_stock(self.client, self.regions, self.stock_filters() if filtered else None)
        return stock

    def stock_filters(self) -> dict[str, Any]:
        return {key: self.template[key] for key in STOCK_FILTER_KEYS if key in self.template}

    def _describe(self, stock: StockByGpu) -> str:
        wanted = requested_stock(stock, self.gpu_names)
        figures = ", ".join(f"{name} 空闲 {f['idle']}/{f['total']}" for name, f in wanted.items()) or "无库存数据"
        return f"{self._need()}; {figures}"

    def _need(self) -> str:
        """What the wait is for, short: a create needs room for ONE container (first_fit), the
        platform schedules the other replicas after it (a ReplicaSet's 2 x 1 card is not "2 cards")."""
        count = target_running(self.config)
        unit = {"ReplicaSet": "副本", "Job": "容器"}.get(self.config["deployment_type"])
        if unit is None or count <= 1:
            return f"需要 {self.gpu_num} 卡"
        return f"每个{unit} {self.gpu_num} 卡 × {count} 个, 够 1 个{unit}即提交"

    def _explain_wait(self) -> str:
        """The same, said once in full when the wait begins."""
        count = target_running(self.config)
        unit = {"ReplicaSet": "副本", "Job": "容器"}.get(self.config["deployment_type"])
        if unit is None or count <= 1:
            return f"等待库存: 某个所选型号空闲 ≥ {self.gpu_num} 卡时提交。"
        extra = "; --wait-running 之后再等它们全部运行" if self.options.wait_running else ""
        return (f"等待库存: 每个{unit} {self.gpu_num} 卡, 同时运行 {count} 个; 某个所选型号空闲 ≥ {self.gpu_num} 卡 "
                f"(够 1 个{unit}) 时就提交, 其余{unit}由平台在创建后陆续调度{extra}。")

    def wait_for_stock(self, stock: StockByGpu, started: float) -> tuple[StockByGpu, str]:
        """Poll until a requested type has gpu_num idle cards; returns (stock, gpu_name)."""
        failures = PollFailures(self.progress, "查询库存")
        if first_fit(stock, self.gpu_names, self.gpu_num) is None:
            self.progress.log(self._explain_wait())
        while True:
            self._stop_if_cancelled()
            self._state("waiting", last_stock=requested_stock(stock, self.gpu_names),
                        waited_seconds=round(self.clock() - started, 1))
            fit = first_fit(stock, self.gpu_names, self.gpu_num)
            if fit:
                return stock, fit
            elapsed = self.clock() - started
            if self.options.timeout and elapsed >= self.options.timeout:
                raise AutoDLError(
                    ErrorType.TIMEOUT,
                    f"等待 GPU 库存超过 {self.options.timeout:g} 秒, 未提交任何部署。",
                    "展示 details.last_stock; 建议增加 gpu_name_set 中的可选型号、放宽地区, 或稍后重试。",
                    {"last_stock": requested_stock(stock, self.gpu_names), "elapsed_seconds": round(elapsed, 1)},
                )
            self.progress.status(f"等待库存 {elapsed:.0f}s: {self._describe(stock)}")
            pause = self.options.interval
            if self.options.timeout:
                pause = max(0.0, min(pause, self.options.timeout - elapsed))
            self.sleep(pause)
            try:
                stock = self.poll_stock()
                failures.reset()
            except ApiError as error:
                failures.record(error)

    def _state(self, state: str, **fields: Any) -> None:
        if self.options.on_state:
            self.options.on_state(state, fields)

    def _stop_if_cancelled(self) -> None:
        # Asked only while nothing is in flight: waiting, or right before a create.
        if self.options.cancel_requested and self.options.cancel_requested():
            raise SubmissionCancelled()

    # --- submitting -------------------------------------------------------------------
    #
    # The exactly-once rule. Immediately before every create the name is looked up again;
    # the uuids seen then (`_known_before_send`, taken before this run's FIRST create) are
    # the deployments this run cannot have made. A deployment with our name that is not
    # among them appeared after this run's create was sent: after an ambiguous create it
    # is taken as that create having landed ("recovered", `recovered_by` says so). Any
    # other live one with our name is somebody else's: deployment_exists, never adopted.

    def _same_name(self) -> list[dict[str, Any]]:
        # The list's name filter is not documented as exact; a record without a name is kept.
        return [d for d in api.list_deployments(self.client, name=self.config["name"]) if d.get("name", self.config["name"]) == self.config["name"]]

    def _new_since_send(self, same_name: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [d for d in same_name if d.get("uuid") not in self._known_before_send]

    def _lookup_command(self) -> str:
        return f"python3 scripts/list_deployments.py --name {self.config['name']}"

    def check_before_create(self) -> None:
        """The name check right before a create: deployment_exists when a live one appeared."""
        same_name = self._same_name()
        if self._sent_creates == 0:
            self._known_before_send = {d.get("uuid") for d in same_name}
            live = [d for d in same_name if d.get("status") != "stopped"]
            if live and not self.options.allow_duplicate_name:
                raise self._exists_error(live, "在等待库存期间出现了同名部署 (可能是同一配置的另一次运行)")
            return
        # Every earlier create of this run was refused outright (an ambiguous one is never
        # followed by another send), so a new one with our name is somebody else's.
        live_new = [d for d in self._new_since_send(same_name) if d.get("status") != "stopped"]
        if live_new and not self.options.allow_duplicate_name:
            raise self._exists_error(live_new, "本次的创建都被平台明确拒绝, 但期间出现了同名部署 (不是本次创建的)")

    def _check_failed(self, error: ApiError) -> ApiError:
        """The name check before a create failed: nothing is sent. Every earlier create of
        this run was refused outright, so nothing was created."""
        error.details.update(may_have_been_created=False, name=self.config["name"])
        error.hint = "本次没有创建任何部署 (创建前的同名检查失败), 稍后重新运行同一命令即可。" + error.hint
        return error

    def _exists_error(self, live: list[dict[str, Any]], why: str) -> AutoDLError:
        evidence = existing_deployment(self.config, live[0])
        return AutoDLError(
            ErrorType.DEPLOYMENT_EXISTS,
            f"{why}: {self.config['name']} ({live[0].get('uuid')}, 创建于 {evidence['created_at']}), 本次没有创建。",
            "不要重复提交: 用 list_containers.py --deployment-uuid 查看这个部署; "
            "确实需要第二个同名部署时加 --allow-duplicate-name。",
            {**evidence, "live_deployments": [d.get("uuid") for d in live],
             "may_have_been_created": False, "name": self.config["name"]},
        )

    def _adopt(self, new: list[dict[str, Any]], how: str) -> str:
        """Take the oldest deployment that appeared after our create was sent as ours."""
        ordered = sorted(new, key=lambda d: (str(d.get("created_at") or ""), str(d.get("uuid"))))
        chosen = ordered[0]
        self._recovered_by = {
            "rule": "name_lookup_after_send",
            "how": how,
            "matched_on": {"name": self.config["name"], "not_listed_before_first_send": True},
            "submit_started_at_local": self.submit_started_at,
            "submit_started_at_platform": self.submit_started_at_platform,
            "deployment_created_at": chosen.get("created_at"),
            "created_after_submit_began": created_after(chosen.get("created_at"), self.submit_started_at_platform or self.submit_started_at),
            **{k: v for k, v in compare_config(self.config, chosen).items()},
            "explanation": "按名称查到的这个部署不在本次第一次发出创建请求之前的同名列表中, 即它是在本次创建请求发出之后才出现的, "
            "所以认定为本次结果不明的创建已经落地。",
            "known_before_send": sorted(str(u) for u in self._known_before_send),
        }
        return str(chosen.get("uuid"))

    def _mark_create_sent(self) -> None:
        """From here until the outcome is known, any exit says the create may have landed."""
        mark_change_sent()
        self.partial.update(
            may_have_been_created=True, name=self.config["name"], lookup=self._lookup_command(),
            interrupt_hint=f"创建请求已经发出, 部署可能已创建: 先用 {self._lookup_command()} 核对, 不要重新提交。",
        )

    def _settle_create(self, deployment_uuid: str | None) -> None:
        if deployment_uuid:
            self.partial["deployment_uuid"] = deployment_uuid
            self.partial["interrupt_hint"] = f"部署已创建 ({deployment_uuid}): 用 list_containers.py --deployment-uuid {deployment_uuid} 查看, 不要重新提交。"
        else:
            for key in ("interrupt_hint", "lookup"):
                self.partial.pop(key, None)
        self.partial["may_have_been_created"] = bool(deployment_uuid)

    def reconcile_window_left(self) -> float:
        """Seconds of the reconcile window still to run, counted from the last create sent."""
        if self._last_send_clock is None:
            return self.options.reconcile_window
        return max(0.0, self.options.reconcile_window - (self.clock() - self._last_send_clock))

    def reconcile(self) -> str | None:
        """After an ambiguous create: the deployment of ours that landed, found by fresh
        listings by name until the reconcile window (from the send) has passed; else None."""
        window = self.reconcile_window_left()
        self._state("reconciling", reconcile_until_epoch=time.time() + window)
        looks = watch(
            self._same_name,
            lambda same_name: bool(self._new_since_send(same_name)),
            grace_seconds=window,
            waiting_for=f"等待可能仍在途中的创建请求落地 (按名称 {self.config['name']} 查看)",
            progress=self.progress,
            sleep=self.sleep,
            clock=self.clock,
        )
        self._reconcile_report = looks.report()
        if looks.found:
            return self._adopt(self._new_since_send(looks.value), "reconcile_after_ambiguous_create")
        if looks.last_error and not looks.answered:
            self.progress.log(f"核对是否已创建失败: {looks.last_error}")
        self._reconcile_answered = looks.answered > 0 or looks.looks == 0
        return None

    def _look_once_after_interrupt(self) -> None:
        """One look on the way out (a second signal is ignored meanwhile): name the uuid if it landed."""
        try:
            new = self._new_since_send(self._same_name())
        except AutoDLError:
            return
        if new:
            self._settle_create(self._adopt(new, "found_while_exiting"))

    def create_once(self) -> tuple[str | None, ApiError | None, bool]:
        """(deployment_uuid, error, recovered) for one create attempt. An error is returned
        only when it proves nothing was created; an ambiguous one raises may_have_been_created
        once the reconcile window has passed without the deployment appearing."""
        self._stop_if_cancelled()
        self._sent_creates += 1
        self._last_send_clock, self._last_send_epoch = self.clock(), time.time()
        # Written before the send: a crash from here on leaves a record that reconciles first.
        self._state("submitting", **self.snapshot())
        self._mark_create_sent()
        try:
            return self._create_and_reconcile()
        except Interrupted:
            if self.partial.get("may_have_been_created") and "deployment_uuid" not in self.partial:
                self._look_once_after_interrupt()
            raise

    def _create_and_reconcile(self) -> tuple[str | None, ApiError | None, bool]:
        try:
            deployment_uuid = api.create_deployment(self.client, self.request)
        except ApiError as error:
            if not error.ambiguous:
                self._settle_create(None)
                return None, error, False
            self._ambiguous_creates += 1
            self.progress.log(f"创建请求结果不明 ({error.msg}): 不会再次发送创建; 按名称核对是否已创建 "
                              f"(最多约 {self.reconcile_window_left():.0f} 秒)……")
            found = self.reconcile()
            if found:
                self._settle_create(found)
                return found, None, True
            raise self.may_have_been_created(error)
        self._settle_create(deployment_uuid)
        return deployment_uuid, None, False

    def may_have_been_created(self, error: ApiError | None = None) -> AutoDLError:
        """The end of a run whose create was sent and never answered, and whose deployment did
        not appear within the reconcile window: it may still appear; never invite a resubmit."""
        report = self._reconcile_report or {}
        if self._reconcile_answered:
            seen = f"之后按名称核对了约 {report.get('looked_for_seconds', 0):g} 秒 ({report.get('looks', 0)} 次) 仍未看到这个部署"
        else:
            seen = f"之后按名称核对时部署列表接口也一直失败 ({report.get('read_back_error', '')})"
        cause = f" ({error.msg or error.message})" if error is not None else ""
        answer = {"code": getattr(error, "code", None), "msg": getattr(error, "msg", None),
                  "http_status": getattr(error, "http_status", None)}
        failure = AutoDLError(
            # The platform could not even be read: the API's failure, as any other.
            ErrorType.SUBMISSION_ERROR if self._reconcile_answered else ErrorType.API_ERROR,
            f"创建请求已发出但结果不明{cause}, {seen}: 部署可能已经创建, 也可能稍后才出现。"
            "为避免重复购买, 没有再次发送创建请求。",
            f"不要重新提交: 部署出现时它就是本次创建的。稍后用 {self._lookup_command()} 核对 "
            "(提交记录的 jobs.py --status 也会再核对一次)。",
            {
                "may_have_been_created": True,
                "name": self.config["name"],
                "lookup": self._lookup_command(),
                "retryable": False,
                "failure_kind": "outcome_unknown",
                "creates_sent": self._sent_creates,
                "known_before_send": sorted(str(u) for u in self._known_before_send),
                "reconcile": report,
                "warnings": self.warnings,
                "api_response": answer,
                **answer,  # an api_error's own fields
                "suggestion": "等它出现: 部署出现时就是本次创建的, 直接使用它; 期间不要用同一配置再提交。",
            },
        )
        return failure

    # --- the state a record keeps (submission.py) --------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a resumed run needs to go on exactly where this one is."""
        return {
            "creates_sent": self._sent_creates,
            "ambiguous_creates": self._ambiguous_creates,
            "known_before_send": sorted(str(u) for u in self._known_before_send),
            "last_create_sent_epoch": self._last_send_epoch,
            "submit_started_at": self.submit_started_at,
            "submit_started_at_platform": self.submit_started_at_platform,
        }

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from a record's snapshot (a resumed run, in a new process)."""
        self._sent_creates = int(record.get("creates_sent") or 0)
        self._ambiguous_creates = int(record.get("ambiguous_creates") or 0)
        self._known_before_send = set(record.get("known_before_send") or [])
        self.submit_started_at = record.get("submit_started_at") or self.submit_started_at
        self.submit_started_at_platform = record.get("submit_started_at_platform") or self.submit_started_at_platform
        sent = record.get("last_create_sent_epoch")
        if isinstance(sent, (int, float)):
            self._last_send_epoch = float(sent)
            self._last_send_clock = self.clock() - max(0.0, time.time() - float(sent))

    def recover_after_restart(self) -> tuple[str, bool]:
        """A record left mid-create (crash, kill -9, reboot): reconcile by name, never send.
        Returns (deployment_uuid, recovered); raises may_have_been_created."""
        self.progress.log(f"上次运行在创建请求发出后中断: 先按名称 {self.config['name']} 核对, 不会再次发送创建。")
        self._mark_create_sent()
        found = self.reconcile()
        if not found:
            raise self.may_have_been_created()
        self._settle_create(found)
        return found, True

    def find_duplicates(self, deployment_uuid: str) -> list[dict[str, Any]]:
        """Every deployment with our name that appeared after this run's first create was sent,
        when there is more than one (e.g. a late landing create, or another run of this config).

        Reported, never stopped here: the platform keeps no per-request id, so nothing proves
        this run made both (another run of the same config, or a person, may have made one).
        """
        try:
            new = self._new_since_send(self._same_name())
        except AutoDLError as error:
            self.progress.log(f"创建后按名称复查失败 ({error.message}), 无法确认是否有重复部署。")
            self.warnings.append({
                "code": "duplicates_unchecked", "path": "name",
                "message": "创建后按名称复查失败, 无法确认是否有重复的同名部署。",
                "hint": f"用 {self._lookup_command()} 看一眼: 应当只有 {deployment_uuid} 一个新部署。",
            })
            return []
        if not any(d.get("uuid") == deployment_uuid for d in new):
            new.append({"uuid": deployment_uuid, "name": self.config["name"]})
        if len(new) < 2:
            return []
        ordered = sorted(new, key=lambda d: (str(d.get("created_at") or "~"), d.get("uuid") != deployment_uuid, str(d.get("uuid"))))
        keep = ordered[0].get("uuid")
        duplicates = [{
            "deployment_uuid": d.get("uuid"), "created_at": d.get("created_at"), "status": d.get("status"),
            "reported": d.get("uuid") == deployment_uuid, "newer": index > 0, "keep": index == 0,
        } for index, d in enumerate(ordered)]
        extra = [d["deployment_uuid"] for d in duplicates if not d["keep"]]
        self.warnings.append({
            "code": "duplicate_deployments", "path": "name",
            "message": f"本次提交后出现了 {len(duplicates)} 个同名部署 {[d['deployment_uuid'] for d in duplicates]} "
            "(一个结果不明的创建后来落地了, 或同一配置的另一次运行也创建了): 会重复计费。",
            "hint": f"先把 details.duplicates 告诉用户; 同意保留最早的 {keep} 时, 停止较新的 (停掉它的全部容器, 不可恢复): "
            + "; ".join(f"python3 scripts/stop_deployment.py --deployment-uuid {uuid}" for uuid in extra)
            + " (不加 --yes 时只预览会停掉什么)。",
        })
        self.progress.log(f"警告: 发现重复的同名部署 {extra} (保留 {keep})")
        return duplicates

    def submit(self, stock: StockByGpu, started: float) -> tuple[str, bool, float]:
        failures: list[dict[str, Any]] = []
        while True:
            stock, gpu_name = self.wait_for_stock(stock, started)
            waited = self.clock() - started
            try:
                self.check_before_create()
            except ApiError as error:
                raise self._check_failed(error) from None
            self.progress.log(f"{gpu_name} 有足够空闲卡, 提交部署 {self.config['name']} (第 {len(failures) + 1} 次)")
            deployment_uuid, error, recovered = self.create_once()
            if deployment_uuid:
                return deployment_uuid, recovered, waited
            assert error is not None
            kind = failure_kind(error)
            failures.append({"code": error.code, "msg": error.msg, "http_status": error.http_status, "kind": kind,
                             "ambiguous": error.ambiguous})
            self.progress.log(f"创建失败 ({len(failures)}/{MAX_CREATE_ATTEMPTS}): {error.msg or error.message}")
            if kind == "rejected" or len(failures) >= MAX_CREATE_ATTEMPTS:
                raise self._submission_error(failures)
            self.sleep(self.options.interval)
            try:
                stock = self.poll_stock()
            except ApiError as error:
                # Same rule as any poll while waiting: log it, wait_for_stock polls again.
                self.progress.log(f"查询库存失败: {error.message} 继续等待。")
                stock = {}

    def _submission_error(self, failures: list[dict[str, Any]]) -> AutoDLError:
        last = failures[-1]
        see_warnings = "; 先看 details.warnings, 其中可能就是原因。" if self.warnings else "。"
        message, suggestion = {
            "rejected": (
                f"平台拒绝了创建请求的参数: {last['msg']}",
                "这不是库存问题, 重试也不会成功: 按 details.api_response.msg 修正配置" + see_warnings,
            ),
            "platform_fault": (
                f"平台连续 {len(failures)} 次在处理前就拒绝或无法连接, 没有创建部署: {last['msg']}",
                "平台暂时故障, 配置本身不一定有问题: 稍后重新运行同一命令 (同名检查会防止重复创建)。",
            ),
            "no_capacity": (
                f"库存显示有空闲, 但创建部署连续失败 {len(failures)} 次: {last['msg']}",
                no_capacity_suggestion(self.config) + see_warnings.lstrip("; ").lstrip("。"),
            ),
        }[last["kind"]]
        return AutoDLError(
            ErrorType.SUBMISSION_ERROR,
            message,
            "展示 details.api_response 与 details.suggestion; details.retryable 为 true 时稍后重试同一命令, 否则请用户修改配置。",
            {
                "api_response": {key: last[key] for key in ("code", "msg", "http_status")},
                "attempts": failures,
                "failure_kind": last["kind"],
                "retryable": last["kind"] == "platform_fault",
                "warnings": self.warnings,
                "suggestion": suggestion,
                **({"capacity_filters": capacity_filters(self.config)} if last["kind"] == "no_capacity" else {}),
                # Only answers that prove nothing was created get here (an ambiguous one ends
                # the run as may_have_been_created instead).
                "may_have_been_created": False,
                "name": self.config["name"],
                **({"reconcile": self._reconcile_report} if self._reconcile_report else {}),
            },
        )

    # --- following --------------------------------------------------------------------

    def wait_until_running(self, deployment_uuid: str) -> dict[str, Any]:
        """Follow until the target number of containers run. A failed read is counted and the
        follow goes on until --startup-timeout: the deployment exists whatever a read says."""
        target = target_running(self.config)
        deadline = self.clock() + self.options.startup_timeout
        offset, ever_running = 0, set()
        errors = ReadErrors(self.progress, "查询容器")
        containers: list[dict[str, Any]] = []
        running: list[dict[str, Any]] = []
        while True:
            try:
                events, offset = api.list_events(self.client, deployment_uuid, offset=offset)
                ever_running |= {e.get("deployment_container_uuid") for e in events if e.get("status") == "running"}
                containers = api.list_containers(self.client, deployment_uuid)
                finished = self._finished_deployment(deployment_uuid) if not containers else None
            except ApiError as error:
                errors.record(error)
            else:
                errors.reset()
                running = [c for c in containers if c.get("status") == "running"]
                if len(ever_running) >= target or len(running) >= target:
                    self._keep_read_warning(errors)
                    together = single_machine_warning(running, {"deployment_type": self.config.get("deployment_type")})
                    if together is not None:
                        self.warnings.append(together)
                    return {
                        "target_running": target,
                        "containers": [container_summary(c, self.options.show_password) for c in running],
                    }
                if finished is not None:
                    # A Job/Container can finish before the first look: say so with the counts,
                    # never a bare success with no containers.
                    self.progress.log(f"部署 {deployment_uuid} 在第一次查看前就已结束 (finished_num={finished.get('finished_num')})")
                    self._keep_read_warning(errors)
                    return {"target_running": target, "containers": [], "deployment_finished": True,
                            "finished_before_running": True, "ever_running": len(ever_running),
                            "counts": finish_counts(finished)}
            if self.clock() >= deadline:
                raise AutoDLError(
                    ErrorType.STARTUP_TIMEOUT,
                    f"部署已创建, 但 {self.options.startup_timeout:g} 秒内只看到 {len(running)}/{target} 个容器运行。"
                    + failed_reads_text(errors),
                    "不要重新提交 (部署已存在): 用 container_events.py 查看卡在哪个阶段, 或稍后用 list_containers.py 再看。",
                    {
                        "deployment_uuid": deployment_uuid,
                        "running": len(running),
                        "target_running": target,
                        "statuses": sorted({str(c.get("status")) for c in containers}),
                        **errors.details(),
                    },
                )
            phases = ", ".join(f"{c.get('status')}" for c in containers) or "无容器"
            self.progress.status(f"等待容器运行 {len(running)}/{target}: {phases}")
            self.sleep(self.options.interval)

    def _keep_read_warning(self, errors: ReadErrors) -> None:
        """Failed reads on the way to a result become a warning in the result's `warnings`."""
        warning = errors.warning()
        if warning:
            self.warnings.append(warning)

    def _finished_deployment(self, deployment_uuid: str) -> dict[str, Any] | None:
        """The deployment's list item when it has stopped (its work is over), else None."""
        found = [d for d in api.list_deployments(self.client, deployment_uuid=deployment_uuid) if d.get("uuid") == deployment_uuid]
        return found[0] if found and all(d.get("status") == "stopped" for d in found) else None

    def wait_until_finished(self, deployment_uuid: str) -> dict[str, Any]:
        return wait_finished(self.client, deployment_uuid, timeout=self.options.finish_timeout,
                             interval=self.options.interval, progress=self.progress)

    # --- the whole run ----------------------------------------------------------------

    def _note_other_waiters(self) -> dict[str, Any] | None:
        """Another run already waiting for this name: said at once (progress), kept for the result."""
        self.other_waiters = waiting_runs.live_waiters(self._host, self.config["name"])
        if not self.other_waiters:
            return None
        warning = waiting_runs.warning_for(self.other_waiters, self.config["name"])
        self.progress.log(f"警告 [{warning['code']}] {warning['message']} {warning['hint']}")
        return warning

    def mention_other_waiters(self, error: AutoDLError) -> None:
        """A timeout or deployment_exists names the other runs waiting for this name."""
        if error.error_type not in (ErrorType.TIMEOUT, ErrorType.DEPLOYMENT_EXISTS):
            return
        now = waiting_runs.live_waiters(self._host, self.config["name"], exclude=self._marker)
        live = {w.get("pid") for w in now}
        seen = now + [w for w in self.other_waiters if w.get("pid") not in live]
        if not seen:
            return
        first = seen[0]
        error.details["waiting_runs"] = [{"pid": w.get("pid"), "started_at": w.get("started_at"),
                                          "still_waiting": w.get("pid") in live} for w in seen]
        if error.error_type is ErrorType.TIMEOUT and now:
            error.message += f" {waiting_runs.describe(first)}仍在等待同名部署 {self.config['name']}: 它拿到库存就会创建; 不要重复提交。"
            error.hint = f"等那个运行的结果; 不想要了就结束它 (kill {first.get('pid')})。" + error.hint
        elif error.error_type is ErrorType.TIMEOUT:
            error.message += f" 本次开始时{waiting_runs.describe(first)}也在等待同名部署 (现在已结束): 先看它的结果再决定是否重新提交。"
        elif now:
            error.message += f" {waiting_runs.describe(first)}也在等待同名部署 (它创建前的同名检查同样会发现这个部署); 不要重复提交。"
        else:
            error.message += f" 本次开始时{waiting_runs.describe(first)}正在等待同名部署: 这个部署很可能就是它创建的; 不要重复提交。"

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except AutoDLError as error:
            self.mention_other_waiters(error)
            raise

    def _run(self) -> dict[str, Any]:
        stock = self.prepare()
        if self.options.dry_run:
            return self.dry_run_result(stock)
        return self.proceed(stock)

    def summary(self) -> dict[str, Any]:
        return {"name": self.config["name"], "deployment_type": self.config["deployment_type"], "dialect": dialect_of(self.config)}

    def prepare(self) -> StockByGpu:
        """Everything before the wait (no create): image, GPU types, the name, one stock read."""
        self.submit_started_at = now_timestamp()
        another_run = self._note_other_waiters()  # local files only: before any network call
        try:
            self.check_image()
            if getattr(self.client, "last_server_date", None):  # the first answer's Date: the platform's start
                self.submit_started_at_platform = iso(platform_now(self.client))
            stock = self.poll_stock(filtered=False)
            self.check_gpu_types(stock)
            self.check_name_free()
            if self.regions:
                unfiltered, stock = stock, self.poll_stock()
                self._filter_warnings(unfiltered, stock)
        except ApiError as error:
            error.hint = "此时还没有创建任何部署, 稍后重新运行同一命令即可。" + error.hint
            raise
        for warning in self.warnings:
            self.progress.log(f"警告 [{warning['code']}] {warning['message']} {warning['hint']}")
        if another_run:
            self.warnings.append(another_run)  # logged above already, when it was found
        return stock

    def dry_run_result(self, stock: StockByGpu) -> dict[str, Any]:
        fit = first_fit(stock, self.gpu_names, self.gpu_num)
        refused = self.duplicate_check["would_refuse"]
        return {
            "dry_run": True,
            **self.summary(),
            "request": self.request,
            "http_request": self.http_request(),
            "duplicate_check": self.duplicate_check,
            "stock": requested_stock(stock, self.gpu_names),
            "stock_filtered_by_config": bool(self.regions),
            "would_submit_now": fit is not None and not refused,
            "gpu_name": fit,
            "warnings": self.warnings,
        }

    def proceed(self, stock: StockByGpu | None, waited_before: float = 0.0) -> dict[str, Any]:
        """Wait for stock, create once, follow. `stock` None: a resumed run polls first;
        `waited_before`: seconds an earlier process of this run already waited."""
        started = self.clock() - waited_before
        if stock is None:
            stock = self._first_poll()
        # While this run may still create, others see it waiting (advisory; never consulted
        # by the exactly-once logic, whose source of truth is the name check before a create).
        with waiting_runs.waiting_marker(self._host, self.config["name"], self.config["deployment_type"]) as self._marker:
            deployment_uuid, recovered, waited = self.submit(stock, started)
        self._marker = None
        return self.created(deployment_uuid, recovered, waited)

    def _first_poll(self) -> StockByGpu:
        try:
            return self.poll_stock()
        except ApiError as error:
            self.progress.log(f"查询库存失败: {error.message} 继续等待。")
            return {}

    def created(self, deployment_uuid: str, recovered: bool, waited: float) -> dict[str, Any]:
        """The deployment exists: say so, look for duplicates, follow it as asked."""
        self.progress.log(f"部署已创建: {deployment_uuid}" + (" (核对后确认)" if recovered else ""))
        self._state("submitted", deployment_uuid=deployment_uuid, recovered=recovered,
                    **({"recovered_by": self._recovered_by} if recovered and self._recovered_by else {}))
        if self.options.on_created:
            self.options.on_created(deployment_uuid)
        result: dict[str, Any] = {
            "deployment_uuid": deployment_uuid,
            "waited_seconds": round(waited, 1),
            **self.summary(),
            "recovered": recovered,
        }
        if recovered and self._recovered_by:
            result["recovered_by"] = self._recovered_by
        duplicates = self.find_duplicates(deployment_uuid)
        if duplicates:
            result["duplicates"] = duplicates
            self.partial["duplicates"] = duplicates
        result["warnings"] = self.warnings
        return self.follow(deployment_uuid, result)

    def follow(self, deployment_uuid: str, result: dict[str, Any]) -> dict[str, Any]:
        """--wait-running / --wait-finished on a deployment that exists."""
        if self.options.wait_running:
            self._state("submitted", phase="wait_running")
            try:
                result.update(self.wait_until_running(deployment_uuid))
            except AutoDLError as error:
                raise self._after_create(error, deployment_uuid) from None
        if self.options.wait_finished:
            self._state("submitted", phase="wait_finished")
            try:
                result["finish"] = self.wait_until_finished(deployment_uuid)
            except AutoDLError as error:
                raise self._after_create(error, deployment_uuid) from None
        return result

    def _after_create(self, error: AutoDLError, deployment_uuid: str) -> AutoDLError:
        """A failure once the deployment exists still names it and says not to resubmit."""
        error.details.setdefault("deployment_uuid", deployment_uuid)
        error.details["deployment_created"] = True
        if error.error_type is not ErrorType.STARTUP_TIMEOUT:
            error.message = f"部署已创建 ({deployment_uuid}), 但跟踪容器启动时出错: {error.message}"
            error.hint = (f"部署已经存在, 不要重新提交: 稍后用 list_containers.py --deployment-uuid {deployment_uuid} "
                          "或 container_events.py 查看容器。" + (f" ({error.hint})" if error.hint else ""))
            if isinstance(error, ApiError):
                error.details["retryable"] = False  # retrying the command would not retry the follow-up
        return error
