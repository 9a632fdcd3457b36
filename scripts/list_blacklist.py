#!/usr/bin/env python3
"""List the machines currently on the scheduling blacklist (public-cloud endpoint)."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import ApiError

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/list_blacklist.py",
]


def build_parser() -> cli.JsonArgumentParser:
    return cli.make_parser(
        "list_blacklist.py",
        "列出当前生效的调度黑名单 (主机 machine_id、地区、失效时间 expired_time、备注 msg)。"
        "这是公有云接口; 私有云文档没有它, 平台返回 404 时报 api_error 并说明。",
        EXAMPLES,
    )


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api

    try:
        entries = api.list_blacklist(ctx.client())
    except ApiError as error:
        if error.http_status != 404:
            raise
        raise ApiError(
            "平台没有查询调度黑名单的接口 (GET /api/v1/dev/deployment/blacklist 返回 404)。",
            code=error.code,
            msg=error.msg,
            http_status=404,
            request_id=error.request_id,
            hint="私有云文档没有记载这个接口, 私有云的黑名单固定 24 小时后自动解除; "
            "要查看某台主机是否被拉黑, 只能记录 blacklist_host.py 的输出。公有云请确认 AUTODL_HOST=https://api.autodl.com。",
        ) from None
    return cli.list_result(entries)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
