"""The account's wallet in yuan: balance, spend so far, vouchers."""

from __future__ import annotations

from typing import Any

from ..platform import api
from ..platform.units import yuan_from_price_units

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
