#!/usr/bin/env python3
"""Scale a ReplicaSet deployment to N replicas and read the new value back."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError, ErrorType
from autodl_esd.platform.containers import container_summary
from autodl_esd.platform.units import MAX_REPLICA_NUM

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/set_replicas.py --name my-service --replica-num 4",
    "python3 scripts/set_replicas.py --deployment-uuid 833f1cd5a764fa3 --replica-num 1",
    "python3 scripts/set_replicas.py --name my-service --replica-num 0 --yes   # 0 会停掉全部容器, 需要 --yes",
    "python3 scripts/set_replicas.py --name my-service --replica-num 2 --wait --timeout 600   # 等到正好 2 个在运行",
]

# Scaling up waits for new containers (image pull, start-up): the same 15 minutes as
# queue_submit --startup-timeout; scaling down settles in seconds.
DEFAULT_WAIT_TIMEOUT_SECONDS = 900.0
# Container phases change on the scale of seconds; 5 s, like container_events --follow.
DEFAULT_WAIT_INTERVAL_SECONDS = 5.0


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "set_replicas.py",
        "设置 ReplicaSet 部署的副本数 (立即扩缩容), 然后从部署列表读回新值 (verified)。"
        + cli.TOOK_EFFECT_HELP +
        "只适用于 ReplicaSet; Job / Container 部署会直接报错并说明原因。"
        "设为 0 会停掉全部容器, 和停止一样是破坏性操作: 不加 --yes 时什么都不做, 返回 confirmation_required "
        "并列出会停掉的容器; 其他值不需要 --yes。能否设为 0 各来源说法不一, 想全部停下请用 stop_deployment.py。"
        "--wait 等到运行中的容器数正好等于新副本数 (超过 --timeout 返回 startup_timeout, 副本数已改好, 不要重复执行), "
        "输出 stopped_by_scale_down 列出缩容停掉的容器。注意: 缩容停掉的容器在 find_faulty_hosts.py 里会计为 "
        "ReplicaSet 的退出 (exited), 拉黑主机前要把它们排除。",
        EXAMPLES,
        mutating=True,
    )
    cli.add_deployment_selector(parser)
    parser.add_argument("--replica-num", "--replicas", dest="replica_num", type=cli.int_between(0, MAX_REPLICA_NUM), required=True, metavar="N", help="新的副本数")
    cli.add_confirmation_flag(parser)
    parser.add_argument("--wait", action="store_true", help="等到运行中的容器数等于新副本数, 并列出缩容停掉的容器")
    parser.add_argument("--timeout", type=cli.non_negative_seconds, default=DEFAULT_WAIT_TIMEOUT_SECONDS, metavar="S",
                        help=f"--wait 最多等待秒数, 0 为不限 (默认 {DEFAULT_WAIT_TIMEOUT_SECONDS:g})")
    parser.add_argument("--interval", type=cli.positive_seconds, default=DEFAULT_WAIT_INTERVAL_SECONDS, metavar="S",
                        help=f"--wait 轮询间隔秒数, 可为小数 (默认 {DEFAULT_WAIT_INTERVAL_SECONDS:g})")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.money.spend import deployment_impact
    from autodl_esd.platform import api
    from autodl_esd.platform.effects import Change, apply_change
    from autodl_esd.platform.resolve import deployment_by_uuid, deployment_summary, resolve_from_args

    client = ctx.client()
    deployment = resolve_from_args(client, args)
    kind, status = deployment.get("deployment_type"), deployment.get("status")
    details = {"deployment_uuid": deployment["uuid"], "deployment_type": kind, "status": status}
    if kind != "ReplicaSet":
        raise AutoDLError(
            ErrorType.USAGE_ERROR,
            f"部署 {deployment['uuid']} 是 {kind} 类型, 副本数只能对 ReplicaSet 设置。",
            "Job / Container 的容器数在创建时确定: 需要不同数量时停止该部署, 改配置后用 queue_submit.py 重新提交。",
            details,
        )
    if status == "stopped":
        raise AutoDLError(
            ErrorType.USAGE_ERROR,
            f"部署 {deployment['uuid']} 已停止, 无法设置副本数。",
            "已停止的部署不能恢复; 需要服务时用 queue_submit.py 重新提交配置。",
            details,
        )

    if args.replica_num == 0 and not args.yes:
        # Zero replicas takes every container down, like a stop: same confirmation.
        impact = deployment_impact(client, deployment)
        raise cli.confirmation_required(
            f"把部署 {deployment.get('name')} ({deployment['uuid']}) 的副本数从 {deployment.get('replica_num')} 设为 0 "
            f"(会停掉 {impact['live_container_count']} 个运行或启动中的容器)",
            {"action": "set_replicas", "replica_num": 0, **impact},
            hint="副本数 0 会停掉该部署的全部容器, 服务随之不可用。把 details 中的部署与容器告诉用户, 得到明确同意后加 --yes "
            "重新执行; 只想减少而不是全部停下时, 设为大于 0 的值 (不需要 --yes)。",
        )

    uuid = deployment["uuid"]
    live_before = api.list_containers(client, uuid) if args.wait else []
    after, verification = apply_change(Change(
        what=f"把部署 {uuid} 的副本数从 {deployment.get('replica_num')} 设为 {args.replica_num}",
        send=lambda: api.set_replica_num(client, uuid, args.replica_num),
        fetch=lambda: deployment_by_uuid(client, uuid),
        done=lambda d: d is not None and d.get("replica_num") == args.replica_num,
        check=f"python3 scripts/list_deployments.py --deployment-uuid {uuid}",
        ids={"deployment_uuid": uuid},  # an absolute count: sending it twice is harmless
    ), client, ctx.progress, ctx.partial)
    ctx.progress.log(f"已请求把 {uuid} 的副本数从 {deployment.get('replica_num')} 设为 {args.replica_num}")
    result = {
        "deployment_uuid": deployment["uuid"],
        "previous_replica_num": deployment.get("replica_num"),
        "replica_num": args.replica_num,
        **verification,
        "deployment": deployment_summary(after or deployment),
    }
    if args.wait:
        result.update(_wait(client, ctx, uuid, args, live_before))
    return result


# The stops of a scale-down are exits in find_faulty_hosts (the API cannot tell them apart).
SCALE_DOWN_NOTE = ("stopped_by_scale_down 中的容器是缩容停掉的: find_faulty_hosts.py 会把它们计为 ReplicaSet 的退出 "
                   "(exited), 拉黑主机前把它们从证据中排除。")


def _wait(client, ctx: cli.Context, uuid: str, args, live_before: list) -> dict:
    from autodl_esd.core.polling import ReadErrors, floor_interval
    from autodl_esd.platform.follow import stopped_since, wait_running_count

    ctx.partial.update(deployment_uuid=uuid, took_effect=True)  # an interrupt mid-wait: the scale is done
    ctx.partial.pop("interrupt_hint", None)
    interval = floor_interval(args.interval, client.host, ctx.progress)
    read_errors = ReadErrors(ctx.progress, "查询容器")
    try:
        running, live_now, waited = wait_running_count(client, uuid, args.replica_num, timeout=args.timeout,
                                                       interval=interval, progress=ctx.progress, read_errors=read_errors)
    except AutoDLError as error:  # the scale itself was done; only the wait failed
        error.details.update(took_effect=True, replica_num=args.replica_num)
        raise
    stopped = stopped_since(live_before, live_now)
    ctx.progress.log(f"{len(running)} 个容器在运行" + (f"; 缩容停掉了 {len(stopped)} 个" if stopped else ""))
    return {
        "reached": True,
        "waited_seconds": round(waited, 1),
        "running": [container_summary(c) for c in running],
        "stopped_by_scale_down": stopped,
        **({"scale_down_note": SCALE_DOWN_NOTE} if stopped else {}),
        **({"warnings": [read_errors.warning()]} if read_errors.failures else {}),
    }


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
