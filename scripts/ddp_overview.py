#!/usr/bin/env python3
"""Duration packages (时长包) bought for a deployment: GPU type, total and remaining time."""

from __future__ import annotations

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/ddp_overview.py --name my-service",
    "python3 scripts/ddp_overview.py --deployment-uuid 833f1cd5a764fa3",
]

SECONDS_PER_HOUR = 3600


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "ddp_overview.py",
        "查询部署的时长包概览 (公有云接口): 每个时长包的 GPU 型号、总时长与剩余时长 (接口单位为秒, "
        "输出另给小时数)。没有购买时长包时返回空列表。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser)
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api
    from autodl_esd.platform.resolve import resolve_from_args

    client = ctx.client()
    deployment = resolve_from_args(client, args)

    def shown(package: dict) -> dict:
        hours = {
            f"{key}_hours": round(package[key] / SECONDS_PER_HOUR, 2)
            for key in ("total", "balance")
            if isinstance(package.get(key), (int, float)) and not isinstance(package.get(key), bool)
        }
        return {**package, **hours}

    packages = [shown(package) for package in api.ddp_overview(client, deployment["uuid"])]
    return cli.list_result(packages, deployment_uuid=deployment["uuid"])


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
