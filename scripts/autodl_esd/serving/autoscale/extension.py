"""The autoscaler inside the gateway (`serve_gateway.py --autoscale`): a `GatewayExtension`.

`GatewayAutoscaler` samples the gateway's load on its event loop (`snapshot_of`: queued, in
flight per replica, the replicas' own reports, failures, health), runs each tick of the
`Autoscaler` (blocking platform calls) in a worker thread, shows its status under
`extensions.autoscaler` and its metrics at /_gateway/metrics. Before scaling to zero it
stops routing to the replicas, so a request arriving meanwhile waits and wakes it up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Optional

from .controller import Autoscaler, LoadSnapshot, ReplicaLoad

# Between ticks the gateway extension looks this often for a request waiting at zero
# replicas, so a scale from zero starts within 0.1 s instead of up to a whole interval.
WAKE_POLL_SECONDS = 0.1
# Detaching the replicas runs on the gateway's loop, which answers within milliseconds;
# a loop that does not answer in 5 s is stuck, and scaling to zero then waits a tick.
DETACH_WAIT_SECONDS = 5.0
# On stop, a tick that is mid-change gets this long to finish (a lost answer is read back
# for the HTTP timeout plus a margin), so the summary reports a settled size.
STOP_WAIT_SECONDS = 60.0


def snapshot_of(route: Any) -> LoadSnapshot:
    """The route's load now (call on the gateway's event loop: its replica table has no locks)."""
    table = route.table
    now = table.clock()
    replicas = []
    for replica in table.all_replicas():
        if not replica.in_registry:
            continue
        report = replica.report
        fresh = report is not None and now - report.at <= route.report_max_age
        replicas.append(ReplicaLoad(
            container_uuid=replica.container_uuid,
            machine_id=replica.machine_id,
            inflight=replica.inflight + replica.remote_inflight,
            reported=(report.running + report.waiting) if fresh else None,
            failures=replica.ejections,
            healthy=replica.healthy,
        ))
    return LoadSnapshot(queued=table.queued, inflight=sum(r.inflight for r in table.all_replicas()),
                        replicas=tuple(replicas), requests_total=route.totals.proxied)


class GatewayAutoscaler:
    """The autoscaler as an extension of one of the gateway's routes (`Gateway.add_extension`;
    a one-deployment gateway has one route): samples the route's load on the gateway's loop,
    runs each tick (blocking platform calls) in a worker thread."""

    name = "autoscaler"

    def __init__(self, autoscaler: Autoscaler):
        self.autoscaler = autoscaler
        self.route: Any = None  # routes.Route: its table, totals, registry
        self._task: Optional[asyncio.Task] = None
        self._tick: Optional[asyncio.Future] = None
        self.final: Optional[dict] = None

    async def start(self, route: Any) -> None:
        self.route = route
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
        table = self.route.table
        if table.queued or any(replica.inflight for replica in table.all_replicas()):
            return False
        # Withdrawn, not just emptied: the registry lists these containers until they stop,
        # and a refresh meanwhile must not route to them again.
        table.withdraw_all()
        return True

    def _reattach_replicas(self) -> None:
        self.route.table.restore()
        self.route.reapply_registry()

    def _waiting_at_zero(self) -> bool:
        view = self.autoscaler.view
        return self.route.table.queued > 0 and view is not None and view.replica_num == 0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = 0.0
        while True:
            if time.monotonic() >= next_tick or self._waiting_at_zero():
                snapshot = snapshot_of(self.route)
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
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # heavy: only when scraped

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
