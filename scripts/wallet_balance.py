#!/usr/bin/env python3
"""Show the account's wallet: balance, frozen and available money, spend so far and vouchers, in yuan."""

from __future__ import annotations

from autodl_esd.core import cli

# The rest of the package is imported in the function that uses it, after parsing: --help
# loads only core.cli and the cheap modules above (tests/test_startup_imports.py).

EXAMPLES = [
    "python3 scripts/wallet_balance.py",
    "python3 scripts/wallet_balance.py --hourly-cost 18   # 余额按每小时 18 元能用多久",
]


def build_parser() -> cli.JsonArgumentParser:
    parser = cli.make_parser(
        "wallet_balance.py",
        "查询账户余额 (POST /api/v1/dev/wallet/balance): 余额 balance_yuan、冻结金额 blocked_yuan、"
        "可用余额 available_yuan (= 余额 - 冻结, 能花的钱, 小时数与 low_balance 都按它)、累计消费 accumulated_spend_yuan、"
        "代金券余额 voucher_balance_yuan, 已从接口的 元×1000 换算成元。只读; 普通开发者令牌即可 (不需要企业认证)。",
        EXAMPLES,
    )
    parser.add_argument("--hourly-cost", type=cli.positive_float, metavar="Y",
                        help="再算出可用余额按每小时 Y 元能用多少小时 (hours_at_worst_case), 不足几小时时给出 low_balance 警告")
    return parser


def handle(args, ctx: cli.Context) -> dict:
    from autodl_esd.money.estimate import LOW_BALANCE_HOURS, balance_cover
    from autodl_esd.money.wallet import money_words, read_wallet

    wallet = read_wallet(ctx.client())
    warnings = []
    if args.hourly_cost is not None and wallet["available_yuan"] is not None:
        cover = balance_cover(wallet["available_yuan"], args.hourly_cost)
        wallet.update(cover, hourly_cost_yuan=args.hourly_cost)
        if cover["low"]:
            warnings.append({
                "code": "low_balance", "path": "wallet",
                "message": f"{money_words(wallet)}, 按每小时 {args.hourly_cost:g} 元只够约 {cover['hours_at_worst_case']:g} 小时 (少于 {LOW_BALANCE_HOURS:g} 小时)。",
                "hint": "欠费会强制停止全部容器: 告诉用户并请其充值。",
            })
    return {**wallet, "warnings": warnings}


def main(argv=None) -> int:
    return cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    cli.script_main(main)
