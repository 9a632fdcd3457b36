#!/usr/bin/env python3
"""Keep the platform from scheduling onto the machine a container ran on."""

from __future__ import annotations

from autodl_esd import cli

EXAMPLES = [
    'python scripts/blacklist_host.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --comment "启动慢"',
    "python scripts/blacklist_host.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --expire-minutes 4320   # 公有云",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "blacklist_host.py",
        "把某个容器所在的主机加入调度黑名单: 之后不再往这台主机调度容器 (已在上面运行的容器不受影响)。"
        "先查出容器所在主机并在输出中说明 (machine_id, data_center, gpu_name)。默认 24 小时后自动解除; "
        "--expire-minutes 只有公有云支持 (私有云固定 24 小时)。请求的应答丢失时 (超时等) 读回黑名单确认是否已生效, "
        "用 took_effect 报告 (true/false/unknown; 私有云没有黑名单列表接口, 只能是 unknown)。",
        EXAMPLES,
    )
    parser.add_argument("--container-uuid", required=True, metavar="UUID", help="运行在问题主机上的容器 UUID (可以是已停止的容器)")
    cli.add_blacklist_flags(parser, comment_help="备注, 如 启动慢 / 频繁异常退出")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd import api
    from autodl_esd.effects import Change, apply_change
    from autodl_esd.resolve import BLACKLIST_EXPIRY_NOTE, blacklist_expiry, resolve_container, verify_blacklisted

    client = ctx.client()
    container = resolve_container(client, args.container_uuid)
    machine = {key: container.get(key) for key in ("machine_id", "data_center", "gpu_name")}
    entries, verification = apply_change(Change(
        what=f"把主机 {machine['machine_id']} 加入调度黑名单",
        send=lambda: api.add_to_blacklist(client, container["uuid"], comment=args.comment, expire_in_minutes=args.expire_minutes),
        # The list endpoint is public-cloud only: on a private cluster a lost answer stays "unknown".
        fetch=lambda: {machine["machine_id"]: next((e for e in api.list_blacklist(client) if e.get("machine_id") == machine["machine_id"]), None)},
        done=lambda found: found[machine["machine_id"]] is not None,
        check="python scripts/list_blacklist.py (公有云; 私有云没有列表接口, 在控制台查看)",
        ids={"container_uuid": container["uuid"], "machine_id": machine["machine_id"]},
    ), client, ctx.progress, ctx.partial, verify=lambda: verify_blacklisted(client, [machine["machine_id"]]))
    ctx.progress.log(f"已请求把主机 {machine['machine_id']} 加入调度黑名单 (经由容器 {container['uuid']})")
    return {
        "container_uuid": container["uuid"],
        "deployment_uuid": container.get("deployment_uuid") or container["uuid"][:15],
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
