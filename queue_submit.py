#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["requests>=2.28", "python-dotenv>=1.0", "jsonschema>=4.18"]
# ///
"""Validate a deployment config, wait for GPU stock, and create the deployment exactly once."""

from __future__ import annotations

import os
import sys

# This script sits at the skill root, the package under scripts/ (the other entry scripts live
# there and find it as their own directory). os.path, not pathlib: --help stays fast.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "scripts"))

from autodl_esd.core import cli

# The rest of the package is imported in handle(), after parsing: --help loads only core.cli
# (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 queue_submit.py examples/replicaset-service.json --sim --sim-busy 3 --wait-running   # 本地模拟器试跑, 不花钱",
    "python3 queue_submit.py examples/replicaset-service.json --dry-run",
    "python3 queue_submit.py examples/job-training.json --detach --notify          # 后台等库存, 立即返回 run_id",
    "python3 scripts/jobs.py --status RUN_ID --wait 60                              # 查看后台提交的进展",
    "python3 queue_submit.py examples/job-training.json --interval 30 --timeout 3600",
    "python3 queue_submit.py examples/replicaset-service.json --wait-running",
    "python3 queue_submit.py examples/job-training.json --max-hourly-cost 20 --max-runtime 6 --notify   # 预算上限 + 6 小时后自动停止",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "queue_submit.py",
        "校验部署配置 → 检查镜像与 GPU 型号 → 等待 GPU 库存 (平台本身不排队) → 提交创建部署 (只提交一次)。",
        EXAMPLES,
        mutating=True,
    )
    parser.add_argument("config", metavar="CONFIG", help="部署配置 JSON 文件 (即创建部署的请求体)")
    parser.add_argument("--interval", type=cli.positive_seconds, metavar="S", help="库存轮询与提交后跟踪 (--wait-running/--wait-finished) 的间隔秒数, 可为小数 (默认 30; "
                        "AUTODL_HOST 是本机地址 (如 autodl_sim.py 的模拟器) 时默认 1; --sim 时默认 0.5); 给出的值照用 (对真实平台至少 1 秒)")
    parser.add_argument("--timeout", type=cli.non_negative_seconds, default=0.0, metavar="S", help="最多等待库存的秒数, 0 为不限 (默认 0)")
    parser.add_argument("--dry-run", action="store_true", help="只做校验、检查与一次库存查询, 输出将提交的请求体, 不创建")
    parser.add_argument("--wait-running", action="store_true", help="提交后等待容器进入 running 并输出服务地址与 SSH 命令")
    parser.add_argument("--startup-timeout", type=cli.positive_seconds, default=900.0, metavar="S", help="--wait-running 最多等待秒数 (默认 900)")
    parser.add_argument("--wait-finished", action="store_true",
                        help="Job / Container: 提交后跟踪到 finished_num 达到目标 (Job 为 replica_num, Container 为 1) 或部署停止, "
                             "输出计数与每个容器的运行时长 (finish); 平台不报告退出码, 程序是否成功要看它自己的输出")
    parser.add_argument("--finish-timeout", type=cli.non_negative_seconds, default=0.0, metavar="S",
                        help="--wait-finished 最多等待秒数, 0 为不限 (默认 0); 超时返回 startup_timeout 和 deployment_uuid, 部署仍在运行, 不要重新提交")
    parser.add_argument("--show-password", action="store_true", help="--wait-running 输出中显示 root 密码 (默认隐藏)")
    parser.add_argument("--allow-duplicate-name", action="store_true", help="已有同名运行中部署时仍然提交 (默认拒绝, 防止重复购买)")
    parser.add_argument("--detach", action="store_true",
                        help="前台做完校验、镜像与型号检查、同名检查、费用与余额和一次库存查询后立即返回 run_id; 等待库存、唯一一次创建、"
                             "核对与 --wait-running/--wait-finished 在后台进程中继续 (命令或会话结束后仍在)。"
                             "之后用 scripts/jobs.py --status RUN_ID --wait 60 查看进展")
    parser.add_argument("--reconcile-window", type=cli.positive_seconds, metavar="S",
                        help="创建请求结果不明 (超时、连接断开、5xx) 时按名称核对是否已创建的时长, 从发出创建起算 (默认 300); "
                             "这期间及之后都不会再次发送创建; 窗口内没看到就以 may_have_been_created 结束")
    money = parser.add_argument_group("费用与时间 (创建前显示每小时费用上下限; 守护在部署创建后自动停止它)")
    money.add_argument("--max-hourly-cost", type=cli.positive_float, metavar="Y",
                       help="最坏情况每小时费用 (元) 超过 Y 时拒绝提交 (validation_error, 不调用任何接口)")
    money.add_argument("--max-runtime", type=cli.positive_float, metavar="H",
                       help="创建后为该部署启动后台守护: 运行满 H 小时就停止它 (同 guard_deployment.py --max-runtime; 给出即视为确认)")
    money.add_argument("--max-cost", type=cli.positive_float, metavar="Y",
                       help="创建后为该部署启动后台守护: 创建起花费达到 Y 元就停止它 (同 guard_deployment.py --max-cost)")
    money.add_argument("--guard-interval", type=cli.positive_seconds, metavar="S",
                       help="守护的检查间隔, 真实秒数 (默认 60; 对真实平台至少 1 秒); 期限更近时守护提前检查")
    money.add_argument("--notify", action="store_true",
                       help="发微信通知 (失败只记警告)。只加 --notify 时只发 已提交 (以及等库存超过 --timeout 时的 等待超时); "
                            "容器已运行 要同时加 --wait-running, 已结束 (Job/Container) 要同时加 --wait-finished, 跟踪超时也会通知; "
                            "加 --detach 时这些都由后台进程在事件发生时发送; --max-runtime/--max-cost 的守护执行时也通知")
    sim = parser.add_argument_group("本地模拟器 (不需要令牌, 不调用真实平台)")
    sim.add_argument("--sim", action="store_true", help="在内置的本地 AutoDL 模拟器上运行整个流程")
    sim.add_argument("--sim-cluster", metavar="FILE", help="模拟器集群文件 (默认 scripts/simulator/default_cluster.json)")
    sim.add_argument("--sim-busy", type=cli.non_negative_seconds, default=0.0, metavar="S",
                     help="让模拟的其他租户占满所请求的 GPU 型号 S 秒 (真实时间, 与 --timeout 同单位), 用来演示等待库存")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.deploy import submission
    from autodl_esd.money.estimate import refuse_over_budget
    from autodl_esd.platform.config import load_and_validate

    config = load_and_validate(args.config)  # fails before any network call
    if args.wait_finished and config.get("deployment_type") == "ReplicaSet":
        raise cli.UsageError("--wait-finished 只适用于 Job / Container: ReplicaSet 是一直运行的服务, 没有\"完成\"。",
                             "ReplicaSet 用 --wait-running 等容器运行。")
    if args.detach and (args.sim or args.dry_run):
        raise cli.UsageError("--detach 不能和 --sim / --dry-run 一起用: --sim 的模拟器随本进程结束, --dry-run 不提交。",
                             "想试后台提交: 先单独启动 python3 scripts/autodl_sim.py, 按它的输出设置 AUTODL_HOST 与 AUTODL_TOKEN, 再加 --detach。")
    if not args.sim and (args.sim_cluster or args.sim_busy):
        raise cli.UsageError("--sim-cluster 与 --sim-busy 只能和 --sim 一起使用。")
    if args.max_hourly_cost is not None:
        refuse_over_budget(config, args.max_hourly_cost)
    request = submission.Request(
        interval=args.interval or (0.5 if args.sim else None), timeout=args.timeout,
        wait_running=args.wait_running, startup_timeout=args.startup_timeout,
        wait_finished=args.wait_finished, finish_timeout=args.finish_timeout,
        allow_duplicate_name=args.allow_duplicate_name, show_password=args.show_password,
        notify=args.notify,
        max_runtime=args.max_runtime, max_cost=args.max_cost, guard_interval=args.guard_interval, simulated=args.sim,
        **({"reconcile_window": args.reconcile_window} if args.reconcile_window else {}),
    )
    if args.sim:
        return submission.submit_simulated(ctx, config, request, dry_run=args.dry_run,
                                           cluster=args.sim_cluster, busy_seconds=args.sim_busy)
    return submission.submit(ctx.client(), config, request, ctx.progress, ctx.partial,
                             dry_run=args.dry_run, detach=args.detach)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
