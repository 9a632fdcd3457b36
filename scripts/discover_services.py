#!/usr/bin/env python3
"""The service registry of a deployment: its running containers' URLs, once or kept current."""

from __future__ import annotations

from autodl_esd import cli

EXAMPLES = [
    "python scripts/discover_services.py --name my-service",
    "python scripts/discover_services.py --name my-service --watch --out registry.json",
    "python scripts/discover_services.py --name my-service --watch --out registry.json --health-path /health",
    "python scripts/discover_services.py --deployment-uuid 833f1cd5a764fa3 --watch --serve 127.0.0.1:8765 --port 6008",
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


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "discover_services.py",
        "服务发现: 列出部署中运行中容器的服务地址 (注册表, 格式见 schemas/registry.schema.json)。"
        "默认查询一次并输出注册表 (不加 --health-path 时 healthy 为 null, 表示未检查); --watch 持续保持最新: 按事件 offset 增量注册/注销, 每 --resync-every "
        "轮全量同步一次, 可选健康检查 (连续 --health-failures 次失败标记 healthy=false, 副本保留, "
        "service_pool 跳过它, 恢复后重新为 true), 原子写入 --out 文件, 可选本机 HTTP 接口 "
        "(GET /services, GET /pick?policy=...)。接口暂时失败时保留上一次的注册表并标记 stale, 不会清空。"
        "Ctrl-C / SIGTERM 正常结束 (退出码 0), 输出汇总。",
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
                             "--watch 时每轮探测; 不指定时单次查询的 healthy 为 null (未检查)")
    parser.add_argument("--health-timeout", type=cli.positive_seconds, default=DEFAULT_HEALTH_TIMEOUT_SECONDS, metavar="S",
                        help=f"单次健康检查超时秒数 (默认 {DEFAULT_HEALTH_TIMEOUT_SECONDS:g})")
    parser.add_argument("--health-failures", type=cli.positive_int, default=DEFAULT_HEALTH_FAILURES, metavar="K",
                        help=f"连续失败几次标记 healthy=false (默认 {DEFAULT_HEALTH_FAILURES})")
    parser.add_argument("--resync-every", type=cli.positive_int, default=DEFAULT_RESYNC_EVERY, metavar="N",
                        help=f"每 N 轮做一次全量容器列表同步, 修复漏掉的事件 (默认 {DEFAULT_RESYNC_EVERY})")
    parser.add_argument("--max-cycles", type=cli.positive_int, metavar="N", help="--watch 最多轮询 N 轮后结束")
    parser.add_argument("--duration", type=cli.positive_seconds, metavar="S", help="--watch 最多运行 S 秒后结束")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.serving import registry
    from autodl_esd.resolve import resolve_from_args

    watch_only = [flag for flag, value in (("--out", args.out), ("--serve", args.serve),
                                           ("--max-cycles", args.max_cycles), ("--duration", args.duration)) if value]
    if watch_only and not args.watch:
        raise cli.UsageError(f"{', '.join(watch_only)} 只在 --watch 模式下有效。", "加 --watch, 或去掉这些参数只查询一次。")
    serve_at = None
    if args.serve:
        try:
            serve_at = registry.parse_loopback_address(args.serve)
        except ValueError as problem:
            raise cli.UsageError(f"--serve 无效: {problem}") from None

    if args.out:
        try:
            registry.check_writable(args.out)
        except ValueError as problem:
            raise cli.UsageError(f"--out 无效: {problem}", "换一个已存在且可写的目录中的文件。") from None

    client = ctx.client()
    deployment_uuid = resolve_from_args(client, args)["uuid"]
    health = None
    if args.health_path:
        # One-shot: a single probe decides (there is no "in a row" in one look).
        failures = args.health_failures if args.watch else 1
        health = registry.HealthTracker(args.health_path, args.health_timeout, failures)
    if not args.watch:
        return registry.build_registry(client, deployment_uuid, args.port, ctx.progress, health=health)
    from autodl_esd.polling import floor_interval

    interval = floor_interval(args.interval, client.host, ctx.progress)
    options = registry.WatchOptions(interval=interval, port=args.port, resync_every=args.resync_every, out=args.out,
                                    max_cycles=args.max_cycles, duration=args.duration, health=health)
    watcher = registry.RegistryWatcher(client, deployment_uuid, options, ctx.progress)
    ctx.partial["deployment_uuid"] = deployment_uuid
    endpoint = None
    if serve_at:
        try:
            endpoint = registry.RegistryEndpoint(*serve_at, registry=lambda: watcher.document).start()
        except OSError as problem:  # port taken, or no such loopback address on this machine
            raise cli.UsageError(f"--serve {args.serve} 无法监听: {problem.strerror or problem}",
                                 "换一个端口, 或用端口 0 让系统自动选择 (实际地址见输出的 serve)。") from None
        ctx.progress.log(f"注册表接口: {endpoint.url}/services  {endpoint.url}/pick?policy=least_inflight")
    try:
        stopped_by = watcher.run()
    finally:
        if endpoint:
            endpoint.stop()
    ctx.progress.log(f"结束 ({stopped_by}): {watcher.cycles} 轮, 注册 {watcher.registered}, 注销 {watcher.deregistered}")
    return {**watcher.summary(), "stopped_by": stopped_by, "serve": endpoint.url if endpoint else None}


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
