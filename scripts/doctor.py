#!/usr/bin/env python3
"""First-run check: will the skill work on this account? Read-only, costs nothing."""

from __future__ import annotations

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/doctor.py",
    "python3 scripts/doctor.py --config examples/replicaset-service.json",
    "python3 scripts/doctor.py --sim   # 在本地模拟器上看一遍检查项",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "doctor.py",
        "首次使用的只读检查 (不创建、不修改任何东西, 不花钱): 令牌是否存在并被接受、企业认证门槛、平台方言 "
        "(私有云/公有云) 及与配置是否一致、本账号有哪些可选接口 (黑名单列表、时长包、公共基础镜像、地区库存、余额)、"
        "库存响应形状、镜像名称字段、平台与本机时钟的差与速率、请求延迟, 以及 references/platform-api.md 中哪些未决问题被本账号的响应证实。"
        "输出 checks 列表, 每项 {name, status: ok|warn|fail|skipped, detail, hint}; "
        "未就绪 (有 fail 项) 时是错误文档 (退出码非 0, error_type 按原因: 未企业认证/令牌被拒为 auth_error), "
        "details 里仍有全部 checks, 按 fail 项的 hint 处理。",
        EXAMPLES,
    )
    parser.add_argument("--config", metavar="FILE", help="也检查这个部署配置的方言是否与平台一致")
    parser.add_argument("--sim", action="store_true", help="检查内置的本地模拟器 (不需要令牌)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.core.sandbox import simulated_platform
    from autodl_esd.platform.doctor import diagnose, require_ready

    configs = [args.config] if args.config else []
    if args.sim:
        with simulated_platform(ctx.progress) as settings:
            ctx.settings = settings
            return require_ready({**diagnose(ctx, configs), "simulated": True})
    return require_ready(diagnose(ctx, configs))


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
