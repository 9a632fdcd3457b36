"""The account's wallet in yuan: balance, spend so far, vouchers."""

from __future__ import annotations

from typing import Any

from ..core.errors import AutoDLError
from ..platform import api
from ..platform.units import yuan_from_price_units
from .estimate import LOW_BALANCE_HOURS, balance_cover

# Response keys (yuan x 1000) and the names we show them under, in yuan. `assets` is the whole
# balance; `blocked_asset` is frozen money inside it that cannot be spent (api facts section 15).
WALLET_FIELDS = {"assets": "balance_yuan", "blocked_asset": "blocked_yuan", "accumulate": "accumulated_spend_yuan",
                 "voucher_balance": "voucher_balance_yuan"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_wallet(client: Any) -> dict[str, Any]:
    """The wallet in yuan with every raw field beside; a missing field is null, never 0.

    `available_yuan` (balance minus frozen) is the money that can be spent: every judgement of
    money (hours covered, low balance) uses it. With no `blocked_asset` nothing is known frozen."""
    raw = api.wallet_balance(client)
    shown: dict[str, Any] = {}
    for key, name in WALLET_FIELDS.items():
        value = raw.get(key) if isinstance(raw, dict) else None
        shown[name] = round(yuan_from_price_units(value), 3) if _is_number(value) else None
    balance, blocked = shown["balance_yuan"], shown["blocked_yuan"]
    shown["available_yuan"] = None if balance is None else round(balance - (blocked or 0.0), 3)
    shown["raw"] = dict(raw) if isinstance(raw, dict) else raw
    shown["unit_note"] = ("接口金额单位是 元×1000 (assets=1000 即 1 元), 这里已换算成元; "
                          "available_yuan = balance_yuan - blocked_yuan (冻结金额不能花), 余额判断都按它。")
    return shown


def money_words(wallet: dict[str, Any]) -> str:
    """「可用余额 X 元 (冻结 Y 元)」 for warnings: the figure judged and the frozen part beside."""
    blocked = wallet.get("blocked_yuan") or 0.0
    return f"可用余额 {wallet['available_yuan']:g} 元 (冻结 {blocked:g} 元)"


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
    available = wallet.get("available_yuan")
    if available is None:
        return wallet, []
    cover = balance_cover(available, cost["worst_case_hourly_yuan"])
    wallet = {**wallet, **cover}
    warnings = []
    if cover["low"]:
        warnings.append({
            "code": "low_balance", "path": "wallet",
            "message": f"{money_words(wallet)}, 按最坏情况每小时 {cost['worst_case_hourly_yuan']:g} 元只够约 {cover['hours_at_worst_case']:g} 小时 (少于 {LOW_BALANCE_HOURS:g} 小时)。",
            "hint": "欠费会强制停止全部容器: 先告诉用户并请其充值, 或减少 replica_num / 降低 price_to。",
        })
    return wallet, warnings
