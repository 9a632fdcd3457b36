#!/usr/bin/env python3
"""List one deployment's containers with their service URLs; root passwords redacted."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.platform.containers import CONTAINER_STATUSES, container_view, released_hidden_warning, single_machine_warning

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/list_containers.py --name my-service",
    "python3 scripts/list_containers.py --deployment-uuid 833f1cd5a764fa3 --status running",
    "python3 scripts/list_containers.py --config examples/replicaset-service.json --released",
    "python3 scripts/list_containers.py --deployment-uuid 833f1cd5a764fa3 --show-password",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "list_containers.py",
        "列出一个部署的容器 (默认拉取全部分页)。每项带 service_urls (可访问的服务地址)、"
        "memory_size_gb (内存换算为 GB)、price_yuan (price 换算为 元, 每卡每小时) 与 hourly_yuan (整个容器每小时 = price × gpu_num); info.root_password 默认脱敏为 ***, 加 --show-password 才显示。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser)
    parser.add_argument("--status", action="append", choices=CONTAINER_STATUSES, metavar="STATUS",
                        help=f"只看这些状态, 可重复: {', '.join(CONTAINER_STATUSES)}")
    parser.add_argument("--released", action="store_true", help="包含已释放 (已停止) 的容器")
    parser.add_argument("--show-password", action="store_true", help="显示 root 密码 (默认脱敏)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api
    from autodl_esd.platform.resolve import deployment_summary, resolve_from_args

    deployment = resolve_from_args(ctx.client(), args)
    containers = api.list_containers(
        ctx.client(), deployment["uuid"], statuses=args.status, released=True if args.released else None
    )
    items = [container_view(c, args.show_password) for c in containers]
    warnings = [single_machine_warning(containers, deployment),
                None if args.released else released_hidden_warning(items, deployment)]
    return cli.list_result(items, deployment=deployment_summary(deployment), warnings=[w for w in warnings if w])


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
