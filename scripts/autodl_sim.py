#!/usr/bin/env python3
"""Run the local AutoDL elastic-deployment API simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys

EPILOG = """\
examples:
  python3 scripts/autodl_sim.py
  python3 scripts/autodl_sim.py --speed 600 --faults "error_rate=0.1,create_slow_seconds=3"
  python3 scripts/autodl_sim.py --dialect private --stock-shape dict --cluster my_cluster.json
  python3 scripts/autodl_sim.py --speed 30 --service-ports auto      # for HAProxy: one host:port per replica

  then point the skill at it:
  AUTODL_HOST=<url from the ready line> AUTODL_TOKEN=sim-token python3 queue_submit.py examples/...

output:
  stdout gets one JSON line once the server listens:
    {"status": "success", "url": "http://127.0.0.1:PORT", "token": "sim-token"}
  bad arguments or a bad cluster file give {"status": "error", ...} instead.

timestamps:
  every timestamp the simulator answers (created_at, started_at, events, ...) is +08:00 like
  the platform's; the clock starts at the wall-clock time the simulator starts and then runs
  --speed simulated seconds per real second, so with --speed > 1 it runs AHEAD of the wall
  clock (at --speed 60, one real minute later it shows one hour later). Compare timestamps
  with each other, not with your own clock; POST /_sim/advance jumps it further ahead.
  Durations elapse faster too: limits counted on the platform clock (guard_deployment.py
  --max-runtime / --max-cost, queue_submit.py --max-runtime) end --speed times sooner in
  real time (at --speed 30 a 3-hour --max-runtime stops the deployment ~6 real minutes
  later), while --interval / --guard-interval stay REAL seconds. A guard measures the
  platform clock's rate (shown as platform_clock_rate + clock_note) and never sleeps past
  a deadline it can compute.

dialects:
  both     (default) accepts private and public templates; short GPU names (RTX 4090), list stock
  public   requires dc_list + cuda_v_from/cuda_v_to; private-only routes answer 404
  private  what a live private cluster showed: GPUs named the vendor's way
           ("NVIDIA GeForce RTX 4090"; /_sim/occupy takes either spelling), the global stock
           as a dict keyed by that name (--stock-shape list for the older shape), deployment
           and container views without public-only fields (reuse_container_scope,
           service_6006/6008_port_protocol, data_center), public-only routes answer 404.
           A create's dc_list and cuda_v_from/cuda_v_to are accepted and ignored, not
           rejected: the upstream skill sends them on every create and reports a working
           private create, and the private cloud has no regions (its CUDA is cuda_v).

service ports:
  by default every container's service shares the simulator's port and is selected by path
  (<url>/svc/<container_uuid>/p6006); the pool and serve_gateway.py route to such URLs, but
  HAProxy cannot (it needs a host:port per server). --service-ports auto gives every
  container its own port on --host (--service-ports 9100-9199: from that range), and the
  service URLs carry no path, like the private cloud's proxy_host:custom_port.

exit codes:
  0  stopped by SIGINT/SIGTERM
  1  bad arguments (usage_error) or unusable cluster file (config_error)

faults SPEC (comma separated key=value):
  error_rate=F  slow_rate=F  slow_seconds=S  create_slow_seconds=S  create_error_after_commit=N
  commit_delay_seconds=S  commit_delay_rate=F   (writes sleep S BEFORE committing: they land late)

test controls (JSON body, same Authorization token, same envelope as the API):
  GET  /_sim/state                               clock, machines, deployments, containers
  GET  /_sim/requests                            recent API requests seen
  POST /_sim/advance  {"seconds": S}             jump simulated time forward (at most a year)
  POST /_sim/occupy   {"gpu_name": G, "count": N, "seconds": S}   other tenants take GPUs
  POST /_sim/release                             give every occupied GPU back
  POST /_sim/crash    {"container_uuid": U, "exit_code": 1}       a container dies now
  POST /_sim/faulty   {"machine_id": M, "faulty": true}  containers started there crash soon
  POST /_sim/latency  {"machine_id": M, "seconds": S}    delay of that machine's /svc answers
  POST /_sim/concurrency {"machine_id": M, "requests": N}  requests one container there serves at once
  e.g. curl -X POST -H "Authorization: sim-token" -d '{"machine_id": "4f1c2a9be0", "faulty": true}' URL/_sim/faulty
