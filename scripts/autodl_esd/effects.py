"""What a change did: send it, and when its answer is lost, look at what the platform shows.

A mutation (stop, delete, scale, stop a container, blacklist a host, create) whose answer
never arrived (timeout, reset connection, 5xx) may still have been carried out, maybe only
later: the platform can still be working on a request the client gave up on. Reporting
that as a plain `api_error` invites the caller to send it again, which is not harmless for
every call (`stop_container --decrease-one-replica-num` lowers replica_num once per call; a
second create buys a second deployment).

So every mutating script sends through `apply_change`, which

- on an answer: reports `took_effect: true` and reads the new state back (`verified`);
- on a lost answer: keeps looking (fresh reads) for longer than a request still in flight
  could take to land (`in_flight_grace_seconds`), then reports what it saw:
  `took_effect: true` (a success: the change is visible), `false` (still not visible after
  the grace period) or `unknown` (the platform could not be read), with a hint that says
  how to check and never suggests repeating a call blindly;
- on a refusal: `took_effect: false` (the platform said no before doing anything).

`watch` is the looking part on its own; queue_submit's reconcile-by-name uses it too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ApiError, AutoDLError
from .output import Progress

# A request the server accepted just before the client gave up can still be processed
# after it. Look for at least the HTTP timeout plus this margin (server-side queueing and
# commit after the client's clock ran out) before concluding that it did not happen.
IN_FLIGHT_MARGIN_SECONDS = 5.0
# Pause between two looks; each look is a fresh list call, so once a second is plenty.
LOOK_PAUSE_SECONDS = 1.0
# However short the timeout, a few looks: one list call can itself fail or be served stale.
MIN_LOOKS = 3
# Used when the client does not say its timeout (a test double); the settings' default.
FALLBACK_HTTP_TIMEOUT_SECONDS = 30.0

TOOK_EFFECT_VALUES = (True, False, "unknown")


def _sleep(seconds: float) -> None:
    """Indirection so tests can skip real waiting."""
    time.sleep(seconds)


def _now() -> float:
    """Indirection so tests can move time without waiting."""
    return time.monotonic()


def in_flight_grace_seconds(client: Any) -> float:
    """How long after a lost answer the request could still land: HTTP timeout + margin."""
    timeout = getattr(getattr(client, "settings", None), "http_timeout", None)
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        timeout = FALLBACK_HTTP_TIMEOUT_SECONDS
    return float(timeout) + IN_FLIGHT_MARGIN_SECONDS


@dataclass
class Looks:
    """The outcome of `watch`."""

    found: bool  # done(value) held on some look
    value: Any  # the last value read (None when no look answered)
    answered: int  # looks that answered
    looks: int  # looks made
    elapsed_seconds: float
    last_error: str | None = None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"looks": self.looks, "looks_answered": self.answered,
                               "looked_for_seconds": round(self.elapsed_seconds, 1)}
        if self.last_error:
            out["read_back_error"] = self.last_error
        return out


def watch(
    fetch: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    grace_seconds: float,
    waiting_for: str = "",
    progress: Progress | None = None,
    min_looks: int | None = None,
    pause: float | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Looks:
    """Fresh looks until `done(fetch())`, or until `grace_seconds` passed and `min_looks` were made.

    A failed look (any AutoDLError) is counted, not raised: the caller decides what a
    platform that could not be read means. Progress says what is awaited and for how long.
    """
    sleep = sleep or _sleep
    clock = clock or _now
    min_looks = MIN_LOOKS if min_looks is None else min_looks
    pause = LOOK_PAUSE_SECONDS if pause is None else pause
    started = clock()
    looks = answered = 0
    value: Any = None
    last_error: str | None = None
    while True:
        looks += 1
        try:
            value = fetch()
        except AutoDLError as failure:
            last_error = failure.message
        else:
            answered += 1
            last_error = None
            if done(value):
                return Looks(True, value, answered, looks, clock() - started)
        elapsed = clock() - started
        if looks >= min_looks and elapsed >= grace_seconds:
            return Looks(False, value, answered, looks, elapsed, last_error)
        if progress is not None and waiting_for:
            progress.status(f"{waiting_for}: 第 {looks} 次查看未见, 最多再看 {max(0.0, grace_seconds - elapsed):.0f} 秒")
        sleep(pause)


@dataclass
class Change:
    """One mutation, and how to tell from the platform whether it took effect."""

    what: str  # Chinese, for messages: "停止部署 833f1cd5a764fa3"
    send: Callable[[], Any]
    fetch: Callable[[], Any]  # read the object back
    done: Callable[[Any], bool]  # does what `fetch` returned show the change?
    check: str  # how a person checks by hand, a command line
    # What the change is about ({"deployment_uuid": ...}), carried by every outcome.
    ids: dict[str, Any] = field(default_factory=dict)
    # Whether sending it once more does nothing beyond the first time (stop, delete, an
    # absolute replica count, a blacklist entry). False for relative changes.
    repeat_safe: bool = True


def apply_change(
    change: Change,
    client: Any,
    progress: Progress,
    partial: dict[str, Any] | None = None,
    *,
    verify: Callable[[], tuple[Any, dict[str, Any]]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Send `change` once; (last value read back, report with took_effect and verified).

    `verify` replaces the ordinary read-back after an answered change (default: a few
    looks via resolve.read_back). Raises ApiError carrying `took_effect: false|"unknown"`
    when the change is not known to have happened.
    """
    from .resolve import read_back

    if partial is not None:
        partial.update(change.ids)
        # An interrupt from here on must say the change may have happened.
        partial.update(took_effect="unknown", change=change.what, check=change.check,
                       interrupt_hint=f"{change.what}的请求已经发出, 是否生效未知: 先用 {change.check} 查看, 不要直接重复执行。")
    try:
        change.send()
    except ApiError as error:
        if not error.ambiguous:
            _settle(partial, False)
            error.details.update(took_effect=False, **change.ids)
            raise
        return _after_lost_answer(change, client, progress, partial, error)
    except AutoDLError as error:  # auth and the like: refused before anything was done
        _settle(partial, False)
        error.details.update(took_effect=False, **{k: v for k, v in change.ids.items() if k not in error.details})
        raise
    _settle(partial, True)
    value, verification = verify() if verify else read_back(change.fetch, change.done)
    return value, {"took_effect": True, **verification}


