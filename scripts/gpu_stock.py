#!/usr/bin/env python3
"""GPU stock per model: idle and total cards, globally or summed over regions."""

from __future__ import annotations

from autodl_esd.core import cli
from autodl_esd.core.errors import AutoDLError, ErrorType

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/gpu_stock.py",
    'python3 scripts/gpu_stock.py --gpu "RTX 4090" --gpu "RTX A5000"',
    "python3 scripts/gpu_stock.py --region westDC2 --region westDC3   # 公有云",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "gpu_stock.py",
        "查询 GPU 库存: 每个型号的空闲卡数 idle 与总卡数 total。加 --region 时按地区查询并求和 "
        "(地区库存接口)。不加 --region 时: 公有云 (api.autodl.com) 查询全部 11 个已知地区并求和 "
        "(公有云没有文档记载的全局库存接口), 其他平台查全局库存 (私有云接口)。stock 的键就是配置 "
        "gpu_name_set 中要填的型号名称。库存按单卡计: 2 张空闲卡可能在两台主机上。",
        EXAMPLES,
    )
    parser.add_argument("--region", action="append", metavar="CODE", help="地区代码, 可重复 (如 westDC2); 使用地区库存接口")
    parser.add_argument("--gpu", action="append", metavar="NAME", help="只看这个型号, 可重复; 名称须完全一致, 不存在时报 gpu_type_not_found")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.platform import api
    from autodl_esd.platform.stock import requested_stock, similar_gpu_names

    client = ctx.client()
    regions = api.stock_regions(client, args.region)
    stock, raw = api.gpu_stock(client, regions)
    unknown = [name for name in args.gpu or [] if name not in stock]
    if unknown:
        where = f" (地区: {', '.join(regions)})" if regions else ""
        did_you_mean = {name: similar_gpu_names(name, stock) for name in unknown}
        raise AutoDLError(
            ErrorType.GPU_TYPE_NOT_FOUND,
            f"没有这些 GPU 型号的库存记录{where}: {unknown}",
            "从 details.available_gpus 中选择型号 (名称须完全一致, 包括大小写和空格); "
            "details.did_you_mean 列出了相近的名称。",
            {"requested": args.gpu, "unknown": unknown, "did_you_mean": did_you_mean, "available_gpus": sorted(stock)},
        )
    if args.gpu:
        stock = requested_stock(stock, args.gpu)
    result = {
        "source": "region" if regions else "global",
        "regions": regions or [],
        "stock": stock,
        "raw": raw,
    }
    if regions and not args.region:
        result["note"] = ("公有云没有文档记载的全局库存接口: 已按全部已知地区查询并求和, raw 按地区列出。"
                          "只看某些地区时加 --region CODE。")
    return result


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
