#!/usr/bin/env python3
"""Stop a whole deployment (all its containers); needs --yes."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/stop_deployment.py --name my-service            # 只说明会停掉什么",
    "python3 scripts/stop_deployment.py --name my-service --yes",
    "python3 scripts/stop_deployment.py --deployment-uuid 833f1cd5a764fa3 --yes",
    "python3 scripts/stop_deployment.py --name-glob 'demo-*'          # 预览全部匹配, 给出 details.expect_uuids",
    "python3 scripts/stop_deployment.py --name-glob 'demo-*' --yes --expect-uuids 833f1cd5a764fa3,53a677bb3e281b8",
    "python3 scripts/stop_deployment.py --name-glob 'demo-*' --exclude demo-keep   # 除 demo-keep 外的全部 demo-*: 预览",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "stop_deployment.py",
        "停止整个部署: 停掉它的全部容器, 不再调度 (停止后不能恢复, 只能重新提交)。不加 --yes 时什么都不做, "
        "返回 confirmation_required 并列出会停掉的部署与容器; 加 --yes 才执行, 然后读回部署状态 (verified)。"
        + cli.TOOK_EFFECT_HELP +
        "containers_before_stop 是停止前的容器快照 (其中的 status 是停止前的状态); cost_so_far_yuan 是停止前算出的已花费用 "
        "(与 cost_report.py 同一算法, 依据在 cost_so_far.basis); guards 列出仍在监视它的守护。"
        "--name-glob 一次停止名称匹配的全部部署: 先预览, 用户同意后加 --yes --expect-uuids (预览给出), "
        "匹配集合变了就不执行; 结果 items[] 是每个部署的 outcome (done/skipped/failed)、took_effect、cost_so_far_yuan 与 guards。",
        EXAMPLES,
        mutating=True,
    )
    cli.add_deployment_selector(parser, name_glob=True)
    cli.add_confirmation_flag(parser)
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.deploy.bulk import run_bulk
    from autodl_esd.money.guard import guards_watching
    from autodl_esd.money.spend import deployment_impact
    from autodl_esd.platform.effects import apply_change
    from autodl_esd.platform.resolve import deployment_summary, require_confirmation, resolve_from_args

    client = ctx.client()
    if args.name_glob:
        return run_bulk(client, ctx, pattern=args.name_glob, exclude=args.exclude, yes=args.yes, expected_text=args.expect_uuids,
                        verb="停止", action="stop_deployment", change_for=lambda d: stop_change(client, d["uuid"]),
                        skip_reason=lambda d: "已经是 stopped 状态" if d.get("status") == "stopped" else None)
    if args.expect_uuids or args.exclude:
        raise cli.UsageError(f"{'--expect-uuids' if args.expect_uuids else '--exclude'} 只和 --name-glob 一起用。")
    deployment = resolve_from_args(client, args)
    if deployment.get("status") == "stopped":
        return {"deployment_uuid": deployment["uuid"], "changed": False, "verified": True,
                "note": "部署已经是 stopped 状态, 没有再次停止。", "deployment": deployment_summary(deployment),
                **guards_watching(deployment["uuid"])}  # the same rule on every path: listed when any, else absent
    impact = deployment_impact(client, deployment, with_cost=True)
    require_confirmation(args.yes, "停止", deployment, impact, "stop_deployment")

    uuid = deployment["uuid"]
    try:
        after, verification = apply_change(stop_change(client, uuid), client, ctx.progress, ctx.partial)
    except AutoDLError as error:  # the same `guards` rule on the failure path: listed when any watch
        error.details.update(guards_watching(uuid))
        raise
    ctx.progress.log(f"已停止部署 {uuid}")
    return {
        "deployment_uuid": uuid,
        "changed": True,
        **verification,
        "deployment": deployment_summary(after or deployment),
        # A snapshot from before the stop (statuses then, e.g. running), not a read-back:
        # the name says so, so a "running" status here is not mistaken for a failed stop.
        "containers_before_stop": impact["live_containers"],
        "containers_before_stop_count": impact["live_container_count"],
        # Read before the stop, the same figure cost_report gives (which still sees a stopped one).
        "cost_so_far_yuan": impact["cost_so_far_yuan"],
        "cost_so_far": impact["cost_so_far"],
        **guards_watching(uuid),  # guards on it end at their next check; listed so none looks stuck
    }


def stop_change(client, uuid: str):
    from autodl_esd.platform import api
    from autodl_esd.platform.effects import Change
    from autodl_esd.platform.resolve import deployment_by_uuid

    return Change(
        what=f"停止部署 {uuid}",
        send=lambda: api.stop_deployment(client, uuid),
        fetch=lambda: deployment_by_uuid(client, uuid),
        done=lambda d: d is None or d.get("status") == "stopped",
        check=f"python3 scripts/list_deployments.py --deployment-uuid {uuid}",
        ids={"deployment_uuid": uuid},
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
