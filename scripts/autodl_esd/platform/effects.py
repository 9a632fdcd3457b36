"""What a change did: send it, and when its answer is lost, look at what the platform shows.

A mutation (stop, delete, scale, stop a container, blacklist a host, create) whose answer
never arrived (timeout, reset connection, 5xx) may still have been carried out, maybe only
later: the platform can still be working on a request the client gave up on. Reporting
that as a plain `api_error` invites the caller to send it again, which is not harmless for
every call (`stop_container --decrease-one-replica-num` lowers replica_num once per call; a
second create buys a second deployment).

So every mutating script sends through `apply_change`, which

- on an answer: reports `took_effect: true` and reads the new state back (`verified`);
- on a lost answer: looks again (fresh reads) for about as long as a request still in
  flight usually takes to land (`in_flight_grace_seconds`) and reports `took_effect: true`
  (a success) when the change shows up; otherwise `took_effect: "unknown"` with what the
  last read showed (`last_seen`) and a hint that says how to check and, for a change that
  is not repeat-safe, never to repeat it blindly;
- on a refusal: `took_effect: false` (the platform said no before doing anything).

`false` is only ever a proof: the platform refused. Not seeing a change after a lost answer
is no proof that it did not happen: the platform can commit a write long after the client
gave up, and nothing bounds how late (the simulator's `commit_delay_seconds=15` with a 1 s
client timeout shows it). A foreground script does not wait minutes to find out, so it
says "unknown".

`watch` is the looking part on its own; queue_submit's reconcile-by-name uses it too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.errors import ApiError, AutoDLError, mark_change_sent
from ..core.output import Progress
from .resolve import read_back

# A request the server accepted just before the client gave up is usually processed within
# moments of it. Look for the HTTP timeout plus this margin (server-side queueing and commit
# after the client's clock ran out) to find such a change quickly; not seeing it by then
# proves nothing (a later commit stays possible), so the outcome is "unknown", never false.
IN_FLIGHT_MARGIN_SECONDS = 5.0
# Pause between two looks; each look is a fresh list call, so once a second is plenty.
LOOK_PAUSE_SECONDS = 1.0
# However short the timeout, a few looks: one list call can itself fail or be served stale.
MIN_LOOKS = 3
# Used when the client does not say its timeout (a test double); the settings' default.
FALLBACK_HTTP_TIMEOUT_SECONDS = 30.0

TOOK_EFFECT_VALUES = (True, False, "unknown")

# The fields of a read-back that say where a change stands; `last_seen` keeps only these.
SEEN_FIELDS = ("status", "replica_num", "running_num")


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
    # What a read showed, compact, for `last_seen` when the outcome stays unknown
    # (default: the status/replica_num style fields of what `fetch` returned).
    seen: Callable[[Any], Any] | None = None


def compact_seen(value: Any) -> Any:
    """A read-back cut to what says where the change stands: None (not found) -> {"exists": false}."""
    if value is None:
        return {"exists": False}
    if isinstance(value, dict):
        picked = {key: value[key] for key in SEEN_FIELDS if key in value}
        return picked or {key: compact_seen(item) for key, item in list(value.items())[:5]}
    if isinstance(value, (list, tuple)):
        return [compact_seen(item) for item in value[:5]]
    return value


def took_effect_of(error: AutoDLError) -> bool | str:
    """The `took_effect` an error from `apply_change` carries; "unknown" when it says nothing
    (false is reported only when the platform refused, never assumed)."""
    value = error.details.get("took_effect", "unknown")
    return value if value in TOOK_EFFECT_VALUES else "unknown"


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
    looks via resolve.read_back). Raises an error carrying `took_effect`: false when the
    platform refused, "unknown" when the answer was lost and the change is not visible yet.
    """
    if partial is not None:
        partial.update(change.ids)
        # An interrupt from here on must say the change may have happened.
        partial.update(took_effect="unknown", change=change.what, check=change.check,
                       interrupt_hint=f"{change.what}的请求已经发出, 是否生效未知: 先用 {change.check} 查看, 不要直接重复执行。")
    mark_change_sent()
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
    progress.log(f"{change.what}: 平台的应答丢失 ({error.msg or error.message}), 读回确认是否已生效 (约 {grace:.0f} 秒)……")
    looks = watch(change.fetch, change.done, grace_seconds=grace, progress=progress,
                  waiting_for=f"等待{change.what}在平台上可见")
    lost = {"code": error.code, "msg": error.msg, "http_status": error.http_status}
    if looks.found:
        _settle(partial, True)
        progress.log(f"{change.what}: 读回确认已生效。")
        return looks.value, {"took_effect": True, "verified": True, "answer_lost": lost, **looks.report()}
    # Not seen is not "did not happen": the request may still land (see the module docstring).
    took_effect = "unknown"
    seen: dict[str, Any] = {}
    if looks.answered:
        seen["last_seen"] = (change.seen or compact_seen)(looks.value)
        message = (f"{change.what}: 平台的应答丢失 ({error.msg or error.message}), 之后读回 {looks.looks} 次 "
                   f"(约 {looks.elapsed_seconds:.0f} 秒) 尚未看到变化; 请求可能仍在途中, 平台可能稍后才执行, 不知道是否会生效。")
    else:
        message = f"{change.what}: 平台的应答丢失, 之后也无法读取平台状态 ({looks.last_error}), 不知道是否已生效。"
    last = " (details.last_seen 是最后一次读到的状态)" if looks.answered else ""
    hint = (f"稍后用 {change.check} 查看是否已经生效{last}; 这个操作重复执行结果相同, "
            "重新执行同一命令也无害 (脚本会先读取当前状态)。"
            if change.repeat_safe else
            f"不要直接重复执行 (每执行一次就改动一次, 请求可能稍后才生效): 过几分钟先用 {change.check} 查看是否已经生效, "
            "确认没有生效再决定是否重新执行。")
    _settle(partial, took_effect)
    failure = ApiError(message, code=error.code, msg=error.msg, http_status=error.http_status,
                       retryable=False, ambiguous=True, hint=hint, request_id=getattr(error, "request_id", None))
    failure.details.update(took_effect=took_effect, change=change.what, check=change.check,
                           answer_lost=lost, **seen, **looks.report())
    for key, value in change.ids.items():
        failure.details.setdefault(key, value)
    raise failure from None
