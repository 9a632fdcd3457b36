#!/usr/bin/env python3
"""Delete a deployment (stopping it first if needed); needs --yes."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/delete_deployment.py --name old-job               # 只说明会删除什么",
    "python3 scripts/delete_deployment.py --name old-job --yes",
    "python3 scripts/delete_deployment.py --deployment-uuid 833f1cd5a764fa3 --yes",
    "python3 scripts/delete_deployment.py --name-glob 'demo-*'        # 预览全部匹配, 给出 details.expect_uuids",
    "python3 scripts/delete_deployment.py --name-glob 'demo-*' --yes --expect-uuids 833f1cd5a764fa3,53a677bb3e281b8",
    "python3 scripts/delete_deployment.py --name-glob 'demo-*' --exclude demo-keep   # 除 demo-keep 外的全部 demo-*: 预览",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "delete_deployment.py",
        "删除部署 (未停止的会先被停止)。不加 --yes 时什么都不做, 返回 confirmation_required 并列出"
        "会删除的部署与会停掉的容器; 加 --yes 才执行, 然后确认它已从部署列表消失 (verified)。"
        + cli.TOOK_EFFECT_HELP +
        "删除后 cost_report.py 不再列出这个部署: 结果的 cost_so_far_yuan 就是它最后的花费 (删除前按 cost_report 同一算法算出, "
        "依据在 cost_so_far.basis); guards 列出仍在监视它的守护。"
        "--name-glob 一次删除名称匹配的全部部署: 先预览, 用户同意后加 --yes --expect-uuids (预览给出), "
        "匹配集合变了就不执行; 结果 items[] 是每个部署的 outcome (done/failed)、took_effect、cost_so_far_yuan 与 guards。",
        EXAMPLES,
        mutating=True,
    )
    cli.add_deployment_selector(parser, name_glob=True)
    cli.add_confirmation_flag(parser)
    return parser


# A repeated delete (the previous one timed out, or its answer was lost) finds nothing: that
# is the delete having taken effect. Said in the hint only; not_found stays an error so a
# mistyped name or uuid never reads as a successful delete.
ALREADY_DELETED_HINT = "如果刚刚删除过这个部署 (例如上一次删除超时), 这说明删除已经生效, 不必再删; 否则检查名称或 UUID 是否写对。"


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.deploy.bulk import run_bulk
    from autodl_esd.money.guard import guards_watching
    from autodl_esd.money.spend import deployment_impact
    from autodl_esd.platform.effects import apply_change
    from autodl_esd.platform.resolve import require_confirmation, resolve_from_args

    client = ctx.client()
    if args.name_glob:
        return run_bulk(client, ctx, pattern=args.name_glob, exclude=args.exclude, yes=args.yes, expected_text=args.expect_uuids,
                        verb="删除", action="delete_deployment", change_for=lambda d: delete_change(client, d["uuid"]))
    if args.expect_uuids or args.exclude:
        raise cli.UsageError(f"{'--expect-uuids' if args.expect_uuids else '--exclude'} 只和 --name-glob 一起用。")
    deployment = resolve_from_args(client, args, gone_hint=ALREADY_DELETED_HINT)
    # with_cost: once deleted, cost_report can no longer see it; this is its last figure.
    impact = deployment_impact(client, deployment, with_cost=True)
    require_confirmation(args.yes, "删除", deployment, impact, "delete_deployment")

    uuid = deployment["uuid"]
    try:
        _after, verification = apply_change(delete_change(client, uuid), client, ctx.progress, ctx.partial)
    except AutoDLError as error:  # the same `guards` rule on the failure path: listed when any watch
        error.details.update(guards_watching(uuid))
        raise
    ctx.progress.log(f"已删除部署 {uuid}")
    return {
        "deployment_uuid": uuid,
        "deleted": True,
        **verification,
        **impact,
        **guards_watching(uuid),  # guards on it end at their next check; listed so none looks stuck
    }


def delete_change(client, uuid: str):
    from autodl_esd.platform import api
    from autodl_esd.platform.effects import Change
    from autodl_esd.platform.resolve import deployment_by_uuid

    return Change(
        what=f"删除部署 {uuid}",
        send=lambda: api.delete_deployment(client, uuid),
        fetch=lambda: deployment_by_uuid(client, uuid),
        done=lambda d: d is None,
        check=f"python3 scripts/list_deployments.py --deployment-uuid {uuid}",
        ids={"deployment_uuid": uuid},
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
