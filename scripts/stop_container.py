#!/usr/bin/env python3
"""Stop one container (optionally without a replacement) and read its status back."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.platform.containers import STOPPING_STATUSES, container_summary

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/stop_container.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --decrease-one-replica-num",
    "python3 scripts/stop_container.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30 --no-cache",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "stop_container.py",
        "停止一个容器, 然后读回它的状态 (verified)。"
        + cli.TOOK_EFFECT_HELP +
        "ReplicaSet 默认会补一个新容器; "
        "加 --decrease-one-replica-num 同时把副本数减 1, 不再补。--no-cache 与 --cmd-before-shutdown "
        "是公有云字段, 只在指定时发送。",
        EXAMPLES,
        mutating=True,
    )
    parser.add_argument("--container-uuid", required=True, metavar="UUID", help="容器 UUID (list_containers.py 输出的 uuid)")
    parser.add_argument("--decrease-one-replica-num", action="store_true", help="同时把 ReplicaSet 的副本数减 1, 不补新容器")
    parser.add_argument("--no-cache", action="store_true", help="停下的容器不放入复用池 (公有云)")
    parser.add_argument("--cmd-before-shutdown", metavar="CMD", help="停止前执行的命令, 覆盖部署中的设置, 最多 5 秒 (公有云)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api
    from autodl_esd.platform.effects import Change, apply_change
    from autodl_esd.platform.resolve import deployment_by_uuid, deployment_summary, resolve_container

    client = ctx.client()
    container = resolve_container(client, args.container_uuid)
    deployment_uuid = container.get("deployment_uuid") or args.container_uuid[:15]
    deployment = deployment_by_uuid(client, deployment_uuid) or {"uuid": deployment_uuid}
    result = {"container_uuid": container["uuid"], "deployment_uuid": deployment_uuid, "machine_id": container.get("machine_id")}
    if container.get("status") in STOPPING_STATUSES:
        # A repeated command (e.g. after verified=false) must not stop it again: with
        # --decrease-one-replica-num that could lower replica_num a second time.
        status = container.get("status")
        return {**result, "changed": False, "container_status": status, "verified": True,
                "note": f"容器已经是 {status} 状态, 没有再次停止。", "deployment": deployment_summary(deployment)}

    warnings = []
    if args.decrease_one_replica_num and deployment.get("deployment_type") not in (None, "ReplicaSet"):
        warnings.append({
            "code": "decrease_not_replicaset", "path": "--decrease-one-replica-num",
            "message": f"部署是 {deployment.get('deployment_type')} 类型, decrease_one_replica_num 只对 ReplicaSet 有效。",
            "hint": "Job / Container 停止的容器本来就不会被替补, 可以不加这个参数。",
        })
    expected_replicas = None
    if args.decrease_one_replica_num and isinstance(deployment.get("replica_num"), int) and deployment.get("deployment_type") == "ReplicaSet":
        expected_replicas = max(deployment["replica_num"] - 1, 0)

    def fetch() -> tuple[dict, dict | None]:
        return resolve_container(client, container["uuid"], deployment_uuid), (
            deployment_by_uuid(client, deployment_uuid) if expected_replicas is not None else None
        )

    def done(state: tuple[dict, dict | None]) -> bool:
        after, after_deployment = state
        replicas_ok = expected_replicas is None or (after_deployment or {}).get("replica_num") == expected_replicas
        return after.get("status") in STOPPING_STATUSES and replicas_ok

    def seen(state: tuple[dict, dict | None]) -> dict:
        after, after_deployment = state
        shown = {"container_status": after.get("status")}
        if expected_replicas is not None:
            shown["replica_num"] = (after_deployment or {}).get("replica_num")
        return shown

    state, verification = apply_change(Change(
        what=f"停止容器 {container['uuid']}" + (" 并把副本数减 1" if args.decrease_one_replica_num else ""),
        send=lambda: api.stop_container(
            client,
            container["uuid"],
            decrease_one_replica_num=args.decrease_one_replica_num,
            no_cache=True if args.no_cache else None,
            cmd_before_shutdown=args.cmd_before_shutdown,
        ),
        fetch=fetch,
        done=done,
        seen=seen,
        check=f"python3 scripts/list_containers.py --deployment-uuid {deployment_uuid} --released",
        ids={"container_uuid": container["uuid"], "deployment_uuid": deployment_uuid},
        # Each call with decrease_one_replica_num lowers replica_num once more.
        repeat_safe=not args.decrease_one_replica_num,
    ), client, ctx.progress, ctx.partial)
    ctx.progress.log(f"已请求停止容器 {container['uuid']} (主机 {container.get('machine_id')})")
    after, after_deployment = state or (container, None)
    # replica_num is only reported as a number the platform showed: read back after a
    # decrease, else the deployment's unchanged value; never a null that reads as data.
    if expected_replicas is not None:
        replicas = {"expected_replica_num": expected_replicas}
        if isinstance((after_deployment or {}).get("replica_num"), int):
            replicas = {"replica_num": after_deployment["replica_num"], **replicas}
    else:
        replicas = {"replica_num": deployment["replica_num"]} if isinstance(deployment.get("replica_num"), int) else {}
    return {
        **result,
        "changed": True,
        "container_status": after.get("status"),
        **verification,
        "decrease_one_replica_num": args.decrease_one_replica_num,
        **replicas,
        "container": container_summary(after),
        "deployment": deployment_summary(after_deployment or deployment),
        "warnings": warnings,
    }


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
