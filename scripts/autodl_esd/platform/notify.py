"""WeChat notifications to the account owner, within the platform's limits.

`POST /api/v1/wechat/message/send` lives on the www host (https://www.autodl.com), not the
developer host; the account must have WeChat bound. The platform allows 5 successful
messages a minute and 50 a day; we count our own sends (rolling 60 s and 24 h, in the state
directory, shared by every script and guard on this machine) and do not send past them.

For queue_submit and guards a notification is a side matter: `notify_quietly` never raises,
a failure becomes a warning in the result.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from . import api
from .units import WECHAT_MAX_TITLE_CHARS, WECHAT_PER_DAY, WECHAT_PER_MINUTE
from ..core.errors import ApiError, AutoDLError
from ..core.http import ApiClient
from ..core.output import Progress
from ..core.settings import blank_setting_error, is_loopback_host, normalize_host, resolve
from ..core.state import make_state_dir, state_root, write_json_atomically

DEFAULT_WECHAT_HOST = "https://www.autodl.com"
# The windows of the platform's limits (units.WECHAT_PER_MINUTE, WECHAT_PER_DAY).
MINUTE_SECONDS = 60.0
DAY_SECONDS = 86400.0


def wechat_host(settings: Any, environ: Any = None) -> str:
    """AUTODL_WECHAT_HOST, else the simulator's own address when AUTODL_HOST is loopback,
    else https://www.autodl.com."""
    environ = os.environ if environ is None else environ
    explicit, blank = resolve("AUTODL_WECHAT_HOST", [("环境变量 AUTODL_WECHAT_HOST", environ)])
    if blank and not explicit:
        raise blank_setting_error("AUTODL_WECHAT_HOST", blank, f"填写通知接口地址 (如 {DEFAULT_WECHAT_HOST}), 或删除该设置。")
    if explicit:
        return normalize_host(explicit)
    return settings.host if is_loopback_host(settings.host) else DEFAULT_WECHAT_HOST


def sent_log_path() -> Path:
    return state_root() / "notify" / "wechat-sent.json"


class SendLog:
    """Times of messages sent (or possibly sent) from this machine, under an flock."""

    def __init__(self) -> None:
        self.path = sent_log_path()
        self._fd: int | None = None

    def __enter__(self) -> "SendLog":
        make_state_dir(self.path.parent)
        self._fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)

    def times(self, now: float) -> list[float]:
        try:
            stamps = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # bad JSON or not UTF-8
            stamps = []
        return [t for t in stamps if isinstance(t, (int, float)) and now - t < DAY_SECONDS]

    def save(self, stamps: list[float]) -> None:
        write_json_atomically(self.path, stamps)


def _rate_limited(message: str, retry_after: float, counts: dict[str, int]) -> ApiError:
    error = ApiError(message, code="LocalRateLimit", msg=message, retryable=True,
                     hint=f"约 {retry_after:.0f} 秒后再发; 平台限制每分钟 {WECHAT_PER_MINUTE} 条、每天 {WECHAT_PER_DAY} 条。")
    error.details.update(rate_limited=True, retry_after_seconds=round(retry_after, 1), sent_counts=counts)
    return error


def reserve_slot(now: float | None = None) -> float:
    """Take a send slot (its time) or raise a rate-limit ApiError; nothing is sent."""
    now = time.time() if now is None else now
    with SendLog() as log:
        stamps = log.times(now)
        minute = sorted(t for t in stamps if now - t < MINUTE_SECONDS)
        counts = {"last_minute": len(minute), "last_day": len(stamps)}
        if len(minute) >= WECHAT_PER_MINUTE:
            raise _rate_limited(f"1 分钟内已发送 {len(minute)} 条微信通知, 达到每分钟 {WECHAT_PER_MINUTE} 条的上限, 这条没有发送。",
                                MINUTE_SECONDS - (now - minute[0]), counts)
        if len(stamps) >= WECHAT_PER_DAY:
            raise _rate_limited(f"24 小时内已发送 {len(stamps)} 条微信通知, 达到每天 {WECHAT_PER_DAY} 条的上限, 这条没有发送。",
                                DAY_SECONDS - (now - min(stamps)), counts)
        log.save([*stamps, now])
    return now


def release_slot(stamp: float) -> None:
    """Give back a slot whose message was certainly not delivered."""
    with SendLog() as log:
        stamps = log.times(time.time())
        if stamp in stamps:
            stamps.remove(stamp)
        log.save(stamps)


def send(settings: Any, title: str, content: str | None = None, name: str | None = None,
         progress: Progress | None = None) -> dict[str, Any]:
    """Send one message; raises AutoDLError (rate limit, not bound, platform error)."""
    title = title.strip()[:WECHAT_MAX_TITLE_CHARS]
    host = wechat_host(settings)
    stamp = reserve_slot()
    client = ApiClient(dataclasses.replace(settings, host=host), progress=progress)
    try:
        api.send_wechat_message(client, title, content, name)
    except ApiError as error:
        if not error.ambiguous:
            release_slot(stamp)  # refused: not delivered, the slot is free again
        error.details.update(wechat_host=host, may_have_been_sent=bool(error.ambiguous))
        raise
    except AutoDLError:
        release_slot(stamp)
        raise
    return {"sent": True, "title": title, "wechat_host": host}


def notify_quietly(settings: Any, title: str, content: str | None = None, name: str | None = None,
                   progress: Progress | None = None) -> dict[str, Any]:
    """send(), but a failure is returned as {"sent": false, "warning": {...}}, never raised."""
    try:
        return send(settings, title, content, name, progress)
    except AutoDLError as error:
        if progress is not None:
            progress.log(f"微信通知没有发出: {error.message}")
        return {"sent": False, "title": title, "warning": {
            "code": "notification_failed", "path": "--notify",
            "message": f"微信通知没有发出: {error.message}",
            "hint": error.hint or "不影响主任务; 检查账号是否已绑定微信。",
        }, "error_type": error.error_type.value, "details": error.details}
