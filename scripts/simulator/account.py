"""The simulated account: a wallet that running containers draw down, WeChat messages, and
the enterprise gate.

Billing follows the containers' own records: each container costs its `price` (yuan x 1000
per card-hour) x `gpu_num` from `started_at` until `stopped_at` (or now). The balance
is the starting balance minus that spend, so it falls as simulated time passes and a low
balance can be rehearsed. (The real platform force-stops containers in arrears; the
simulator only lets the balance go negative.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

# A starting balance that covers a long demo: 500 yuan (yuan x 1000).
DEFAULT_BALANCE_UNITS = 500_000
# The platform's documented WeChat limits: successful messages per minute and per day.
WECHAT_PER_MINUTE = 5
WECHAT_PER_DAY = 50
MINUTE_SECONDS = 60.0
DAY_SECONDS = 86400.0
# What an account without enterprise verification hears from elastic-deployment routes.
GATED_MSG = "无当前资源访问权限"
GATED_PATH_PREFIX = "/api/v1/dev/deployment"
# Fixed account identity and timestamp in the wallet answer (the platform's own format).
SIM_UID = 100001
WALLET_CREATED_AT = "2026-01-01T00:00:00+08:00"


@dataclass
class WechatMessage:
    title: str
    name: str
    content: str
    at: float  # simulated seconds


@dataclass
class Account:
    balance_units: int = DEFAULT_BALANCE_UNITS
    blocked_units: int = 0  # frozen inside the balance: counted in `assets`, not spendable
    voucher_units: int = 0
    accumulated_before_units: int = 0  # spend before the simulation started
    wechat_bound: bool = True
    gated: bool = False
    messages: list[WechatMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def spend_units(containers: Any, now: float) -> float:
        """What every container has cost so far (yuan x 1000), released ones included."""
        total = 0.0
        for container in containers:
            if container.started_at is None:
                continue
            end = container.stopped_at if container.stopped_at is not None else now
            total += container.price * container.gpu_num * max(0.0, end - container.started_at) / 3600.0
        return total

    def wallet(self, containers: Any, now: float) -> dict[str, Any]:
        """The real answer's 14 fields (api facts section 15); money in yuan x 1000."""
        spent = self.spend_units(containers, now)
        return {
            "id": 1,
            "uid": SIM_UID,
            "assets": round(self.balance_units - spent),
            "blocked_asset": self.blocked_units,
            "accumulate": round(self.accumulated_before_units + spent),
            "voucher_balance": self.voucher_units,
            "available_coupon_num": 0,
            "to_expire_voucher_num": 0,
            "certain_conditions_voucher_balance": 0,
            "remittance_code": "",
            "total_recharge_asset": self.balance_units + self.accumulated_before_units,
            "exclusive_transfer_account": "",
            "created_at": WALLET_CREATED_AT,
            "updated_at": WALLET_CREATED_AT,
        }

    def record_message(self, title: str, name: str, content: str, now: float) -> str | None:
        """Store a message; returns the refusal text when a platform limit would refuse it."""
        with self.lock:
            if not self.wechat_bound:
                return "账号未绑定微信，无法发送消息"
            last_minute = [m for m in self.messages if now - m.at < MINUTE_SECONDS]
            last_day = [m for m in self.messages if now - m.at < DAY_SECONDS]
            if len(last_minute) >= WECHAT_PER_MINUTE:
                return f"发送过于频繁：每分钟最多 {WECHAT_PER_MINUTE} 条"
            if len(last_day) >= WECHAT_PER_DAY:
                return f"今日发送已达上限：每天最多 {WECHAT_PER_DAY} 条"
            self.messages.append(WechatMessage(title, name, content, now))
            return None

    def message_list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"title": m.title, "name": m.name, "content": m.content, "at": m.at} for m in self.messages]
