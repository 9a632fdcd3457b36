#!/usr/bin/env python3
"""The service registry of a deployment: its running containers' URLs, once or kept current."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.output import register_secret
from autodl_esd.platform.containers import single_machine_warning

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/discover_services.py --name my-service",
    "python3 scripts/discover_services.py --name my-service --watch --out registry.json",
    "python3 scripts/discover_services.py --name my-service --watch --out registry.json --health-path /health",
    "python3 scripts/discover_services.py --deployment-uuid 833f1cd5a764fa3 --watch --serve 127.0.0.1:8765 --port 6008",
    "python3 scripts/discover_services.py --name my-service --watch --redis redis://10.0.0.5:6379/0",
    "python3 scripts/discover_services.py --name my-service --watch --haproxy-socket /run/haproxy/autodl.sock --haproxy-backend replicas --health-path /health",
    "python3 scripts/discover_services.py --name my-service --watch --out registry.json --detach   # 后台运行, 立即返回 run_id; 停止: jobs.py --cancel ID",
]

# Defaults live here, not in autodl_esd.serving.registry, so that --help does not import the
# registry (and with it urllib.request, http.server, concurrent.futures and the API client).
# Container states change on the scale of seconds (image pull, start-up, a crash); 5 s
# keeps the registry within one poll of the truth without loading the API.
DEFAULT_INTERVAL_SECONDS = 5.0
# A missed or reordered event heals on the next full listing: every 12 polls is once a
# minute at the default interval, one extra list call per minute.
DEFAULT_RESYNC_EVERY = 12
# A health endpoint answers without touching the GPU; 2 s tells a busy replica from a hung one.
DEFAULT_HEALTH_TIMEOUT_SECONDS = 2.0
# One lost probe on a loaded GPU server is noise; three in a row (15 s at the default
# 5 s interval) is a replica that should get no traffic.
DEFAULT_HEALTH_FAILURES = 3
# Scale-out defaults (values and reasons: autodl_esd/serving/registry/redis_store.py and
# haproxy.py; repeated here so --help imports neither).
DEFAULT_KEY_PREFIX = "autodl-esd"
# The lock (and the heartbeat) live three intervals: one slow cycle (API retries) does not
# hand the watch to a standby, while a dead watcher is replaced within ~15 s at the default
# interval. Never below 10 s, so a sub-second --interval does not make it flap.
LOCK_TTL_INTERVALS = 3
MIN_LOCK_TTL_SECONDS = 10.0


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "discover_services.py",
        "服务发现: 列出部署中运行中容器的服务地址 (注册表, 格式见 schemas/registry.schema.json)。"
        "默认查询一次并输出注册表 (不加 --health-path 时 healthy 为 null, 表示未检查); --watch 持续保持最新: 按事件 offset 增量注册/注销, 每 --resync-every "
        "轮全量同步一次, 可选健康检查 (连续 --health-failures 次失败标记 healthy=false, 副本保留, "
        "service_pool 跳过它, 恢复后重新为 true), 原子写入 --out 文件, 可选本机 HTTP 接口 "
        "(GET /services, GET /pick?policy=...)。接口暂时失败时保留上一次的注册表并标记 stale, 不会清空。"
        "部署被停止或删除 (平台连续 2 次明确这样回答; 接口错误不算) 时发布空注册表 (ended) 并结束, "
        "stopped_by 为 deployment_stopped / deployment_gone。Ctrl-C / SIGTERM 正常结束 (退出码 0), 输出汇总。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser)
    parser.add_argument("--port", type=int, choices=(6006, 6008), help="用哪个端口的服务地址 (默认: 6006, 没有时用 6008 / service_url)")
    parser.add_argument("--watch", action="store_true", help="持续保持注册表最新, 直到 Ctrl-C 或 --max-cycles / --duration")
    parser.add_argument("--interval", type=cli.positive_seconds, default=DEFAULT_INTERVAL_SECONDS, metavar="S",
                        help=f"--watch 轮询事件的间隔秒数, 可为小数 (默认 {DEFAULT_INTERVAL_SECONDS:g})")
    parser.add_argument("--out", metavar="FILE", help="--watch 每轮原子写入注册表的文件 (读者永远读到完整的 JSON)")
    parser.add_argument("--serve", metavar="HOST:PORT", help="--watch 时在本机回环地址提供 GET /services 与 GET /pick (如 127.0.0.1:8765; 端口 0 自动选择)")
    parser.add_argument("--health-path", metavar="PATH",
                        help="GET <服务地址><PATH> 做健康检查, 如 /health: 单次查询时探测一次 (healthy true/false), "
                             "--watch 时每轮探测; 不指定时 healthy 为 null (未检查; 单次和 --watch 相同)")
    parser.add_argument("--health-timeout", type=cli.positive_seconds, default=DEFAULT_HEALTH_TIMEOUT_SECONDS, metavar="S",
                        help=f"单次健康检查超时秒数 (默认 {DEFAULT_HEALTH_TIMEOUT_SECONDS:g})")
    parser.add_argument("--health-failures", type=cli.positive_int, default=DEFAULT_HEALTH_FAILURES, metavar="K",
                        help=f"连续失败几次标记 healthy=false (默认 {DEFAULT_HEALTH_FAILURES})")
    parser.add_argument("--resync-every", type=cli.positive_int, default=DEFAULT_RESYNC_EVERY, metavar="N",
                        help=f"每 N 轮做一次全量容器列表同步, 修复漏掉的事件 (默认 {DEFAULT_RESYNC_EVERY})")
    scale = parser.add_argument_group("多台机器 (Redis / HAProxy)")
    scale.add_argument("--redis", metavar="URL",
                       help="--watch 时把注册表写入 Redis (redis://主机:端口/库; 密码放环境变量 AUTODL_REDIS_PASSWORD): 每个部署一个键 + 变化通知频道 + 带 TTL 的心跳; "
                            "多个 watcher 同时运行时由 Redis 锁选出一个轮询 AutoDL, 其余待命并在它失联后接管")
    scale.add_argument("--key-prefix", default=DEFAULT_KEY_PREFIX, metavar="P", help=f"Redis 键前缀 (默认 {DEFAULT_KEY_PREFIX})")
    scale.add_argument("--lock-ttl", type=cli.positive_seconds, metavar="S",
                       help=f"watcher 锁与心跳的 TTL 秒数: 活动 watcher 每轮续期, 失联 S 秒内由待命者接管 "
                            f"(默认 max({LOCK_TTL_INTERVALS}×--interval, {MIN_LOCK_TTL_SECONDS:g}); 至少 2×--interval)")
    scale.add_argument("--haproxy-socket", metavar="PATH",
                       help="--watch 时通过 HAProxy 运行时接口 (stats socket, level admin) 同步 --haproxy-backend: "
                            "新容器 add server, 离开的先 maint 再 del server, healthy=false 的 drain; 服务器名为容器 UUID")
    scale.add_argument("--haproxy-backend", metavar="NAME", help="要同步的 HAProxy backend 名 (scripts/haproxy_config.py 生成的配置里)")
    scale.add_argument("--haproxy-server-options", metavar="OPTS",
                       help="add server 时附加的参数 (默认与 haproxy_config.py 的默认一致: 健康检查 + observe layer7 被动摘除)")
    parser.add_argument("--max-cycles", type=cli.positive_int, metavar="N", help="--watch 最多轮询 N 轮后结束")
    parser.add_argument("--duration", type=cli.positive_seconds, metavar="S", help="--watch 最多运行 S 秒后结束")
    parser.add_argument("--detach", action="store_true",
                        help="与 --watch 一起用: 在后台运行 (会话结束后仍在), 先在前台检查参数与部署, 写出第一份注册表后立即返回 "
                             "run_id (w-...)、pid、registry 与日志路径; 用 scripts/jobs.py --list / --status ID / --cancel ID / --resume ID 管理")
    parser.add_argument("--job-id", metavar="ID", help="后台进程自己使用 (由 --detach 传入), 不需要手动指定")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.serving import detached

    if args.job_id and not args.detach:  # the detached process: the same run, under its job record
        return detached.run_service(args.job_id, lambda on_ready: discover(args, ctx, on_ready))
    return discover(args, ctx)


def discover(args, ctx: cli.Context, on_ready=None) -> dict:
    from autodl_esd.core import files
    from autodl_esd.core.polling import floor_interval
    from autodl_esd.platform.resolve import resolve_from_args
    from autodl_esd.serving import detached
    from autodl_esd.serving.registry import endpoint as registry_endpoint
    from autodl_esd.serving.registry import redis_store
    from autodl_esd.serving.registry import watcher as registry_watcher

    if args.detach and args.job_id:
        raise cli.UsageError("--detach 与 --job-id 不能同时用。", "去掉 --job-id (它只给后台进程自己用)。")
    watch_only = [flag for flag, value in (("--out", args.out), ("--serve", args.serve),
                                           ("--max-cycles", args.max_cycles), ("--duration", args.duration),
                                           ("--redis", args.redis), ("--haproxy-socket", args.haproxy_socket),
                                           ("--detach", args.detach), ("--job-id", args.job_id)) if value]
    if watch_only and not args.watch:
        raise cli.UsageError(f"{', '.join(watch_only)} 只在 --watch 模式下有效。", "加 --watch, 或去掉这些参数只查询一次。")
    check_scale_out_flags(args)
    if args.detach:
        detached.refuse_passwords_in({"--redis": args.redis})
    serve_at = None
    if args.serve:
        try:
            serve_at = registry_endpoint.parse_loopback_address(args.serve)
        except ValueError as problem:
            raise cli.UsageError(f"--serve 无效: {problem}") from None

    if args.out:
        files.check_output_file(args.out, "--out 文件")

    client = ctx.client()
    deployment = resolve_from_args(client, args)
    deployment_uuid = deployment["uuid"]
    health = None
    if args.health_path:
        # One-shot: a single probe decides (there is no "in a row" in one look).
        failures = args.health_failures if args.watch else 1
        health = registry_watcher.HealthTracker(args.health_path, args.health_timeout, failures)
    if not args.watch:
        document = registry_watcher.build_registry(client, deployment_uuid, args.port, ctx.progress, health=health)
        return {**document, "warnings": _single_machine(document, deployment)}
    interval = floor_interval(args.interval, client.host, ctx.progress)
    options = registry_watcher.WatchOptions(interval=interval, port=args.port, resync_every=args.resync_every, out=args.out,
                                            max_cycles=args.max_cycles, duration=args.duration, health=health)
    watcher = registry_watcher.RegistryWatcher(client, deployment_uuid, options, ctx.progress)
    ctx.partial["deployment_uuid"] = deployment_uuid
    haproxy_sync = haproxy_sink(args, deployment_uuid, ctx) if args.haproxy_socket else None
    local_sinks = [haproxy_sync] if haproxy_sync else []
    redis_watch = redis_runner(args, watcher, interval, local_sinks, ctx) if args.redis else None
    if redis_watch is None:
        options.sinks.extend(local_sinks)
    if args.detach:  # every check above passed: the same watch, in the background
        argv = cli.command_line(build_parser(), args, drop=("detach", "job_id"), paths=("config", "out", "haproxy_socket"))
        return {**detached.start_detached("watch", "discover_services.py", argv, ctx.progress), "detached": True}
    endpoint = None
    if serve_at:
        try:
            endpoint = registry_endpoint.RegistryEndpoint(*serve_at, registry=lambda: watcher.document).start()
        except OSError as problem:  # port taken, or no such loopback address on this machine
            raise cli.UsageError(f"--serve {args.serve} 无法监听: {problem.strerror or problem}",
                                 "换一个端口, 或用端口 0 让系统自动选择 (实际地址见输出的 serve)。") from None
        ctx.progress.log(f"注册表接口: {endpoint.url}/services  {endpoint.url}/pick?policy=least_inflight")
    if on_ready is not None:  # ready once the first registry is out (--out written, --serve answering)
        ready = {"deployment_uuid": deployment_uuid, "registry": args.out, "url": endpoint.url if endpoint else None,
                 "redis": redis_store.describe_url(args.redis) if redis_watch else None}
        options.on_ready = lambda: on_ready({key: value for key, value in ready.items() if value is not None})
    try:
        stopped_by = redis_watch.run() if redis_watch else watcher.run()
    finally:
        if endpoint:
            endpoint.stop()
    ctx.progress.log(f"结束 ({stopped_by}): {watcher.cycles} 轮, 注册 {watcher.registered}, 注销 {watcher.deregistered}")
    result = {**watcher.summary(), "stopped_by": stopped_by, "serve": endpoint.url if endpoint else None}
    if redis_watch:
        result["redis"] = redis_watch.summary(args.redis, args.key_prefix)
    if haproxy_sync:
        result["haproxy"] = haproxy_sync.summary()
        warning = haproxy_sync.warning()
        if warning:
            ctx.progress.log(f"HAProxy: {len(haproxy_sync.ever_skipped)} 个副本 HAProxy 无法转发, 被跳过, 没有加入 backend {args.haproxy_backend}")
            result["warnings"] = [warning]
    return result


def check_scale_out_flags(args) -> None:
    """The Redis / HAProxy flags make sense only together with their main flag."""
    if not args.redis:
        extra = [flag for flag, value in (("--lock-ttl", args.lock_ttl),
                                          ("--key-prefix", args.key_prefix != DEFAULT_KEY_PREFIX)) if value]
        if extra:
            raise cli.UsageError(f"{', '.join(extra)} 需要和 --redis 一起使用。", "加 --redis URL, 或去掉这些参数。")
    if bool(args.haproxy_socket) != bool(args.haproxy_backend):
        raise cli.UsageError("--haproxy-socket 与 --haproxy-backend 要一起给出。",
                             "例: --haproxy-socket /run/haproxy/autodl.sock --haproxy-backend replicas")
    if args.haproxy_server_options and not args.haproxy_socket:
        raise cli.UsageError("--haproxy-server-options 需要和 --haproxy-socket 一起使用。")
    if args.lock_ttl is not None and args.lock_ttl < 2 * args.interval:
        raise cli.UsageError(f"--lock-ttl {args.lock_ttl:g} 小于 2×--interval ({2 * args.interval:g}): 活动 watcher 来不及续期, 锁会来回易主。",
                             "加大 --lock-ttl, 或减小 --interval。")


def redis_runner(args, watcher, interval: float, local_sinks: list, ctx: cli.Context):
    """The Redis-backed watch (publish + lock), after checking the server answers."""
    from urllib.parse import urlsplit  # here, not at the top: urllib.parse is not free at --help

    from autodl_esd.serving.registry import redis_store
    from autodl_esd.serving.registry.redis_watcher import RedisWatch

    try:
        register_secret(urlsplit(args.redis).password)
        keys = redis_store.RedisKeys(watcher.deployment_uuid, args.key_prefix)
    except ValueError as problem:
        raise cli.UsageError(f"--redis / --key-prefix 无效: {problem}") from None
    shown = redis_store.describe_url(args.redis)
    try:
        client = redis_store.connect(args.redis)
        client.ping()
    except ValueError as problem:  # not a redis:// URL
        raise cli.UsageError(f"--redis 不是有效的 Redis 地址: {problem}", "格式: redis://主机:端口/库, 如 redis://127.0.0.1:6379/0 (密码放环境变量 AUTODL_REDIS_PASSWORD)") from None
    except redis_store.redis_errors() as problem:
        raise cli.UsageError(f"连不上 Redis {shown}: {problem}", "确认 redis-server 在运行、地址端口与密码正确、防火墙放行。",
                             {"redis": shown}) from None
    lock_ttl = args.lock_ttl or max(LOCK_TTL_INTERVALS * interval, MIN_LOCK_TTL_SECONDS)
    if lock_ttl < 2 * interval:  # the interval may have been raised to the platform's floor
        lock_ttl = 2 * interval
    ctx.progress.log(f"注册表写入 Redis {shown} 键 {keys.registry} (通知频道 {keys.channel})")
    return RedisWatch(watcher, client, keys, lock_ttl, local_sinks, ctx.progress)


def haproxy_sink(args, deployment_uuid: str, ctx: cli.Context):
    """The HAProxy backend sync, after checking the socket answers and the backend exists."""
    from autodl_esd.serving import haproxy

    runtime = haproxy.RuntimeApi(args.haproxy_socket)
    try:
        runtime.servers(args.haproxy_backend)
    except haproxy.RuntimeApiError as problem:
        raise cli.UsageError(f"HAProxy 同步无法开始: {problem}",
                             "确认 HAProxy 在运行, 配置里有 `stats socket <PATH> level admin` 和这个 backend "
                             "(scripts/haproxy_config.py 生成的配置两者都有)。",
                             {"haproxy_socket": args.haproxy_socket, "haproxy_backend": args.haproxy_backend}) from None
    options = args.haproxy_server_options or haproxy.DEFAULT_SERVER_OPTIONS
    ctx.progress.log(f"同步 HAProxy backend {args.haproxy_backend} (运行时接口 {args.haproxy_socket})")
    return haproxy.BackendSync(runtime, args.haproxy_backend, deployment_uuid, options, ctx.progress)


def _single_machine(document: dict, deployment: dict) -> list:
    """single_machine: every running replica on one host (one failure takes the service down)."""
    running = [{"uuid": s["container_uuid"], "machine_id": s["machine_id"], "status": "running"} for s in document["services"]]
    warning = single_machine_warning(running, deployment)
    return [warning] if warning else []


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
