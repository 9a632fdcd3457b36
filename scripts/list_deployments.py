#!/usr/bin/env python3
"""List the account's deployments (all pages), with memory in GB and prices in yuan."""

from __future__ import annotations

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/list_deployments.py",
    "python3 scripts/list_deployments.py --status running",
    "python3 scripts/list_deployments.py --name my-service",
    "python3 scripts/list_deployments.py --name-glob 'demo-*'",
    "python3 scripts/list_deployments.py --name-glob 'demo-*' --exclude demo-keep",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "list_deployments.py",
        "列出部署 (默认拉取全部分页)。每项的 uuid 即其他脚本的 --deployment-uuid (也复制为 "
        "deployment_uuid); 模板内存在 *_gb 中换算为 GB, 价格在 *_yuan 中换算为 元/小时, 原始值保留。"
        "price_estimates_yuan 是正在运行的容器现在每小时的费率之和, 没有容器运行时为 0, 不是已花的钱 (已花多少用 cost_report.py)。",
        EXAMPLES,
    )
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--name", metavar="NAME", help="按名称精确匹配")
    names.add_argument("--name-glob", metavar="PATTERN",
                       help="按 shell 通配符匹配整个名称 (* ? [...]; 区分大小写), 如 'demo-*' 不会匹配 mydemo-x; 记得加引号")
    cli.add_exclude_flag(parser)
    parser.add_argument("--status", choices=("running", "stopped"), help="只看运行中或已停止的部署")
    parser.add_argument("--deployment-uuid", metavar="UUID", help="只看这一个部署")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.money.estimate import PRICE_ESTIMATES_BASIS
    from autodl_esd.platform import api
    from autodl_esd.platform.resolve import deployment_summary, deployment_view, deployments_matching, split_excluded

    if args.exclude and not args.name_glob:
        raise cli.UsageError("--exclude 只和 --name-glob 一起用。")
    if args.name_glob:
        deployments, excluded = split_excluded(
            deployments_matching(ctx.client(), args.name_glob, status=args.status), args.exclude)
        if args.deployment_uuid:
            deployments = [d for d in deployments if d.get("uuid") == args.deployment_uuid]
        shown_excluded = {"exclude": args.exclude, "excluded": [deployment_summary(d) for d in excluded]} if args.exclude else {}
        return cli.list_result([deployment_view(d) for d in deployments], name_glob=args.name_glob, **shown_excluded,
                               price_estimates_basis=PRICE_ESTIMATES_BASIS)
    deployments = api.list_deployments(ctx.client(), name=args.name, status=args.status, deployment_uuid=args.deployment_uuid)
    return cli.list_result([deployment_view(d) for d in deployments], price_estimates_basis=PRICE_ESTIMATES_BASIS)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
