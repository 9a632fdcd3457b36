#!/usr/bin/env python3
"""Find the machines where a deployment's containers keep failing; optionally blacklist them."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.platform.units import BLACKLIST_MAX_EXPIRE_MINUTES

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/find_faulty_hosts.py --name my-service",
    "python3 scripts/find_faulty_hosts.py --name my-service --lookback-hours 6 --min-failures 2",
    'python3 scripts/find_faulty_hosts.py --name my-service --apply --yes --machine-id 4f1c2a9be0 --comment "容器频繁异常退出"',
    "python3 scripts/find_faulty_hosts.py --name my-job --min-uptime 60   # Job: 低于正常任务时长",
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
# Ten recent failures show a machine's pattern (reasons, uptimes, times) without burying an
# agent in one entry per crash loop iteration (one real run listed 58); evidence_total
# still counts them all.
DEFAULT_MAX_EVIDENCE = 10



def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "find_faulty_hosts.py",
        "按主机统计部署中失败的容器 (含已释放的): 没到 running 就停止 (never_running)、运行不足 "
        "--min-uptime 秒就退出 (exited_early); ReplicaSet 的任何退出都算异常 (exited, 随部署一起停止的除外), "
        "包括用户主动停止的 (缩容、stop_container.py), 所以拉黑前要先看证据。"
        "列出失败数 >= --min-failures 的主机及证据 (容器、状态、起止时间、运行时长; 每台最多 --max-evidence 条, "
        "evidence_total 是总数); hosts_examined 列出检查过的每台主机 (健康的也在内) 及其容器数、运行中数、窗口内停止数、失败数与 verdict。--apply --yes 通过每台主机上最近失败的容器把它加入调度黑名单 (已在上面运行的容器"
        "不受影响); 只加 --apply 时返回 confirmation_required 并列出将拉黑的主机。输出的 as_of 是证据截止的平台时间; "
        "预览与执行之间证据可能变化, 用 --machine-id (可重复) 只拉黑预览中确认过的主机, 不在当前列表中的会被拒绝。",
        EXAMPLES,
        mutating=True,
    )
    cli.add_deployment_selector(parser)
    parser.add_argument("--lookback-hours", type=cli.positive_hours, default=DEFAULT_LOOKBACK_HOURS, metavar="H",
                        help=f"只看最近 H 小时内停止的容器, 0 < H <= {cli.MAX_LOOKBACK_HOURS} (默认 {DEFAULT_LOOKBACK_HOURS:g})")
    parser.add_argument("--min-failures", type=cli.positive_int, default=DEFAULT_MIN_FAILURES, metavar="K",
                        help=f"失败数达到 K 的主机才报告 (默认 {DEFAULT_MIN_FAILURES})")
    parser.add_argument("--min-uptime", type=cli.non_negative_seconds, default=DEFAULT_MIN_UPTIME_SECONDS, metavar="S",
                        help=f"运行不足 S 秒就退出算失败 (默认 {DEFAULT_MIN_UPTIME_SECONDS:g}); Job 请设得比正常任务时长短")
    parser.add_argument("--max-evidence", type=cli.positive_int, default=DEFAULT_MAX_EVIDENCE, metavar="N",
                        help=f"每台主机最多列出最近 N 条失败证据 (默认 {DEFAULT_MAX_EVIDENCE}; evidence_total 是总数)")
    parser.add_argument("--apply", action="store_true", help="把报告的主机加入调度黑名单 (需同时加 --yes)")
    parser.add_argument("--machine-id", action="append", metavar="M",
                        help="--apply 时只拉黑这台主机 (可重复; 取自预览的 details.would_blacklist); 不在当前故障列表中则拒绝执行")
    cli.add_confirmation_flag(parser)
    cli.add_blacklist_flags(parser, comment_help="黑名单备注 (默认说明失败次数)", max_expire_minutes=BLACKLIST_MAX_EXPIRE_MINUTES)
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from datetime import timedelta  # here, not at the top: datetime is not free at --help

    from autodl_esd.platform import api
    from autodl_esd.platform.host_health import (
        REPLICA_SET_CAVEAT,
        analyse_machines,
        apply_blacklist,
        blacklist_plan,
        confirmation_hint,
        evidence_as_of,
        hosts_examined,
        machine_id_flags,
        select_named_machines,
    )
    from autodl_esd.platform.resolve import deployment_summary, resolve_from_args

    apply_only = [flag for flag, value in (("--yes", args.yes), ("--comment", args.comment),
                                           ("--expire-minutes", args.expire_minutes), ("--machine-id", args.machine_id)) if value]
    if apply_only and not args.apply:
        # Otherwise `--yes` alone reads as "blacklist them" and silently does nothing.
        raise cli.UsageError(f"{', '.join(apply_only)} 只在 --apply 时有效。",
                             "要拉黑报告的主机先只加 --apply: 它预览会拉黑哪些主机, 什么都不做; 只想查看则去掉这些参数。")

    client = ctx.client()
    deployment = resolve_from_args(client, args)
    containers = api.list_containers(client, deployment["uuid"], released=True)
    events, _ = api.list_events(client, deployment["uuid"])
    machines = analyse_machines(deployment, containers, events, min_uptime=args.min_uptime,
                                lookback=timedelta(hours=args.lookback_hours), max_evidence=args.max_evidence)
    faulty = [m for m in machines if m["failures"] >= args.min_failures]
    as_of = evidence_as_of(containers, events)
    examined = hosts_examined(containers, machines, args.min_failures)
    ctx.progress.log(f"检查了 {len(containers)} 个容器 / {len(examined)} 台主机 ({len(machines)} 台有停止容器), {len(faulty)} 台达到阈值")
    result = cli.list_result(
        faulty,
        deployment=deployment_summary(deployment),
        as_of=as_of,
        thresholds={"lookback_hours": args.lookback_hours, "min_failures": args.min_failures, "min_uptime_seconds": args.min_uptime,
                    "max_evidence": args.max_evidence},
        containers_examined=len(containers),
        hosts_examined=examined,
        below_threshold=[{"machine_id": m["machine_id"], "failures": m["failures"]} for m in machines if m not in faulty],
        applied=[],
    )
    replica_set = deployment.get("deployment_type") == "ReplicaSet"
    if replica_set and faulty:
        result["caveat"] = REPLICA_SET_CAVEAT
    if not args.apply:
        return result
    chosen, left_out = select_named_machines(faulty, args.machine_id, as_of)
    if not chosen:
        return result
    plan = [blacklist_plan(machine, args.comment) for machine in chosen]
    if not args.yes:
        raise cli.confirmation_required(
            f"把 {len(plan)} 台主机加入调度黑名单",
            {"would_blacklist": plan, "as_of": as_of, "machine_id_flags": machine_id_flags(plan), "not_named": left_out},
            hint=confirmation_hint(plan, replica_set, args.expire_minutes),
        )
    if left_out:
        ctx.progress.log(f"未用 --machine-id 指定, 不拉黑: {', '.join(left_out)}")
    return {**result, **apply_blacklist(client, plan, args.expire_minutes, ctx.progress), "not_named": left_out}


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
