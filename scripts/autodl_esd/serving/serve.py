"""What scripts/serve_gateway.py runs: flags -> replica source + options (+ autoscaler) ->
serve -> summary. With routes (`--route`, `--route-prefix`, `--routes-file`) every route gets
its own deployment, source, policy, queue and (optionally) autoscaler.

Everything that can be checked (flags, the auth variable, the deployment) is checked before
anything listens, so bad input is the usual JSON error. Once listening: one JSON "ready" line
on stdout; SIGINT/SIGTERM stop accepting, let in-flight requests finish for up to
--drain-seconds, and the final summary is the script's JSON document (exit 0).
`--detach` makes the same checks (`prepare`) in the foreground, then the same run goes on
in the background (`detached`), its ready document and summary kept in its record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from ..core import files
from ..core.cli import UsageError
from ..core.errors import AutoDLError, ErrorType
from ..core.http import ApiClient
from ..core.loopback import is_loopback_name
from ..core.output import emit_line, register_secret
from ..core.polling import floor_interval
from ..core.settings import is_loopback_host
from ..platform.resolve import DEPLOYMENT_UUID_PATTERN, deployment_by_uuid, resolve_deployment, resolve_from_args
from .autoscale.cli import DEFAULT_MAX_REPLICAS, check_autoscale_arguments, require_autoscale_confirmation
from .autoscale.controller import DEPLOYMENT_ENDED_NOTES, Autoscaler, LoadSnapshot
from .autoscale.defaults import DEFAULT_MIN_REPLICAS
from .autoscale.extension import GatewayAutoscaler
from .autoscale.policy import AutoscaleConfig
from .autoscale.scaler import ReplicaScaler, deployment_gone, startup_bounds
from .registry.redis_store import describe_url, redis_errors
from .registry.watcher import HealthTracker, RegistryWatcher, WatchOptions
from .routing.gateway import Gateway, GatewayOptions
from .routing.ledgers import RedisInflightLedger
from .routing.route_specs import RouteSpec, specs_from_file, specs_from_flags
from .routing.routes import Route
from .routing.sources import FileSource, RedisSource, ReplicaSource, UrlSource, WatcherSource

# The watcher's and its health check's settings when the gateway watches in-process; the
# reasons are those of discover_services.py's defaults (same values).
RESYNC_EVERY = 12
HEALTH_TIMEOUT_SECONDS = 2.0
HEALTH_FAILURES = 3
# A registry not refreshed for this many intervals is stale (a poll merely slow counts).
STALE_AFTER_INTERVALS = 3
# How long start-up waits for the first registry before listening anyway (requests queue).
FIRST_REGISTRY_WAIT_SECONDS = 10.0
# The autoscaler reads the deployment and its containers every tick. Against the real
# platform once every 5 s is plenty for decisions on a 30 s / 600 s scale and keeps its
# calls well below the watcher's; the loopback simulator keeps --interval (fast tests).
PLATFORM_MIN_INTERVAL_SECONDS = 5.0


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--listen 不是 HOST:PORT: {text!r}", "例: --listen 127.0.0.1:8000, IPv6 用 [::1]:8000, 端口 0 自动选择。")
    return host, int(port_text)


SINGLE_SOURCE_FLAGS = ("deployment_uuid", "name", "config", "registry", "registry_url")


def route_specs_of(args: Any) -> list[RouteSpec] | None:
    """The routes the flags ask for (None: one deployment); usage_error for a bad mix."""
    routes, prefixes, path = getattr(args, "route", None), getattr(args, "route_prefix", None), getattr(args, "routes_file", None)
    single = ["--" + name.replace("_", "-") for name in SINGLE_SOURCE_FLAGS if getattr(args, name, None)]
    if not (routes or prefixes or path):
        if not single:
            raise UsageError("需要指定部署: --deployment-uuid / --name / --config / --registry / --registry-url 之一, "
                             "或用 --route MODEL=DEPLOYMENT (可重复) 把多个部署放在一个网关后面。")
        return None
    if single:
        raise UsageError(f"{single[0]} 与 --route / --route-prefix / --routes-file 不能同时用: 路由中每个部署由 DEPLOYMENT 指定。",
                         "一个部署用 --deployment-uuid / --name; 多个部署都写成 --route MODEL=DEPLOYMENT。")
    if path and (routes or prefixes):
        raise UsageError("--routes-file 与 --route / --route-prefix 不能同时用。", "把所有路由写进同一个路由文件, 或都用命令行参数。")
    return specs_from_file(path) if path else specs_from_flags(routes, prefixes)


def build_options(args: Any) -> GatewayOptions:
    host, port = parse_listen(args.listen)
    token = None
    if args.auth_token_env:
        token = os.environ.get(args.auth_token_env, "").strip()
        if not token:
            raise UsageError(f"环境变量 {args.auth_token_env} 未设置或为空 (--auth-token-env)。",
                             f"先 export {args.auth_token_env}=<足够长的随机字符串>, 客户端用 Authorization: Bearer <同一个值>。")
        if len(token) < 16:
            raise UsageError(f"{args.auth_token_env} 太短 ({len(token)} 个字符), 至少 16 个。", "用 openssl rand -hex 24 生成一个。")
        register_secret(token)
    if not is_loopback_name(host) and token is None:
        raise UsageError(f"监听非回环地址 {host} 需要认证: 加 --auth-token-env VAR。",
                         "不需要对外提供时用默认的 127.0.0.1; 对外时设置一个随机 token 的环境变量并用 --auth-token-env 指定。")
    if getattr(args, "registry_redis", None) and (args.registry or args.registry_url):
        raise UsageError("--registry-redis 与 --registry / --registry-url 不能同时用: 注册表只能有一个来源。",
                         "用 --registry-redis 时用 --deployment-uuid / --name / --config 指定部署。")
    if not getattr(args, "registry_redis", None) and getattr(args, "key_prefix", "autodl-esd") != "autodl-esd":
        raise UsageError("--key-prefix 需要和 --registry-redis 一起使用。")
    if getattr(args, "shared_inflight", False) and not getattr(args, "registry_redis", None):
        raise UsageError("--shared-inflight 需要 --registry-redis (在途计数放在同一个 Redis 里)。")
    if args.registry_url and urlsplit(args.registry_url).scheme not in ("http", "https"):
        raise UsageError(f"--registry-url 不是 http(s) 地址: {args.registry_url!r}", "例: --registry-url http://127.0.0.1:8765")
    for flag, path in (("--health-path", args.health_path), ("--load-path", args.load_path)):
        if path is not None and not path.startswith("/"):
            raise UsageError(f"{flag} 必须以 / 开头: {path!r}", f"例: {flag} /health")
    secrets = tuple(filter(None, [os.environ.get("AUTODL_TOKEN", "").strip()]))
    return GatewayOptions(
        host=host, port=port, policy=args.policy, health_path=args.health_path, load_path=args.load_path,
        interval=args.interval, retries=args.retries, upstream_timeout=args.upstream_timeout,
        max_inflight_per_replica=args.max_inflight_per_replica, max_queue=args.max_queue,
        queue_timeout=args.queue_timeout, drain_seconds=args.drain_seconds, eject_seconds=args.eject_seconds,
        auth_token=token, allowed_hosts=tuple(args.allow_host or ()), never_forward=secrets,
        balance_factor=getattr(args, "balance_factor", None))


def build_source(args: Any, ctx: Any, options: GatewayOptions) -> ReplicaSource:
    stale_after = STALE_AFTER_INTERVALS * args.interval
    if args.registry:
        files.check_input_file(args.registry, "--registry 文件",
                               hint="先用 discover_services.py --watch --out FILE 生成注册表, 或改用 --deployment-uuid 让网关自己发现副本。")
        return FileSource(args.registry, min(args.interval, 1.0), stale_after)
    if args.registry_url:
        return UrlSource(args.registry_url, min(args.interval, 1.0), stale_after)
    if getattr(args, "registry_redis", None):
        return redis_source_for(args, ctx, options)
    client = ctx.client()
    deployment_uuid = resolve_from_args(client, args)["uuid"]
    options.deployment_uuid = deployment_uuid
    ctx.partial["deployment_uuid"] = deployment_uuid
    options.never_forward = tuple({*options.never_forward, client.settings.token})
    return watcher_source(args, ctx, client, deployment_uuid)


def watcher_source(args: Any, ctx: Any, client: Any, deployment_uuid: str) -> WatcherSource:
    """The gateway's own watch of a deployment (its containers, events, health probes)."""
    health = HealthTracker(args.health_path, HEALTH_TIMEOUT_SECONDS, HEALTH_FAILURES) if args.health_path else None
    interval = floor_interval(args.interval, client.host, ctx.progress)
    watch = WatchOptions(interval=interval, resync_every=RESYNC_EVERY, port=args.port, health=health)
    return WatcherSource(RegistryWatcher(client, deployment_uuid, watch, ctx.progress), STALE_AFTER_INTERVALS * interval)


