#!/usr/bin/env python3
"""The serving gateway: one stable URL in front of a deployment's replicas, for any client."""

from __future__ import annotations


from autodl_esd.core import cli
from autodl_esd.serving.autoscale.cli import add_autoscale_arguments

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/serve_gateway.py --name my-service",
    "python3 scripts/serve_gateway.py --name my-llm --port 6008 --policy queue_aware --load-path /metrics --health-path /health",
    "python3 scripts/serve_gateway.py --registry registry.json --listen 127.0.0.1:8000 --max-inflight-per-replica 4",
    "python3 scripts/serve_gateway.py --registry-url http://127.0.0.1:8765 --listen 0.0.0.0:8000 --auth-token-env GATEWAY_TOKEN",
    "python3 scripts/serve_gateway.py --deployment-uuid 833f1cd5a764fa3 --registry-redis redis://10.0.0.5:6379/0",
    "python3 scripts/serve_gateway.py --name my-service --listen 127.0.0.1:0 --detach   # 后台运行, 立即返回 url 与 run_id; 停止: jobs.py --cancel ID",
    "python3 scripts/serve_gateway.py --route qwen-7b=my-qwen --route bge-m3=833f1cd5a764fa3 --policy cache_aware   # 按请求体的 model 分给两个部署",
    "python3 scripts/serve_gateway.py --route qwen-7b=my-qwen --route-prefix /sd=my-sd   # /sd/... 去掉前缀后转给 my-sd",
    "python3 scripts/serve_gateway.py --routes-file routes.json --autoscale --max-hourly-cost 20 --yes",
]

