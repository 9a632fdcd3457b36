"""First-run check of the configured platform: read-only probes, one verdict per check.

Every probe is a read (list one page, read stock, read the wallet, ask for a route that
needs an argument without it). Nothing is created, changed or deleted, so it is safe to
run before anything costs money. Each check is `{name, status, detail, hint}` with status
ok | warn | fail | skipped; `open_questions` lists the open items of references/platform-api.md (未决问题)
that this account's answers settle, and how.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import urlsplit

from . import api
from .config import dialect_of, load_config
from .stock import normalize_stock
from ..core.http import ApiClient
from ..core.settings import Settings, load_settings
from ..core.errors import ApiError, AutoDLError, ErrorType

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
# The platform's enterprise gate on elastic-deployment routes (message seen live).
GATE_FRAGMENT = "无当前资源访问权限"
KNOWN_HOSTS = api.HOST_DIALECTS
# Who opens the gate differs by platform (references/platform-api.md, 鉴权与企业认证).
GATE_HINT = ("账号没有弹性部署权限, 按平台处理: 公有云 (api.autodl.com) 需要企业认证, 在 AutoDL 控制台完成企业认证后再试; "
             "私有云 (private.autodl.com) 需要私有云账号: 确认令牌来自私有云账号的控制台 → 设置 → 开发者Token, "
             "且该账号已开通弹性部署 (找企业的私有云管理员或 AutoDL 商务开通)。镜像、库存、余额接口仍可用。")
# More than this between the platform's clock and ours makes local times in logs and
# "created after" comparisons misleading; NTP keeps real machines within a second.
CLOCK_SKEW_WARN_SECONDS = 60.0
# The platform clock's rate is two Date headers this far apart (local seconds), the second
# read made after a wait if the checks took less. Date has whole seconds, so over 3 s a clock
# at our rate reads 2-4 s (0.67x-1.33x): outside RATE_WARN_BELOW..RATE_WARN_ABOVE it is the
# rate that differs, not the reading. Bounded: doctor waits at most this long for it.
RATE_WINDOW_SECONDS = 3.0
RATE_WARN_ABOVE = 1.5
RATE_WARN_BELOW = 0.5
# A read call slower than this (median) makes short --interval values pointless.
LATENCY_WARN_SECONDS = 2.0
# A token no platform issues: its answer shows what a rejected token looks like (401?).
PROBE_BAD_TOKEN = "autodl-doctor-not-a-token"

# Optional routes: name -> (method, path, body or query, what it enables)
OPTIONAL_ROUTES = {
    "blacklist_list": ("GET", api.BLACKLIST_PATH, None, "list_blacklist.py (查询调度黑名单)"),
    "ddp_overview": ("GET", api.DDP_OVERVIEW_PATH, None, "ddp_overview.py (时长包)"),
    "system_images": ("POST", api.SYSTEM_IMAGES_PATH, {"page_index": 1, "page_size": 1}, "公共基础镜像列表 (base-image-...)"),
    "region_stock": ("POST", api.REGION_STOCK_PATH, {}, "按地区查库存 (gpu_stock.py --region, 公有云 dc_list 配置)"),
    "wallet_balance": ("POST", api.WALLET_BALANCE_PATH, {}, "wallet_balance.py (余额) 与费用上限检查"),
}


CHECK_NAMES = ("settings", "token_present", "token_accepted", "enterprise_gate", "dialect", "config_dialect",
               "optional_routes", "stock_shape", "image_list_key", "clock_skew", "latency", "price_basis")
# price_basis reads at most this many deployments (one page) and this many of their multi-GPU
# ones' container lists: a first-run check stays a handful of reads on a busy account.
PRICE_BASIS_DEPLOYMENTS = 20
PRICE_BASIS_CONTAINER_READS = 3


def check(name: str, status: str, detail: Any, hint: str = "") -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "hint": hint}


def skipped_after(failed: str) -> list[dict[str, Any]]:
    """The checks after a failed one that everything else depends on."""
    later = CHECK_NAMES[CHECK_NAMES.index(failed) + 1:]
    return [check(name, SKIPPED, f"{failed} 未通过, 未检查。", f"先解决 {failed} 的问题。") for name in later]


def diagnose(ctx: Any, config_paths: list[str]) -> dict[str, Any]:
    """Run every check with the context's settings (AUTODL_* or the embedded simulator)."""
    configs = [(path, load_config(path)) for path in config_paths]  # a bad file is config_error
    try:
        settings = ctx.settings or load_settings()
    except AutoDLError as error:
        failed = "settings" if error.error_type is ErrorType.CONFIG_ERROR else "token_present"
        head = [check("settings", OK, "AUTODL_HOST / AUTODL_HTTP_TIMEOUT 有效。")] if failed == "token_present" else []
        head.append(check(failed, FAIL, {"error_type": error.error_type.value, "message": error.message, **error.details}, error.hint))
        checks = head + skipped_after(failed)
        return {"ready": False, "host": None, "dialect": None, "failed": [failed],
                "summary": {s: sum(1 for c in checks if c["status"] == s) for s in (OK, WARN, FAIL, SKIPPED)},
                "checks": checks, "open_questions": [], "read_only": True, "calls": 0}
    ctx.settings = settings
    client = ctx.client()

    def make_client(token: str) -> Any:
        return ApiClient(Settings(host=settings.host, http_timeout=settings.http_timeout, token=token), progress=ctx.progress)

    doctor = Doctor(client, configs, make_client)
    result = doctor.run()
    head = [check("settings", OK, {"host": settings.host, "http_timeout_seconds": settings.http_timeout}),
            check("token_present", OK, "找到令牌 (不显示其值)。")]
    result["checks"] = head + result["checks"]
    result["summary"][OK] += 2
    return result