def redis_source_for(args: Any, ctx: Any, options: GatewayOptions) -> RedisSource:
    """--registry-redis: follow the registry another watcher keeps in Redis (scale-out)."""
    deployment_uuid = args.deployment_uuid
    if deployment_uuid is None:  # --name / --config: one look at the deployment list
        deployment_uuid = resolve_from_args(ctx.client(), args)["uuid"]
    options.deployment_uuid = deployment_uuid
    ctx.partial["deployment_uuid"] = deployment_uuid
    return redis_source(args, ctx, deployment_uuid)


def redis_source(args: Any, ctx: Any, deployment_uuid: str) -> RedisSource:
    register_secret(urlsplit(args.registry_redis).password)
    shown = describe_url(args.registry_redis)
    try:
        source = RedisSource(args.registry_redis, deployment_uuid, args.key_prefix)
        source.client.ping()
    except ValueError as problem:  # not a redis:// URL, or a bad prefix
        raise UsageError(f"--registry-redis / --key-prefix 无效: {problem}", "格式: redis://主机:端口/库 (密码放环境变量 AUTODL_REDIS_PASSWORD)") from None
    except redis_errors() as problem:
        raise UsageError(f"连不上 Redis {shown}: {problem}", "确认 redis-server 在运行、地址端口与密码正确。", {"redis": shown}) from None
    return source


