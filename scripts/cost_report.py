#!/usr/bin/env python3
"""Spend so far per deployment and per container: run time x price, and the current hourly rate."""

from __future__ import annotations

import argparse

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/cost_report.py --name my-service",
    "python3 scripts/cost_report.py --all",
    "python3 scripts/cost_report.py --all --since 2026-12-01   # 只算该时间之后的花费 (无时区时按 +08:00)",
]


def _since(text: str):
    from autodl_esd.core.clock import parse_since  # only with --since: core.clock loads datetime

    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "cost_report.py",
        "已花多少钱: 按容器列表 (含已释放的容器) 计算每个容器的 运行时长 × price, 汇总到部署和全部合计, "
        "并给出仍在运行的容器当前每小时的费率。只读。运行时长按平台时间计算 (started_at 到 stopped_at, "
        "仍在运行的算到平台当前时间); 账号下没有部署时也是成功, 各项为 0。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser, required=False)
    parser.add_argument("--all", action="store_true", help="统计账号下全部部署 (含已停止的), 与 --deployment-uuid/--name/--config 二选一")
    parser.add_argument("--since", type=_since, metavar="T", help="只统计这个时间之后的花费, ISO 时间如 2026-12-01 或 2026-12-01T08:00:00+08:00")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.core.clock import platform_now
    from autodl_esd.money.spend import spend_report
    from autodl_esd.platform import api
    from autodl_esd.platform.resolve import resolve_from_args

    selected = args.deployment_uuid or args.name or args.config
    if bool(selected) == bool(args.all):
        raise cli.UsageError("指定一个部署 (--deployment-uuid / --name / --config) 或 --all, 二者选一。")
    client = ctx.client()
    deployments = api.list_deployments(client) if args.all else [resolve_from_args(client, args)]
    return spend_report(client, deployments, lambda: platform_now(client), args.since)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