@dataclass
class Probe:
    """One read call's outcome: data, or the error; and how long it took."""

    data: Any = None
    error: AutoDLError | None = None
    seconds: float = 0.0
    server_date: str | None = None
    local_time: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def route_missing(self) -> bool:
        return isinstance(self.error, ApiError) and self.error.http_status == 404

    @property
    def gated(self) -> bool:
        return self.error is not None and self.error.error_type is ErrorType.AUTH_ERROR and GATE_FRAGMENT in str(
            self.error.details.get("msg") or self.error.message
        )

    @property
    def auth_rejected(self) -> bool:
        return self.error is not None and self.error.error_type is ErrorType.AUTH_ERROR and not self.gated

    def describe_error(self) -> dict[str, Any]:
        assert self.error is not None
        details = self.error.details
        return {
            "error_type": self.error.error_type.value,
            "code": details.get("code"),
            "msg": details.get("msg"),
            "http_status": details.get("http_status"),
        }


@dataclass
class Doctor:
    client: Any
    configs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    make_client: Callable[[str], Any] | None = None  # a client with another token (bad-token probe)
    probes: list[Probe] = field(default_factory=list)
    calls: int = 0

    def probe(self, method: str, path: str, payload: Any = None) -> Probe:
        started = time.perf_counter()
        result = Probe()
        self.calls += 1
        try:
            result.data = self.client.request(method, path, params=payload if method == "GET" else None,
                                              body=None if method == "GET" else (payload or {}))
        except AutoDLError as error:
            result.error = error
        result.seconds = time.perf_counter() - started
        result.server_date = getattr(self.client, "last_server_date", None)
        result.local_time = time.time()
        self.probes.append(result)
        return result

    # --- the checks ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        checks: list[dict[str, Any]] = []
        questions: list[dict[str, str]] = []
        host = self.client.host

        images = self.probe("POST", api.IMAGES_PATH, {"page_index": 1, "page_size": 10})
        checks.append(self._token_accepted(images))
        if images.auth_rejected or self._present(images) is None:
            # Token refused or host unreachable: nothing else can be learned.
            checks += skipped_after("token_accepted")
            return self._result(host, checks, questions, dialect=None)

        deployments = self.probe("POST", api.DEPLOYMENTS_PATH, {"page_index": 1, "page_size": 1})
        gate = self._enterprise_gate(deployments)
        checks.append(gate)
        routes = {name: self.probe(method, path, payload) for name, (method, path, payload, _) in OPTIONAL_ROUTES.items()}
        stock = self.probe(*self._stock_read())

        dialect, evidence = self._dialect(host, routes, stock)
        checks.append(self._dialect_check(dialect, evidence, host))
        checks.append(self._config_dialect(dialect))
        checks.append(self._optional_routes(routes, gate_failed=deployments.gated))
        if deployments.gated:  # a gated route is counted once, under its cause
            gate["detail"]["gated_routes"] = [name for name, probe in routes.items() if probe.gated]
        checks.append(self._stock_shape(stock))
        checks.append(self._image_list_key(images))
        rate = self._clock_rate()
        checks.append(self._clock_skew(rate))
        checks.append(self._latency())
        checks.append(self._price_basis(deployments, stock))
        questions += self._settled_questions(routes, stock, images, dialect)
        bad_token = self._bad_token_answer()
        if bad_token:
            questions.append(bad_token)
        return self._result(host, checks, questions, dialect=dialect)

    def _stock_read(self) -> tuple[str, str, Any]:
        """The stock read the platform documents: on the public cloud the region route (one
        documented region), elsewhere the global GET route (private cloud, simulator)."""
        if api.host_dialect(self.client.host) == "public":
            return "POST", api.REGION_STOCK_PATH, {"region_sign": api.PUBLIC_REGIONS[0]}
        return "GET", api.GLOBAL_STOCK_PATH, None

    def _result(self, host: str, checks: list[dict[str, Any]], questions: list[dict[str, str]], dialect: str | None) -> dict[str, Any]:
        counts = {status: sum(1 for c in checks if c["status"] == status) for status in (OK, WARN, FAIL, SKIPPED)}
        failed = [c["name"] for c in checks if c["status"] == FAIL]
        return {
            "ready": not failed,
            "host": host,
            "dialect": dialect,
            "summary": counts,
            "failed": failed,
            "checks": checks,
            "open_questions": questions,
            "read_only": True,
            "calls": self.calls,
        }

    def _token_accepted(self, images: Probe) -> dict[str, Any]:
        if images.ok or images.gated:
            return check("token_accepted", OK, "令牌被平台接受 (镜像列表可读)。")
        if images.auth_rejected:
            return check("token_accepted", FAIL, {"message": "令牌被拒绝", **images.describe_error()},
                         "确认 AUTODL_TOKEN 是 AutoDL 控制台 → 设置 → 开发者Token 的完整值, 且属于 AUTODL_HOST 指向的平台 (私有云/公有云)。")
        if images.route_missing:
            return check("token_accepted", WARN, {"message": "镜像列表接口不存在 (HTTP 404), 无法用它确认令牌", **images.describe_error()},
                         "确认 AUTODL_HOST 指向 AutoDL 弹性部署 API (https://private.autodl.com 或 https://api.autodl.com)。")
        return check("token_accepted", FAIL, {"message": images.error.message, **images.describe_error()},
                     "平台不可达或出错: 检查网络与 AUTODL_HOST, 稍后重试; 可调大 AUTODL_HTTP_TIMEOUT。")

    def _enterprise_gate(self, deployments: Probe) -> dict[str, Any]:
        if deployments.ok:
            return check("enterprise_gate", OK, "弹性部署接口可用 (部署列表可读)。")
        if deployments.gated:
            return check("enterprise_gate", FAIL, {"message": "账号没有弹性部署权限 (无当前资源访问权限)", **deployments.describe_error()},
                         GATE_HINT)
        if deployments.auth_rejected:
            return check("enterprise_gate", FAIL, {"message": "部署列表拒绝了令牌", **deployments.describe_error()},
                         "令牌可读镜像却不能读部署: 确认令牌有弹性部署权限, 或联系平台。")
        return check("enterprise_gate", FAIL, {"message": deployments.error.message, **deployments.describe_error()},
                     "部署列表不可用: 稍后重试; 若是 HTTP 404, 确认 AUTODL_HOST。")

    @staticmethod
    def _present(probe: Probe) -> bool | None:
        """Whether the route exists: any answer but 404 (a parameter error means it does)."""
        if probe.route_missing:
            return False
        if probe.error is not None and probe.error.error_type is ErrorType.API_ERROR and probe.error.details.get("http_status") is None:
            return None  # transport failure: unknown
        return True

    def _dialect(self, host: str, routes: dict[str, Probe], stock: Probe) -> tuple[str, dict[str, Any]]:
        private_signs = self._present(routes["system_images"])
        public_signs = self._present(routes["blacklist_list"]) or self._present(routes["ddp_overview"])
        host_hint = KNOWN_HOSTS.get(urlsplit(host).hostname or "")
        stock_route = "region_gpu_stock" if self._stock_read()[1] == api.REGION_STOCK_PATH else "global_gpu_stock"
        evidence = {
            "host": host_hint or "不是已知的平台地址",
            stock_route: "可用" if stock.ok else ("不存在 (404)" if stock.route_missing else "出错"),
            "private_only_routes (POST /api/v2/image/list)": "存在" if private_signs else "不存在",
            "public_only_routes (GET deployment/blacklist, ddp/overview)": "存在" if public_signs else "不存在",
        }
        if private_signs and public_signs:
            return "both", evidence
        if private_signs:
            return "private", evidence
        if public_signs:
            return "public", evidence
        return host_hint or "unknown", evidence

    @staticmethod
    def _dialect_check(dialect: str, evidence: dict[str, Any], host: str = "") -> dict[str, Any]:
        meaning = {
            "private": "私有云方言: 配置用 cuda_v, 不写 dc_list; 库存用全局 GET machine/gpu_stock。",
            "public": "公有云方言: 配置用 dc_list + cuda_v_from/cuda_v_to; 库存按地区查询。",
            "both": "两种方言都接受 (本地模拟器的默认行为)。",
        }
        if dialect == "both":
            # Either is accepted here, so the choice is about where the config goes next.
            write = KNOWN_HOSTS.get(urlsplit(host).hostname or "", "private")
            why = ("这个平台两种写法都接受, 按配置将来要用的真实平台写: 私有云 (默认 AUTODL_HOST, private.autodl.com) 写 cuda_v、不写 dc_list; "
                   "公有云 (api.autodl.com) 写 dc_list + cuda_v_from/cuda_v_to。没有别的打算时写 "
                   + ("私有云方言。" if write == "private" else "公有云方言 (这个地址是公有云)。"))
            return check("dialect", OK, {"dialect": dialect, "write": write, "why": why, "meaning": meaning[dialect], "evidence": evidence})
        if dialect in meaning:
            return check("dialect", OK, {"dialect": dialect, "write": dialect, "meaning": meaning[dialect], "evidence": evidence})
        return check("dialect", WARN, {"dialect": dialect, "evidence": evidence},
                     "无法判断方言: 私有云用 https://private.autodl.com, 公有云用 https://api.autodl.com; 见 references/platform-api.md 的方言对比。")

    def _config_dialect(self, dialect: str) -> dict[str, Any]:
        if not self.configs:
            return check("config_dialect", SKIPPED, "没有用 --config 指定配置。", "加 --config FILE 检查配置的方言是否与平台一致。")
        results = [{"config": path, "dialect": dialect_of(config)} for path, config in self.configs]
        accepted = {"private": {"private"}, "public": {"public"}, "both": {"private", "public"}}.get(dialect)
        if accepted is None:
            return check("config_dialect", WARN, {"platform": dialect, "configs": results}, "平台方言未能确定, 无法比较。")
        wrong = [r for r in results if r["dialect"] not in accepted]
        if wrong:
            return check("config_dialect", FAIL, {"platform": dialect, "configs": results, "mismatched": [r["config"] for r in wrong]},
                         "私有云配置用 cuda_v 且不写 dc_list; 公有云配置写 dc_list + cuda_v_from/cuda_v_to。按平台方言改写配置 (examples/ 有两种示例)。")
        return check("config_dialect", OK, {"platform": dialect, "configs": results})

    def _optional_routes(self, routes: dict[str, Probe], gate_failed: bool = False) -> dict[str, Any]:
        found: dict[str, str] = {}
        for name, probe in routes.items():
            present = self._present(probe)
            found[name] = "present" if present and not probe.gated else ("gated" if probe.gated else ("absent" if present is False else "unknown"))
        # When the enterprise gate failed, its routes are that failure (enterprise_gate lists
        # them as gated_routes), not one more warning each.
        counted = {"present", "gated"} if gate_failed else {"present"}
        absent = [f"{name}: {OPTIONAL_ROUTES[name][3]}" for name, state in found.items() if state not in counted]
        detail = {"routes": found}
        if absent:
            return check("optional_routes", WARN, {**detail, "unavailable": absent},
                         "这些功能在本账号/平台上不可用 (absent = 接口不存在, gated = 需要企业认证); 相应脚本会返回 api_error 或 auth_error。")
        return check("optional_routes", OK, detail)

    def _stock_shape(self, stock: Probe) -> dict[str, Any]:
        if not stock.ok:
            if stock.route_missing and self._stock_read()[1] == api.GLOBAL_STOCK_PATH:
                return check("stock_shape", WARN, "全局库存接口不存在 (HTTP 404)。", "公有云按地区查库存: gpu_stock.py --region REGION。")
            return check("stock_shape", FAIL, {"message": stock.error.message, **stock.describe_error()}, "库存接口出错; 稍后重试。")
        raw = stock.data
        shape = "list" if isinstance(raw, list) else "dict" if isinstance(raw, dict) else type(raw).__name__
        gpus = sorted(normalize_stock(raw))
        if shape not in ("list", "dict"):
            return check("stock_shape", WARN, {"shape": shape}, "库存响应形状未知; 把 gpu_stock.py 的输出反馈给维护者。")
        return check("stock_shape", OK, {"shape": shape, "gpu_names": gpus, "route": " ".join(self._stock_read()[:2]),
                                          "note": "list = [{型号: {...}}], dict = {型号: {...}}; 两种都能识别。gpu_name_set 要写这里的型号名。"})

    @staticmethod
    def _image_list_key(images: Probe) -> dict[str, Any]:
        if not images.ok:
            return check("image_list_key", SKIPPED, "镜像列表不可读。", "")
        items = (images.data or {}).get("list") or [] if isinstance(images.data, dict) else []
        if not items:
            return check("image_list_key", WARN, {"images": 0}, "账号没有私有镜像: 先在控制台保存一个镜像, 或在配置里用公共基础镜像 base-image-...。")
        keys = sorted({key for item in items if isinstance(item, dict) for key in ("image_name", "name") if key in item})
        return check("image_list_key", OK, {"key": keys, "images_on_first_page": len(items),
                                             "note": "名称字段: 公有云 image_name, 私有云 name; 配置里填 image_uuid, 不填名称。"})

    @staticmethod
    def _dated(probe: Probe) -> tuple[datetime, float] | None:
        """(the platform's time, the local epoch seconds) of one answer with a Date header."""
        if not probe.server_date:
            return None
        try:
            server = parsedate_to_datetime(probe.server_date)
        except (TypeError, ValueError):
            return None
        if server.tzinfo is None:
            server = server.replace(tzinfo=timezone.utc)
        # Date has whole seconds and is stamped while answering: compare with the local
        # time at the answer, minus half the call (the moment the server most likely wrote it).
        return server, probe.local_time - probe.seconds / 2

    def _clock_rate(self) -> float | None:
        """Platform seconds per local second, from the first Date header and one read made at
        least RATE_WINDOW_SECONDS later (a read-only stock read; waits if the checks were quicker)."""
        if RATE_WINDOW_SECONDS <= 0:
            return None
        dated = [d for d in map(self._dated, self.probes) if d is not None]
        if not dated:
            return None
        first_server, first_local = dated[0]
        wait = first_local + RATE_WINDOW_SECONDS - time.time()
        if wait > 0:
            time.sleep(min(wait, RATE_WINDOW_SECONDS))
        last = self._dated(self.probe(*self._stock_read()))
        if last is None or last[1] - first_local <= 0:
            return None
        return (last[0] - first_server).total_seconds() / (last[1] - first_local)

    def _clock_skew(self, rate: float | None = None) -> dict[str, Any]:
        samples = [(server - datetime.fromtimestamp(local, tz=timezone.utc)).total_seconds()
                   for server, local in (d for d in map(self._dated, self.probes) if d is not None)]
        if not samples:
            return check("clock_skew", SKIPPED, "平台响应没有 Date 头, 无法比较时钟。", "")
        skew = statistics.median(samples)
        detail = {"platform_minus_local_seconds": round(skew, 1), "samples": len(samples),
                  "note": "Date 头精确到秒, 误差约 ±1 秒。"}
        if rate is not None:
            detail["platform_clock_rate"] = round(rate, 2)
            detail["rate_window_seconds"] = RATE_WINDOW_SECONDS
        if rate is not None and not RATE_WARN_BELOW <= rate <= RATE_WARN_ABOVE:
            # The clocks run at different speeds: no NTP setting fixes that.
            times = f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"
            return check("clock_skew", WARN, detail,
                         f"平台时钟以本机 {times} 倍的速度走 (本地模拟器 --speed 时就是这样), 两者的差会越来越大, 校准本机时间 (ntp) 没有用。"
                         "平台时间 (created_at 等) 与本机时间 (*_local 字段、进度行) 不能直接相减; "
                         "本工具的运行时长与费用按平台时间计算, 不受影响。")
        if abs(skew) > CLOCK_SKEW_WARN_SECONDS:
            return check("clock_skew", WARN, detail,
                         "本机时钟与平台相差较大: 用 ntp 校准本机时间 (本地模拟器 --speed > 1 时平台时间本就跑得更快, 可忽略)。"
                         "本工具的运行时长与费用按平台时间计算, 不受影响。")
        return check("clock_skew", OK, detail)

    def _latency(self) -> dict[str, Any]:
        times = [probe.seconds for probe in self.probes if self._present(probe) is not None]  # answered calls
        if not times:
            return check("latency", SKIPPED, "没有成功的请求可计时。", "")
        median = statistics.median(times)
        detail = {"median_seconds": round(median, 3), "max_seconds": round(max(times), 3), "calls": len(times)}
        if median > LATENCY_WARN_SECONDS:
            return check("latency", WARN, detail, "请求较慢: queue_submit.py 的 --interval 不要小于单次请求时间; 必要时调大 AUTODL_HTTP_TIMEOUT。")
        return check("latency", OK, detail)

    @staticmethod
    def _stock_price(stock: Probe, gpu_name: Any) -> float | None:
        """A per-card price the stock reports for this GPU model, if its entry carries one."""
        raw = stock.data if stock.ok else None
        entries = [raw] if isinstance(raw, dict) else raw if isinstance(raw, list) else []
        for entry in entries:
            figures = entry.get(gpu_name) if isinstance(entry, dict) else None
            price = figures.get("price") if isinstance(figures, dict) else None
            if isinstance(price, (int, float)) and not isinstance(price, bool) and price > 0:
                return float(price)
        return None

    def _price_basis(self, deployments: Probe, stock: Probe) -> dict[str, Any]:
        """Does a multi-GPU container's `price` fit the per-card basis this tool uses
        (references/money.md, 计费口径)? Compared with the per-card price the stock reports for its
        GPU, else with its deployment's per-card price_from..price_to."""
        first = (deployments.data or {}).get("list") if deployments.ok and isinstance(deployments.data, dict) else None
        if not first:
            return check("price_basis", SKIPPED, "账号里没有部署, 无法核对容器 price 的口径。",
                         "有多卡 (gpu_num > 1) 容器后再运行 doctor.py。")
        page = self.probe("POST", api.DEPLOYMENTS_PATH, {"page_index": 1, "page_size": PRICE_BASIS_DEPLOYMENTS})
        listed = (page.data or {}).get("list") or [] if page.ok and isinstance(page.data, dict) else first
        multi = [d for d in listed if isinstance(d, dict) and int((d.get("template") or {}).get("gpu_num") or 0) != 1]
        for deployment in multi[:PRICE_BASIS_CONTAINER_READS]:
            read = self.probe("POST", api.CONTAINERS_PATH, {"deployment_uuid": deployment.get("uuid"), "released": True,
                                                            "page_index": 1, "page_size": 50})
            containers = (read.data or {}).get("list") or [] if read.ok and isinstance(read.data, dict) else []
            for container in containers:
                cards, price = container.get("gpu_num"), container.get("price")
                if not (isinstance(cards, int) and cards > 1 and isinstance(price, (int, float)) and price > 0):
                    continue
                template = deployment.get("template") or {}
                stock_price = self._stock_price(stock, container.get("gpu_name"))
                if stock_price is not None:
                    low = high = stock_price
                    reference = f"库存里 {container.get('gpu_name')} 的每卡价格 {stock_price:g}"
                elif isinstance(template.get("price_from"), (int, float)) and isinstance(template.get("price_to"), (int, float)):
                    low, high = float(template["price_from"]), float(template["price_to"])
                    reference = f"部署的每卡价格范围 price_from..price_to = {low:g}..{high:g}"
                else:
                    continue
                per_card = low <= price <= high
                per_container = low * cards <= price <= high * cards
                fits = "per_card" if per_card and not per_container else "per_container" if per_container and not per_card \
                    else "both" if per_card else "neither"
                detail = {"container_uuid": container.get("uuid"), "gpu_name": container.get("gpu_name"), "gpu_num": cards,
                          "price": price, "reference": reference, "fits": fits, "assumed": "per_card"}
                if fits == "per_container":
                    return check("price_basis", WARN, detail,
                                 f"这个 {cards} 卡容器的 price 符合整个容器每小时的价格, 不是本工具假设的每卡价格: 本工具的费率和已花费用"
                                 f" 会是实际的 {cards} 倍; 把 detail 反馈给维护者, 以平台账单为准。")
                if fits == "per_card":
                    return check("price_basis", OK, detail)
                return check("price_basis", OK, detail, "两种口径都说得通 (或都不符合), 无法判断; 以平台账单为准。")
        return check("price_basis", SKIPPED, "没有找到带 price 的多卡 (gpu_num > 1) 容器, 无法核对 price 是否按卡。",
                     "有多卡容器后再运行 doctor.py。")

    def _settled_questions(self, routes: dict[str, Probe], stock: Probe, images: Probe, dialect: str) -> list[dict[str, str]]:
        settled = []

        def settle(question_id: str, question: str, answer: str, how: str) -> None:
            settled.append({"question_id": question_id, "question": question, "answer": answer, "how": how})

        for name, question in (
            ("blacklist_list", "GET /api/v1/dev/deployment/blacklist 在这个平台上是否可用"),
            ("ddp_overview", "GET /api/v1/dev/deployment/ddp/overview 在这个平台上是否可用"),
            ("region_stock", "POST /api/v1/dev/machine/region/gpu_stock 在这个平台上是否可用"),
            ("system_images", "POST /api/v2/image/list (公共基础镜像) 在这个平台上是否可用"),
            ("wallet_balance", "POST /api/v1/dev/wallet/balance 在这个平台上是否可用"),
        ):
            present = self._present(routes[name])
            if present is None:
                continue
            answer = "需要企业认证 (接口存在)" if routes[name].gated else ("可用" if present else "不可用 (HTTP 404)")
            settle(name, question, answer, f"只读请求 {OPTIONAL_ROUTES[name][0]} {OPTIONAL_ROUTES[name][1]} 的响应")
        if stock.ok:
            shape = "列表 [{型号: {...}}]" if isinstance(stock.data, list) else "对象 {型号: {...}}"
            method, path, _ = self._stock_read()
            which = "地区" if path == api.REGION_STOCK_PATH else "全局"
            settle("stock_shape", f"{which}库存响应是列表还是对象", shape, f"{method} {path} 的 data")
        if images.ok:
            items = (images.data or {}).get("list") or [] if isinstance(images.data, dict) else []
            if items:
                keys = sorted({key for item in items if isinstance(item, dict) for key in ("image_name", "name") if key in item})
                settle("image_list_key", "镜像列表的名称字段是 image_name 还是 name", " 和 ".join(keys) or "都没有", "POST /api/v1/dev/image/private/list 的第一页")
        return settled

    def _bad_token_answer(self) -> dict[str, str] | None:
        """What a rejected token looks like here (HTTP 401? which code?), from one read call."""
        if self.make_client is None:
            return None
        other = self.make_client(PROBE_BAD_TOKEN)
        method, path, payload = self._stock_read()
        self.calls += 1
        try:
            other.request(method, path, params=payload if method == "GET" else None, body=None if method == "GET" else payload)
        except AutoDLError as error:
            details = error.details
            answer = f"{error.error_type.value}: HTTP {details.get('http_status')}, code={details.get('code')}, msg={details.get('msg')}"
        else:
            answer = "未被拒绝: 库存接口不校验令牌"
        return {"question_id": "bad_token_answer", "question": "错误令牌时平台的响应是什么样 (HTTP 401?)", "answer": answer,
                "how": f"用一个不存在的令牌 ({PROBE_BAD_TOKEN}) 只读请求一次 {method} {path}"}