@dataclass
class RoutePlan:
    """One route, checked and resolved, nothing started yet."""

    spec: RouteSpec
    deployment_uuid: str
    source: ReplicaSource
    autoscaler: GatewayAutoscaler | None = None


@dataclass
class Prepared:
    options: GatewayOptions
    source: ReplicaSource | None  # one deployment
    autoscaler: GatewayAutoscaler | None
    routes: list[RoutePlan] | None = None  # several (then source and autoscaler are None)


def prepare(args: Any, ctx: Any) -> Prepared:
    """Every check a run makes before it listens (flags, the auth variable, the deployments,
    the registry, the autoscaler's --yes); nothing started. `--detach` runs it in the
    foreground, so bad input is a JSON error there (a missing aiohttp or prometheus_client
    already was, when this module imported the gateway)."""
    specs = route_specs_of(args)
    options = build_options(args)
    policies = {args.policy, *(spec.policy for spec in specs or () if spec.policy)}
    if getattr(args, "balance_factor", None) is not None and "cache_aware" not in policies:
        raise UsageError("--balance-factor 只对 cache_aware 策略有效。", "加 --policy cache_aware, 或去掉 --balance-factor。")
    if specs is not None:
        return Prepared(options, None, None, prepare_routes(args, ctx, options, specs))
    check_autoscale_arguments(args)  # before anything is contacted
    source = build_source(args, ctx, options)
    autoscaler = None
    if args.autoscale:  # the deployment, its bounds and --yes, before anything listens
        autoscaler, _ = prepare_autoscaler(args, ctx, options.deployment_uuid)
    return Prepared(options, source, autoscaler)


def route_deployment(client: Any, spec: RouteSpec) -> dict[str, Any]:
    """The deployment a route names (a uuid, else an exact name); its errors say which route."""
    as_uuid = DEPLOYMENT_UUID_PATTERN.match(spec.deployment)
    try:
        return resolve_deployment(client, **({"deployment_uuid": spec.deployment} if as_uuid else {"name": spec.deployment}))
    except AutoDLError as error:
        raise AutoDLError(error.error_type, f"路由 {spec.origin}: {error.message}", error.hint,
                          {**error.details, "route": spec.name}) from None


