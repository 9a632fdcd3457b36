"""What scripts/serve_gateway.py runs: flags -> replica source + options -> serve -> summary.

Everything that can be checked (flags, the auth variable, the deployment) is checked before
anything listens, so bad input is the usual JSON error. Once listening: one JSON "ready" line
on stdout; SIGINT/SIGTERM stop accepting, let in-flight requests finish for up to
--drain-seconds, and the final summary is the script's JSON document (exit 0).
`--detach` makes the same checks (`prepare`) in the foreground, then the same run goes on
in the background (service_jobs), its ready document and summary kept in its record.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Callable
from urllib.parse import urlsplit

from ..core.cli import UsageError
from ..core.loopback import is_loopback_name
from ..core.output import emit_line, register_secret
from ..core.polling import floor_interval
from ..platform.resolve import resolve_from_args
from .autoscale_cli import check_autoscale_arguments
from .registry.redis_store import describe_url, redis_errors
from .registry.watcher import HealthTracker, RegistryWatcher, WatchOptions
from .routing.gateway import Gateway, GatewayOptions
from .routing.ledgers import RedisInflightLedger
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


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--listen 不是 HOST:PORT: {text!r}", "例: --listen 127.0.0.1:8000, IPv6 用 [::1]:8000, 端口 0 自动选择。")
    return host, int(port_text)


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
        auth_token=token, allowed_hosts=tuple(args.allow_host or ()), never_forward=secrets)


def build_source(args: Any, ctx: Any, options: GatewayOptions) -> ReplicaSource:
    stale_after = STALE_AFTER_INTERVALS * args.interval
    if args.registry:
        if not os.path.isfile(args.registry):
            raise UsageError(f"--registry 文件不存在: {args.registry}",
                             "先用 discover_services.py --watch --out FILE 生成注册表, 或改用 --deployment-uuid 让网关自己发现副本。")
        return FileSource(args.registry, min(args.interval, 1.0), stale_after)
    if args.registry_url:
        return UrlSource(args.registry_url, min(args.interval, 1.0), stale_after)
    if getattr(args, "registry_redis", None):
        return redis_source(args, ctx, options)
    client = ctx.client()
    deployment_uuid = resolve_from_args(client, args)["uuid"]
    options.deployment_uuid = deployment_uuid
    ctx.partial["deployment_uuid"] = deployment_uuid
    options.never_forward = tuple({*options.never_forward, client.settings.token})
    health = HealthTracker(args.health_path, HEALTH_TIMEOUT_SECONDS, HEALTH_FAILURES) if args.health_path else None
    interval = floor_interval(args.interval, client.host, ctx.progress)
    watch = WatchOptions(interval=interval, resync_every=RESYNC_EVERY, port=args.port, health=health)
    return WatcherSource(RegistryWatcher(client, deployment_uuid, watch, ctx.progress), STALE_AFTER_INTERVALS * interval)


def redis_source(args: Any, ctx: Any, options: GatewayOptions) -> RedisSource:
    """--registry-redis: follow the registry another watcher keeps in Redis (scale-out)."""
    deployment_uuid = args.deployment_uuid
    if deployment_uuid is None:  # --name / --config: one look at the deployment list
        deployment_uuid = resolve_from_args(ctx.client(), args)["uuid"]
    options.deployment_uuid = deployment_uuid
    ctx.partial["deployment_uuid"] = deployment_uuid
    register_secret(urlsplit(args.registry_redis).password)
    shown = describe_url(args.registry_redis)
    try:
        source = RedisSource(args.registry_redis, deployment_uuid, args.key_prefix)
        source.client.ping()
    except ValueError as problem:  # not a redis:// URL, or a bad prefix
        raise UsageError(f"--registry-redis / --key-prefix 无效: {problem}", "格式: redis://[:密码@]主机:端口/库") from None
    except redis_errors() as problem:
        raise UsageError(f"连不上 Redis {shown}: {problem}", "确认 redis-server 在运行、地址端口与密码正确。", {"redis": shown}) from None
    return source


def prepare(args: Any, ctx: Any) -> tuple[Any, Any, Any]:
    """Every check a run makes before it listens (flags, the auth variable, the deployment,
    the registry, the autoscaler's --yes): (options, source, autoscaler), nothing started.
    `--detach` runs it in the foreground, so bad input is a JSON error there (a missing
    aiohttp or prometheus_client already was, when this module imported the gateway)."""
    options = build_options(args)
    check_autoscale_arguments(args)  # before anything is contacted
    source = build_source(args, ctx, options)
    autoscaler = None
    if args.autoscale:  # the deployment, its bounds and --yes, before anything listens
        from .autoscaler import prepare_gateway_autoscaler

        autoscaler = prepare_gateway_autoscaler(args, ctx, options.deployment_uuid)
    return options, source, autoscaler


def serve(args: Any, ctx: Any, on_ready: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Listen until a signal (or the deployment's end); `on_ready` gets the ready line's document."""
    options, source, autoscaler = prepare(args, ctx)
    progress = ctx.progress
    ledger = None
    if getattr(args, "shared_inflight", False):  # counts shared with other gateways and pools, in Redis
        ledger = RedisInflightLedger(args.registry_redis, options.deployment_uuid, args.key_prefix)
    gateway = Gateway(source, options, ledger=ledger, log=progress.log, access_log=None if args.quiet else progress.log)
    if autoscaler is not None:
        gateway.add_extension(autoscaler)
    source.start()
    if hasattr(source, "wait_first") and not source.wait_first(FIRST_REGISTRY_WAIT_SECONDS):
        progress.log("还没有拿到第一份注册表, 先开始监听: 请求会排队等待副本")
    try:
        summary = asyncio.run(_serve(gateway, options, progress, on_ready))
    finally:
        source.stop()
        if ledger is not None:
            ledger.close()
    if autoscaler is not None:
        from .autoscaler import DEPLOYMENT_ENDED_NOTES

        ended_by = summary.get("stopped_by") if summary.get("stopped_by") in DEPLOYMENT_ENDED_NOTES else None
        summary["autoscaler"] = (autoscaler.autoscaler.summary(ended_by) if ended_by
                                 else autoscaler.final or autoscaler.autoscaler.summary())
    return summary


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
    emit_line(ready)
    progress.log(f"网关已就绪: {url} (策略 {options.policy}); Ctrl-C 停止")
    try:
        if on_ready is not None:  # a detached gateway's record (service_jobs)
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
    ended = {"ended_reason": gateway.registry_state().get("ended_reason")} if gateway.ended_by and not caught else {}
    return {**gateway.summary(), "stopped_by": caught[0] if caught else gateway.ended_by or "stop", "drained": drained,
            "active_at_stop": active_at_stop, **ended}
