"""Guards: a watchdog that stops (or scales down) a deployment someone forgot.

A guard watches ONE deployment (by uuid) and acts once when a limit is reached:

- run time: the deployment has existed for `max_runtime_hours` (from its `created_at`, on
  the platform's clock);
- spend: its containers have cost `max_cost_yuan` since the guard started;
- idleness (services): the gateway's metrics show no request for `idle_minutes`.

The action is `stop` (the whole deployment) or `scale-to` (a ReplicaSet down to a floor).

It outlives the agent's session: its state lives in a file under the state directory
(`$XDG_STATE_HOME/autodl-elastic-deploy/guards`, else `<skill root>/.state/guards`, which git
ignores), beside its log and a lock the running guard holds. A guard restarted after a crash
reads that state and goes on; the lock makes sure only one process runs a guard.

Exactly once: the intent is written to the state file before the change is sent, and the
outcome after. A guard that finds an intent without an outcome (it crashed in between)
reads the deployment: a change already visible is the outcome; a `stop` that is not
visible is sent again (same uuid, stopping twice is the same as once); a `scale-to` that
is not visible is NOT sent again (someone may have scaled since) and ends `took_effect:
unknown`. Before acting it re-reads the deployment by uuid and checks it is the same one
(same created_at): it never stops a different deployment.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from ..core.cli import UsageError
from ..platform import api
from ..core.background import JobFiles, JobLock, is_running, read_record, records_in, spawn, stop_process, write_record
from ..core.state import state_root
from ..core.errors import AutoDLError, ErrorType, Interrupted
from ..core.output import Progress
from ..platform.effects import Change, apply_change, took_effect_of
from ..platform.containers import container_hourly_units
from ..platform.follow import wait_finished
from ..platform.units import yuan_from_price_units
from ..platform.resolve import deployment_by_uuid
from . import idle
from .spend import container_spend
from ..core.clock import iso, parse_timestamp, platform_now

# Run-time limits are hours: checking once a minute overshoots by at most a minute of the
# deployment's rate, and keeps a guard's API use negligible.
DEFAULT_INTERVAL_SECONDS = 60.0
# A check is never scheduled past a deadline the guard can compute: it sleeps
# min(interval, time left), time left converted to real seconds with the platform clock's
# observed rate (the simulator's runs `--speed` times faster). Until the rate is known the
# guard cannot convert, so its first sleep is short: one second is one extra read, bounds
# the overshoot of that first sleep, and at --speed 30 already spans 30 platform seconds.
RATE_PROBE_SECONDS = 1.0
# The Date header has whole-second resolution: a rate measured over fewer platform seconds
# than this could be off by more than 5%, so the guard assumes 1.0 until it has this much.
RATE_MIN_PLATFORM_SECONDS = 20.0
# Aim a little early (rate taken 5% higher) and re-check: landing just before a deadline
# costs one short extra check, landing after it overshoots.
RATE_SAFETY = 1.05
# Near a deadline the guard still sleeps at least this long (no busy loop on a rate error).
MIN_SLEEP_SECONDS = 0.2
# A rate this far from 1 is worth telling the user about (a simulator, or a skewed clock).
RATE_NOTE_THRESHOLD = 1.5

ACTIONS = ("stop", "scale-to")
# Statuses: running ones, and the final ones (the guard will never act again).
CREATED, WATCHING, ACTING = "created", "watching", "acting"
# A stop the platform refused (nothing happened) is tried again at the next checks, this
# many times in all, before the guard gives up and says so.
MAX_ACTION_REFUSALS = 3
FINAL_STATUSES = ("acted", "not_needed", "action_unconfirmed", "action_failed", "deployment_finished", "deployment_stopped", "deployment_gone", "cancelled")


def guards_dir() -> Path:
    return state_root() / "guards"


# --- the state file ------------------------------------------------------------------------


class GuardFiles(JobFiles):
    """A guard's record, lock, log and cancel marker (background.JobFiles under guards/)."""

    @property
    def guard_id(self) -> str:
        return self.job_id