def prepare_routes(args: Any, ctx: Any, options: GatewayOptions, specs: list[RouteSpec]) -> list[RoutePlan]:
    autoscaled = [spec for spec in specs if isinstance(spec.autoscale, dict) or (spec.autoscale is None and args.autoscale)]
    if args.autoscale or not autoscaled:  # without --autoscale, a routes file's autoscale objects take the flags' values
        check_autoscale_arguments(args)
    client = ctx.client()
    plans = []
    for spec in specs:
        uuid = route_deployment(client, spec)["uuid"]
        if args.registry_redis:
            source = redis_source(args, ctx, uuid)
        else:
            watcher_client = ApiClient(client.settings, progress=ctx.progress)  # one per watcher thread
            source = watcher_source(args, ctx, watcher_client, uuid)
        plans.append(RoutePlan(spec, uuid, source))
    options.never_forward = tuple({*options.never_forward, client.settings.token})
    ctx.partial["routes"] = {plan.spec.name: plan.deployment_uuid for plan in plans}
    bounds = []
    for plan in plans:
        if plan.spec in autoscaled:
            route_args = argparse.Namespace(**{**vars(args), "autoscale": True, **(plan.spec.autoscale or {})})
            try:
                plan.autoscaler, route_bounds = prepare_autoscaler(route_args, ctx, plan.deployment_uuid, confirm=False)
            except AutoDLError as error:  # say which route's bounds or deployment it is
                error.message = f"路由 {plan.spec.name}: {error.message}"
                error.details["route"] = plan.spec.name
                raise
            bounds.append({"route": plan.spec.name, **route_bounds})
    if bounds and not args.yes:
        raise AutoDLError(
            ErrorType.CONFIRMATION_REQUIRED,
            "自动扩缩容会按负载调整这些路由的部署的副本数, 会购买容器; 未加 --yes, 什么都没有做: " + "; ".join(
                f"{b['route']} ({b['deployment_uuid']}) {b['min_replicas']}-{b['effective_max_replicas']} 个副本" for b in bounds) + "。",
            "把 details.routes 中每个路由的范围、单价、花费上限和最坏情况 (worst_case_hourly_yuan) 告诉用户, 得到同意后加 --yes 重新执行。",
            {"action": "autoscale", "routes": bounds})
    return plans


