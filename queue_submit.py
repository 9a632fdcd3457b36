#!/usr/bin/env python3
"""Validate a deployment config, wait for GPU stock, and create the deployment exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))

from autodl_esd import cli  # noqa: E402

EXAMPLES = [
    "python queue_submit.py examples/replicaset-service.json --dry-run",
    "python queue_submit.py examples/job-training.json --interval 30 --timeout 3600",
    "python queue_submit.py examples/replicaset-service.json --wait-running",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "queue_submit.py",
        "校验部署配置 → 检查镜像与 GPU 型号 → 等待 GPU 库存 (平台本身不排队) → 提交创建部署 (只提交一次)。",
        EXAMPLES,
    )
    parser.add_argument("config", metavar="CONFIG", help="部署配置 JSON 文件 (即创建部署的请求体)")
    parser.add_argument("--interval", type=cli.positive_seconds, default=30.0, metavar="S", help="库存轮询间隔秒数, 可为小数 (默认 30)")
    parser.add_argument("--timeout", type=cli.non_negative_seconds, default=0.0, metavar="S", help="最多等待库存的秒数, 0 为不限 (默认 0)")
    parser.add_argument("--dry-run", action="store_true", help="只做校验、检查与一次库存查询, 输出将提交的请求体, 不创建")
    parser.add_argument("--wait-running", action="store_true", help="提交后等待容器进入 running 并输出服务地址与 SSH 命令")
    parser.add_argument("--startup-timeout", type=cli.positive_seconds, default=900.0, metavar="S", help="--wait-running 最多等待秒数 (默认 900)")
    parser.add_argument("--show-password", action="store_true", help="--wait-running 输出中显示 root 密码 (默认隐藏)")
    parser.add_argument("--allow-duplicate-name", action="store_true", help="已有同名运行中部署时仍然提交 (默认拒绝, 防止重复购买)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.config import load_and_validate
    from autodl_esd.submit import SubmitOptions, Submitter

    config = load_and_validate(args.config)  # fails before any network call
    options = SubmitOptions(
        interval=args.interval,
        timeout=args.timeout,
        dry_run=args.dry_run,
        wait_running=args.wait_running,
        startup_timeout=args.startup_timeout,
        allow_duplicate_name=args.allow_duplicate_name,
        show_password=args.show_password,
    )
    return Submitter(ctx.client(), config, options, ctx.progress, ctx.partial).run()


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
