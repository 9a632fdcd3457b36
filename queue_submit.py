#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["requests>=2.28", "python-dotenv>=1.0", "jsonschema>=4.18"]
# ///
"""Validate a deployment config, wait for GPU stock, and create the deployment exactly once."""

from __future__ import annotations

import os
import sys

# os.path, not pathlib: pathlib costs more than a bare interpreter start (--help stays fast).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "scripts"))

from autodl_esd import cli  # noqa: E402

EXAMPLES = [
    "python queue_submit.py examples/replicaset-service.json --sim --sim-busy 3 --wait-running   # 本地模拟器试跑, 不花钱",
    "python queue_submit.py examples/replicaset-service.json --dry-run",
    "python queue_submit.py examples/job-training.json --interval 30 --timeout 3600",
    "python queue_submit.py examples/replicaset-service.json --wait-running",
    "python queue_submit.py examples/job-training.json --max-hourly-cost 20 --max-runtime 6 --notify   # 预算上限 + 6 小时后自动停止",
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
    parser.add_argument("--wait-finished", action="store_true",
                        help="Job / Container: 提交后跟踪到 finished_num 达到目标 (Job 为 replica_num, Container 为 1) 或部署停止, "
                             "输出计数与每个容器的运行时长 (finish); 平台不报告退出码, 程序是否成功要看它自己的输出")
    parser.add_argument("--finish-timeout", type=cli.non_negative_seconds, default=0.0, metavar="S",
                        help="--wait-finished 最多等待秒数, 0 为不限 (默认 0); 超时返回 startup_timeout 和 deployment_uuid, 部署仍在运行, 不要重新提交")
    parser.add_argument("--show-password", action="store_true", help="--wait-running 输出中显示 root 密码 (默认隐藏)")
    parser.add_argument("--allow-duplicate-name", action="store_true", help="已有同名运行中部署时仍然提交 (默认拒绝, 防止重复购买)")
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
                       help="发微信通知: 已提交、容器已运行、Job 已结束、等待超时; 守护执行时也通知 (失败只记警告)")
    sim = parser.add_argument_group("本地模拟器 (不需要令牌, 不调用真实平台)")
    sim.add_argument("--sim", action="store_true", help="在内置的本地 AutoDL 模拟器上运行整个流程")
    sim.add_argument("--sim-cluster", metavar="FILE", help="模拟器集群文件 (默认 scripts/simulator/default_cluster.json)")
    sim.add_argument("--sim-busy", type=cli.non_negative_seconds, default=0.0, metavar="S",
                     help="让模拟的其他租户占满所请求的 GPU 型号 S 秒 (真实时间, 与 --timeout 同单位), 用来演示等待库存")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.config import load_and_validate

    config = load_and_validate(args.config)  # fails before any network call
    if args.wait_finished and config.get("deployment_type") == "ReplicaSet":
        raise cli.UsageError("--wait-finished 只适用于 Job / Container: ReplicaSet 是一直运行的服务, 没有\"完成\"。",
                             "ReplicaSet 用 --wait-running 等容器运行。")
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
        wait_finished=args.wait_finished,
        finish_timeout=args.finish_timeout,
        allow_duplicate_name=args.allow_duplicate_name,
        show_password=args.show_password,
    )
    from autodl_esd.cost import cost_bounds
    from autodl_esd.errors import AutoDLError, ErrorType

    cost = cost_bounds(config)  # offline: shown (stderr, result) before anything is submitted
    ctx.progress.log(f"费用: 每小时 {cost['hourly_yuan']['min']:g}..{cost['hourly_yuan']['max']:g} 元 ({cost['note']})")
    notices = Notices(args, client, config, ctx)
    guarded: dict = {}

    def created(deployment_uuid: str) -> None:
        # Right after the create, before any wait: a guard must not depend on the wait succeeding.
        notices.created(deployment_uuid)
        if args.max_runtime or args.max_cost:
            guarded.update(_start_guard(args, ctx, deployment_uuid))
            ctx.partial["guard"] = guarded["guard"]  # an interrupt from here on still names it
            if guarded.get("guard_warning"):
                ctx.progress.log(f"警告 [guard_not_started] {guarded['guard_warning']['message']}")
                notices.warnings.append(guarded["guard_warning"])

    if not args.dry_run:
        options.on_created = created
    try:
        result = Submitter(client, config, options, ctx.progress, ctx.partial).run()
    except AutoDLError as error:
        if error.error_type in (ErrorType.TIMEOUT, ErrorType.STARTUP_TIMEOUT):
            notices.send(f"等待超时: {config['name']}", error.message)
            error.details.update(notices.report())
        if guarded:
            error.details["guard"] = guarded["guard"]
        raise
    if args.dry_run:
        result.update(_balance_plan(client, cost, ctx.progress, result))
        if args.max_runtime or args.max_cost:
            result["guard_plan"] = _guard_plan(args, config)
    else:
        if result.get("containers") and result.get("deployment_uuid"):
            cost = _observed_cost(client, result["deployment_uuid"], cost)
        finish = result.get("finish")  # --wait-finished's report
        if result.get("deployment_finished") or finish:
            how = "全部容器已运行完毕" if (finish or {}).get("finished", True) else "部署已停止 (未全部完成)"
            notices.send(f"已结束: {config['name']}", f"部署 {result['deployment_uuid']}: {how}。")
        elif args.wait_running:
            notices.send(f"容器已运行: {config['name']}", f"部署 {result['deployment_uuid']}: {len(result.get('containers') or [])} 个容器在运行。")
        if args.max_runtime or args.max_cost:
            result["guard"] = guarded.get("guard")
    result["cost"] = cost
    result.update(notices.report())
    result["warnings"] = result.get("warnings", []) + notices.warnings
    return result


