#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["requests>=2.28", "python-dotenv>=1.0", "jsonschema>=4.18"]
# ///
"""Validate a deployment config, wait for GPU stock, and create the deployment exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))

from autodl_esd import cli  # noqa: E402

EXAMPLES = [
    "python queue_submit.py examples/replicaset-service.json --sim --sim-busy 3 --wait-running   # 本地模拟器试跑, 不花钱",
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
    parser.add_argument("--interval", type=cli.positive_seconds, metavar="S", help="库存轮询间隔秒数, 可为小数 (默认 30; --sim 时默认 0.5)")
    parser.add_argument("--timeout", type=cli.non_negative_seconds, default=0.0, metavar="S", help="最多等待库存的秒数, 0 为不限 (默认 0)")
    parser.add_argument("--dry-run", action="store_true", help="只做校验、检查与一次库存查询, 输出将提交的请求体, 不创建")
    parser.add_argument("--wait-running", action="store_true", help="提交后等待容器进入 running 并输出服务地址与 SSH 命令")
    parser.add_argument("--startup-timeout", type=cli.positive_seconds, default=900.0, metavar="S", help="--wait-running 最多等待秒数 (默认 900)")
    parser.add_argument("--show-password", action="store_true", help="--wait-running 输出中显示 root 密码 (默认隐藏)")
    parser.add_argument("--allow-duplicate-name", action="store_true", help="已有同名运行中部署时仍然提交 (默认拒绝, 防止重复购买)")
    money = parser.add_argument_group("费用与时间 (创建前显示每小时费用上下限; 守护在部署创建后自动停止它)")
    money.add_argument("--max-hourly-cost", type=cli.positive_float, metavar="Y",
                       help="最坏情况每小时费用 (元) 超过 Y 时拒绝提交 (validation_error, 不调用任何接口)")
    sim = parser.add_argument_group("本地模拟器 (不需要令牌, 不调用真实平台)")
    sim.add_argument("--sim", action="store_true", help="在内置的本地 AutoDL 模拟器上运行整个流程")
    sim.add_argument("--sim-cluster", metavar="FILE", help="模拟器集群文件 (默认 scripts/simulator/default_cluster.json)")
    sim.add_argument("--sim-busy", type=cli.non_negative_seconds, default=0.0, metavar="S",
                     help="让模拟的其他租户占满所请求的 GPU 型号 S 秒 (真实时间, 与 --timeout 同单位), 用来演示等待库存")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.config import load_and_validate

    config = load_and_validate(args.config)  # fails before any network call
    _refuse_over_budget(args, config)
    if args.sim:
        return _handle_simulated(args, ctx, config)
    if args.sim_cluster or args.sim_busy:
        raise cli.UsageError("--sim-cluster 与 --sim-busy 只能和 --sim 一起使用。")
    return _submit(args, ctx, config, default_interval=30.0)


def _refuse_over_budget(args, config: dict) -> None:
    """--max-hourly-cost: a worst case above the limit is refused before any network call."""
    from autodl_esd.cost import cost_bounds, over_budget_problem
    from autodl_esd.errors import AutoDLError, ErrorType

    if args.max_hourly_cost is None:
        return
    cost = cost_bounds(config)
    problem = over_budget_problem(cost, args.max_hourly_cost)
    if problem:
        raise AutoDLError(
            ErrorType.VALIDATION_ERROR,
            f"最坏情况每小时 {cost['worst_case_hourly_yuan']:g} 元, 超过 --max-hourly-cost {args.max_hourly_cost:g} 元, 没有提交。",
            "把 details.cost 告诉用户; 按 details.errors 的 hint 调低配置, 或经用户同意后提高上限。此时尚未调用任何接口。",
            {"errors": [problem], "cost": cost, "max_hourly_cost_yuan": args.max_hourly_cost},
        )


def _handle_simulated(args, ctx: cli.Context, config: dict) -> dict:
    from autodl_esd.sandbox import simulated_platform

    busy_gpus = config["container_template"]["gpu_name_set"]
    with simulated_platform(ctx.progress, cluster=args.sim_cluster, busy_seconds=args.sim_busy, busy_gpus=busy_gpus) as settings:
        ctx.settings = settings
        result = _submit(args, ctx, config, default_interval=0.5)
    result["simulated"] = True
    return result


def _submit(args, ctx: cli.Context, config: dict, default_interval: float) -> dict:
    from autodl_esd.polling import floor_interval
    from autodl_esd.submit import SubmitOptions, Submitter

    client = ctx.client()
    options = SubmitOptions(
        interval=floor_interval(args.interval or default_interval, client.host, ctx.progress),
        timeout=args.timeout,
        dry_run=args.dry_run,
        wait_running=args.wait_running,
        startup_timeout=args.startup_timeout,
        allow_duplicate_name=args.allow_duplicate_name,
        show_password=args.show_password,
    )
    from autodl_esd.cost import cost_bounds

    cost = cost_bounds(config)  # offline: shown (stderr, result) before anything is submitted
    ctx.progress.log(f"费用: 每小时 {cost['hourly_yuan']['min']:g}..{cost['hourly_yuan']['max']:g} 元 ({cost['note']})")
    result = Submitter(client, config, options, ctx.progress, ctx.partial).run()
    if args.dry_run:
        result.update(_balance_plan(client, cost, ctx.progress, result))
    elif result.get("containers") and result.get("deployment_uuid"):
        cost = _observed_cost(client, result["deployment_uuid"], cost)
    result["cost"] = cost
    return result


def _balance_plan(client, cost: dict, progress, result: dict) -> dict:
    """The dry run's wallet: hours covered at the worst case, a warning when that is low."""
    from autodl_esd.cost import balance_check

    balance, warnings = balance_check(client, cost)
    for warning in warnings:
        progress.log(f"警告 [{warning['code']}] {warning['message']} {warning['hint']}")
    return {"balance": balance, "warnings": result.get("warnings", []) + warnings}


def _observed_cost(client, deployment_uuid: str, cost: dict) -> dict:
    """Once containers run, their real prices give the expected rate (best effort)."""
    from autodl_esd import api
    from autodl_esd.cost import with_observed_rate
    from autodl_esd.errors import AutoDLError

    try:
        return with_observed_rate(cost, api.list_containers(client, deployment_uuid))
    except AutoDLError:
        return cost


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
