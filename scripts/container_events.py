#!/usr/bin/env python3
"""A deployment's container events from an offset; --follow waits until containers reach a status."""

from __future__ import annotations

import time

from autodl_esd.core import cli
from autodl_esd.core.errors import ApiError, AutoDLError, ErrorType
from autodl_esd.platform.containers import CONTAINER_STATUSES, containers_in_status

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

# An events offset counts the deployment's events so far; the platform's integers are int32
# at least, and no deployment has more events than that.
MAX_EVENT_OFFSET = 2**31 - 1

EXAMPLES = [
    "python3 scripts/container_events.py --name my-service",
    "python3 scripts/container_events.py --deployment-uuid 833f1cd5a764fa3 --offset 12",
    "python3 scripts/container_events.py --name my-service --follow --until running --count 2 --timeout 900",
    "python3 scripts/container_events.py --name my-job --follow --until finished --timeout 7200   # 等 Job 跑完",
    "python3 scripts/container_events.py --container-uuid 833f1cd5a764fa3-f94411a60c-a394fb30",
]

# Events change on the scale of seconds (image pull, start-up); 5 s keeps a follow
# responsive without hammering the API.
DEFAULT_INTERVAL_SECONDS = 5.0
# Image pulls on a cold host can take several minutes; 15 minutes covers a large image
# (the same budget as queue_submit --startup-timeout).
DEFAULT_TIMEOUT_SECONDS = 900.0


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "container_events.py",
        "查询部署的容器事件 (每个事件: 容器 UUID、进入的状态、时间; 按时间正序)。输出 next_offset, "
        "下次加 --offset NEXT_OFFSET 只取新事件。--follow 持续轮询, 直到 --count 个不同容器进入 "
        "--until 状态 (默认 running; 之后又停止的不算); 超过 --timeout 返回 startup_timeout (退出码 2)。"
        "--until finished (Job / Container): 跟踪到部署的 finished_num 达到目标 (Job 为 replica_num, Container 为 1) "
        "或部署停止, 输出计数与每个容器的运行时长 (finish); 平台不报告退出码, 程序是否成功要看它自己的输出。",
        EXAMPLES,
    )
    cli.add_deployment_selector(parser, required=False)
    parser.add_argument("--container-uuid", metavar="UUID", help="只看这个容器的事件; 不指定部署时从容器 UUID 推出部署")
    parser.add_argument("--offset", type=cli.int_between(0, MAX_EVENT_OFFSET), default=0, metavar="N", help="跳过前 N 个事件 (上次输出的 next_offset), 默认 0")
    parser.add_argument("--follow", action="store_true", help="持续轮询新事件, 直到达到 --until/--count 或超时")
    parser.add_argument("--until", choices=(*CONTAINER_STATUSES, "finished"), default="running", metavar="STATUS",
                        help=f"--follow 等待的状态: {', '.join(CONTAINER_STATUSES)} (默认 running), 或 finished (Job / Container 跑完)")
    parser.add_argument("--count", type=cli.positive_int, metavar="N",
                        help="--follow 需要多少个不同容器达到该状态 (默认: ReplicaSet 为 replica_num, Job 为 min(parallelism_num, replica_num), Container 为 1; 指定 --container-uuid 时为 1)")
    parser.add_argument("--interval", type=cli.positive_seconds, default=DEFAULT_INTERVAL_SECONDS, metavar="S", help="--follow 轮询间隔秒数, 可为小数 (默认 5)")
    parser.add_argument("--timeout", type=cli.non_negative_seconds, default=DEFAULT_TIMEOUT_SECONDS, metavar="S", help="--follow 最多等待秒数, 0 为不限 (默认 900)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.core.polling import ReadErrors, floor_interval
    from autodl_esd.platform import api
    from autodl_esd.platform.follow import wait_finished
    from autodl_esd.platform.resolve import owner_of_container, resolve_deployment, resolve_from_args

    client = ctx.client()
    owner = owner_of_container(args.container_uuid) if args.container_uuid else None
    if args.deployment_uuid or args.name or args.config:
        deployment = resolve_from_args(client, args)
    elif owner:
        deployment = resolve_deployment(client, deployment_uuid=owner)
    else:
        raise cli.UsageError("需要指定部署: --deployment-uuid、--name、--config 之一 (或一个完整的 --container-uuid)。")

    deployment_uuid = deployment["uuid"]
    if owner and owner != deployment_uuid:
        # Otherwise the filter matches nothing and --follow waits out its whole timeout.
        raise cli.UsageError(
            f"容器 {args.container_uuid} 属于部署 {owner}, 不属于 {deployment_uuid}。",
            "只给 --container-uuid (部署由它推出), 或改用正确的部署。",
            {"container_uuid": args.container_uuid, "deployment_uuid": deployment_uuid},
        )
    events, next_offset = api.list_events(client, deployment_uuid, offset=args.offset, container_uuid=args.container_uuid)
    result = {"deployment_uuid": deployment_uuid, "offset": args.offset, "next_offset": next_offset}
    if args.follow and args.until == "finished":
        if args.container_uuid or args.count:
            raise cli.UsageError("--until finished 跟踪整个部署, 不能和 --container-uuid / --count 一起用。")
        finish = wait_finished(client, deployment_uuid, timeout=args.timeout, progress=ctx.progress,
                               interval=floor_interval(args.interval, client.host, ctx.progress))
        warnings = finish.pop("warnings", [])
        result["finish"] = finish
        try:
            events, result["next_offset"] = api.list_events(client, deployment_uuid, offset=args.offset)
        except ApiError as error:  # the finish is known; a failed last look must not discard it
            errors = ReadErrors(ctx.progress, "查询事件")
            errors.record(error)
            warnings.append(errors.warning())
        if warnings:
            result["warnings"] = warnings
    elif args.follow:
        result.update(follow(args, ctx, deployment, events, next_offset))
        events = result.pop("events")
    return cli.list_result(events, **result)


def follow(args, ctx: cli.Context, deployment: dict, events: list, offset: int) -> dict:
    """Poll from `offset` until `--count` distinct containers have reached `--until`."""
    from autodl_esd.core.polling import ReadErrors, failed_reads_text, floor_interval
    from autodl_esd.deploy.submit import target_running
    from autodl_esd.platform import api

    interval = floor_interval(args.interval, ctx.client().host, ctx.progress)
    target = args.count or (1 if args.container_uuid else target_running(deployment))
    started, errors, reached = time.monotonic(), ReadErrors(ctx.progress, "查询事件"), []
    while True:
        reached = containers_in_status(events, args.until)
        elapsed = time.monotonic() - started
        outcome = {
            "events": events, "next_offset": offset, "until": args.until, "target_count": target,
            "reached_containers": reached, "elapsed_seconds": round(elapsed, 1),
        }
        if len(reached) >= target:
            warning = errors.warning()
            return {**outcome, "reached": True, **({"warnings": [warning]} if warning else {})}
        if args.timeout and elapsed >= args.timeout:
            raise AutoDLError(
                ErrorType.STARTUP_TIMEOUT,
                f"{args.timeout:g} 秒内只有 {len(reached)}/{target} 个容器进入 {args.until}; 部署 {deployment['uuid']} 仍然存在。"
                + failed_reads_text(errors),
                "部署仍然存在, 不要重新提交: 看 details.events 卡在哪个阶段, 或加 --offset NEXT_OFFSET 继续跟踪; "
                "容器反复失败时用 list_containers.py --released 查看所在主机。",
                {"deployment_uuid": deployment["uuid"], "reached": False, **outcome, **errors.details()},
            )
        ctx.progress.status(f"等待 {target} 个容器进入 {args.until}: 已有 {len(reached)} 个, {elapsed:.0f}s")
        time.sleep(min(interval, args.timeout - elapsed) if args.timeout else interval)
        try:
            new, offset = api.list_events(ctx.client(), deployment["uuid"], offset=offset, container_uuid=args.container_uuid)
            errors.reset()
        except ApiError as error:
            errors.record(error)
            continue
        for event in new:
            ctx.progress.log(f"{event.get('deployment_container_uuid')} → {event.get('status')} ({event.get('created_at')})")
        events = events + new


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
