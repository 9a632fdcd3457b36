#!/usr/bin/env python3
"""Follow background work: detached submits, guards, detached gateways and watchers."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/jobs.py --list                                  # 本机全部后台任务",
    "python3 scripts/jobs.py --status s-20261206-2041-3fa9c1 --wait 60   # 最多等 60 秒, 然后返回当前状态",
    "python3 scripts/jobs.py --logs s-20261206-2041-3fa9c1",
    "python3 scripts/jobs.py --cancel s-20261206-2041-3fa9c1         # 还在等库存的提交: 结束, 不创建",
    "python3 scripts/jobs.py --resume s-20261206-2041-3fa9c1         # 崩溃或重启后在后台接着运行 (发过创建的先核对)",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "jobs.py",
        "查看和管理本机的后台任务: queue_submit.py --detach 的提交 (s-...)、守护 (g-...)、serve_gateway.py --detach 的网关 "
        "(gw-...) 与 discover_services.py --watch --detach 的服务发现 (w-...)。每个任务的记录、锁与日志在状态目录里, "
        "命令或会话结束后仍在。提交的 state: waiting (等库存, 附 last_stock)、submitting / reconciling (创建已发出, 等结果或按名称核对)、"
        "submitted (有 deployment_uuid; done 为 true 时全部结束)、may_have_been_created (结果不明, 不要重新提交)、failed (附 error)、cancelled。",
        EXAMPLES,
    )
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--list", action="store_true", help="列出全部后台任务: run_id、kind、state、alive、deployment_uuid、log_file")
    modes.add_argument("--status", metavar="ID", help="一个任务的当前状态 (结果不明的提交会再按名称核对一次)")
    modes.add_argument("--cancel", metavar="ID", help="取消: 等库存的提交结束且不创建; 已发出创建的提交保留记录并说明; 守护/网关/服务发现停止")
    modes.add_argument("--resume", metavar="ID", help="进程不在运行时 (崩溃、kill、重启) 在后台接着运行; 发过创建的提交先按名称核对, 绝不盲目重发")
    modes.add_argument("--logs", metavar="ID", help="任务日志的末尾")
    modes.add_argument("--run", metavar="ID", help="在当前进程中运行一个提交记录 (后台进程用它; 一般不需要手动使用)")
    parser.add_argument("--wait", type=cli.non_negative_seconds, default=0.0, metavar="S",
                        help="与 --status 一起用: 最多阻塞 S 秒等任务结束, 然后返回当前状态 (放在 agent 命令时限内循环调用)")
    parser.add_argument("--kind", choices=("submit", "guard", "gateway", "watch"), help="与 --list 一起用: 只列这一类")
    parser.add_argument("--tail", type=cli.positive_int, default=4000, metavar="N", help="与 --logs 一起用: 显示最后 N 个字符 (默认 4000)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd import jobs
    from autodl_esd.core.state import state_root
    from autodl_esd.deploy import submission

    if args.wait and not args.status:
        raise cli.UsageError("--wait 只能和 --status 一起用。")
    if args.kind and not args.list:
        raise cli.UsageError("--kind 只能和 --list 一起用。")
    if args.list:
        return cli.list_result(jobs.list_all(args.kind), state_dir=str(state_root()))
    if args.logs:
        return jobs.logs(args.logs, args.tail)
    if args.run:
        if jobs.kind_of(args.run) != "submit":
            raise cli.UsageError("--run 只用于提交记录 (s-...); 其他任务用 --resume。")
        return submission.resume_in_process(submission.files_for(args.run), ctx.client(), ctx.progress, ctx.partial)
    client = _client_or_none(ctx)
    if args.status:
        return jobs.status(args.status, client, ctx.progress, args.wait)
    if args.cancel:
        return jobs.cancel(args.cancel, client, ctx.progress)
    return jobs.resume(args.resume, ctx.client(), ctx.progress)


def _client_or_none(ctx: cli.Context):
    """Status and cancel work from the records alone; a client (when a token is set) lets
    --status look up an unknown outcome on the platform."""
    try:
        return ctx.client()
    except AutoDLError:
        return None


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
