#!/usr/bin/env python3
"""A complete haproxy.cfg for one deployment; discover_services.py then feeds its backend."""

from __future__ import annotations

import os
import re
import shlex

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError
from autodl_esd.platform.containers import primary_service_url

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/haproxy_config.py --deployment-uuid 833f1cd5a764fa3 --out /etc/haproxy/haproxy.cfg --socket /run/haproxy/autodl.sock",
    "python3 scripts/haproxy_config.py --deployment-uuid 833f1cd5a764fa3 --out haproxy.cfg --bind 0.0.0.0:8080 --health-path /health --server-maxconn 1",
]

# Defaults (reasons beside the values in autodl_esd/serving/haproxy.py; repeated so --help
# does not import it).
DEFAULT_BACKEND = "replicas"
DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_METRICS_BIND = "127.0.0.1:8404"
DEFAULT_SOCKET = "/run/haproxy/autodl.sock"
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_CHECK_INTER = "2s"
DEFAULT_CHECK_FALL = 3
DEFAULT_CHECK_RISE = 2
DEFAULT_ERROR_LIMIT = 10
DEFAULT_LONG_TIMEOUT = "1h"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]+$")
DURATION_PATTERN = re.compile(r"^\d+(us|ms|s|m|h|d)?$")
# sun_path holds 108 bytes on Linux, the last one the terminating NUL.
MAX_UNIX_SOCKET_PATH = 107
ADDRESS_PATTERN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]*|\*):\d{1,5}$")


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "haproxy_config.py",
        "生成一个部署的完整 haproxy.cfg: 前端监听 --bind, backend 用 balance leastconn (按在途连接数, 适合 GPU 长请求), "
        "GET --health-path 健康检查, 连接失败/502/503 时 retry-on + option redispatch 换副本重试, "
        "observe layer7 + error-limit 被动摘除, 长请求与 SSE 流式响应不被超时切断 (--long-timeout), "
        "内置 Prometheus 指标 (--metrics-bind 的 /metrics, /stats 页面), 运行时接口 stats socket。"
        "backend 初始为空: 由 discover_services.py --watch --haproxy-socket --haproxy-backend 按容器增删服务器 "
        "(输出里的 feed_command, 可在任意目录直接粘贴运行)。HAProxy 负责转发, 本工具只生成配置。"
        "生成前看一眼运行中副本的服务地址: 地址带路径 (如模拟器默认的 /svc/<uuid>/p6006) 时 HAProxy 无法转发到它们, "
        "warnings 里的 haproxy_cannot_route 说明怎么办 (查不到时 service_urls_checked 为 null)。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser)
    parser.add_argument("--out", metavar="FILE", help="写入的配置文件 (默认: 只在输出 JSON 的 config 字段里给出)")
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT", help=f"客户端访问的地址 (默认 {DEFAULT_BIND}; 对外用 0.0.0.0:PORT)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, metavar="NAME", help=f"backend 名 (默认 {DEFAULT_BACKEND})")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"运行时接口 stats socket 路径 (默认 {DEFAULT_SOCKET})")
    parser.add_argument("--metrics-bind", default=DEFAULT_METRICS_BIND, metavar="HOST:PORT",
                        help=f"Prometheus /metrics 与 /stats 页面的地址 (默认 {DEFAULT_METRICS_BIND})")
    parser.add_argument("--health-path", metavar="PATH",
                        help=f"健康检查路径 (默认 {DEFAULT_HEALTH_PATH}); 指定时 feed_command 的 watcher 也按它探测 (healthy=false 的副本排空)")
    parser.add_argument("--check-interval", default=DEFAULT_CHECK_INTER, metavar="DUR", help=f"健康检查间隔, HAProxy 时长格式 (默认 {DEFAULT_CHECK_INTER})")
    parser.add_argument("--check-fall", type=cli.positive_int, default=DEFAULT_CHECK_FALL, metavar="N", help=f"连续失败几次判定下线 (默认 {DEFAULT_CHECK_FALL})")
    parser.add_argument("--check-rise", type=cli.positive_int, default=DEFAULT_CHECK_RISE, metavar="N", help=f"连续成功几次恢复 (默认 {DEFAULT_CHECK_RISE})")
    parser.add_argument("--error-limit", type=cli.positive_int, default=DEFAULT_ERROR_LIMIT, metavar="N",
                        help=f"请求连续出错几次被动摘除 (observe layer7, 默认 {DEFAULT_ERROR_LIMIT})")
    parser.add_argument("--server-maxconn", type=cli.non_negative_int, default=0, metavar="N",
                        help="每个副本同时处理的请求上限, 多余的在 HAProxy 排队 (默认 0 = 不限; GPU 一次一批时设 1)")
    parser.add_argument("--long-timeout", default=DEFAULT_LONG_TIMEOUT, metavar="DUR",
                        help=f"client/server/tunnel 超时: 长请求与 SSE 不会被切断 (默认 {DEFAULT_LONG_TIMEOUT})")
    feed = parser.add_argument_group("feed_command 里的 watcher (discover_services.py --watch)")
    feed.add_argument("--port", type=int, choices=(6006, 6008), help="用副本哪个端口的服务地址 (默认 6006, 没有时用 6008 / service_url)")
    feed.add_argument("--redis", metavar="URL",
                      help="多台机器各跑一个 HAProxy 时: watcher 经这个 Redis 选出一个轮询 AutoDL, 其余跟随 (redis://主机:端口/库; 密码放环境变量 AUTODL_REDIS_PASSWORD)")
    feed.add_argument("--key-prefix", metavar="P", help="--redis 的键前缀 (默认与 discover_services.py 相同)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.core import files  # after parsing, like the package: pathlib is not free at --help
    from autodl_esd.platform.resolve import resolve_from_args
    from autodl_esd.serving import haproxy

    problems = []
    for flag, value, pattern in (("--backend", args.backend, NAME_PATTERN), ("--check-interval", args.check_interval, DURATION_PATTERN),
                                 ("--long-timeout", args.long_timeout, DURATION_PATTERN),
                                 ("--bind", args.bind, ADDRESS_PATTERN), ("--metrics-bind", args.metrics_bind, ADDRESS_PATTERN)):
        if not pattern.match(value):
            problems.append(f"{flag} {value!r}")
    if not args.socket.startswith("/") or any(ch.isspace() for ch in args.socket):
        problems.append(f"--socket {args.socket!r} (需要不含空格的绝对路径)")
    elif len(args.socket.encode("utf-8", "surrogateescape")) > MAX_UNIX_SOCKET_PATH:
        problems.append(f"--socket 路径过长 (Unix 套接字路径最长 {MAX_UNIX_SOCKET_PATH} 字节, HAProxy 会拒绝启动)")
    health_path = args.health_path or DEFAULT_HEALTH_PATH
    if not health_path.startswith("/") or any(ch.isspace() for ch in health_path):
        problems.append(f"--health-path {health_path!r} (需要以 / 开头、不含空格)")
    if args.key_prefix is not None and not args.redis:
        problems.append("--key-prefix (需要和 --redis 一起使用)")
    if args.redis is not None and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        problems.append(f"--redis {args.redis!r} (格式: redis://主机:端口/库)")
    if problems:
        raise cli.UsageError(f"参数无效: {'; '.join(problems)}",
                             "名字只用字母数字 _.:-; 时长如 2s / 500ms / 1h; 地址如 127.0.0.1:8080 或 0.0.0.0:8080。")
    if args.out:  # before any call: a path that cannot be written is the user's to fix first
        files.check_output_file(args.out, "--out 文件")
    deployment_uuid = args.deployment_uuid
    if deployment_uuid is not None and not re.match(r"^[0-9a-f]{15}$", deployment_uuid):
        raise cli.UsageError(f"--deployment-uuid {deployment_uuid!r} 不是 15 位小写十六进制。")
    if deployment_uuid is None:  # --name / --config: one look at the deployment list
        deployment_uuid = resolve_from_args(ctx.client(), args)["uuid"]
    options = haproxy.server_options(args.check_interval, args.check_fall, args.check_rise, args.error_limit, args.server_maxconn)
    config = haproxy.render_config(deployment_uuid=deployment_uuid, bind=args.bind, backend=args.backend, socket_path=args.socket,
                                   metrics_bind=args.metrics_bind, health_path=health_path, options=options,
                                   long_timeout=args.long_timeout)
    if args.out:  # readable by the haproxy user, like a config written by hand; it holds no secret
        files.write_atomically(args.out, config, "--out 文件", mode=0o644)
    feed, feed_note = feed_command(args, deployment_uuid, options)
    config_path = args.out or "haproxy.cfg"
    pid_path = os.path.splitext(config_path)[0] + ".pid"
    checked, warnings = routing_warnings(ctx, deployment_uuid, args.port)
    return {
        "deployment_uuid": deployment_uuid, "out": args.out, "bind": args.bind, "backend": args.backend, "socket": args.socket,
        "metrics_url": f"http://{args.metrics_bind}/metrics", "server_options": options,
        "check_command": f"haproxy -c -f {shlex.quote(config_path)}",
        # In the background with a pid file: a command that never returns would hold an
        # agent's shell (and its time limit) until killed.
        "start_command": f"haproxy -D -p {shlex.quote(pid_path)} -f {shlex.quote(config_path)}",
        "stop_command": f"kill $(cat {shlex.quote(pid_path)})",
        "feed_command": feed,
        **({"feed_command_note": feed_note} if feed_note else {}),
        "service_urls_checked": checked,
        "warnings": warnings,
        **({} if args.out else {"config": config}),
    }


def feed_command(args, deployment_uuid: str, options: str) -> tuple[str, str | None]:
    """The watcher command that feeds this HAProxy, pasteable from any directory."""
    from pathlib import Path  # after parsing, as in handle
    from urllib.parse import urlsplit

    script = Path(__file__).resolve().parent / "discover_services.py"
    words = ["python3", str(script), "--deployment-uuid", deployment_uuid, "--watch",
             "--haproxy-socket", args.socket, "--haproxy-backend", args.backend, "--haproxy-server-options", options]
    if args.port:
        words += ["--port", str(args.port)]
    if args.health_path:
        words += ["--health-path", args.health_path]
    note = None
    if args.redis:
        redis_url = args.redis
        parts = urlsplit(redis_url)
        if parts.password is not None:  # never print a secret: the watcher reads it from the environment
            host = parts.netloc.rsplit("@", 1)[1]
            redis_url = parts._replace(netloc=f"{parts.username + '@' if parts.username else ''}{host}").geturl()
            note = "feed_command 的 Redis 地址不含密码: 运行前设置环境变量 AUTODL_REDIS_PASSWORD 为 Redis 密码 (watcher 从它读取)。"
        words += ["--redis", redis_url]
        if args.key_prefix:
            words += ["--key-prefix", args.key_prefix]
    return shlex.join(words), note


def routing_warnings(ctx: cli.Context, deployment_uuid: str, port) -> tuple:
    """(how many running replicas' URLs were checked, or None; warnings): haproxy_cannot_route
    when the deployment's replicas have URLs HAProxy cannot route to.

    One look at the running containers, with the URL the watcher would register; when the
    platform cannot be asked (no token, offline) the config is written without the check.
    """
    from autodl_esd.platform import api
    from autodl_esd.serving import haproxy

    try:
        running = api.list_containers(ctx.client(), deployment_uuid, statuses=["running"])
    except AutoDLError as error:
        ctx.progress.log(f"没能查看部署的服务地址, 未检查 HAProxy 能否转发到副本: {error.message}")
        return None, []
    urls = [url for url in (primary_service_url(c, port) for c in running if isinstance(c, dict) and c.get("status") == "running") if url]
    warning = haproxy.routing_warning(urls)
    if warning:
        ctx.progress.log(f"警告: {warning['message']} {warning['hint']}")
    return len(urls), ([warning] if warning else [])
def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