def prepare_autoscaler(args: Any, ctx: Any, deployment_uuid: str | None, confirm: bool = True) -> tuple[GatewayAutoscaler, dict]:
    """--autoscale (its flags already checked): check the deployment, ask for --yes with the
    bounds (unless `confirm` is False: the caller asks once for every route), and return
    the extension to add to the gateway and the bounds. Everything here runs before the
    gateway listens, so a refusal is the usual JSON error."""
    # Its own client: the autoscaler calls the platform from a worker thread while the
    # registry watcher uses ctx.client() from its own; a requests.Session is not shared.
    client = ApiClient(ctx.client().settings, progress=ctx.progress)
    deployment = deployment_by_uuid(client, deployment_uuid) if deployment_uuid else None
    if deployment is None:
        raise deployment_gone(str(deployment_uuid))
    details = {"deployment_uuid": deployment_uuid, "deployment_type": deployment.get("deployment_type"), "status": deployment.get("status")}
    if deployment.get("deployment_type") != "ReplicaSet":
        raise AutoDLError(ErrorType.USAGE_ERROR, f"部署 {deployment_uuid} 是 {deployment.get('deployment_type')} 类型, 只有 ReplicaSet 能自动扩缩容。",
                          "去掉 --autoscale 只用网关, 或对 ReplicaSet 部署使用。", details)
    if deployment.get("status") != "running":
        raise AutoDLError(ErrorType.USAGE_ERROR, f"部署 {deployment_uuid} 状态是 {deployment.get('status')}, 无法调整副本数。",
                          "已停止的部署不能恢复; 需要服务时用 queue_submit.py 重新提交。", details)
    scaler = ReplicaScaler(client, deployment, log=ctx.progress.log, progress=ctx.progress)
    scaler.observe()  # the containers' reported price, for the bounds below
    current = int(deployment.get("replica_num") or 0)
    try:
        config = autoscale_config(args, current)
    except ValueError as problem:
        raise AutoDLError(ErrorType.USAGE_ERROR, f"自动扩缩容参数不成立: {problem}", "检查 --min-replicas / --max-replicas 等参数。", {}) from None
    bounds = startup_bounds(config, scaler, current)
    if bounds["effective_max_replicas"] == 0 and config.min_replicas > 0:
        raise AutoDLError(ErrorType.USAGE_ERROR,
                          f"--max-hourly-cost {config.max_hourly_cost:g} 元连一个副本都不够 (单价 {bounds['price_per_replica_yuan']} 元/小时"
                          + (", 还没有运行的容器, 按模板的 price_to 计" if bounds["price_source"] == "template_price_to" else "") + ")。",
                          "调高 --max-hourly-cost; 或明确允许缩到 0 (--min-replicas 0)。", bounds)
    if bounds["effective_max_replicas"] < config.min_replicas:
        bounds["warning"] = (f"--max-hourly-cost {config.max_hourly_cost:g} 按单价 {bounds['price_per_replica_yuan']} 元/小时只够 "
                             f"{bounds['effective_max_replicas']} 个副本, 少于 --min-replicas {config.min_replicas}: 花费上限优先。")
    if confirm:
        require_autoscale_confirmation(args, bounds)
    interval = args.interval if is_loopback_host(client.host) else max(args.interval, PLATFORM_MIN_INTERVAL_SECONDS)
    autoscaler = Autoscaler(scaler, config, lambda: LoadSnapshot(), interval=interval,
                            blacklist_faulty=args.blacklist_faulty, log=ctx.progress.log)
    ctx.progress.log(f"自动扩缩容已启用: 副本数 {config.min_replicas}-{bounds['effective_max_replicas']}, 目标每副本 "
                     f"{config.target_inflight:g} 个在途请求; 每个决策是 stderr 上的一行 JSON")
    return GatewayAutoscaler(autoscaler), bounds


def autoscale_config(args: Any, current_replica_num: int) -> AutoscaleConfig:
    """The policy's config from the --autoscale flags (defaults for the ones not given)."""
    min_replicas = DEFAULT_MIN_REPLICAS if args.min_replicas is None else args.min_replicas
    max_replicas = args.max_replicas if args.max_replicas is not None else max(DEFAULT_MAX_REPLICAS, current_replica_num, min_replicas)
    values = {
        "target_inflight": args.target_inflight, "look_back": args.look_back, "upscale_delay": args.upscale_delay,
        "downscale_delay": args.downscale_delay, "scale_to_zero_after": args.scale_to_zero_after,
        "max_hourly_cost": args.max_hourly_cost, "budget": args.budget,
    }
    return AutoscaleConfig(min_replicas=min_replicas, max_replicas=max_replicas,
                           **{key: value for key, value in values.items() if value is not None})


