"""The autoscaler's control loop for one ReplicaSet: load samples in, `replica_num` changes out.

- `LoadSnapshot` / `LoadSource`: what the gateway (or any caller) reports each tick:
  requests queued at it, in flight per replica, the replicas' own running+waiting reports.
- `Autoscaler` (the controller): samples load, observes the platform through the actuator
  (`scaler.ReplicaScaler`), asks the pure policy (`policy.decide`) and applies the decision;
  replaces faulty replicas; keeps the decision log, the spend (`spend_meter`) and the status
  the gateway shows at /_gateway/status.

Running it inside the gateway is `extension.GatewayAutoscaler`; its flags are `cli`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from ...core.clock import now_timestamp
from ...core.errors import AutoDLError
from ...core.output import to_json
from ..registry.document import DEPLOYMENT_GONE, DEPLOYMENT_STOPPED
from .policy import AutoscaleConfig, Decision, Observed, PolicyState, Sample, decide
from .scaler import PlatformView, ReplicaScaler
from .spend_meter import SpendMeter, platform_seconds

# After a change, the platform may take a moment before the new containers show up in the
# list; until they do (or this many seconds pass) the change counts as converging, so the
# next tick does not read "0 starting" as "done" and act again.
PLACEMENT_GRACE_SECONDS = 60.0
# Containers of our own change still starting after this long are stuck (a broken image, a
# host that never finishes): decisions resume rather than wait forever. A cold image pull on
# AutoDL takes minutes; fifteen of them is beyond any healthy start.
STARTUP_PATIENCE_SECONDS = 900.0
# A replica is replaced after this many failure episodes (the gateway ejecting it after a
# failed request) within FAULTY_WINDOW_SECONDS: one or two are what a retry on another
# replica absorbs; three in ten minutes is a broken container, not bad luck.
FAULTY_FAILURES = 3
FAULTY_WINDOW_SECONDS = 600.0
# ... or after failing its health probe this long: a replica still loading a model may fail
# a probe or two, a minute is longer than any retry could hide.
FAULTY_UNHEALTHY_SECONDS = 60.0
# Replacements on one machine after which it is reported as a blacklist candidate (and
# blacklisted with --blacklist-faulty): the second broken container there is a pattern.
BLACKLIST_AFTER_REPLACEMENTS = 2
# Samples kept: the look-back needs (look_back / interval) of them; this bounds memory for
# any setting (an hour at one sample a second).
MAX_SAMPLES = 3600
# Decisions kept for /_gateway/status (the full log is on stderr).
RECENT_DECISIONS = 20


@dataclass(frozen=True)
class ReplicaLoad:
    container_uuid: str
    machine_id: Optional[str] = None
    inflight: int = 0  # sent by this gateway, not answered yet
    reported: Optional[float] = None  # the replica's own running + waiting (--load-path)
    failures: int = 0  # failure episodes so far (a counter: ejections after failed requests)
    healthy: bool = True  # its health probe passes


@dataclass(frozen=True)
class LoadSnapshot:
    queued: int = 0  # waiting at the gateway for a free replica
    inflight: int = 0  # total in flight through the gateway
    replicas: tuple = ()  # ReplicaLoad per replica
    requests_total: int = 0  # requests received so far (a counter: tells "no request since")


class LoadSource(Protocol):
    def __call__(self) -> LoadSnapshot: ...


def load_of(snapshot: LoadSnapshot) -> float:
    """Queued + in flight. Per replica the larger of our in-flight and its own report: the
    report also counts other clients' requests, our count covers a report not yet updated."""
    per_replica = sum(max(r.inflight, r.reported or 0) for r in snapshot.replicas)
    return float(snapshot.queued + max(snapshot.inflight, per_replica))


# The autoscaler's exit note when the deployment was ended by someone else (the watch's
# stopped_by names): its containers are stopped, so no "left at size N, stop it yourself".
DEPLOYMENT_ENDED_NOTES = {
    DEPLOYMENT_STOPPED: "部署已被其他方停止 (例如 --max-cost 守护、stop_deployment.py 或控制台), 自动扩缩容随之结束; "
    "它的容器已停止, 不再产生费用, 无需再停止。需要服务时用 queue_submit.py 重新提交。",
    DEPLOYMENT_GONE: "部署已被其他方删除 (例如 delete_deployment.py 或控制台), 自动扩缩容随之结束; "
    "它不再产生费用, 无需再停止。需要服务时用 queue_submit.py 重新提交。",
}