class Notices:
    """--notify: WeChat messages at the milestones; a failure is a warning, never an error."""

    def __init__(self, args, client, config: dict, ctx: cli.Context) -> None:
        self.enabled = bool(args.notify)
        self.client, self.config, self.ctx = client, config, ctx
        self.sent: list[dict] = []
        self.warnings: list[dict] = []

    def created(self, deployment_uuid: str) -> None:
        self.send(f"已提交: {self.config['name']}", f"GPU 库存已满足, 已创建部署 {deployment_uuid} ({self.config['deployment_type']})。")

    def send(self, title: str, content: str) -> None:
        if not self.enabled:
            return
        from autodl_esd.notify import notify_quietly

        outcome = notify_quietly(self.client.settings, title, content, self.config["name"], self.ctx.progress)
        self.sent.append({"title": outcome["title"], "sent": outcome["sent"]})
        if outcome.get("warning"):
            self.warnings.append(outcome["warning"])

    def report(self) -> dict:
        return {"notifications": self.sent} if self.enabled else {}


def _guard_limits(args):
    from autodl_esd.guard import Limits

    return Limits(max_runtime_hours=args.max_runtime, max_cost_yuan=args.max_cost)


def _guard_plan(args, config: dict) -> str:
    """What the guard started after the create will do (shown by the dry run)."""
    from autodl_esd.guard import describe_plan

    return describe_plan({"limits": _guard_limits(args).__dict__, "action": "stop", "floor": None,
                          "deployment_name": config["name"], "deployment_uuid": "创建后的部署"})


def _start_guard(args, ctx: cli.Context, deployment_uuid: str) -> dict:
    """A detached guard for the deployment just created. A guard that cannot start is a
    warning: the deployment exists and must be reported, never turned into an error."""
    from autodl_esd import guard
    from autodl_esd.errors import AutoDLError
    from autodl_esd.polling import floor_interval
    from autodl_esd.resolve import deployment_by_uuid, read_back

    command = (f"python scripts/guard_deployment.py --deployment-uuid {deployment_uuid}"
               + (f" --max-runtime {args.max_runtime:g}" if args.max_runtime else "")
               + (f" --max-cost {args.max_cost:g}" if args.max_cost else "") + " --yes --detach")
    if args.sim:
        return _guard_warning(
            "模拟器随本次运行结束, 没有启动守护。", "在真实平台上运行时会启动; 想演示守护, 单独启动 autodl_sim.py 再运行。", command)
    client = ctx.client()
    try:
        deployment, _ = read_back(lambda: deployment_by_uuid(client, deployment_uuid), lambda d: d is not None)
        if deployment is None:
            return _guard_warning(f"部署 {deployment_uuid} 还没出现在部署列表里, 没有启动守护。", "稍后手动启动守护:", command)
        interval = floor_interval(args.guard_interval or guard.DEFAULT_INTERVAL_SECONDS, client.host, ctx.progress)
        limits = _guard_limits(args)
        guard.check_request(deployment, limits, "stop", None)
        state = guard.new_state(client, deployment, limits, "stop", None, args.notify, interval)
        files = guard.save_new(state)
        from pathlib import Path  # here, not at the top: see the sys.path line

        started = guard.detach(files, Path(__file__).resolve().parent / "scripts" / "guard_deployment.py", ctx.progress)
    except AutoDLError as error:
        return _guard_warning(f"守护没有启动: {error.message}", error.hint + " 手动启动守护:", command)
    return {"guard": started}


def _guard_warning(message: str, hint: str, command: str) -> dict:
    return {"guard": None, "guard_warning": {"code": "guard_not_started", "path": "--max-runtime/--max-cost",
                                             "message": message, "hint": f"{hint} {command}"}}


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