# Defaults live here so --help imports nothing heavy (aiohttp, prometheus_client, the watcher).
POLICY_CHOICES = ("least_inflight", "queue_aware", "cache_aware", "round_robin", "random")
DEFAULT_LISTEN = "127.0.0.1:8000"
# Load reports and registry changes matter on the scale of a request; 1 s keeps routing
# current without polling a replica's /metrics more than once a second.
DEFAULT_INTERVAL_SECONDS = 1.0
# Two more replicas after the first: enough to ride out one dead container and one that is
# just leaving, without turning one bad request into a storm.
DEFAULT_RETRIES = 2
# Longest wait for the replica's response headers and between body chunks; an LLM answer
# without streaming can take minutes, a hung replica is cut off after this.
DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 300.0
# Requests allowed to wait for a replica at once; beyond this they get 503 at once.
DEFAULT_MAX_QUEUE = 256
# Each queued request holds a client connection and its body in memory; past this many the
# machine, not the limit, decides who gets a 503.
MAX_QUEUE = 100_000
# A GPU serves a batch of a few hundred at most; "unlimited" is 0, not a huge number.
MAX_INFLIGHT_PER_REPLICA = 10_000
# A queued request gets a 503 after this long: long enough for a busy GPU to free up or a
# replica to be added, short enough for a client's own timeout to see a clear answer.
DEFAULT_QUEUE_TIMEOUT_SECONDS = 30.0
# In-flight requests get this long to finish after SIGTERM (a streamed LLM answer).
DEFAULT_DRAIN_SECONDS = 30.0
# A replica that failed a request is skipped this long, then probed (with --health-path).
DEFAULT_EJECT_SECONDS = 10.0
# cache_aware: a replica takes its keys' requests until its in-flight load would pass this
# factor times the mean (rounded up); policies.DEFAULT_BALANCE_FACTOR says why 1.25.
DEFAULT_BALANCE_FACTOR = 1.25
# Past 100 x the mean, cache_aware never balances: the same as no factor at all.
MAX_BALANCE_FACTOR = 100.0


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "serve_gateway.py",
        "服务网关: 在部署的副本前提供一个固定地址, 任何客户端 (OpenAI SDK、curl、Java/Go 应用、浏览器) 都可以用。"
        "每个请求按策略选一个副本转发 (任意方法与路径; 请求体与响应体流式转发, SSE 逐块到达), 加 X-Served-By 响应头; "
        "连接失败、首字节前超时或副本返回 502/503/504 时换一个副本重试; 失败的副本摘除一段时间, 健康检查通过后恢复; "
        "副本都满载时请求排队, 超时返回 503 (JSON, 带 Retry-After)。GET /_gateway/status 查看状态, "
        "GET /_gateway/metrics 为 Prometheus 指标。默认只监听本机回环地址; 监听其他地址必须用 --auth-token-env。"
        "就绪时 stdout 输出一行 JSON (url); Ctrl-C / SIGTERM 停止接收、等待进行中的请求后输出汇总 (退出码 0)。"
        "自己发现副本时 (--deployment-uuid / --name / --config), 部署被停止或删除后网关同样结束 "
        "(stopped_by deployment_stopped / deployment_gone); 读注册表 (--registry*) 时继续监听, 返回 503 no_replicas 并说明部署已结束。"
        "多个部署放在一个地址后面用 --route MODEL=DEPLOYMENT (可重复): 按请求体的 model 转发; 某个路由的部署结束后只有它返回 503, "
        "其他路由照常服务, 全部结束时网关结束。",
        EXAMPLES,
    )
    # One deployment (exactly one of these), or several by --route / --route-prefix / --routes-file.
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--deployment-uuid", metavar="UUID", help="部署 UUID: 网关自己发现副本 (与 discover_services.py --watch 相同)")
    source.add_argument("--name", metavar="NAME", help="按部署名称精确匹配")
    source.add_argument("--config", metavar="FILE", help="按部署配置文件中的 name 查找")
    source.add_argument("--registry", metavar="FILE", help="读取另一个 discover_services.py --watch --out 维护的注册表文件")
    source.add_argument("--registry-url", metavar="URL", help="读取 discover_services.py --serve 的注册表接口, 如 http://127.0.0.1:8765")
    routes = parser.add_argument_group("多个部署 (路由)")
    routes.add_argument("--route", action="append", metavar="MODEL=DEPLOYMENT",
                        help="可重复: 请求体 (JSON) 的 model 等于 MODEL 的请求转给部署 DEPLOYMENT (部署 UUID 或完整名称); "
                             "GET /v1/models 列出这些模型, 未知模型返回 404 not_found 并列出可用模型。每个路由有自己的副本、策略、排队、指标 (route 标签)")
    routes.add_argument("--route-prefix", action="append", metavar="/PREFIX=DEPLOYMENT",
                        help="可重复: 路径以 /PREFIX 开头的请求去掉前缀后转给 DEPLOYMENT (给不按 model 区分的服务, 如 /sd=my-sd 时 /sd/txt2img 转为 /txt2img)")
    routes.add_argument("--routes-file", metavar="FILE",
                        help="JSON 路由文件 (格式见 schemas/routes.schema.json): 每个路由还可以有自己的 policy、max_inflight_per_replica "
                             "和 autoscale (false 或覆盖 --autoscale 参数的对象, 如自己的 max_hourly_cost)")
    parser.add_argument("--registry-redis", metavar="URL",
                        help="跟随 discover_services.py --watch --redis 写在 Redis 里的注册表 (按变化通知, 不轮询; 密码放环境变量 AUTODL_REDIS_PASSWORD), "
                             "部署由 --deployment-uuid / --name / --config 指定; 网关自己不再轮询 AutoDL")
    parser.add_argument("--key-prefix", default="autodl-esd", metavar="P", help="--registry-redis 的键前缀 (默认 autodl-esd, 与 discover_services.py 相同)")
    parser.add_argument("--shared-inflight", action="store_true",
                        help="与其他网关和 service_pool (shared_inflight=True) 在 Redis 中共享每个副本的在途请求数, "
                             "least_inflight / queue_aware 看到所有客户端的负载 (需 --registry-redis; 每轮约 50 ms 同步一次, 不阻塞请求)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"监听地址 (默认 {DEFAULT_LISTEN}; 端口 0 自动选择; IPv6 写 [::1]:8000)")
    parser.add_argument("--port", type=int, choices=(6006, 6008), help="用副本哪个端口的服务地址 (默认 6006, 没有时用 6008)")
    parser.add_argument("--policy", choices=POLICY_CHOICES, default=POLICY_CHOICES[0],
                        help="选副本的策略: least_inflight (默认, 两选一取在途请求少的), queue_aware (按副本自己报告的排队, "
                             "需 --load-path), cache_aware (同一会话 X-Session-ID / 同一对话开头 -> 同一副本, 命中它的前缀缓存; "
                             "过载时让给最空闲的副本, 见 --balance-factor), round_robin, random")
    parser.add_argument("--balance-factor", type=cli.number_between(1.0, MAX_BALANCE_FACTOR), default=None, metavar="F",
                        help=f"cache_aware: 选中的副本在途请求数将超过 F x 平均值 (向上取整) 时改发最空闲的副本 (默认 {DEFAULT_BALANCE_FACTOR:g})")
    parser.add_argument("--health-path", metavar="P", help="健康检查路径, 如 /health: 被摘除的副本通过检查后才恢复")
    parser.add_argument("--load-path", metavar="P", help="负载报告路径, 如 /metrics (vLLM 的 vllm:num_requests_running/waiting) "
                                                       "或返回 {\"running\": N, \"waiting\": M} 的 JSON")
    parser.add_argument("--interval", type=cli.positive_seconds, default=DEFAULT_INTERVAL_SECONDS, metavar="S",
                        help=f"轮询负载报告、注册表与健康检查的间隔秒数 (默认 {DEFAULT_INTERVAL_SECONDS:g})")
    parser.add_argument("--retries", type=cli.int_between(0, 10), default=DEFAULT_RETRIES, metavar="N",
                        help=f"失败后在其他副本上重试的次数 (默认 {DEFAULT_RETRIES}; 请求体超过 1 MiB 时不重试)")
    parser.add_argument("--upstream-timeout", type=cli.positive_seconds, default=DEFAULT_UPSTREAM_TIMEOUT_SECONDS, metavar="S",
                        help=f"等副本响应头、以及响应体两块之间的最长秒数 (默认 {DEFAULT_UPSTREAM_TIMEOUT_SECONDS:g})")
    parser.add_argument("--max-inflight-per-replica", type=cli.int_between(0, MAX_INFLIGHT_PER_REPLICA), default=0, metavar="N",
                        help="每个副本最多同时处理几个本网关的请求, 满了就排队 (默认 0 = 不限)")
    parser.add_argument("--max-queue", type=cli.int_between(0, MAX_QUEUE), default=DEFAULT_MAX_QUEUE, metavar="N",
                        help=f"最多排队的请求数, 超过直接 503 (默认 {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--queue-timeout", type=cli.positive_seconds, default=DEFAULT_QUEUE_TIMEOUT_SECONDS, metavar="S",
                        help=f"排队最长秒数, 超过返回 503 (默认 {DEFAULT_QUEUE_TIMEOUT_SECONDS:g}); 没有副本时请求也在队列里等")
    parser.add_argument("--drain-seconds", type=cli.non_negative_seconds, default=DEFAULT_DRAIN_SECONDS, metavar="S",
                        help=f"收到停止信号后等待进行中请求的最长秒数 (默认 {DEFAULT_DRAIN_SECONDS:g})")
    parser.add_argument("--eject-seconds", type=cli.positive_seconds, default=DEFAULT_EJECT_SECONDS, metavar="S",
                        help=f"请求失败的副本被摘除的秒数 (默认 {DEFAULT_EJECT_SECONDS:g})")
    parser.add_argument("--auth-token-env", metavar="VAR",
                        help="从环境变量 VAR 读取网关 token: 客户端须带 Authorization: Bearer <token> (含 /_gateway/*); 监听非回环地址时必需")
    parser.add_argument("--allow-host", action="append", metavar="NAME",
                        help="除回环地址外还接受的 Host 请求头主机名 (可重复; 防 DNS rebinding)")
    parser.add_argument("--detach", action="store_true",
                        help="在后台运行 (会话结束后仍在): 先在前台检查参数与部署, 就绪后立即返回 url、pid、run_id (gw-...) 与日志路径; "
                             "用 scripts/jobs.py --list / --status ID / --logs ID / --cancel ID (停止并记录汇总) / --resume ID 管理")
    parser.add_argument("--job-id", metavar="ID", help="后台进程自己使用 (由 --detach 传入), 不需要手动指定")
    add_autoscale_arguments(parser)
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.serving import detached
    from autodl_esd.serving.serve import prepare, serve

    if args.detach:
        if args.job_id:
            raise cli.UsageError("--detach 与 --job-id 不能同时用。", "去掉 --job-id (它只给后台进程自己用)。")
        detached.refuse_passwords_in({"--registry-redis": args.registry_redis, "--registry-url": args.registry_url})
        prepare(args, ctx)  # bad input is an error here, before anything is started
        argv = cli.command_line(build_parser(), args, drop=("detach", "job_id"), paths=("config", "registry", "routes_file"))
        return {**detached.start_detached("gateway", "serve_gateway.py", argv, ctx.progress), "detached": True}
    if args.job_id:
        return detached.run_service(args.job_id, lambda on_ready: serve(args, ctx, on_ready))
    return serve(args, ctx)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
