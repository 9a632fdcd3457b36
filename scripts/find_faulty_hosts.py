#!/usr/bin/env python3
"""Find the machines where a deployment's containers keep failing; optionally blacklist them."""

from __future__ import annotations

from autodl_esd import cli

EXAMPLES = [
    "python scripts/find_faulty_hosts.py --name my-service",
    "python scripts/find_faulty_hosts.py --name my-service --lookback-hours 6 --min-failures 2",
    'python scripts/find_faulty_hosts.py --name my-service --apply --yes --comment "容器频繁异常退出"',
    "python scripts/find_faulty_hosts.py --name my-job --min-uptime 60   # Job: 低于正常任务时长",
]

# The platform forgets a blacklisting after 24 h by default, so older failures say little
# about a machine's health today.
DEFAULT_LOOKBACK_HOURS = 24.0
# "Regularly fails" (the best-practice guide): one or two failures can be bad luck, three on
# the same machine in a day is a pattern.
DEFAULT_MIN_FAILURES = 3
# A container that dies within 5 minutes of starting failed on start-up (driver, disk,
# network), not in normal service.
DEFAULT_MIN_UPTIME_SECONDS = 300.0


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "find_faulty_hosts.py",
        "按主机统计部署中失败的容器 (含已释放的): 没到 running 就停止 (never_running)、运行不足 "
        "--min-uptime 秒就退出 (exited_early); ReplicaSet 的任何退出都算异常 (exited, 随部署一起停止的除外)。"
        "列出失败数 >= --min-failures 的主机及证据 (容器、状态、起止时间、运行时长)。"
        "--apply --yes 通过每台主机上最近失败的容器把它加入调度黑名单; 只加 --apply 时返回 "
        "confirmation_required 并列出将拉黑的主机。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser)
    parser.add_argument("--lookback-hours", type=cli.positive_seconds, default=DEFAULT_LOOKBACK_HOURS, metavar="H",
                        help=f"只看最近 H 小时内停止的容器 (默认 {DEFAULT_LOOKBACK_HOURS:g})")
    parser.add_argument("--min-failures", type=cli.positive_int, default=DEFAULT_MIN_FAILURES, metavar="K",
                        help=f"失败数达到 K 的主机才报告 (默认 {DEFAULT_MIN_FAILURES})")
    parser.add_argument("--min-uptime", type=cli.non_negative_seconds, default=DEFAULT_MIN_UPTIME_SECONDS, metavar="S",
                        help=f"运行不足 S 秒就退出算失败 (默认 {DEFAULT_MIN_UPTIME_SECONDS:g}); Job 请设得比正常任务时长短")
    parser.add_argument("--apply", action="store_true", help="把报告的主机加入调度黑名单 (需同时加 --yes)")
    cli.add_confirmation_flag(parser)
    cli.add_blacklist_flags(parser, comment_help="黑名单备注 (默认说明失败次数)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from datetime import timedelta

    from autodl_esd import api
    from autodl_esd.errors import AutoDLError
    from autodl_esd.host_health import analyse_machines
    from autodl_esd.resolve import (
        BLACKLIST_EXPIRY_NOTE,
        blacklist_expiry,
        deployment_summary,
        resolve_from_args,
        verify_blacklisted,
    )

    apply_only = [flag for flag, value in (("--yes", args.yes), ("--comment", args.comment),
                                           ("--expire-minutes", args.expire_minutes)) if value]
    if apply_only and not args.apply:
        # Otherwise `--yes` alone reads as "blacklist them" and silently does nothing.
        raise cli.UsageError(f"{', '.join(apply_only)} 只在 --apply 时有效。",
                             "要拉黑报告的主机请加 --apply --yes; 只想查看则去掉这些参数。")

    client = ctx.client()
    deployment = resolve_from_args(client, args)
    containers = api.list_containers(client, deployment["uuid"], released=True)
    events, _ = api.list_events(client, deployment["uuid"])
    machines = analyse_machines(deployment, containers, events, min_uptime=args.min_uptime,
                                lookback=timedelta(hours=args.lookback_hours))
    faulty = [m for m in machines if m["failures"] >= args.min_failures]
    ctx.progress.log(f"检查了 {len(containers)} 个容器 / {len(machines)} 台有停止容器的主机, {len(faulty)} 台达到阈值")
    result = cli.list_result(
        faulty,
        deployment=deployment_summary(deployment),
        thresholds={"lookback_hours": args.lookback_hours, "min_failures": args.min_failures, "min_uptime_seconds": args.min_uptime},
        containers_examined=len(containers),
        below_threshold=[{"machine_id": m["machine_id"], "failures": m["failures"]} for m in machines if m not in faulty],
        applied=[],
    )
    if not args.apply or not faulty:
        return result
    plan = [blacklist_plan(machine, args.comment) for machine in faulty]
    if not args.yes:
        raise cli.confirmation_required(f"把 {len(plan)} 台主机加入调度黑名单", {"would_blacklist": plan})
    for step in plan:
        try:
            api.add_to_blacklist(client, step["container_uuid"], comment=step["comment"], expire_in_minutes=args.expire_minutes)
        except AutoDLError as error:  # say what was already done before reporting the failure
            error.details.update({"applied": result["applied"], "failed_machine": step["machine_id"]})
            raise
        ctx.progress.log(f"已拉黑主机 {step['machine_id']} (经由容器 {step['container_uuid']})")
        result["applied"].append({**step, **blacklist_expiry(args.expire_minutes)})
    entries, verification = verify_blacklisted(client, [step["machine_id"] for step in result["applied"]])
    for step in result["applied"]:
        step["blacklist_entry"] = entries[step["machine_id"]]
    return {**result, **verification, "expiry_note": BLACKLIST_EXPIRY_NOTE}


def blacklist_plan(machine: dict, comment: str | None) -> dict:
    return {
        "machine_id": machine["machine_id"],
        "container_uuid": machine["blacklist_via"],
        "failures": machine["failures"],
        "comment": comment or f"find_faulty_hosts: {machine['failures']} 个容器异常退出",
    }


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
