#!/usr/bin/env python3
"""List the account's private images (all pages, or one page on request)."""

from __future__ import annotations

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/list_images.py",
    "python3 scripts/list_images.py --page-index 2 --page-size 20",
    "python3 scripts/list_images.py --system   # 私有云的系统基础镜像 (base-image-...)",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "list_images.py",
        "列出账号的私有镜像 (默认拉取全部分页)。items 中的 image_uuid 填进配置的 "
        "container_template.image_uuid; image_name 已统一 (公有云 image_name / 私有云 name)。",
        EXAMPLES,
    )
    parser.add_argument("--system", action="store_true",
                        help="改为列出私有云的系统基础镜像 (POST /api/v2/image/list, base-image-...); 公有云没有这个接口, "
                        "公有云基础镜像见 references/platform-api.md")
    parser.add_argument("--page-index", type=cli.positive_int, metavar="N", help="只取这一页 (从 1 开始), 并返回分页字段")
    parser.add_argument("--page-size", type=cli.positive_int, metavar="N", help="与 --page-index 一起使用的每页条数 (默认 100)")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api

    def shown(image: dict) -> dict:
        return {**image, "image_name": api.image_name(image)}

    path = api.SYSTEM_IMAGES_PATH if args.system else api.IMAGES_PATH
    if args.page_index is None and args.page_size is None:
        return cli.list_result([shown(image) for image in api.iter_pages(ctx.client(), path)])
    page = api.fetch_page(ctx.client(), path, {}, args.page_index or 1, args.page_size or api.PAGE_SIZE)
    paging = {key: page[key] for key in api.PAGING_KEYS if key in page}
    return cli.list_result([shown(image) for image in page.get("list") or []], **paging)


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