# The error a not-ready account answers with, by the first failed check's cause. The
# enterprise gate is auth_error: the platform itself answers it as a permission refusal
# (BadRequest 无当前资源访问权限 on the deployment routes), and it is what every script that
# needs those routes would answer on this account; the agent's next step is the same as for
# a refused token, asking the user to fix the account. An unreachable or failing platform is
# api_error; a config in the other dialect is validation_error (the config must change).
_CAUSE_TYPES = {"settings": ErrorType.CONFIG_ERROR, "token_present": ErrorType.TOKEN_MISSING,
                "token_accepted": ErrorType.AUTH_ERROR, "enterprise_gate": ErrorType.AUTH_ERROR,
                "config_dialect": ErrorType.VALIDATION_ERROR, "stock_shape": ErrorType.API_ERROR}


def require_ready(result: dict[str, Any]) -> dict[str, Any]:
    """The diagnosis when the account is ready; otherwise an error document carrying it in
    `details` (an agent that checks only `status` or the exit code must not read success)."""
    if result.get("ready"):
        return result
    failed = [c for c in result["checks"] if c["status"] == FAIL]
    first = failed[0]
    detail = first["detail"] if isinstance(first["detail"], dict) else {"message": str(first["detail"])}
    named = detail.get("error_type")
    error_type = ErrorType(named) if named in {t.value for t in ErrorType} else _CAUSE_TYPES.get(first["name"], ErrorType.API_ERROR)
    details: dict[str, Any] = {key: value for key, value in detail.items() if key not in ("error_type", "message")}
    details.update(result)  # the checks, summary and the rest of the diagnosis
    details["cause"] = first["name"]
    if error_type is ErrorType.AUTH_ERROR:
        details.setdefault("code", None)
        details.setdefault("msg", None)
    elif error_type is ErrorType.API_ERROR:
        for key in ("code", "msg", "http_status"):
            details.setdefault(key, None)
        details.setdefault("retryable", True)
    elif error_type is ErrorType.CONFIG_ERROR:
        details.setdefault("path", None)
    elif error_type is ErrorType.TOKEN_MISSING:
        details.setdefault("looked_in", [])
    elif error_type is ErrorType.VALIDATION_ERROR:
        details["errors"] = [{"path": path, "message": f"配置方言与平台 ({detail.get('platform')}) 不一致", "hint": first["hint"]}
                             for path in detail.get("mismatched") or ["config"]]
    reason = detail.get("message") or first["name"]
    names = ", ".join(c["name"] for c in failed)
    raise AutoDLError(error_type, f"未就绪: {reason} (未通过的检查: {names})。",
                      first["hint"] + " 全部检查见 details.checks。", details)