def _settle(partial: dict[str, Any] | None, took_effect: bool | str) -> None:
    if partial is None:
        return
    partial["took_effect"] = took_effect
    if took_effect != "unknown":
        partial.pop("interrupt_hint", None)


def _after_lost_answer(
    change: Change, client: Any, progress: Progress, partial: dict[str, Any] | None, error: ApiError
) -> tuple[Any, dict[str, Any]]:
    grace = in_flight_grace_seconds(client)
    progress.log(f"{change.what}: 平台的应答丢失 ({error.msg or error.message}), 读回确认是否已生效 (最多约 {grace:.0f} 秒)……")
    looks = watch(change.fetch, change.done, grace_seconds=grace, progress=progress,
                  waiting_for=f"等待{change.what}在平台上可见")
    lost = {"code": error.code, "msg": error.msg, "http_status": error.http_status}
    if looks.found:
        _settle(partial, True)
        progress.log(f"{change.what}: 读回确认已生效。")
        return looks.value, {"took_effect": True, "verified": True, "answer_lost": lost, **looks.report()}
    if looks.answered:
        took_effect: bool | str = False
        message = (f"{change.what}: 平台的应答丢失, 之后读回 {looks.looks} 次 (约 {looks.elapsed_seconds:.0f} 秒, "
                   "超过请求还可能在途中的时间) 仍未看到变化, 判断没有生效。")
        hint = ("可以重新执行同一命令 (脚本会先读取当前状态)。" if change.repeat_safe else
                f"这个操作重复执行不是无害的: 重新执行前先用 {change.check} 确认当前状态, 确认确实没有生效再执行。")
    else:
        took_effect = "unknown"
        message = f"{change.what}: 平台的应答丢失, 之后也无法读取平台状态 ({looks.last_error}), 不知道是否已生效。"
        hint = (f"稍后先用 {change.check} 查看是否已经生效; 这个操作重复执行结果相同, 确认没有生效时可以重新执行同一命令。"
                if change.repeat_safe else
                f"不要直接重复执行 (重复执行不是无害的): 稍后先用 {change.check} 查看是否已经生效, 再决定。")
    _settle(partial, took_effect)
    failure = ApiError(message, code=error.code, msg=error.msg, http_status=error.http_status,
                       retryable=False, ambiguous=True, hint=hint)
    failure.details.update(took_effect=took_effect, change=change.what, check=change.check,
                           answer_lost=lost, **looks.report())
    for key, value in change.ids.items():
        failure.details.setdefault(key, value)
    raise failure from None