"""


MAX_SPEED = 1e6
MAX_BALANCE_YUAN = 1e9


class UsageError(Exception):
    pass


class JsonArgumentParser(argparse.ArgumentParser):
    """argparse that reports mistakes as a usage_error instead of exiting with text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 meaning "any free port"."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"不是端口号: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"端口 {port} 不在 0..65535 之间")
    return port


def service_ports(text: str) -> bool | tuple[int, int]:
    """argparse type: "auto" (the system picks each port) or a LOW-HIGH port range."""
    if text == "auto":
        return True
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high) <= 65535:
        raise argparse.ArgumentTypeError(f"应为 auto 或 LOW-HIGH (1 <= LOW <= HIGH <= 65535), 收到 {text!r}")
    return int(low), int(high)


def build_parser() -> JsonArgumentParser:
    parser = JsonArgumentParser(
        prog="autodl_sim.py",
        description="本地模拟 AutoDL 弹性部署 API（不花钱、不联网），供演示、端到端测试和试运行配置使用。",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="listen address (default 127.0.0.1); any other address (\"\" or 0.0.0.0 is every "
                             "interface) needs --token with a token of your own, or --allow-public-bind")
    parser.add_argument("--port", type=port_number, default=0, help="listen port; 0 picks a free one (default)")
    parser.add_argument("--token", default=None, help="token clients must send (default: sim-token)")
    parser.add_argument("--allow-public-bind", action="store_true",
                        help="listen on a non-loopback --host with the well-known default token (anyone on the "
                             "network can then drive the simulator)")
    parser.add_argument("--cluster", default=None, help="cluster JSON file (default: the bundled cluster)")
    parser.add_argument("--speed", type=float, default=None,
                        help="simulated seconds per real second, 0 < S <= 1e6 (default 60); timestamps start "
                             "at the wall clock and run ahead of it when > 1 (see timestamps below)")
    parser.add_argument("--seed", type=int, default=0, help="seed for ids, crashes and faults (default 0)")
    parser.add_argument("--faults", default=None, help="fault SPEC, see below")
    parser.add_argument("--dialect", choices=("private", "public", "both"), default="both",
                        help="which template dialect to accept (default both); see dialects below")
    parser.add_argument("--stock-shape", choices=("list", "dict"), default=None,
                        help="shape of GET .../machine/gpu_stock data (default: dict for --dialect private, "
                             "list otherwise)")
    parser.add_argument("--gpu-names", choices=("vendor", "cluster"), default=None,
                        help="vendor: GPUs named like the private cloud reports them (NVIDIA GeForce RTX 4090); "
                             "cluster: as the cluster file writes them (default: vendor for --dialect private, "
                             "cluster otherwise)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--balance-yuan", type=float, default=None,
                        help="wallet balance at start in yuan (default 500); running containers draw it down")
    parser.add_argument("--blocked-yuan", type=float, default=None,
                        help="money frozen inside that balance in yuan (blocked_asset, default 0): not available to spend")
    parser.add_argument("--service-ports", type=service_ports, default=None, metavar="auto|LOW-HIGH",
                        help="give every container's service its own port (URLs without a path, which HAProxy "
                             "needs): auto = free ports, LOW-HIGH = from that range (default: one shared port, /svc/<uuid> paths)")
    parser.add_argument("--gated", action="store_true",
                        help="account without enterprise verification: deployment routes answer 无当前资源访问权限")
    return parser


def emit(document: dict) -> None:
    import json  # here and below, not at the top: --help stays as fast as a bare start

    print(json.dumps(document, ensure_ascii=False, allow_nan=False), flush=True)


