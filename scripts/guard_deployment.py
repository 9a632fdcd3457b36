#!/usr/bin/env python3
"""Guard a deployment: stop it (or scale it down) when its run time, spend or idleness reaches a limit."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError
from autodl_esd.platform.units import MAX_REPLICA_NUM

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/guard_deployment.py --name my-job --max-runtime 6                 # 只说明会做什么",
    "python3 scripts/guard_deployment.py --name my-job --max-runtime 6 --yes --detach  # 后台守护, 6 小时后停止",
    "python3 scripts/guard_deployment.py --name my-service --max-cost 100 --yes --detach --notify",
    "python3 scripts/guard_deployment.py --name my-service --idle-minutes 30 --idle-url http://127.0.0.1:8000/_gateway/metrics "
    "--action scale-to --floor 1 --yes --detach",
    "python3 scripts/guard_deployment.py --list",
    "python3 scripts/guard_deployment.py --cancel g-833f1cd5a764fa3-1a2b3c",
    "python3 scripts/guard_deployment.py --resume g-833f1cd5a764fa3-1a2b3c --detach   # 崩溃或重启后接着守护",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "guard_deployment.py",
        "守护一个部署, 防止忘记停止而持续计费: 部署运行满 --max-runtime 小时、或自守护启动起花费达到 --max-cost 元、"
        "或 (服务) 网关指标 --idle-url 显示连续 --idle-minutes 分钟没有请求时, 停止部署 (--action stop, 默认) 或把 "
        "ReplicaSet 缩到 --floor 个副本 (--action scale-to), 只执行一次。这是破坏性操作: 不加 --yes 时只返回 "
        "confirmation_required 说明将在何时停掉什么; 确认在创建守护时给出。--detach 在后台运行 (会话结束后仍在), "
        "状态、pid 与日志在状态目录 ($XDG_STATE_HOME/autodl-elastic-deploy/guards 或技能目录下的 .state/guards, "
        "不在仓库里); 进程崩溃后用 --resume 接着运行。动手前按 uuid 与创建时间重新核对部署, 部署已被删除或停止时守护结束并说明。",
        EXAMPLES,
        mutating=True,
    )
    cli.add_deployment_selector(parser, required=False)
    limits = parser.add_argument_group("条件 (至少一个; 任一达到即执行)")
    limits.add_argument("--max-runtime", type=cli.positive_float, metavar="H", help="部署运行满 H 小时 (从部署的 created_at 按平台时间算)")
    limits.add_argument("--max-cost", type=cli.positive_float, metavar="Y", help="自守护启动起该部署的容器花费达到 Y 元 (运行时长 × 容器 price)")
    limits.add_argument("--idle-minutes", type=cli.positive_float, metavar="M", help="网关指标显示连续 M 分钟没有请求 (须同时给 --idle-url)")
    limits.add_argument("--idle-url", metavar="URL", help="serve_gateway.py 的 Prometheus 指标地址, 如 http://127.0.0.1:8000/_gateway/metrics")
    acting = parser.add_argument_group("动作")
    acting.add_argument("--action", choices=("stop", "scale-to"), default="stop", help="stop: 停止整个部署 (默认); scale-to: 把 ReplicaSet 缩到 --floor")
    acting.add_argument("--floor", type=cli.int_between(0, MAX_REPLICA_NUM), metavar="N", help="--action scale-to 时缩到的副本数")
    cli.add_confirmation_flag(parser)
    acting.add_argument("--notify", action="store_true", help="执行或结束时发微信通知 (失败只记警告)")
    running = parser.add_argument_group("运行方式与管理")
    running.add_argument("--detach", action="store_true", help="在后台运行并立即返回 guard_id、pid 与日志路径")
    running.add_argument("--interval", type=cli.positive_seconds, metavar="S", help="检查间隔, 真实秒数 (默认 60; 对真实平台至少 1 秒)。限制按平台时间计; 期限更近时提前检查 (按测得的平台时钟速率换算, 模拟器 --speed 下平台时间更快)")
    running.add_argument("--list", action="store_true", help="列出本机全部守护: 监视什么、剩余时间/预算、是否在运行")
    running.add_argument("--cancel", metavar="GUARD_ID", help="取消一个守护 (不做任何操作)")
    running.add_argument("--resume", metavar="GUARD_ID", help="从状态文件接着运行一个守护 (崩溃或重启后)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.money import guard

    selected = bool(args.deployment_uuid or args.name or args.config)
    modes = [name for name, on in (("--list", args.list), ("--cancel", args.cancel), ("--resume", args.resume), ("部署选择", selected)) if on]
    if len(modes) != 1:
        raise cli.UsageError("指定一个部署来创建守护, 或 --list / --cancel GUARD_ID / --resume GUARD_ID 之一。",
                             details={"given": modes})
    if args.list:
        return cli.list_result([guard.guard_view(state) for state in guard.all_states()])  # cli.run adds state_dir
    if args.cancel:
        return guard.cancel(args.cancel, ctx.progress, _client_or_none(ctx))
    if args.resume:
        return _resume(args, ctx)
    return _create(args, ctx)


def _create(args, ctx: cli.Context) -> dict:
    from autodl_esd.core.clock import platform_now
    from autodl_esd.core.polling import floor_interval
    from autodl_esd.money import guard
    from autodl_esd.money.spend import deployment_impact
    from autodl_esd.platform.resolve import resolve_from_args

    client = ctx.client()
    deployment = resolve_from_args(client, args)
    limits = guard.Limits(args.max_runtime, args.max_cost, args.idle_minutes, args.idle_url)
    guard.check_request(deployment, limits, args.action, args.floor)
    interval = floor_interval(args.interval or guard.DEFAULT_INTERVAL_SECONDS, client.host, ctx.progress)
    state = guard.new_state(client, deployment, limits, args.action, args.floor, args.notify, interval)
    plan = guard.describe_plan(state, now=platform_now(client))
    if not args.yes:
        impact = deployment_impact(client, deployment)
        raise cli.confirmation_required(
            f"守护部署 {deployment.get('name')} ({deployment['uuid']})",
            {"action": "guard_deployment", "plan": plan, "guard_action": args.action, "floor": state["floor"],
             "limits": state["limits"], **impact},
            hint=f"把 details.plan 告诉用户 ({plan}), 得到明确同意后加 --yes (通常再加 --detach) 重新执行。",
        )
    files = guard.save_new(state)
    ctx.progress.log(f"守护 {state['guard_id']}: {plan}")
    if args.detach:
        return {**guard.detach(files, _this_script(), ctx.progress), "detached": True}
    return _run(ctx, files)


def _resume(args, ctx: cli.Context) -> dict:
    from autodl_esd.money import guard

    files = guard.files_for(args.resume)
    state = guard.read_state(files)
    client = ctx.client()
    if state.get("host") and state["host"] != client.host:
        raise cli.UsageError(f"守护 {args.resume} 是为 {state['host']} 创建的, 现在的 AUTODL_HOST 是 {client.host}。",
                             "守护只在它创建时的平台上运行: 把 AUTODL_HOST 改回去再 --resume。", {"guard_id": args.resume})
    if args.detach:
        if state.get("status") in guard.FINAL_STATUSES or guard.is_running(files):
            # Ended, or already running: nothing to start (a second process could not take the lock).
            return {**guard.guard_view(state, files), "detached": False}
        return {**guard.detach(files, _this_script(), ctx.progress), "detached": True}
    return _run(ctx, files)


def _run(ctx: cli.Context, files) -> dict:
    from autodl_esd.money import guard
    from autodl_esd.platform.notify import notify_quietly

    client = ctx.client()
    state = guard.read_state(files)
    ctx.partial.update(guard_id=files.guard_id, deployment_uuid=state["deployment_uuid"], state_file=str(files.state))

    def notify(title: str, content: str) -> dict:
        return notify_quietly(client.settings, title, content, state.get("deployment_name"), ctx.progress)

    result = guard.Guard(client, files, ctx.progress, notify).run()
    warning = (result.get("notification") or {}).get("warning")
    return {**result, "warnings": [warning] if warning else []}


def _client_or_none(ctx: cli.Context):
    """A client to date a cancel on the platform's clock; cancelling works without a token."""
    try:
        return ctx.client()
    except AutoDLError:
        return None


def _this_script():
    from pathlib import Path  # here, not at the top: pathlib is ~4 ms of --help

    return Path(__file__).resolve()


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
