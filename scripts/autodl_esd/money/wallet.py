"""The account's wallet in yuan: balance, spend so far, vouchers."""

from __future__ import annotations

from typing import Any

from ..core.errors import AutoDLError
from ..platform import api
from ..platform.units import yuan_from_price_units
from .estimate import LOW_BALANCE_HOURS, balance_cover

# Response keys (yuan x 1000) and the names we show them under, in yuan.
WALLET_FIELDS = {"assets": "balance_yuan", "accumulate": "accumulated_spend_yuan", "voucher_balance": "voucher_balance_yuan"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_wallet(client: Any) -> dict[str, Any]:
    """The wallet in yuan, with the raw figures beside; a missing field is null, never 0."""
    raw = api.wallet_balance(client)
    shown: dict[str, Any] = {}
    for key, name in WALLET_FIELDS.items():
        value = raw.get(key) if isinstance(raw, dict) else None
        shown[name] = round(yuan_from_price_units(value), 3) if _is_number(value) else None
    shown["raw"] = {key: raw.get(key) for key in WALLET_FIELDS} if isinstance(raw, dict) else raw
    shown["unit_note"] = "接口金额单位是 元×1000 (assets=1000 即 1 元), 这里已换算成元。"
    return shown


def balance_check(client: Any, cost: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """(the wallet with hours covered at the worst case, warnings). Never raises for the
    wallet itself: a balance that cannot be read is a warning, the plan goes on."""
    try:
        wallet = read_wallet(client)
    except AutoDLError as error:
        return None, [{
            "code": "balance_unavailable", "path": "wallet",
            "message": f"无法查询账户余额: {error.message}",
            "hint": "余额不影响提交; 需要时用 wallet_balance.py 单独查看, 或在控制台查看。",
        }]
    balance = wallet.get("balance_yuan")
    if balance is None:
        return wallet, []
    cover = balance_cover(balance, cost["worst_case_hourly_yuan"])
    wallet = {**wallet, **cover}
    warnings = []
    if cover["low"]:
        warnings.append({
            "code": "low_balance", "path": "wallet",
            "message": f"余额 {balance:g} 元, 按最坏情况每小时 {cost['worst_case_hourly_yuan']:g} 元只够约 {cover['hours_at_worst_case']:g} 小时 (少于 {LOW_BALANCE_HOURS:g} 小时)。",
            "hint": "欠费会强制停止全部容器: 先告诉用户并请其充值, 或减少 replica_num / 降低 price_to。",
        })
    return wallet, warnings
