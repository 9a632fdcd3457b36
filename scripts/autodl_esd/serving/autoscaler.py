"""The autoscaler of one ReplicaSet: load samples in, `replica_num` changes out.

- `LoadSnapshot` / `LoadSource`: what the gateway (or any caller) reports each tick:
  requests queued at it, in flight per replica, the replicas' own running+waiting reports.
- `ReplicaScaler` (the actuator): reads the deployment and its containers, sets
  `replica_num`, checks GPU stock before a scale-up, replaces faulty replicas. It can only
  change the one deployment it was given: it has no way to create another.
- `Autoscaler` (the controller): samples load, observes the platform, asks the pure policy
  (`autoscale_policy.decide`) and applies the decision; keeps the decision log, the spend
  and the status the gateway shows at /_gateway/status.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from ..platform import api
from ..platform.containers import STOPPING_STATUSES
from ..platform.effects import Change, apply_change, took_effect_of
from ..core.clock import now_timestamp
from ..core.errors import ApiError, AutoDLError, ErrorType
from ..core.output import Progress, to_json
from ..platform.resolve import deployment_by_uuid
from ..money.spend import BILLING_STATUSES
from ..platform.stock import requested_stock
from ..platform.units import yuan_from_price_units
from .autoscale_policy import AutoscaleConfig, Decision, Observed, PolicyState, Sample, decide, hourly_cap_replicas
from .registry.document import DEPLOYMENT_GONE, DEPLOYMENT_STOPPED
from .spend_meter import SpendMeter, platform_seconds

RUNNING = "running"
STARTING_STATUSES = ("creating", "created", "starting", "oss_merged")
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
# Between ticks the gateway extension looks this often for a request waiting at zero
# replicas, so a scale from zero starts within 0.1 s instead of up to a whole interval.
WAKE_POLL_SECONDS = 0.1
# Detaching the replicas runs on the gateway's loop, which answers within milliseconds;
# a loop that does not answer in 5 s is stuck, and scaling to zero then waits a tick.
DETACH_WAIT_SECONDS = 5.0
# On stop, a tick that is mid-change gets this long to finish (a lost answer is read back
# for the HTTP timeout plus a margin), so the summary reports a settled size.
STOP_WAIT_SECONDS = 60.0


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


@dataclass
class PlatformView:
    replica_num: int
    status: str
    running: list  # container records
    starting: int
    live: int  # starting + running (what counts as a replica)
    price_per_replica: Optional[float]  # yuan per hour, the dearest running container
    hourly_rate: float  # yuan per hour being paid now (running and shutting-down containers)


def _price_yuan(container: dict) -> Optional[float]:
    price = container.get("price")
    return yuan_from_price_units(price) if isinstance(price, (int, float)) and price > 0 else None


class ReplicaScaler:
    """Applies decisions to one ReplicaSet. Every mutation reports what is known of its
    effect (`took_effect`: true / false / "unknown"), as the exactly-once rule asks."""

    def __init__(self, client: Any, deployment: dict, *, log: Callable[[str], None] = lambda message: None,
                 progress: Optional[Progress] = None):
        self.client = client
        self.progress = progress or Progress(quiet=True)
        self.deployment = deployment
        self.deployment_uuid = deployment["uuid"]
        template = deployment.get("template") or {}
        self.gpu_names = list(template.get("gpu_name_set") or deployment.get("gpu_name_set") or [])
        self.gpu_num = int(template.get("gpu_num") or 1)
        self.regions = list(deployment.get("dc_list") or template.get("dc_list") or [])
        price_to = template.get("price_to")
        # Before any container runs, the template's price ceiling is the most one can cost:
        # price_to is per card, so a replica of gpu_num cards costs up to gpu_num times it.
        self.price_ceiling = (yuan_from_price_units(price_to) * self.gpu_num
                              if isinstance(price_to, (int, float)) and price_to > 0 else None)
        self.template = template
        self.last_price: Optional[float] = None
        self._log = log

    # ---- reading -------------------------------------------------------

    def observe(self) -> PlatformView:
        deployment = deployment_by_uuid(self.client, self.deployment_uuid)
        if deployment is None:
            raise deployment_gone(self.deployment_uuid)
        containers = api.list_containers(self.client, self.deployment_uuid)
        running = [c for c in containers if c.get("status") == RUNNING]
        starting = sum(1 for c in containers if c.get("status") in STARTING_STATUSES)
        prices = [p for p in (_price_yuan(c) for c in running) if p]
        if prices:
            self.last_price = max(prices)
        # Paid now: what the platform bills, as cost_report counts it (a container shutting
        # down still holds its GPUs until stopped_at).
        billing = [p for p in (_price_yuan(c) for c in containers if c.get("status") in BILLING_STATUSES) if p]
        return PlatformView(
            replica_num=int(deployment.get("replica_num") or 0),
            status=str(deployment.get("status")),
            running=running,
            starting=starting,
            live=len(running) + starting,
            price_per_replica=self.last_price or self.price_ceiling,
            hourly_rate=sum(billing),
        )

    def stock(self) -> tuple[int, dict]:
        """(replicas the stock can place now, the stock of the template's GPU types)."""
        stock, _ = api.gpu_stock(self.client, self.regions or None)
        wanted = requested_stock(stock, self.gpu_names) if self.gpu_names else stock
        placeable = sum(figures.get("idle", 0) // max(self.gpu_num, 1) for figures in wanted.values())
        return placeable, wanted

    # ---- changing ------------------------------------------------------

    def _apply(self, change: Change, verify: Optional[Callable[[], tuple]] = None) -> dict:
        """Send one mutation through effects.apply_change: {took_effect, ...} and never raises
        for the platform's answer (a refusal or a lost answer is reported, not thrown)."""
        try:
            _, report = apply_change(change, self.client, self.progress, verify=verify)
            return report
        except ApiError as error:
            outcome = {key: error.details[key] for key in ("check", "answer_lost", "last_seen") if key in error.details}
            outcome["took_effect"] = took_effect_of(error)  # false only for a refusal
            outcome["error"] = {"code": error.code, "msg": error.msg, "message": error.message}
            outcome["refused"] = not error.ambiguous
            return outcome

    def set_replicas(self, target: int) -> dict:
        """PUT replica_num (absolute, so a repeat cannot overshoot) and read it back."""
        uuid = self.deployment_uuid
        outcome = self._apply(Change(
            what=f"把部署 {uuid} 的副本数设为 {target}",
            send=lambda: api.set_replica_num(self.client, uuid, target),
            fetch=lambda: deployment_by_uuid(self.client, uuid),
            done=lambda d: d is not None and d.get("replica_num") == target,
            check=f"python scripts/list_deployments.py --deployment-uuid {uuid}",
            ids={"deployment_uuid": uuid},
        ))
        return {"requested_replica_num": target, **outcome}

    def replace(self, container_uuid: str) -> dict:
        """Stop one container and let the ReplicaSet start a replacement (count unchanged)."""

        def status() -> Optional[str]:
            rows = api.list_containers(self.client, self.deployment_uuid, container_uuid=container_uuid, released=True)
            return next((row.get("status") for row in rows if row.get("uuid") == container_uuid), None)

        outcome = self._apply(Change(
            what=f"停止故障副本 {container_uuid} (不减副本数, 平台会补一个)",
            send=lambda: api.stop_container(self.client, container_uuid, decrease_one_replica_num=False),
            fetch=status,
            done=lambda seen: seen in STOPPING_STATUSES,
            check=f"python scripts/list_containers.py --deployment-uuid {self.deployment_uuid}",
            ids={"container_uuid": container_uuid},
        ))
        return {"container_uuid": container_uuid, "decrease_one_replica_num": False, **outcome}

    def blacklist(self, container_uuid: str, machine_id: str) -> dict:
        outcome = self._apply(Change(
            what=f"把主机 {machine_id} 加入调度黑名单",
            send=lambda: api.add_to_blacklist(self.client, container_uuid, comment="autoscaler: repeated replica failures"),
            # Only after a lost answer: the list (public cloud only; on a private cluster the
            # looks fail and the outcome stays "unknown", never a guessed true).
            fetch=lambda: api.list_blacklist(self.client),
            done=lambda entries: any(entry.get("machine_id") == machine_id for entry in entries or []),
            seen=lambda entries: {"blacklisted": any(entry.get("machine_id") == machine_id for entry in entries or [])},
            check="python scripts/list_blacklist.py",
            ids={"machine_id": machine_id},
        ), verify=lambda: (None, {}))  # an answered add is the evidence: no list to read on a private cluster
        return {"machine_id": machine_id, "container_uuid": container_uuid, **outcome}


# The autoscaler's exit note when the deployment was ended by someone else (the watch's
# stopped_by names): its containers are stopped, so no "left at size N, stop it yourself".
DEPLOYMENT_ENDED_NOTES = {
    DEPLOYMENT_STOPPED: "部署已被其他方停止 (例如 --max-cost 守护、stop_deployment.py 或控制台), 自动扩缩容随之结束; "
    "它的容器已停止, 不再产生费用, 无需再停止。需要服务时用 queue_submit.py 重新提交。",
    DEPLOYMENT_GONE: "部署已被其他方删除 (例如 delete_deployment.py 或控制台), 自动扩缩容随之结束; "
    "它不再产生费用, 无需再停止。需要服务时用 queue_submit.py 重新提交。",
}


def deployment_gone(deployment_uuid: str) -> AutoDLError:
    return AutoDLError(
        ErrorType.NOT_FOUND,
        f"部署 {deployment_uuid} 已不存在, 自动扩缩容停止。",
        "用 list_deployments.py 确认部署是否被删除。",
        {"deployment_uuid": deployment_uuid},
    )


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
                                 "check": f"python scripts/list_deployments.py --deployment-uuid {self.scaler.deployment_uuid}"}
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
        record = {"event": "autoscale", "at": now_timestamp(), "t": round(now - self.started_at, 3), **record}
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


def startup_bounds(config: AutoscaleConfig, scaler: ReplicaScaler, current: int) -> dict:
    """What the autoscaler may do, for the confirmation (`--yes`) and the ready line."""
    price = scaler.last_price or scaler.price_ceiling
    cap = hourly_cap_replicas(config.max_hourly_cost, price)
    ceiling = config.max_replicas if cap is None else min(cap, config.max_replicas)
    bounds = {
        "deployment_uuid": scaler.deployment_uuid,
        "current_replica_num": current,
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "effective_max_replicas": ceiling,
        "price_per_replica_yuan": price,
        # The containers' reported price, or before any runs the template's price_to (the most one may cost).
        "price_source": "containers" if scaler.last_price else ("template_price_to" if price is not None else None),
        "max_hourly_cost_yuan": None if price is None else round(ceiling * price, 4),
        "budget_yuan": config.budget,
    }
    worst = template_worst_case(scaler, config.max_replicas)
    if worst is not None:
        bounds["worst_case_hourly_yuan"] = worst["worst_case_hourly_yuan"]
        bounds["worst_case"] = worst
    if config.max_hourly_cost is not None:
        bounds["hourly_cost_cap_yuan"] = config.max_hourly_cost
    if config.min_replicas == 0:
        bounds["scale_to_zero_after"] = config.zero_after
    return bounds



def template_worst_case(scaler: ReplicaScaler, replicas: int) -> Optional[dict]:
    """The most the template allows at `replicas` (price_to per card x gpu_num x replicas), the
    same figure the config's dry-run gives; today's container price may be far below it."""
    from ..money.estimate import cost_bounds

    template = scaler.template
    price_to = template.get("price_to")
    if not isinstance(price_to, (int, float)) or isinstance(price_to, bool) or price_to <= 0:
        return None
    price_from = template.get("price_from")
    bounds = cost_bounds({"deployment_type": "ReplicaSet", "replica_num": replicas, "container_template": {
        "gpu_num": scaler.gpu_num, "price_to": price_to,
        "price_from": price_from if isinstance(price_from, (int, float)) and 0 <= price_from <= price_to else 0}})
    return {"worst_case_hourly_yuan": bounds["worst_case_hourly_yuan"], "replicas": replicas,
            "per_gpu_hourly_yuan_max": bounds["per_gpu_hourly_yuan"]["max"], "gpu_num": bounds["gpu_num"],
            "basis": "模板的 price_to (每卡每小时上限) × gpu_num × max_replicas, 与配置 dry-run 的最坏情况同一算法; "
                     "平台可能按这个上限内的任何价格分配容器"}


def snapshot_of(gateway: Any) -> LoadSnapshot:
    """The gateway's load now (call on its event loop: its replica table has no locks)."""
    table = gateway.table
    now = table.clock()
    replicas = []
    for replica in table.all_replicas():
        if not replica.in_registry:
            continue
        report = replica.report
        fresh = report is not None and now - report.at <= gateway.report_max_age
        replicas.append(ReplicaLoad(
            container_uuid=replica.container_uuid,
            machine_id=replica.machine_id,
            inflight=replica.inflight + replica.remote_inflight,
            reported=(report.running + report.waiting) if fresh else None,
            failures=replica.ejections,
            healthy=replica.healthy,
        ))
    return LoadSnapshot(queued=table.queued, inflight=sum(r.inflight for r in table.all_replicas()),
                        replicas=tuple(replicas), requests_total=gateway.totals.proxied)


class GatewayAutoscaler:
    """The autoscaler as a gateway extension (`Gateway.add_extension`): samples the load on the
    gateway's loop, runs each tick (blocking platform calls) in a worker thread."""

    name = "autoscaler"

    def __init__(self, autoscaler: Autoscaler):
        self.autoscaler = autoscaler
        self.gateway: Any = None
        self._task: Optional[asyncio.Task] = None
        self._tick: Optional[asyncio.Future] = None
        self.final: Optional[dict] = None

    async def start(self, gateway: Any) -> None:
        self.gateway = gateway
        self._loop_ref = asyncio.get_running_loop()
        self.autoscaler.before_zero = lambda: self._on_loop(self._detach_replicas)
        self.autoscaler.zero_failed = lambda: self._on_loop(self._reattach_replicas)
        self._task = self._loop_ref.create_task(self._loop(), name="autoscaler")

    def _on_loop(self, action: Callable[[], Any]) -> Any:
        """Run `action` on the gateway's loop (its replica table has no locks) and wait for it."""
        async def call() -> Any:
            return action()

        try:
            return asyncio.run_coroutine_threadsafe(call(), self._loop_ref).result(DETACH_WAIT_SECONDS)
        except Exception as error:  # a stuck or closing loop: do not scale to zero this tick
            self.autoscaler._log(f"网关事件循环没有响应 ({type(error).__name__}), 这次不缩到 0")
            return False

    def _detach_replicas(self) -> bool:
        """Before scaling to zero: stop routing to the replicas, so a request arriving while
        the registry still lists them waits in the queue (and triggers a scale from zero)
        instead of reaching a container that is being stopped. False if one is in flight."""
        table = self.gateway.table
        if table.queued or any(replica.inflight for replica in table.all_replicas()):
            return False
        # Withdrawn, not just emptied: the registry lists these containers until they stop,
        # and a refresh meanwhile must not route to them again.
        table.withdraw_all()
        return True

    def _reattach_replicas(self) -> None:
        self.gateway.table.restore()
        self.gateway._view = None  # the next look at the source re-applies the registry
        self.gateway._refresh_registry()

    def _waiting_at_zero(self) -> bool:
        view = self.autoscaler.view
        return self.gateway.table.queued > 0 and view is not None and view.replica_num == 0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = 0.0
        while True:
            if time.monotonic() >= next_tick or self._waiting_at_zero():
                snapshot = snapshot_of(self.gateway)
                self._tick = loop.run_in_executor(None, self.autoscaler.tick, snapshot)
                try:
                    await asyncio.shield(self._tick)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # a bug must not end autoscaling silently
                    self.autoscaler.last_error = f"{type(error).__name__}: {error}"
                    self.autoscaler._log(f"自动扩缩容出错, 保持当前副本数: {self.autoscaler.last_error}")
                next_tick = time.monotonic() + self.autoscaler.interval
            await asyncio.sleep(WAKE_POLL_SECONDS)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._tick is not None and not self._tick.done():
            try:  # a change in progress settles before the summary says what size was left
                await asyncio.wait_for(asyncio.shield(self._tick), STOP_WAIT_SECONDS)
            except (asyncio.TimeoutError, Exception):
                pass
        self.final = self.autoscaler.summary()

    def status(self) -> dict:
        return self.autoscaler.status()

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = self.autoscaler.metrics()
        gauges = [
            ("gateway_autoscaler_desired_replicas", "Replicas the autoscaler wants (after clamps and caps)", values["desired"]),
            ("gateway_autoscaler_current_replicas", "replica_num the platform holds", values["current"]),
            ("gateway_autoscaler_running_replicas", "Containers running", values["running"]),
            ("gateway_autoscaler_load", "Load averaged over the look-back (in flight + queued)", values["load"]),
            ("gateway_autoscaler_spent_yuan", "Spent since the autoscaler started (running time x price, on the platform's clock), yuan", values["spent_yuan"]),
        ]
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        pending = GaugeMetricFamily("gateway_autoscaler_pending", "1 while a scale-up waits (label reason)", labels=["reason"])
        pending.add_metric([values["pending_reason"] or ""], values["pending"])
        yield pending
        last = self.autoscaler.last_decision or {}
        if last:
            info = GaugeMetricFamily("gateway_autoscaler_last_decision", "The latest decision (1), by action and reason",
                                     labels=["action", "reason"])
            info.add_metric([str(last.get("action")), str(last.get("reason"))], 1)
            yield info
        decisions = CounterMetricFamily("gateway_autoscaler_decisions", "Decisions logged, by action", labels=["action"])
        for action, count in sorted(values["decisions"].items()):
            decisions.add_metric([action], count)
        yield decisions


# The autoscaler reads the deployment and its containers every tick. Against the real
# platform once every 5 s is plenty for decisions on a 30 s / 600 s scale and keeps its
# calls well below the watcher's; the loopback simulator keeps --interval (fast tests).
PLATFORM_MIN_INTERVAL_SECONDS = 5.0


def prepare_gateway_autoscaler(args: Any, ctx: Any, deployment_uuid: Optional[str]) -> Optional[GatewayAutoscaler]:
    """serve_gateway.py --autoscale: check the flags and the deployment, ask for --yes with the
    bounds, and return the extension to add to the gateway (None without --autoscale).
    Everything here runs before the gateway listens, so a refusal is the usual JSON error."""
    from ..core.settings import is_loopback_host
    from .autoscale_cli import autoscale_config, check_autoscale_arguments, require_autoscale_confirmation

    check_autoscale_arguments(args)
    if not args.autoscale:
        return None
    from ..core.http import ApiClient

    # Its own client: the autoscaler calls the platform from a worker thread while the
    # registry watcher uses ctx.client() from its own; a requests.Session is not shared.
    client = ApiClient(ctx.client().settings, progress=ctx.progress)
    deployment = deployment_by_uuid(client, deployment_uuid) if deployment_uuid else None
    if deployment is None:
        raise deployment_gone(str(deployment_uuid))
    details = {"deployment_uuid": deployment_uuid, "deployment_type": deployment.get("deployment_type"), "status": deployment.get("status")}
    if deployment.get("deployment_type") != "ReplicaSet":
        raise AutoDLError(ErrorType.USAGE_ERROR, f"部署 {deployment_uuid} 是 {deployment.get('deployment_type')} 类型, 只有 ReplicaSet 能自动扩缩容。",
                          "去掉 --autoscale 只用网关, 或对 ReplicaSet 部署使用。", details)
    if deployment.get("status") != "running":
        raise AutoDLError(ErrorType.USAGE_ERROR, f"部署 {deployment_uuid} 状态是 {deployment.get('status')}, 无法调整副本数。",
                          "已停止的部署不能恢复; 需要服务时用 queue_submit.py 重新提交。", details)
    scaler = ReplicaScaler(client, deployment, log=ctx.progress.log, progress=ctx.progress)
    scaler.observe()  # the containers' reported price, for the bounds below
    current = int(deployment.get("replica_num") or 0)
    try:
        config = autoscale_config(args, current)
    except ValueError as problem:
        raise AutoDLError(ErrorType.USAGE_ERROR, f"自动扩缩容参数不成立: {problem}", "检查 --min-replicas / --max-replicas 等参数。", {}) from None
    bounds = startup_bounds(config, scaler, current)
    if bounds["effective_max_replicas"] == 0 and config.min_replicas > 0:
        raise AutoDLError(ErrorType.USAGE_ERROR,
                          f"--max-hourly-cost {config.max_hourly_cost:g} 元连一个副本都不够 (单价 {bounds['price_per_replica_yuan']} 元/小时"
                          + (", 还没有运行的容器, 按模板的 price_to 计" if bounds["price_source"] == "template_price_to" else "") + ")。",
                          "调高 --max-hourly-cost; 或明确允许缩到 0 (--min-replicas 0)。", bounds)
    if bounds["effective_max_replicas"] < config.min_replicas:
        bounds["warning"] = (f"--max-hourly-cost {config.max_hourly_cost:g} 按单价 {bounds['price_per_replica_yuan']} 元/小时只够 "
                             f"{bounds['effective_max_replicas']} 个副本, 少于 --min-replicas {config.min_replicas}: 花费上限优先。")
    require_autoscale_confirmation(args, bounds)
    interval = args.interval if is_loopback_host(client.host) else max(args.interval, PLATFORM_MIN_INTERVAL_SECONDS)
    autoscaler = Autoscaler(scaler, config, lambda: LoadSnapshot(), interval=interval,
                            blacklist_faulty=args.blacklist_faulty, log=ctx.progress.log)
    ctx.progress.log(f"自动扩缩容已启用: 副本数 {config.min_replicas}-{bounds['effective_max_replicas']}, 目标每副本 "
                     f"{config.target_inflight:g} 个在途请求; 每个决策是 stderr 上的一行 JSON")
    return GatewayAutoscaler(autoscaler)