def fail(error_type: str, message: str, hint: str, **details: object) -> int:
    from autodl_esd.core.errors import ErrorType, error_document  # the bundle's one error shape

    emit(error_document(ErrorType(error_type), message, hint, dict(details)))
    return 1


def is_loopback(host: str) -> bool:
    import ipaddress  # after parsing, like json above

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return fail("usage_error", f"命令行参数错误：{exc}", "运行 python3 scripts/autodl_sim.py --help 查看用法")

    # After parsing: the simulator (an HTTP server and a whole fake platform) is the slow part.
    import threading

    from simulator import DEFAULT_TOKEN, ClusterConfigError, Simulator
    from simulator.app import DEFAULT_SPEED

    # A wallet of nan/inf (or past 10^9 yuan) would make every balance answer non-JSON or absurd.
    if args.balance_yuan is not None and not (0 <= args.balance_yuan <= MAX_BALANCE_YUAN):
        return fail("usage_error", f"--balance-yuan 必须是有限数, 0 <= 余额 <= {MAX_BALANCE_YUAN:g}", "例如 --balance-yuan 500")
    if args.blocked_yuan is not None and not (0 <= args.blocked_yuan <= MAX_BALANCE_YUAN):
        return fail("usage_error", f"--blocked-yuan 必须是有限数, 0 <= 冻结金额 <= {MAX_BALANCE_YUAN:g}", "例如 --blocked-yuan 5")
    # nan/inf would freeze or explode the simulated clock; past 10^6 timestamps outrun any test.
    if args.speed is not None and not (0 < args.speed <= MAX_SPEED):
        return fail("usage_error", f"--speed 必须是有限数, 0 < 速度 <= {MAX_SPEED:g}",
                    "例如 --speed 60（模拟 1 分钟 = 真实 1 秒）")
    token = DEFAULT_TOKEN if args.token is None else args.token
    if not is_loopback(args.host):
        # Every machine on the network could drive a simulator whose token is the documented one.
        if token == DEFAULT_TOKEN and not args.allow_public_bind:
            return fail("usage_error", f"拒绝在非回环地址 {args.host!r} 上用公开的默认令牌 {DEFAULT_TOKEN} 监听 "
                        "(空字符串和 0.0.0.0 表示所有网卡)。",
                        "本机使用时去掉 --host (默认 127.0.0.1); 确实要对外时加 --token 自己的随机令牌, "
                        "或明确加 --allow-public-bind。", host=args.host)
        print(f"warning: listening on {args.host or 'every interface'}, not loopback; the token travels in clear",
              file=sys.stderr)
    try:
        sim = Simulator(
            token=token, cluster=args.cluster,
            speed=args.speed or DEFAULT_SPEED, seed=args.seed, faults=args.faults,
            host=args.host, port=args.port, dialect=args.dialect,
            stock_shape=args.stock_shape, gpu_names=args.gpu_names, verbose=args.verbose,
            balance_yuan=args.balance_yuan, blocked_yuan=args.blocked_yuan, gated=args.gated,
            service_ports=args.service_ports or False,
        )
    except ClusterConfigError as exc:
        return fail("config_error", f"集群文件不可用: {exc}",
                    "按 details.problems 逐条修正; 格式见 references/simulator.md 的集群文件。",
                    path=exc.source, problems=exc.problems)
    except ValueError as exc:
        return fail("usage_error", f"参数错误：{exc}", "运行 python3 scripts/autodl_sim.py --help 查看用法")
    try:
        sim.start()
    except OSError as exc:
        return fail("usage_error", f"无法监听 {args.host}:{args.port}：{exc.strerror or exc}",
                    "换一个端口，或用 --port 0 自动选择")

    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    emit({"status": "success", "url": sim.url, "token": sim.token})
    print(f"simulator listening on {sim.url} (speed x{sim.clock.speed:g}); Ctrl-C to stop",
          file=sys.stderr)
    # Wake up regularly: a bare wait() may not notice a signal on every platform.
    while not stop_requested.wait(0.5):
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
