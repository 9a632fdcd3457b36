"""serve_gateway.py's --autoscale flags, their checks and the confirmation, kept light:
only argparse and the policy's defaults are imported here (serve_gateway.py imports this
module for its --help, which must not load dataclasses or typing). The config the flags
make is built where the autoscaler is assembled (serving.serve)."""

from __future__ import annotations

import argparse

from ...core import cli
from ...core.errors import AutoDLError, ErrorType
from ...platform.units import MAX_REPLICA_NUM
from .defaults import (
    DEFAULT_DOWNSCALE_DELAY,
    DEFAULT_LOOK_BACK,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_TARGET_INFLIGHT,
    DEFAULT_UPSCALE_DELAY,
)

# Without --max-replicas: at least what runs now (a default must never shrink a deployment on
# its own), and 4 for a small one, so a load spike cannot buy more than a handful of GPUs.
DEFAULT_MAX_REPLICAS = 4
AUTOSCALE_ONLY = ("min_replicas", "max_replicas", "target_inflight", "look_back", "upscale_delay", "downscale_delay",
                  "scale_to_zero_after", "max_hourly_cost", "budget", "blacklist_faulty")
ZERO_CAVEAT = ("平台是否接受 replica_num 0 各来源说法不一: 如果平台拒绝, 自动扩缩容会退回到最少 1 个副本并提示一次。"
               "缩到 0 后第一个请求要等容器启动 (拉镜像可能要几分钟), --queue-timeout 要足够长。")


def add_autoscale_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("自动扩缩容 (--autoscale)")
    group.add_argument("--autoscale", action="store_true",
                       help="按真实负载 (网关的在途+排队请求, 加 --load-path 时还有副本自己报告的 running+waiting) 自动调整副本数; "
                            "会购买容器, 需要 --yes")
    group.add_argument("--min-replicas", type=cli.int_between(0, MAX_REPLICA_NUM), default=None, metavar="N",
                       help=f"最少副本数 (默认 {DEFAULT_MIN_REPLICAS}; 0 = 空闲时缩到 0, 见 --scale-to-zero-after)")
    group.add_argument("--max-replicas", type=cli.int_between(1, MAX_REPLICA_NUM), default=None, metavar="N",
                       help=f"最多副本数 (默认 max({DEFAULT_MAX_REPLICAS}, 当前副本数))")
    group.add_argument("--target-inflight", type=cli.positive_float, default=None, metavar="X",
                       help=f"每个副本的目标在途请求数: 期望副本数 = ceil(负载 / X) (默认 {DEFAULT_TARGET_INFLIGHT:g}, 同 Ray Serve)")
    group.add_argument("--look-back", type=cli.non_negative_seconds, default=None, metavar="S",
                       help=f"负载取最近多少秒 (本机真实秒) 的平均 (默认 {DEFAULT_LOOK_BACK:g})")
    group.add_argument("--upscale-delay", type=cli.non_negative_seconds, default=None, metavar="S",
                       help=f"需要扩容的状态持续多少秒 (本机真实秒) 才扩 (默认 {DEFAULT_UPSCALE_DELAY:g}; 从 0 扩容不等)")
    group.add_argument("--downscale-delay", type=cli.non_negative_seconds, default=None, metavar="S",
                       help=f"需要缩容的状态持续多少秒 (本机真实秒) 才缩, 每次只缩 1 个 (默认 {DEFAULT_DOWNSCALE_DELAY:g})")
    group.add_argument("--scale-to-zero-after", type=cli.non_negative_seconds, default=None, metavar="S",
                       help="--min-replicas 0 时: 多少秒 (本机真实秒) 没有请求就缩到 0 (默认等于 --downscale-delay)")
    group.add_argument("--max-hourly-cost", type=cli.positive_float, default=None, metavar="YUAN",
                       help="每小时最多花多少元: 副本数上限 = 这个数 / 容器报告的单价 (硬上限, 优先于 --min-replicas)")
    group.add_argument("--budget", type=cli.positive_float, default=None, metavar="YUAN",
                       help="从启动起最多花多少元 (容器运行时长 x 单价, 时长按平台时钟计, 与 cost_report.py 一致): 花完后缩到最少副本数, 允许时缩到 0")
    group.add_argument("--blacklist-faulty", action="store_true",
                       help="同一台主机上的副本反复故障时把主机加入调度黑名单 (默认只报告候选)")
    if not any(action.dest == "yes" for action in parser._actions):
        group.add_argument("--yes", action="store_true", help="确认启动自动扩缩容 (会购买容器); 不加时只返回 confirmation_required 和它会在什么范围内操作")


def check_autoscale_arguments(args: argparse.Namespace) -> None:
    """usage_error for autoscale flags that make no sense, before anything is contacted."""
    if not getattr(args, "autoscale", False):
        given = [name for name in AUTOSCALE_ONLY if getattr(args, name, None) not in (None, False)]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise AutoDLError(ErrorType.USAGE_ERROR, f"{flags} 只在 --autoscale 时有效。", "加上 --autoscale, 或去掉这些参数。",
                              {"flags": given})
        return
    if getattr(args, "registry", None) or getattr(args, "registry_url", None):
        raise AutoDLError(ErrorType.USAGE_ERROR, "--autoscale 需要知道是哪个部署: 不能只用 --registry / --registry-url。",
                          "用 --deployment-uuid、--name 或 --config 指定部署。", {})
    if args.min_replicas is not None and args.max_replicas is not None and args.min_replicas > args.max_replicas:
        raise AutoDLError(ErrorType.USAGE_ERROR, f"--min-replicas {args.min_replicas} 大于 --max-replicas {args.max_replicas}。",
                          "调整为 min <= max。", {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas})
    if args.scale_to_zero_after is not None and args.min_replicas != 0:
        raise AutoDLError(ErrorType.USAGE_ERROR, "--scale-to-zero-after 只在 --min-replicas 0 时有效。",
                          "需要空闲时缩到 0 就加 --min-replicas 0 (缩到 0 是显式选择)。", {})


def require_autoscale_confirmation(args: argparse.Namespace, bounds: dict) -> None:
    """confirmation_required (with the bounds it would act within) unless --yes."""
    if getattr(args, "yes", False):
        return
    details = {"action": "autoscale", **bounds}
    if bounds.get("min_replicas") == 0:
        details["zero_caveat"] = ZERO_CAVEAT
    cost = bounds.get("max_hourly_cost_yuan")
    worst = bounds.get("worst_case_hourly_yuan")
    basis = "按当前容器单价" if bounds.get("price_source") == "containers" else "按模板单价上限"
    spend = f", 预计最多约 {cost:g} 元/小时 ({basis} × {bounds['effective_max_replicas']} 个副本)" if isinstance(cost, (int, float)) else ""
    if isinstance(worst, (int, float)):
        spend += f", 模板允许的最坏情况 {worst:g} 元/小时 (price_to × gpu_num × {bounds['max_replicas']} 个副本)"
    raise AutoDLError(
        ErrorType.CONFIRMATION_REQUIRED,
        f"自动扩缩容会按负载调整部署 {bounds['deployment_uuid']} 的副本数, 范围 {bounds['min_replicas']}-{bounds['effective_max_replicas']} "
        f"(当前 {bounds['current_replica_num']}){spend}, 会购买容器; 未加 --yes, 什么都没有做。",
        "把 details 中的范围、单价、花费上限和最坏情况 (worst_case_hourly_yuan) 告诉用户, 得到同意后加 --yes 重新执行; 想限制花费用 --max-hourly-cost / --budget。",
        details,
    )
