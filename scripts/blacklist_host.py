#!/usr/bin/env python3
"""Keep the platform from scheduling onto the machine a container ran on."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError
from autodl_esd.platform.units import BLACKLIST_MAX_EXPIRE_MINUTES

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    'python3 scripts/blacklist_host.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --comment "启动慢"',
    "python3 scripts/blacklist_host.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --expire-minutes 4320   # 公有云",
    "python3 scripts/blacklist_host.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --move-replicas --yes   # 拉黑并挪走该主机上的副本",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "blacklist_host.py",
        "把某个容器所在的主机加入调度黑名单: 之后不再往这台主机调度容器 (已在上面运行的容器不受影响)。"
        "先查出容器所在主机并在输出中说明 (machine_id, data_center, gpu_name)。默认 24 小时后自动解除; "
        "--expire-minutes 只有公有云支持 (私有云固定 24 小时)。"
        + cli.TOOK_EFFECT_HELP +
        "应答丢失时读回黑名单确认 (私有云没有黑名单列表接口, 只能是 unknown)。"
        "之后列出该部署仍在这台主机上的容器 (still_on_machine) 和挪走它们的命令 (move_commands: 不加 "
        "--decrease-one-replica-num 停止, 平台补的新容器会落到其他主机); --move-replicas --yes 直接执行 (不加 --yes 时"
        "什么都不做, 返回 confirmation_required 列出会停掉的容器)。",
        EXAMPLES,
        mutating=True,
    )
    parser.add_argument("--container-uuid", required=True, metavar="UUID", help="运行在问题主机上的容器 UUID (可以是已停止的容器)")
    cli.add_blacklist_flags(parser, comment_help="备注, 如 启动慢 / 频繁异常退出", max_expire_minutes=BLACKLIST_MAX_EXPIRE_MINUTES)
    parser.add_argument("--move-replicas", action="store_true",
                        help="拉黑后停掉该部署仍在这台主机上的容器 (不减副本数, 替补会调度到其他主机); 需要 --yes")
    cli.add_confirmation_flag(parser)
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api
    from autodl_esd.platform.effects import Change, apply_change
    from autodl_esd.platform.host_health import move_command, move_replicas, still_on_machine
    from autodl_esd.platform.resolve import BLACKLIST_EXPIRY_NOTE, blacklist_expiry, resolve_container, verify_blacklisted

    client = ctx.client()
    container = resolve_container(client, args.container_uuid)
    machine = {key: container.get(key) for key in ("machine_id", "data_center", "gpu_name")}
    deployment_uuid = container.get("deployment_uuid") or container["uuid"][:15]
    if args.move_replicas and not args.yes:
        staying = still_on_machine(client, deployment_uuid, machine["machine_id"])
        raise cli.confirmation_required(
            f"拉黑主机 {machine['machine_id']} 并停掉该部署在它上面的 {len(staying)} 个容器",
            {"action": "blacklist_host --move-replicas", **machine, "deployment_uuid": deployment_uuid,
             "would_stop": staying, "would_stop_count": len(staying)},
            hint="停掉的容器不减副本数, 平台会在其他主机上补新的 (期间可用副本会暂时变少)。把 details.would_stop 告诉用户, "
            "得到明确同意后加 --yes 重新执行; 只想拉黑不想停容器时去掉 --move-replicas。",
        )
    entries, verification = apply_change(Change(
        what=f"把主机 {machine['machine_id']} 加入调度黑名单",
        send=lambda: api.add_to_blacklist(client, container["uuid"], comment=args.comment, expire_in_minutes=args.expire_minutes),
        # The list endpoint is public-cloud only: on a private cluster a lost answer stays "unknown".
        fetch=lambda: {machine["machine_id"]: next((e for e in api.list_blacklist(client) if e.get("machine_id") == machine["machine_id"]), None)},
        done=lambda found: found[machine["machine_id"]] is not None,
        check="python3 scripts/list_blacklist.py (公有云; 私有云没有列表接口, 在控制台查看)",
        ids={"container_uuid": container["uuid"], "machine_id": machine["machine_id"]},
    ), client, ctx.progress, ctx.partial, verify=lambda: verify_blacklisted(client, [machine["machine_id"]]))
    ctx.progress.log(f"已请求把主机 {machine['machine_id']} 加入调度黑名单 (经由容器 {container['uuid']})")
    try:
        staying = still_on_machine(client, deployment_uuid, machine["machine_id"])
    except AutoDLError as error:  # the blacklisting is done; a failed look must not read as its failure
        staying, looked = [], {"still_on_machine_error": error.message}
    else:
        looked = {}
    moves: dict = {}
    if args.move_replicas:
        moves["moved"] = move_replicas(client, staying, deployment_uuid, ctx.progress, ctx.partial)
        done = {m["container_uuid"] for m in moves["moved"] if m["outcome"] == "done"}
        staying = [c for c in staying if c["container_uuid"] not in done]
        if staying:
            moves["warnings"] = [{"code": "move_failed", "path": "--move-replicas",
                                  "message": f"{len(staying)} 个容器没能确认停止, 仍可能在主机 {machine['machine_id']} 上。",
                                  "hint": "看 moved[] 的 took_effect: unknown 的先用 list_containers.py 查看, 确认还在运行再用 move_commands 停止。"}]
    elif staying:
        ctx.progress.log(f"该部署还有 {len(staying)} 个容器在主机 {machine['machine_id']} 上; 用 move_commands 把它们挪走")
    return {
        **moves,
        "still_on_machine": staying,
        **looked,
        "move_commands": [move_command(c["container_uuid"]) for c in staying],
        "container_uuid": container["uuid"],
        "deployment_uuid": deployment_uuid,
        **machine,
        "comment": args.comment,
        **blacklist_expiry(args.expire_minutes),
        **verification,
        "blacklist_entry": entries[machine["machine_id"]],
        "expiry_note": BLACKLIST_EXPIRY_NOTE,
    }


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
