#!/usr/bin/env python3
"""Offline check of a deployment config: schema, semantic rules, cmd lint, request body."""

from __future__ import annotations

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/validate_config.py examples/replicaset-service.json",
    "python3 scripts/validate_config.py my-config.json --quiet",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "validate_config.py",
        "离线校验部署配置 (不需要令牌, 不联网): 报告全部问题、启动命令的隐患警告、每小时费用上下限 (cost), 以及将提交的请求体。",
        EXAMPLES,
    )
    parser.add_argument("config", metavar="CONFIG", help="部署配置 JSON 文件")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.money.estimate import cost_bounds
    from autodl_esd.platform.config import build_request, dialect_of, load_and_validate
    from autodl_esd.platform.lint import lint_config

    config = load_and_validate(args.config)
    return {
        "valid": True,
        "dialect": dialect_of(config),
        "request": build_request(config),
        "cost": cost_bounds(config),
        "warnings": lint_config(config),
    }


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