def files_for(guard_id: str) -> GuardFiles:
    return GuardFiles(guard_id, guards_dir())


def write_state(files: GuardFiles, state: dict[str, Any]) -> None:
    write_record(files, state)


def read_state(files: GuardFiles) -> dict[str, Any]:
    try:
        return read_record(files, "守护", "guard_deployment.py --list")
    except AutoDLError as error:
        if error.error_type is ErrorType.NOT_FOUND:
            error.details = {"guard_id": files.guard_id, "state_dir": str(files.directory)}
        else:
            error.hint = "文件可能被手工改坏; 取消该守护 (--cancel) 后重新创建。"
        raise


GuardLock = JobLock


def new_guard_id(deployment_uuid: str) -> str:
    return f"g-{deployment_uuid}-{secrets.token_hex(3)}"


def all_states() -> list[dict[str, Any]]:
    return [record if record is not None else {"guard_id": path.stem, "status": "unreadable", "state_file": str(path)}
            for path, record in records_in(guards_dir(), "g-*.json")]


# --- the decision (pure) ---------------------------------------------------------------------


@dataclass
class Limits:
    max_runtime_hours: float | None = None
    max_cost_yuan: float | None = None
    idle_minutes: float | None = None
    idle_url: str | None = None


@dataclass
class Observation:
    deployment: dict[str, Any] | None
    containers: list[dict[str, Any]]
    now: datetime  # platform time
    idle_seconds: float | None = None  # None: not watched, or the metrics could not be read


@dataclass
class Verdict:
    """`end` (a final status, nothing to do), `act` (a reason), or neither (keep watching)."""

    end: str | None = None
    act: str | None = None
    message: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def judge(state: dict[str, Any], seen: Observation) -> Verdict:
    """What the guard should do given what the platform shows now."""
    deployment = seen.deployment
    uuid = state["deployment_uuid"]
    if deployment is None or deployment.get("uuid") != uuid:
        return Verdict(end="deployment_gone", message=f"部署 {uuid} 已不存在 (被删除), 守护结束, 没有执行任何操作。")
    created = parse_timestamp(deployment.get("created_at"))
    if state.get("deployment_created_at") and deployment.get("created_at") != state["deployment_created_at"]:
        return Verdict(end="deployment_gone", message=f"部署 {uuid} 的创建时间与守护记录的不同, 不是同一个部署: 守护结束, 没有执行任何操作。")
    if deployment.get("status") == "stopped":
        if deployment.get("deployment_type") in ("Job", "Container"):
            return Verdict(end="deployment_finished", message=f"部署 {uuid} ({deployment.get('deployment_type')}) 已结束, 守护结束。")
        return Verdict(end="deployment_stopped", message=f"部署 {uuid} 已被停止 (不是守护停的), 守护结束。")

    limits = Limits(**state["limits"])
    figures: dict[str, Any] = {"checked_at": iso(seen.now)}
    verdict = Verdict(figures=figures)
    if limits.max_runtime_hours is not None and created is not None:
        runtime = (seen.now - created).total_seconds() / 3600.0
        figures.update(runtime_hours=round(runtime, 3), runtime_left_hours=round(max(0.0, limits.max_runtime_hours - runtime), 3),
                       runtime_deadline=iso(created + timedelta(hours=limits.max_runtime_hours)))
        if runtime >= limits.max_runtime_hours:
            verdict.act = "max_runtime"
            verdict.message = f"部署已运行 {runtime:.2f} 小时, 达到上限 {limits.max_runtime_hours:g} 小时。"
    if limits.max_cost_yuan is not None and not verdict.act:
        since = parse_timestamp(state.get("started_platform_at"))
        spent = sum(row["cost_yuan"] or 0.0 for row in (container_spend(c, seen.now, since) for c in seen.containers))
        rate = sum(yuan_from_price_units(container_hourly_units(c) or 0) for c in seen.containers if c.get("status") == "running")
        figures.update(spent_yuan=round(spent, 3), budget_left_yuan=round(max(0.0, limits.max_cost_yuan - spent), 3),
                       current_hourly_yuan=round(rate, 3))
        if rate > 0:
            figures["budget_left_hours"] = round(max(0.0, limits.max_cost_yuan - spent) / rate, 3)
        if spent >= limits.max_cost_yuan:
            verdict.act = "max_cost"
            verdict.message = f"自守护启动以来已花费 {spent:.2f} 元, 达到上限 {limits.max_cost_yuan:g} 元。"
    if limits.idle_minutes is not None and not verdict.act:
        if seen.idle_seconds is None:
            figures["idle_minutes"] = None
        else:
            idle_minutes = seen.idle_seconds / 60.0
            figures.update(idle_minutes=round(idle_minutes, 3),
                           idle_minutes_left=round(max(0.0, limits.idle_minutes - idle_minutes), 3))
            if idle_minutes >= limits.idle_minutes:
                verdict.act = "idle"
                verdict.message = f"网关指标显示已有 {idle_minutes:.1f} 分钟没有请求, 达到上限 {limits.idle_minutes:g} 分钟。"
    floor, replicas = state.get("floor"), deployment.get("replica_num")
    if verdict.act and state.get("action") == "scale-to" and isinstance(replicas, int) and isinstance(floor, int) and replicas <= floor:
        # Already at or below the floor (someone scaled down): "scaling to" it would add replicas.
        return Verdict(end="not_needed", figures=figures,
                       message=f"{verdict.message} 但副本数已是 {replicas} (不多于 {floor}), 无需缩容, 守护结束, 没有发送任何改动。")
    return verdict