def _emit_stderr(record: dict) -> None:
    print(to_json(record, ensure_ascii=False), file=sys.stderr, flush=True)  # strict JSON, NaN as null


class Autoscaler:
    """The control loop. `tick()` is one step (tests call it directly); `start()` runs it in a
    thread every `interval` real seconds until `stop()`.

    clock: the policy's time in seconds (time.monotonic; the simulator's clock in tests).
    emit: where each decision's JSON line goes (stderr by default).
    """

    def __init__(
        self,
        scaler: ReplicaScaler,
        config: AutoscaleConfig,
        load_source: LoadSource,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[dict], None] = _emit_stderr,
        blacklist_faulty: bool = False,
        log: Callable[[str], None] = lambda message: None,
    ):
        self.scaler = scaler
        self.config = config
        self.load_source = load_source
        self.interval = interval
        self.clock = clock
        self.emit = emit
        self.blacklist_faulty = blacklist_faulty
        self._log = log
        self.started_at = clock()
        self.samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self.state = PolicyState()
        self.lock = threading.Lock()
        self.last_decision: Optional[dict] = None
        self.recent: deque[dict] = deque(maxlen=RECENT_DECISIONS)
        self.changes = 0  # replica_num changes that took effect
        self.meter = SpendMeter()  # yuan, on the platform's clock
        self._requests_seen = 0
        self.last_request_at: Optional[float] = None
        self.last_change_at: Optional[float] = None
        self.zero_refused = False
        self.pending: Optional[dict] = None  # an upscale the stock cannot place yet
        self.view: Optional[PlatformView] = None
        self.last_error: Optional[str] = None
        self.replaced: dict[str, dict] = {}  # container uuid -> replacement outcome
        self.replacements_by_machine: dict[str, int] = {}
        self.blacklist_candidates: dict[str, dict] = {}
        self._failure_counts: dict[str, tuple[int, deque]] = {}  # uuid -> (last counter, episode times)
        self._unhealthy_since: dict[str, float] = {}
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._last_emitted_key: Optional[tuple] = None
        self.decisions_by_action: dict[str, int] = {}
        self.change_in_flight: Optional[dict] = None  # a replica_num change sent, outcome not yet known
        # Set by the gateway extension: stop routing to the replicas before scaling to zero
        # (False: a request just came in, do not scale to zero), and undo that if it failed.
        self.before_zero: Optional[Callable[[], bool]] = None
        self._budget_said = False
        self.zero_failed: Optional[Callable[[], None]] = None

    # ---- one step --------------------------------------------------------

    def tick(self, snapshot: Optional[LoadSnapshot] = None) -> dict:
        """One step; `snapshot` is the load sampled by the caller (else the load source is asked)."""
        now = self.clock()
        snapshot = self.load_source() if snapshot is None else snapshot
        load = load_of(snapshot)
        with self.lock:
            self.samples.append(Sample(now, load))
            # A request arrived since the last tick (the counter moved), or one is in flight
            # already at the first tick: the idle clock for scale-to-zero restarts.
            if snapshot.requests_total != self._requests_seen or (load > 0 and self.last_request_at is None):
                self.last_request_at = now
                self._requests_seen = snapshot.requests_total
        try:
            view = self.scaler.observe()
        except AutoDLError as error:
            # The platform is unreachable: change nothing (the last size stays) and say so.
            self.last_error = error.message
            record = self._record({"action": "wait", "reason": "platform_unreachable", "error": error.message, "load": round(load, 3)}, now)
            return record
        self.last_error = None
        self._account_spend(view, now)
        if view.status != "running":
            self.view = view
            return self._record({"action": "wait", "reason": "deployment_not_running", "deployment_status": view.status,
                                 "load": round(load, 3)}, now)
        self.view = view
        self._handle_faulty(snapshot, view, now)
        observed = Observed(
            current=view.replica_num,
            converging=self._converging(view, now),
            last_request_at=self.last_request_at,
            started_at=self.started_at,
            price_per_replica=view.price_per_replica,
            spent=self.spent,
            zero_refused=self.zero_refused,
        )
        decision, next_state = decide(self.config, list(self.samples), observed, self.state, now)
        if "budget_exhausted" in decision.limits.get("limited_by", ()) and not self._budget_said:
            self._budget_said = True
            self._log(f"预算 {self.config.budget:g} 元已用完 (已花 {self.spent:.2f} 元): 副本数降到最少 {decision.limits['floor']} 个, "
                      "不再扩容; 最少副本仍在计费, 要完全停下用 set_replicas.py / stop_deployment.py")
        record = {**decision.as_dict(), "running": len(view.running), "starting": view.starting}
        if decision.action in ("scale_up", "scale_down") and decision.target != view.replica_num:
            record.update(self._apply(decision, view, now))
            if not record.get("applied"):
                # Not placed (no stock) or refused: keep the wish alive, so the next tick
                # re-checks at once instead of waiting out the delay again.
                next_state = PolicyState(above_since=self.state.above_since if self.state.above_since is not None else now) if decision.action == "scale_up" else next_state
        if decision.desired <= view.replica_num:
            self.pending = None  # the wish the stock could not meet has gone
        self.state = next_state
        if self.pending:
            record["pending"] = True
            record.update({key: value for key, value in self.pending.items() if key != "since"})
        elif view.replica_num > view.live and not record.get("applied") and not observed.converging:
            # The platform holds more than runs and nothing of ours is starting: it cannot
            # place them (stock taken after our check, or a replacement waiting for a card).
            record["pending"] = True
            record["pending_reason"] = "placing"
        record["spent_yuan"] = round(self.spent, 4)
        return self._record(record, now)

    def _converging(self, view: PlatformView, now: float) -> bool:
        """Our last change is still being carried out. Replacements the ReplicaSet starts on its
        own (a crashed container) do not hold decisions back; only our own change does."""
        if self.last_change_at is None:
            return False
        since = now - self.last_change_at
        if view.starting > 0 and since < STARTUP_PATIENCE_SECONDS:
            return True
        return since < PLACEMENT_GRACE_SECONDS and view.live != view.replica_num and not self.pending

    def _apply(self, decision: Decision, view: PlatformView, now: float) -> dict:
        target = decision.target
        result: dict[str, Any] = {}
        if target > view.replica_num:
            try:
                placeable, stock = self.scaler.stock()
            except AutoDLError as error:
                placeable, stock = None, {"error": error.message}
            room = None if placeable is None else max(placeable - max(view.replica_num - view.live, 0), 0)
            if room is not None and room < target - view.replica_num:
                if room == 0:
                    self.pending = {"pending_reason": "no_stock", "pending_target": target, "last_stock": stock,
                                    "since": (self.pending or {}).get("since", now)}
                    result.update({"applied": False, "pending_reason": "no_stock", "last_stock": stock})
                    return result
                self.pending = {"pending_reason": "no_stock", "pending_target": target, "last_stock": stock,
                                "since": (self.pending or {}).get("since", now)}
                target = view.replica_num + room  # what the stock can place now; the rest stays pending
                result["partial"] = True
            else:
                self.pending = None
            result["last_stock"] = stock
        else:
            self.pending = None
        if target == 0 and self.before_zero is not None and not self.before_zero():
            result.update({"applied": False, "not_applied_because": "request_arrived"})
            return result
        self.change_in_flight = {"replica_num_from": view.replica_num, "replica_num_to": target, "took_effect": "unknown",
                                 "check": f"python3 scripts/list_deployments.py --deployment-uuid {self.scaler.deployment_uuid}"}
        outcome = self.scaler.set_replicas(target)
        if target == 0 and outcome.get("refused"):
            if not self.zero_refused:
                self._log("平台不接受 replica_num 0, 自动扩缩容退回到最少 1 个副本 (只提示这一次)")
            self.zero_refused = True
            result["zero_refused"] = True
            if view.replica_num != 1:
                outcome = {"fallback_from": 0, **self.scaler.set_replicas(1)}
                target = 1
        self.change_in_flight = None
        if decision.target == 0 and self.zero_failed is not None and not (target == 0 and outcome.get("took_effect") is True):
            self.zero_failed()  # still serving with replicas: route to them again
        result["outcome"] = outcome
        result["target"] = target
        result["applied"] = outcome.get("took_effect") is True
        if result["applied"]:
            view.replica_num = target  # read back: the platform holds it now
            self.changes += 1
            self.last_change_at = now
        elif outcome.get("took_effect") == "unknown":
            self.last_change_at = now  # may have landed: treat as converging, never resend blindly
        return result

    @property
    def spent(self) -> float:
        return self.meter.spent

    def _account_spend(self, view: PlatformView, now: float) -> None:
        """Spend = running time x price between observations, timed on the platform's clock
        (the Date header of the answers just read), as the platform bills; see spend_meter."""
        self.meter.observe(view.hourly_rate, platform_seconds(self.scaler.client), now, time.monotonic())

    def _faulty_reason(self, replica: ReplicaLoad, now: float) -> Optional[str]:
        """Why this replica should be replaced now, or None. Updates the failure history."""
        uuid = replica.container_uuid
        seen, episodes = self._failure_counts.get(uuid, (replica.failures, deque()))
        for _ in range(max(replica.failures - seen, 0)):
            episodes.append(now)
        while episodes and now - episodes[0] > FAULTY_WINDOW_SECONDS:
            episodes.popleft()
        self._failure_counts[uuid] = (replica.failures, episodes)
        if replica.healthy:
            self._unhealthy_since.pop(uuid, None)
        else:
            self._unhealthy_since.setdefault(uuid, now)
        if len(episodes) >= FAULTY_FAILURES:
            return "repeated_failures"
        if not replica.healthy and now - self._unhealthy_since[uuid] >= FAULTY_UNHEALTHY_SECONDS:
            return "failing_health"
        return None

    def _handle_faulty(self, snapshot: LoadSnapshot, view: PlatformView, now: float) -> None:
        running = {c.get("uuid"): c for c in view.running}
        for replica in snapshot.replicas:
            uuid = replica.container_uuid
            if uuid in self.replaced or uuid not in running:
                continue
            why = self._faulty_reason(replica, now)
            if why is None:
                continue
            machine_id = replica.machine_id or running[uuid].get("machine_id")
            outcome = self.scaler.replace(uuid)
            self.replaced[uuid] = outcome
            count = self.replacements_by_machine[machine_id] = self.replacements_by_machine.get(machine_id, 0) + 1
            record = {"action": "replace", "reason": why, "container_uuid": uuid, "machine_id": machine_id,
                      "failures": len(self._failure_counts[uuid][1]), "outcome": outcome}
            if count >= BLACKLIST_AFTER_REPLACEMENTS and machine_id not in self.blacklist_candidates:
                candidate = {"machine_id": machine_id, "replacements": count, "container_uuid": uuid}
                if self.blacklist_faulty:
                    candidate["blacklist"] = self.scaler.blacklist(uuid, machine_id)
                self.blacklist_candidates[machine_id] = candidate
                record["blacklist_candidate"] = candidate
            self._record(record, now, force=True)

    def _record(self, record: dict, now: float, force: bool = False) -> dict:
        record = {"event": "autoscale", "at_local": now_timestamp(), "t": round(now - self.started_at, 3), **record}
        with self.lock:
            self.last_decision = record
            key = (record.get("action"), record.get("reason"), record.get("target"), record.get("pending_reason"))
            # Every change is logged; a wish that stays pending (no stock) only when it starts.
            acted = record.get("action") in ("scale_up", "scale_down", "replace") and record.get("applied") is not False
            changed = force or acted or key != self._last_emitted_key
            if changed:
                self._last_emitted_key = key
                self.recent.append(record)
                action = str(record.get("action"))
                self.decisions_by_action[action] = self.decisions_by_action.get(action, 0) + 1
        if changed:
            self.emit(record)
        return record

    # ---- running ---------------------------------------------------------

    def start(self) -> "Autoscaler":
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception as error:  # a bug must not kill the loop silently: log, keep the last size
                self.last_error = f"{type(error).__name__}: {error}"
                self._log(f"自动扩缩容出错, 保持当前副本数: {self.last_error}")
            self._stopping.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> dict:
        """Stop deciding; the deployment stays at its last size (nothing is scaled on exit)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.summary()

    # ---- reporting -------------------------------------------------------

    def status(self) -> dict:
        with self.lock:
            view = self.view
            shown = {
                "enabled": True,
                "config": self.config_view(),
                "replica_num": view.replica_num if view else None,
                "running": len(view.running) if view else None,
                "starting": view.starting if view else None,
                "last_decision": self.last_decision,
                "recent_decisions": list(self.recent),
                "pending": bool(self.pending),
                "changes": self.changes,
                **self.meter.shown(),
                "price_per_replica_yuan": view.price_per_replica if view else None,
                "zero_refused": self.zero_refused,
                "blacklist_candidates": list(self.blacklist_candidates.values()),
                "replaced": [{"container_uuid": uuid, **outcome} for uuid, outcome in self.replaced.items()],
            }
            if self.pending:
                shown.update({key: value for key, value in self.pending.items() if key != "since"})
            if self.last_error:
                shown["last_error"] = self.last_error
            return shown

    def config_view(self) -> dict:
        c = self.config
        return {"min_replicas": c.min_replicas, "max_replicas": c.max_replicas, "target_inflight": c.target_inflight,
                "look_back": c.look_back, "upscale_delay": c.upscale_delay, "downscale_delay": c.downscale_delay,
                "scale_to_zero_after": c.zero_after if c.min_replicas == 0 else None,
                "max_hourly_cost": c.max_hourly_cost, "budget": c.budget, "blacklist_faulty": self.blacklist_faulty}

    def metrics(self) -> dict:
        """Numbers for the gateway's Prometheus series (name -> value)."""
        decision = self.last_decision or {}
        view = self.view
        return {
            "desired": decision.get("desired"),
            "current": view.replica_num if view else None,
            "running": len(view.running) if view else None,
            "pending": 1 if self.pending else 0,
            "pending_reason": (self.pending or {}).get("pending_reason"),
            "changes": self.changes,
            "decisions": dict(self.decisions_by_action),
            "spent_yuan": self.spent,
            "load": decision.get("load"),
        }

    def summary(self, ended_by: Optional[str] = None) -> dict:
        """ended_by: deployment_stopped / deployment_gone when the run ended because someone else
        (the --max-cost guard, stop/delete_deployment.py, the console) stopped or deleted the
        deployment: then nothing is left running to stop, and the summary must not say so."""
        if ended_by in DEPLOYMENT_ENDED_NOTES:
            return {
                "final_replica_num": None,  # stopped or deleted: no size was left running
                "left_at_last_size": False,
                "deployment_ended": ended_by,
                "note": DEPLOYMENT_ENDED_NOTES[ended_by],
                "changes": self.changes,
                **self.meter.shown(),
                "zero_refused": self.zero_refused,
                "blacklist_candidates": list(self.blacklist_candidates.values()),
            }
        view = self.view
        last = view.replica_num if view else None
        if self.change_in_flight is not None:
            # Stopped while a change was on its way: what is known, never a guess.
            change = dict(self.change_in_flight)
            return {"final_replica_num": None, "left_at_last_size": True, "change_in_flight": change,
                    "note": f"自动扩缩容停止时, 把副本数从 {change['replica_num_from']} 改为 {change['replica_num_to']} 的请求已发出, "
                    f"是否生效未知: 先用 {change['check']} 查看, 不要直接重复。",
                    "changes": self.changes, **self.meter.shown(), "zero_refused": self.zero_refused,
                    "blacklist_candidates": list(self.blacklist_candidates.values())}
        return {
            "final_replica_num": last,
            "left_at_last_size": True,
            "note": f"自动扩缩容已停止, 部署保持在最后的副本数 {last}, 没有在退出时缩容或停止。"
            "需要停掉时用 set_replicas.py 或 stop_deployment.py。",
            "changes": self.changes,
            **self.meter.shown(),
            "zero_refused": self.zero_refused,
            "blacklist_candidates": list(self.blacklist_candidates.values()),
        }
