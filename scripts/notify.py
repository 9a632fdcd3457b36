#!/usr/bin/env python3
"""Send a WeChat message to the account owner (AutoDL's notification endpoint)."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.platform.units import WECHAT_MAX_TITLE_CHARS, WECHAT_PER_DAY, WECHAT_PER_MINUTE

EXAMPLES = [
    'python3 scripts/notify.py --title "训练完成" --content "resnet-batch-training 的 4 个容器都已结束"',
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "notify.py",
        "给账号绑定的微信发一条通知 (POST /api/v1/wechat/message/send, 在 www.autodl.com 上, 同一个令牌)。"
        f"账号须已绑定微信; 平台限制每分钟 {WECHAT_PER_MINUTE} 条、每天 {WECHAT_PER_DAY} 条, 本机按同样的限制计数, 超限时不发送 "
        "(api_error, details.rate_limited 与 retry_after_seconds)。消息请求不重试: 结果不明时可能已送达。",
        EXAMPLES,
    )
    parser.add_argument("--title", required=True, metavar="T", help=f"消息标题 (最多 {WECHAT_MAX_TITLE_CHARS} 字, 更长的会截断)")
    parser.add_argument("--content", metavar="C", help="消息正文")
    parser.add_argument("--name", metavar="NAME", help="名称 (如部署或任务名)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform.notify import send

    if not args.title.strip():
        raise cli.UsageError("--title 不能为空。")
    return send(ctx.client().settings, args.title, args.content, args.name, ctx.progress)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