def describe_plan(state: dict[str, Any], now: datetime | None = None) -> str:
    """One Chinese sentence: what will be done, and when (for confirmations and --list).
    With `now` (platform time), a run-time deadline already passed is said to act at once."""
    limits = Limits(**state["limits"])
    when = []
    if limits.max_runtime_hours is not None:
        created = parse_timestamp(state.get("deployment_created_at"))
        deadline = ""
        if created:
            due = created + timedelta(hours=limits.max_runtime_hours)
            late = "; 已经超过, 守护启动后立即执行" if now is not None and due <= now else ""
            deadline = f" (约 {iso(due)}{late})"
        when.append(f"部署运行满 {limits.max_runtime_hours:g} 小时{deadline} ")
    if limits.max_cost_yuan is not None:
        when.append(f"自守护启动起花费达到 {limits.max_cost_yuan:g} 元")
    if limits.idle_minutes is not None:
        when.append(f"网关 {limits.idle_url} 连续 {limits.idle_minutes:g} 分钟没有请求")
    action = (f"把 ReplicaSet 副本数缩到 {state['floor']}" if state["action"] == "scale-to" else "停止整个部署 (全部容器, 不可恢复)")
    return f"当{' 或 '.join(w.strip() for w in when)} 时, {action}: {state.get('deployment_name')} ({state['deployment_uuid']})。"


def next_sleep(interval: float, figures: dict[str, Any], rate: float | None, probing: bool = False) -> float:
    """Real seconds until the next check: the interval, but never past the nearest deadline
    the figures give (run time and budget are platform hours, idleness is real minutes)."""
    per_real = max(rate or 1.0, 1e-6) * RATE_SAFETY
    left: list[float] = []
    if figures.get("runtime_left_hours") is not None:
        left.append(figures["runtime_left_hours"] * 3600.0 / per_real)
    if figures.get("budget_left_hours") is not None:
        left.append(figures["budget_left_hours"] * 3600.0 / per_real)
    if figures.get("idle_minutes_left") is not None:
        left.append(figures["idle_minutes_left"] * 60.0)
    if probing:  # rate not known yet: look again soon to measure it
        left.append(RATE_PROBE_SECONDS)
    if not left:
        return interval
    return min(interval, max(MIN_SLEEP_SECONDS, min(left)))