def serve(args: Any, ctx: Any, on_ready: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Listen until a signal (or the deployment's end); `on_ready` gets the ready line's document."""
    prepared = prepare(args, ctx)
    options = prepared.options
    progress = ctx.progress
    shared = getattr(args, "shared_inflight", False)  # counts shared with other gateways and pools, in Redis
    ledgers: list[Any] = []
    access_log = None if args.quiet else progress.log
    if prepared.routes is None:
        sources = [prepared.source]
        if shared:
            ledgers.append(RedisInflightLedger(args.registry_redis, options.deployment_uuid, args.key_prefix))
        gateway = Gateway(prepared.source, options, ledger=ledgers[0] if ledgers else None, log=progress.log, access_log=access_log)
        if prepared.autoscaler is not None:
            gateway.add_extension(prepared.autoscaler)
        autoscalers = {None: prepared.autoscaler} if prepared.autoscaler is not None else {}
    else:
        sources = [plan.source for plan in prepared.routes]
        routes = []
        for plan in prepared.routes:
            ledger = RedisInflightLedger(args.registry_redis, plan.deployment_uuid, args.key_prefix) if shared else None
            ledgers += [ledger] if ledger is not None else []
            routes.append(Route(plan.spec.name, plan.source, options.route_options(deployment_uuid=plan.deployment_uuid, **plan.spec.overrides),
                                model=plan.spec.model, prefix=plan.spec.prefix, ledger=ledger,
                                rng=random.Random(options.seed), log=progress.log))
        gateway = Gateway(None, options, routes=routes, log=progress.log, access_log=access_log)
        autoscalers = {}
        for plan in prepared.routes:
            if plan.autoscaler is not None:
                gateway.add_extension(plan.autoscaler, route=plan.spec.name)
                autoscalers[plan.spec.name] = plan.autoscaler
    for source in sources:
        source.start()
    for source in sources:
        if hasattr(source, "wait_first") and not source.wait_first(FIRST_REGISTRY_WAIT_SECONDS):
            progress.log(f"还没有拿到第一份注册表 ({source.description}), 先开始监听: 请求会排队等待副本")
    try:
        summary = run_loop(_serve(gateway, options, progress, on_ready))
    finally:
        for source in sources:
            source.stop()
        for ledger in ledgers:
            ledger.close()
    for name, autoscaler in autoscalers.items():
        if name is None:
            ended_by = summary.get("stopped_by") if summary.get("stopped_by") in DEPLOYMENT_ENDED_NOTES else None
        else:
            ended_by = gateway.routes[name].ended_by
        report = autoscaler.autoscaler.summary(ended_by) if ended_by else autoscaler.final or autoscaler.autoscaler.summary()
        if name is None:
            summary["autoscaler"] = report
        else:
            next(route for route in summary["routes"] if route["route"] == name)["autoscaler"] = report
    return summary


def run_loop(coroutine: Any) -> Any:
    """Run the gateway on uvloop when it is installed (optional, requirements.txt: less CPU per
    request, see bench/gateway.py's "no uvloop" rows), else on asyncio's own loop."""
    try:
        import uvloop  # optional and heavy: only where the gateway runs
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def _serve(gateway: Any, options: Any, progress: Any, on_ready: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    try:
        url = await gateway.start()
    except OSError as problem:
        raise UsageError(f"--listen {options.host}:{options.port} 无法监听: {problem.strerror or problem}",
                         "换一个端口, 或用端口 0 让系统自动选择 (实际地址见 ready 行的 url)。") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    caught: list[str] = []

    def on_signal(signum: int) -> None:
        if not caught:  # a second signal while draining is ignored: the drain is bounded anyway
            caught.append(signal.Signals(signum).name)
            stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread (tests): stop via gateway_stop_event
    gateway.stop_event = stop
    if gateway.ended_by:  # the deployment ended before the loop got here
        stop.set()
    ready = {"status": "success", "url": url, "deployment_uuid": options.deployment_uuid, "policy": options.policy,
             "status_url": url + "/_gateway/status", "metrics_url": url + "/_gateway/metrics"}
    if gateway.router is not None:  # several deployments: each route's instead of one deployment_uuid
        del ready["deployment_uuid"]
        ready["routes"] = [{**({"model": route.model} if route.model is not None else {"prefix": route.prefix}),
                            "deployment_uuid": route.deployment_uuid, "policy": route.options.policy}
                           for route in gateway.routes.values()]
    emit_line(ready)
    progress.log(f"网关已就绪: {url} (策略 {options.policy}); Ctrl-C 停止")
    try:
        if on_ready is not None:  # a detached gateway's record (detached.run_service)
            on_ready({**{key: value for key, value in ready.items() if key != "status"}, "drain_seconds": options.drain_seconds})
        await stop.wait()
        progress.log(f"收到 {caught[0] if caught else gateway.ended_by or 'stop'}, 停止接受新连接, "
                     f"等待进行中的请求 (最多 {options.drain_seconds:g} 秒)")
        active_at_stop = gateway.active_requests
        drained = await gateway.drain()
    finally:
        await gateway.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(signum)
            except (ValueError, RuntimeError, NotImplementedError):
                pass
    ended = {}
    if gateway.ended_by and not caught and gateway.default_route is not None:
        ended = {"ended_reason": gateway.registry_state().get("ended_reason")}
    return {**gateway.summary(), "stopped_by": caught[0] if caught else gateway.ended_by or "stop", "drained": drained,
            "active_at_stop": active_at_stop, **ended}