def clock_note(rate: float | None) -> str | None:
    """Chinese note when the platform clock runs at a different pace (the simulator)."""
    if rate is None or (1 / RATE_NOTE_THRESHOLD) < rate < RATE_NOTE_THRESHOLD:
        return None
    return (f"平台时钟约是本机的 {rate:.3g} 倍速 (模拟器 --speed?): 时长与花费限制按平台时间计, "
            f"真实时间约为平台时间的 1/{rate:.3g}; 守护的下次检查按这个速度提前, 不会睡过期限。")


# --- the running guard ---------------------------------------------------------------------


class Guard:
    """One guard process: observe, judge, act once, record every step in the state file."""

    def __init__(self, client: Any, files: GuardFiles, progress: Progress,
                 notify: Callable[[str, str], dict[str, Any] | None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.files = files
        self.progress = progress
        self.notify = notify
        self.sleep = sleep
        self.monotonic = monotonic
        # (real monotonic seconds, platform time) of this process's first observation.
        self._first_sample: tuple[float, datetime] | None = None
        self._probed = False
        self.state = read_state(files)
        self.lock = GuardLock(files)

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        # A heartbeat for whoever reads the file on this machine: local clock, named so.
        self.state.pop("updated_at", None)
        self.state["updated_at_local"] = iso(datetime.now().astimezone())
        write_state(self.files, self.state)

    def run(self) -> dict[str, Any]:
        if self.state.get("status") in FINAL_STATUSES:
            return self.result()
        if not self.lock.acquire():
            raise AutoDLError(ErrorType.USAGE_ERROR, f"守护 {self.files.guard_id} 已经在运行 (pid {self.state.get('pid')})。",
                              "不需要再启动它; 用 --list 查看状态。", {"guard_id": self.files.guard_id, "pid": self.state.get("pid")})
        try:
            self.save(pid=os.getpid(), status=self.state.get("status") if self.state.get("status") == ACTING else WATCHING)
            return self._loop()
        except Interrupted:
            if self.files.cancel.exists() and self.state.get("status") != ACTING:
                self._finish("cancelled", "守护已被取消 (--cancel), 没有执行任何操作。" if not self.state.get("outcome") else "守护已被取消。")
                return self.result()
            self.save(pid=None)  # stopped by a signal: stays resumable with --resume
            raise
        finally:
            self.lock.release()

    def _loop(self) -> dict[str, Any]:
        tracker = idle.IdleTracker.from_state(self.state.get("idle"))
        while True:
            if self.files.cancel.exists():
                self._finish("cancelled", "守护已被取消 (--cancel), 没有执行任何操作。")
                return self.result()
            if self.state.get("status") == ACTING:  # crashed between intent and outcome
                self._settle_interrupted_action()
                return self.result()
            try:
                seen = self._observe(tracker, idle.read_activity)  # through the module: looked up each round
            except AutoDLError as error:
                # Unreachable platform: keep the last figures, try again; run time keeps
                # counting on the platform's timestamps, so nothing is lost by waiting.
                failures = int(self.state.get("consecutive_failures") or 0) + 1
                self.save(consecutive_failures=failures, last_error=error.message)
                self.progress.log(f"查询失败 ({failures} 次): {error.message} 下次再试。")
                self.sleep(self.state["interval_seconds"])
                continue
            rate = self._measure_rate(seen.now)
            verdict = judge(self.state, seen)
            self.save(last_check=verdict.figures or self.state.get("last_check"), consecutive_failures=0, last_error=None,
                      idle=tracker.to_state(), **({"platform_clock_rate": round(rate, 3)} if rate is not None else {}))
            if verdict.end:
                end = job_end_report(self.client, self.state["deployment_uuid"], self.progress) if verdict.end == "deployment_finished" else None
                self._finish(verdict.end, verdict.message, job_end=end)
                return self.result()
            if verdict.act:
                self._act(verdict.act, verdict.message)
                if self.state.get("status") in FINAL_STATUSES:
                    return self.result()
            probing = rate is None and not self._probed
            self._probed = True
            # A rate a previous run of this guard measured is better than assuming 1.0.
            self.sleep(next_sleep(self.state["interval_seconds"], verdict.figures,
                                  rate if rate is not None else self.state.get("platform_clock_rate"), probing=probing))

    def _measure_rate(self, platform: datetime) -> float | None:
        """Platform seconds per real second since this process's first check, or None
        while too few platform seconds have passed to tell."""
        real = self.monotonic()
        if self._first_sample is None:
            self._first_sample = (real, platform)
            return None
        real_elapsed = real - self._first_sample[0]
        platform_elapsed = (platform - self._first_sample[1]).total_seconds()
        if real_elapsed <= 0 or platform_elapsed < RATE_MIN_PLATFORM_SECONDS:
            return None
        return platform_elapsed / real_elapsed

    def _observe(self, tracker: Any, read_activity: Callable[[str], Any]) -> Observation:
        uuid = self.state["deployment_uuid"]
        deployment = deployment_by_uuid(self.client, uuid)
        containers: list[dict[str, Any]] = []
        if deployment is not None and self.state["limits"].get("max_cost_yuan") is not None:
            containers = api.list_containers(self.client, uuid, released=True)
        idle_seconds = None
        url = self.state["limits"].get("idle_url")
        if url and self.state["limits"].get("idle_minutes") is not None:
            try:
                idle_seconds = tracker.observe(read_activity(url))
            except AutoDLError as error:
                # Unknown is not idle: a gateway we cannot read is never a reason to stop.
                self.progress.log(f"{error.message} 本次不计空闲。")
        return Observation(deployment, containers, platform_now(self.client), idle_seconds)

    # --- acting, exactly once ----------------------------------------------------------

    def _change(self) -> Change:
        uuid, floor = self.state["deployment_uuid"], self.state.get("floor")
        fetch = lambda: deployment_by_uuid(self.client, uuid)  # noqa: E731
        check = f"python3 scripts/list_deployments.py --deployment-uuid {uuid}"
        if self.state["action"] == "scale-to":
            return Change(what=f"守护把部署 {uuid} 的副本数缩到 {floor}",
                          send=lambda: api.set_replica_num(self.client, uuid, floor), fetch=fetch,
                          done=lambda d: d is not None and d.get("replica_num") == floor, check=check,
                          ids={"deployment_uuid": uuid})
        return Change(what=f"守护停止部署 {uuid}", send=lambda: api.stop_deployment(self.client, uuid), fetch=fetch,
                      done=lambda d: d is None or d.get("status") == "stopped", check=check, ids={"deployment_uuid": uuid})

    def _act(self, reason: str, message: str) -> None:
        change = self._change()
        self.progress.log(f"{message} 执行: {change.what}")
        # The intent first: a crash from here on is settled by reading back, never by guessing.
        self.save(status=ACTING, acting={"reason": reason, "message": message, "what": change.what,
                                          "sent_at": iso(platform_now(self.client))})
        try:
            _after, report = apply_change(change, self.client, self.progress)
        except AutoDLError as error:
            # Only a refusal is "not taken"; a lost answer not yet visible is unconfirmed, never failed.
            took_effect = took_effect_of(error)
            if took_effect is False and not getattr(error, "ambiguous", False):
                # Refused before anything happened: nothing was done, so trying again later
                # is not acting twice.
                refusals = int(self.state.get("action_refusals") or 0) + 1
                if refusals < MAX_ACTION_REFUSALS:
                    self.save(status=WATCHING, acting=None, action_refusals=refusals, last_error=error.message)
                    self.progress.log(f"{change.what}被平台拒绝 ({refusals}/{MAX_ACTION_REFUSALS}): {error.message} 稍后再试。")
                    return
                self._finish("action_failed", f"{message} 但{change.what}连续被平台拒绝: {error.message}",
                             outcome={"took_effect": False, "error": error.to_dict()})
                return
            if took_effect is True:
                report = {"took_effect": True, "verified": True}
            else:
                self._finish("action_unconfirmed", f"{message} {error.message}",
                             outcome={"took_effect": took_effect, "error": error.to_dict(), "check": change.check})
                return
        self._finish("acted", f"{message}已{change.what.removeprefix('守护')}。", outcome=report)

    def _settle_interrupted_action(self) -> None:
        """The guard died after writing its intent: find out from the platform what happened."""
        change = self._change()
        intent = self.state.get("acting") or {}
        try:
            deployment = deployment_by_uuid(self.client, self.state["deployment_uuid"])
        except AutoDLError as error:
            self.save(last_error=error.message)
            raise
        if change.done(deployment):
            self._finish("acted", f"{intent.get('message', '')} (守护重启后读回确认: {change.what}已生效。)",
                         outcome={"took_effect": True, "verified": True, "settled_after_restart": True})
        elif self.state["action"] == "stop" and deployment is not None:
            # Stopping the same uuid twice is the same as once: finish the job.
            self.progress.log("重启后发现停止尚未生效, 重新发送停止 (同一部署, 重复停止无副作用)。")
            self.save(status=WATCHING)
            self._act(intent.get("reason", "restart"), intent.get("message", ""))
        else:
            self._finish("action_unconfirmed",
                         f"守护在缩容请求前后中断, 重启后副本数不是 {self.state.get('floor')}: 不知道请求是否发出过, 为免覆盖别人的改动不再发送。",
                         outcome={"took_effect": "unknown", "check": change.check,
                                  "replica_num": None if deployment is None else deployment.get("replica_num")})

    def _finish(self, status: str, message: str, outcome: dict[str, Any] | None = None,
                job_end: dict[str, Any] | None = None) -> None:
        self.progress.log(message)
        changes: dict[str, Any] = {"status": status, "message": message, "ended_at": iso(platform_now(self.client)), "pid": None}
        if outcome is not None:
            changes["outcome"] = outcome
        if job_end is not None:
            changes["job_end"] = job_end
        if self.state.get("notify") and not (status == "cancelled"):
            changes["notification"] = self.notify(f"守护: {GUARD_TITLES.get(status, status)}", message) if self.notify else None
        self.save(**changes)

    def result(self) -> dict[str, Any]:
        return guard_view(self.state, self.files)


def job_end_report(client: Any, deployment_uuid: str, progress: Progress) -> dict[str, Any]:
    """How a finished Job/Container ended, as `queue_submit.py --wait-finished` reports it
    (`follow.wait_finished`; it returns at once for a stopped deployment). Never raises:
    the guard's end is already known.
    """
    try:
        # The deployment is stopped: this reads it once, no waiting (interval/timeout unused).
        return wait_finished(client, deployment_uuid, timeout=DEFAULT_INTERVAL_SECONDS, interval=1.0, progress=progress)
    except AutoDLError as error:
        return {"error": error.message}


GUARD_TITLES = {
    "acted": "已执行", "not_needed": "无需执行", "action_unconfirmed": "操作结果未确认", "action_failed": "操作被拒绝", "deployment_finished": "部署已结束",
    "deployment_stopped": "部署已被停止", "deployment_gone": "部署已不存在", "cancelled": "已取消",
}


def guard_view(state: dict[str, Any], files: GuardFiles | None = None) -> dict[str, Any]:
    """What --list and every guard result show."""
    files = files or files_for(state.get("guard_id", "?"))
    alive = is_running(files) if files.state.exists() else False
    shown = {
        "guard_id": state.get("guard_id"),
        # The fields every background job shows (jobs.py): its id, kind and state.
        "run_id": state.get("guard_id"),
        "kind": "guard",
        "state": state.get("status"),
        "deployment_uuid": state.get("deployment_uuid"),
        "deployment_name": state.get("deployment_name"),
        # Not "status": that key is the output envelope's success/error.
        "guard_status": state.get("status"),
        "alive": alive,
        "pid": state.get("pid") if alive else None,
        "action": state.get("action"),
        "floor": state.get("floor"),
        "limits": state.get("limits"),
        "plan": describe_plan(state) if state.get("limits") and state.get("action") else None,
        "last_check": state.get("last_check"),
        "message": state.get("message"),
        "outcome": state.get("outcome"),
        "job_end": state.get("job_end"),
        "notification": state.get("notification"),
        # Platform clock (like the containers' started_at); the *_local twins are this machine's.
        "created_at": state.get("created_at"),
        "ended_at": state.get("ended_at"),
        "created_at_local": state.get("created_at_local"),
        "platform_clock_rate": state.get("platform_clock_rate"),
        "state_file": str(files.state),
        "log_file": str(files.log),
    }
    if state.get("ended_at_local"):
        shown["ended_at_local"] = state["ended_at_local"]
    note = clock_note(state.get("platform_clock_rate"))
    if note:
        shown["clock_note"] = note
    if state.get("last_error"):
        shown["last_error"] = state["last_error"]
    if state.get("status") in (CREATED, WATCHING, ACTING) and not alive:
        shown["hint"] = f"守护进程不在运行 (可能机器重启或进程被杀): 用 guard_deployment.py --resume {state.get('guard_id')} --detach 接着运行, 它会从状态文件继续。"
    return shown


def guards_watching(deployment_uuid: str) -> dict[str, Any]:
    """For a stop/delete result: the guards still watching this deployment (read from the
    state files only, nothing changed). They are not cancelled here: each re-reads the
    deployment at its next check, sees it stopped/gone and ends without acting, which also
    records how it ended; cancelling would skip that record and race a guard mid-check."""
    guards = []
    for state in all_states():
        if state.get("deployment_uuid") != deployment_uuid or state.get("status") in FINAL_STATUSES:
            continue
        files = files_for(state.get("guard_id", "?"))
        guards.append({"guard_id": state.get("guard_id"), "guard_status": state.get("status"),
                       "alive": is_running(files), "interval_seconds": state.get("interval_seconds")})
    if not guards:
        return {}
    return {"guards": guards, "guards_note": "这些" + GUARDS_NOTE}


GUARDS_NOTE = ("守护仍显示 watching: 它们在下一次检查时 (最多 interval_seconds 秒后) 发现部署已停止/删除, "
               "自行结束 (deployment_stopped / deployment_gone), 不会执行任何操作; 不必处理。"
               "想立即结束: python3 scripts/guard_deployment.py --cancel GUARD_ID。")


# --- creating, detaching, cancelling -------------------------------------------------------


def new_state(client: Any, deployment: dict[str, Any], limits: Limits, action: str, floor: int | None,
              notify: bool, interval_seconds: float) -> dict[str, Any]:
    """The state of a guard about to start (nothing written yet)."""
    uuid = deployment["uuid"]
    return {
        "guard_id": new_guard_id(uuid),
        "deployment_uuid": uuid,
        "deployment_name": deployment.get("name"),
        "deployment_type": deployment.get("deployment_type"),
        "deployment_created_at": deployment.get("created_at"),
        "host": getattr(client, "host", None),
        "limits": asdict(limits),
        "action": action,
        "floor": floor if action == "scale-to" else None,
        "notify": bool(notify),
        "interval_seconds": interval_seconds,
        # Every timestamp of the record is on the platform's clock (as containers' are);
        # the local one is named so.
        "created_at": iso(platform_now(client)),
        "created_at_local": iso(datetime.now().astimezone()),
        # Spend counts from here, on the platform's clock.
        "started_platform_at": iso(platform_now(client)),
        "status": "created",
        "pid": None,
    }


def check_request(deployment: dict[str, Any], limits: Limits, action: str, floor: int | None) -> None:
    """Refuse a guard that could never act as asked (usage_error, nothing written)."""
    if limits.max_runtime_hours is None and limits.max_cost_yuan is None and limits.idle_minutes is None:
        raise UsageError("守护至少需要一个条件: --max-runtime H、--max-cost Y 或 --idle-minutes M (配 --idle-url)。")
    if (limits.idle_minutes is None) != (limits.idle_url is None):
        raise UsageError("--idle-minutes 与 --idle-url 要一起给出: 空闲是从网关的指标地址 (如 http://127.0.0.1:8000/_gateway/metrics) 读出来的。")
    if action == "scale-to" and deployment.get("deployment_type") != "ReplicaSet":
        raise UsageError(f"--action scale-to 只适用于 ReplicaSet; 这个部署是 {deployment.get('deployment_type')}。",
                         "Job / Container 请用 --action stop (默认)。")
    if action == "scale-to" and floor is None:
        raise UsageError("--action scale-to 需要 --floor N (缩到的副本数)。")
    if deployment.get("status") == "stopped":
        raise UsageError(f"部署 {deployment['uuid']} 已经停止, 不需要守护。")
    for state in all_states():
        if state.get("deployment_uuid") == deployment["uuid"] and state.get("status") not in FINAL_STATUSES:
            raise UsageError(f"部署 {deployment['uuid']} 已有守护 {state.get('guard_id')} (状态 {state.get('status')})。",
                             "一个部署只需一个守护: 用 --list 查看它; 要换条件先 --cancel 它再创建。",
                             {"guard_id": state.get("guard_id")})


def save_new(state: dict[str, Any]) -> GuardFiles:
    files = files_for(state["guard_id"])
    write_state(files, state)
    return files


def detach(files: GuardFiles, script: Path, progress: Progress) -> dict[str, Any]:
    """Start `script --resume ID` in the background; wait until it holds the guard's lock
    (it really runs) and return its view."""
    try:
        state, pid = spawn(files, [str(script), "--resume", files.guard_id],
                           lambda record: is_running(files), "守护")
    except AutoDLError as error:
        error.hint += f" 可以用 --resume {files.guard_id} 在前台运行它查看原因。"
        error.details["guard_id"] = files.guard_id
        raise
    if state.get("status") not in FINAL_STATUSES:
        progress.log(f"守护 {files.guard_id} 已在后台运行 (pid {pid}), 日志: {files.log}")
    return guard_view(state, files)


def platform_now_or_none(client: Any, deployment_uuid: str | None) -> str | None:
    """The platform's time from one cheap read, or None when it cannot be read: a record's
    timestamps stay on one clock, so a guard settled offline gets no made-up platform time."""
    if client is None:
        return None
    try:
        deployment_by_uuid(client, deployment_uuid or "")
    except AutoDLError:  # cancelling never fails on a clock read
        return None
    return iso(platform_now(client)) if getattr(client, "last_server_date", None) else None


def cancel(guard_id: str, progress: Progress, client: Any = None) -> dict[str, Any]:
    """End a guard: a marker it reads, plus SIGTERM to the process holding its lock.
    A guard that is not running is settled here; `client` (optional) dates it on the
    platform's clock."""

    files = files_for(guard_id)
    state = read_state(files)
    if state.get("status") in FINAL_STATUSES:
        return {**guard_view(state, files), "changed": False, "note": "守护已经结束, 无需取消。"}
    if state.get("status") == ACTING:
        raise AutoDLError(ErrorType.USAGE_ERROR, f"守护 {guard_id} 正在执行操作, 现在不能取消。",
                          "稍后用 --list 查看结果。", {"guard_id": guard_id})
    files.request_cancel()
    if is_running(files) and state.get("pid"):
        stop_process(files, state["pid"])
        state = read_state(files)
    if state.get("status") not in FINAL_STATUSES:  # not running: settle the file ourselves
        lock = GuardLock(files)
        if lock.acquire():
            try:
                state.update(status="cancelled", message="守护已被取消 (--cancel), 没有执行任何操作。", pid=None,
                             ended_at=platform_now_or_none(client, state.get("deployment_uuid")),
                             ended_at_local=iso(datetime.now().astimezone()))
                write_state(files, state)
            finally:
                lock.release()
    progress.log(f"守护 {guard_id} 已取消")
    return {**guard_view(read_state(files), files), "changed": True}
