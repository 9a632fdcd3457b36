"""Keeping one deployment's registry current from the AutoDL API (discover_services.py).

- `build_registry`: one look at the container list (discover_services.py one-shot).
- `RegistryWatcher`: keeps it current, as AutoDL's best-practice guide describes: poll the
  container events from an offset (a `running` event registers the container, a
  `shutting_down`/`shutdown` one deregisters it), list every container now and then to heal
  a missed event, optionally probe each replica over HTTP (`HealthTracker`). A failing API
  never empties the registry: the last good one is kept and marked `stale`. Each document
  goes to `--out` (written atomically) and to the `WatchOptions.sinks` (Redis, HAProxy).

A hung API never stalls the watcher: each cycle runs the API poll and the health probes on
worker threads that do not wait for each other, waits for them at most `cycle_deadline`
seconds, then publishes what it has; an API poll still running then marks the registry stale.
The document itself (build, check, write) is `registry.document`.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ...core.clock import now_timestamp
from ...core.errors import AutoDLError, Interrupted
from ...core.output import Progress
from ...platform import api, resolve
from ...platform.containers import STOPPING_STATUSES
from .document import (
    DEPLOYMENT_GONE,
    DEPLOYMENT_STOPPED,
    registry_document,
    service_entry,
    validate_registry,
    write_atomically,
)

RUNNING = "running"
# A cycle waits this many intervals for the API poll before publishing the last good registry
# marked stale: one slow answer is not an outage, three intervals of silence is worth saying.
CYCLE_DEADLINE_INTERVALS = 3
# ...but never less than this: one call to a loaded API takes a few hundred milliseconds, and a
# sub-second --interval must not flag every slightly slow answer.
MIN_CYCLE_DEADLINE_SECONDS = 1.0
# A watch ends when this many looks in a row (one per cycle) say the deployment is stopped or
# gone: one answer may be a lagging read, two an interval apart are the platform's word. An
# API error in between neither counts nor resets (it is not an answer).
END_AFTER_LOOKS = 2
# The fields of a registry document the schema can fault; the rest are our own timestamps.
CHECKED_FIELDS = ("deployment_uuid", "services", "stale", "stale_reason", "ended", "ended_reason")


# --- one look -------------------------------------------------------------------------


def running_services(client: Any, deployment_uuid: str, port: int | None, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """container uuid -> registry item, for every running container with a service URL."""
    services: dict[str, dict[str, Any]] = {}
    for container in api.list_containers(client, deployment_uuid, statuses=[RUNNING]):
        if not isinstance(container, dict) or container.get("status") != RUNNING:
            continue  # the status filter is a request, not a promise
        entry = service_entry(container, port)
        if entry is None:
            if progress:
                progress.log(f"容器 {container.get('uuid')} 在运行但没有服务地址, 未注册")
            continue
        services[entry["container_uuid"]] = entry
    return services


def build_registry(
    client: Any,
    deployment_uuid: str,
    port: int | None = None,
    progress: Progress | None = None,
    health: "HealthTracker | None" = None,
) -> dict[str, Any]:
    """The registry as of now, from one full container listing.

    One look cannot know health without asking: with `health` each replica is probed once
    (healthy true/false); without it `healthy` is null (unknown), never an unchecked true.
    """
    services = running_services(client, deployment_uuid, port, progress)
    if health is not None and services:
        health.update(services)
    document = registry_document(deployment_uuid, list(services.values()), resynced_at=now_timestamp())
    validate_registry(document)
    return document


# --- health ---------------------------------------------------------------------------

# (The --watch/--health defaults live in scripts/discover_services.py, so its --help need
# not import this module.)
# Probes run in parallel so one hung replica does not stretch the cycle by n x timeout.
MAX_PROBE_THREADS = 8


def probe(url: str, timeout: float) -> bool:
    """True when GET url answers 2xx within `timeout` seconds."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False  # refused, timed out, reset, garbled: all mean 'not serving'


class HealthTracker:
    """Consecutive probe failures per replica; unhealthy after `failures_to_leave` in a row.

    A new replica is unhealthy until its first probe succeeds: a container is `running` as
    soon as its command starts, long before a model server has loaded its weights.
    """

    def __init__(self, path: str, timeout: float, failures_to_leave: int, check: Callable[[str, float], bool] = probe) -> None:
        self.path = "/" + path.lstrip("/")
        self.timeout = timeout
        self.failures_to_leave = failures_to_leave
        self._check = check
        self._failures: dict[str, int] = {}
        self._ever_healthy: set[str] = set()

    def update(self, services: dict[str, dict[str, Any]]) -> list[tuple[str, bool]]:
        """Probe every replica, set its `healthy`; return the (uuid, healthy) that changed."""
        targets = {uuid: entry["url"].rstrip("/") + self.path for uuid, entry in services.items()}
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PROBE_THREADS, len(targets)))) as pool:
            results = dict(zip(targets, pool.map(lambda u: self._check(u, self.timeout), targets.values())))
        changed = []
        for uuid, ok in results.items():
            if ok:
                self._failures[uuid] = 0
                self._ever_healthy.add(uuid)
            else:
                self._failures[uuid] = self._failures.get(uuid, 0) + 1
            healthy = uuid in self._ever_healthy and self._failures[uuid] < self.failures_to_leave
            if services[uuid]["healthy"] != healthy:
                services[uuid]["healthy"] = healthy
                changed.append((uuid, healthy))
        for gone in set(self._failures) - set(services):
            self._failures.pop(gone, None)
            self._ever_healthy.discard(gone)
        return changed


# --- watching -------------------------------------------------------------------------

@dataclass
class WatchOptions:
    """How to watch; the defaults (and why) are discover_services.py's --interval / --resync-every."""

    interval: float
    resync_every: int
    port: int | None = None
    out: str | None = None
    max_cycles: int | None = None
    duration: float | None = None
    health: HealthTracker | None = None
    # Called with every registry published (after --out is written): Redis, HAProxy (scale-out).
    sinks: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    # Called once after the first round (the first registry is out, or a standby follows
    # Redis): a detached watcher is ready then (serving.detached).
    on_ready: Callable[[], None] | None = None


class RegistryWatcher:
    """Keeps one deployment's registry current; `document` is safe to read from any thread."""

    def __init__(self, client: Any, deployment_uuid: str, options: WatchOptions, progress: Progress | None = None) -> None:
        self.client = client
        self.deployment_uuid = deployment_uuid
        self.options = options
        self.progress = progress or Progress(quiet=True)
        self.services: dict[str, dict[str, Any]] = {}
        self.cycles = self.registered = self.deregistered = 0
        self.document: dict[str, Any] | None = None
        self.stop_event = threading.Event()
        self._offset: int | None = None
        self._resynced_at: str | None = None
        self._resync_due = True
        self._stale_reason: str | None = None
        self._overrun_reason: str | None = None
        self.published_at: float | None = None  # time.monotonic() of the last publish
        self._lock = threading.Lock()  # membership changes vs. probes vs. publishing
        self._jobs: dict[str, _Job] = {}
        self._publish_problem: str | None = None
        # What the last published document said (CHECKED_FIELDS) and its services once checked.
        self._checked: tuple[list[Any], list[dict[str, Any]]] | None = None
        self._probed: set[str] = set()  # the replicas the last health probe round covered
        # The deployment's end: (verdict, looks in a row) while unconfirmed; `ended` once confirmed.
        self._end_looks: tuple[str, int] | None = None
        self._look_due = False  # a container stopped since the last look
        self.ended: str | None = None
        self.ended_reason: str | None = None

    @property
    def cycle_deadline(self) -> float:
        return max(MIN_CYCLE_DEADLINE_SECONDS, CYCLE_DEADLINE_INTERVALS * self.options.interval)

    # One look at the platform; the first (and the one after a failure) lists everything.
    def cycle(self) -> None:
        """Poll the API and probe the replicas side by side; publish within `cycle_deadline`."""
        self.cycles += 1
        deadline = time.monotonic() + self.cycle_deadline
        api_job = self._job("api", self._poll_api)
        probe_job = self._job("probe", self._probe) if self.options.health is not None else None
        if probe_job is not None and probe_job.wait(deadline) and not api_job.done.is_set():
            self._publish()  # health news goes out even while the API is slow
        finished = api_job.wait(deadline)
        if finished:
            api_job.raise_bug()
            if probe_job is not None and probe_job.wait(deadline) and self._unprobed():
                # Replicas the API just registered get their first probe in this cycle too.
                probe_job = self._job("probe", self._probe)
                probe_job.wait(deadline)
            if self._overrun_reason:
                self._overrun_reason = None
                if not self._stale_reason:
                    self.progress.log("AutoDL API 已返回, 注册表恢复为最新")
        elif not self._overrun_reason:
            self._overrun_reason = (f"查询 AutoDL 超过 {self.cycle_deadline:g} 秒仍未返回 (接口缓慢或无响应), "
                                    "注册表是上一次的结果")
            self.progress.log(self._overrun_reason)
        if probe_job is not None and probe_job.done.is_set():
            probe_job.raise_bug()
        self._publish()

    def _job(self, name: str, work: Callable[[], None]) -> "_Job":
        """The job `name` still running from an earlier cycle, or a new one started now."""
        job = self._jobs.get(name)
        if job is None or job.done.is_set():
            job = self._jobs[name] = _Job(work, f"registry-{name}")
        return job

    def _poll_api(self) -> None:
        if self.ended:
            return
        try:
            had_services = bool(self.services)
            if self._offset is None:
                # Skip the history: the full listing below says what is running now.
                _, self._offset = api.list_events(self.client, self.deployment_uuid, offset=0)
            else:
                self._apply_events()
            resync = self._resync_due or self.cycles % self.options.resync_every == 0
            if resync:
                self._resync()
            if self._stale_reason:
                self.progress.log("AutoDL API 恢复, 注册表已更新")
            self._stale_reason = None
            # A stop takes every replica away: when the last one left, and at each full
            # listing while none runs (scaled to zero), ask whether the deployment still runs.
            look_due, self._look_due = self._look_due, False
            if not self.services and (had_services or resync or look_due or self._end_looks):
                self._look_at_deployment()
            elif self._end_looks:
                self._end_looks = None  # replicas again: whatever it was, it is not over
        except AutoDLError as error:
            if not self._stale_reason:
                self.progress.log(f"查询 AutoDL 失败, 保留上一次的注册表 (标记 stale): {error.message}")
            self._stale_reason = error.message
            self._resync_due = True  # whatever was missed meanwhile, the next listing heals it
            if resolve.is_record_not_found(error):  # "未查询到相关部署": a definite answer, worth a look
                self._look_at_deployment()

    def _look_at_deployment(self) -> None:
        """One look at the deployment; ends the watch after END_AFTER_LOOKS in a row say it ended."""
        try:
            deployment = resolve.deployment_by_uuid(self.client, self.deployment_uuid)
        except AutoDLError:
            return  # no answer: neither counts nor resets
        if deployment is None:
            verdict, reason = DEPLOYMENT_GONE, f"部署 {self.deployment_uuid} 已不存在 (被删除)"
        elif deployment.get("status") == "stopped":
            verdict, reason = DEPLOYMENT_STOPPED, f"部署 {self.deployment_uuid} 已停止, 不会再有副本运行"
        else:
            self._end_looks = None
            return
        looks = self._end_looks[1] + 1 if self._end_looks and self._end_looks[0] == verdict else 1
        self._end_looks = (verdict, looks)
        if looks < END_AFTER_LOOKS:
            self.progress.log(f"平台回答: {reason} (第 {looks} 次); 再确认 {END_AFTER_LOOKS - looks} 次后结束 watch")
            return
        for uuid in list(self.services):
            self._deregister(uuid, reason)
        self._stale_reason = None
        self.ended, self.ended_reason = verdict, f"{reason} (连续 {looks} 次确认): 注册表已清空, watcher 结束。"
        self.progress.log(self.ended_reason)

    def _unprobed(self) -> bool:
        with self._lock:
            return bool(set(self.services) - self._probed)

    def _probe(self) -> None:
        with self._lock:
            services = dict(self.services)
            self._probed = set(services)
        if not services:
            return
        changes = self.options.health.update(services)  # sets healthy on the shared entries
        for uuid, healthy in changes:
            self.progress.log(f"{'健康检查通过, healthy=true' if healthy else '健康检查连续失败, healthy=false'}: {uuid}")

    def _apply_events(self) -> None:
        events, self._offset = api.list_events(self.client, self.deployment_uuid, offset=self._offset or 0)
        last_status: dict[str, str] = {}
        for event in events:  # oldest first: the last running/stopping status of each container wins
            if not isinstance(event, dict):
                continue  # not an event record: nothing to learn from it
            uuid, status = event.get("deployment_container_uuid"), event.get("status")
            # Only these two kinds decide membership: sources disagree whether oss_merged
            # comes before or after running (references/platform-api.md, 容器状态), and it must not hide a running.
            if uuid and (status == RUNNING or status in STOPPING_STATUSES):
                last_status[uuid] = status
            if status in STOPPING_STATUSES:
                self._look_due = True  # a stop's containers leave over a few cycles: look again then
        for uuid, status in last_status.items():
            if status == RUNNING and uuid not in self.services:
                self._register_from_record(uuid)
            elif status in STOPPING_STATUSES and uuid in self.services:
                self._deregister(uuid, f"事件 {status}")

    def _register_from_record(self, uuid: str) -> None:
        records = api.list_containers(self.client, self.deployment_uuid, container_uuid=uuid)
        record = next((c for c in records if c.get("uuid") == uuid), None)
        if record is None or record.get("status") != RUNNING:
            return  # already gone again; its stop event follows
        entry = service_entry(record, self.options.port)
        if entry is None:
            self.progress.log(f"容器 {uuid} 在运行但没有服务地址, 未注册")
            return
        self._register(entry, "事件 running")

    def _register(self, entry: dict[str, Any], why: str) -> None:
        if self.options.health is not None:
            entry["healthy"] = False  # until its first probe succeeds (see HealthTracker)
        with self._lock:
            self.services[entry["container_uuid"]] = entry
        self.registered += 1
        self.progress.log(f"注册 {entry['container_uuid']} {entry['url']} ({why})")

    def _deregister(self, uuid: str, why: str) -> None:
        with self._lock:
            self.services.pop(uuid, None)
        self.deregistered += 1
        self.progress.log(f"注销 {uuid} ({why})")

    def _resync(self) -> None:
        fresh = running_services(self.client, self.deployment_uuid, self.options.port, self.progress)
        added = [uuid for uuid in fresh if uuid not in self.services]
        removed = [uuid for uuid in self.services if uuid not in fresh]
        for uuid in removed:
            self._deregister(uuid, "全量同步: 已不在运行")
        for uuid in added:
            self._register(fresh[uuid], "全量同步")
        for uuid, entry in fresh.items():
            if uuid not in added:  # keep since/healthy; a changed URL is taken
                self.services[uuid]["url"] = entry["url"]
        self._resynced_at, self._resync_due = now_timestamp(), False
        if self.cycles > 1:
            self.progress.log(f"全量同步: {len(fresh)} 个在运行, 新增 {len(added)}, 移除 {len(removed)}")

    def _publish(self) -> None:
        with self._lock:
            services = [dict(entry) for entry in self.services.values()]
        document = registry_document(self.deployment_uuid, services, resynced_at=self._resynced_at,
                                     stale_reason=None if self.ended else self._stale_reason or self._overrun_reason,
                                     ended=self.ended, ended_reason=self.ended_reason)
        # Checked against the schema only when what it says changed: its timestamps are ours
        # (always well formed), and a check of 1,000 services takes ~60 ms of a core (and of
        # the GIL a gateway's event loop shares with this thread).
        content = [document.get(key) for key in CHECKED_FIELDS]
        if self._checked is not None and self._checked[0] == content:
            document["services"] = self._checked[1]
        else:
            try:
                validate_registry(document)
            except ValueError as problem:
                document = self._without_unfit_records(document, problem)
                if document is None:
                    return  # keep the last good registry (already logged)
            self._checked = (content, document["services"])
        if self.options.out:
            try:
                write_atomically(self.options.out, document)
            except OSError as problem:  # e.g. the --out directory was removed: go on, say so once
                self._log_publish_problem(f"写入 {self.options.out} 失败, 文件保留上一次的内容, 继续轮询: "
                                          f"{problem.strerror or problem}")
            else:
                self._log_publish_problem(None)
        self.document = document
        self.published_at = time.monotonic()
        for sink in self.options.sinks:
            sink(document)

    def _without_unfit_records(self, document: dict[str, Any], problem: ValueError) -> dict[str, Any] | None:
        """The document without the service records that break the schema (logged), or None."""
        fit = []
        for service in document["services"]:
            try:
                validate_registry({**document, "services": [service]})
                fit.append(service)
            except ValueError as unfit:
                self._log_publish_problem(f"容器 {service.get('container_uuid')!r} 的记录不符合注册表格式, 未发布: {unfit}")
        candidate = {**document, "services": fit}
        try:
            validate_registry(candidate)
            return candidate
        except ValueError:
            self._log_publish_problem(f"注册表不符合格式, 保留上一次的注册表: {problem}")
            return None

    def _log_publish_problem(self, message: str | None) -> None:
        if message and message != self._publish_problem:
            self.progress.log(message)
        self._publish_problem = message

    def forget_position(self) -> None:
        """Start over from a full listing on the next cycle (e.g. after standing by)."""
        self._offset, self._resync_due = None, True

    def first_round_done(self) -> None:
        """Call `options.on_ready` the first time only."""
        on_ready, self.options.on_ready = self.options.on_ready, None
        if on_ready is not None:
            on_ready()

    def run(self) -> str:
        """Cycle until a bound is reached, `stop_event` is set or a signal arrives; says which."""
        started = time.monotonic()
        try:
            while True:
                self.cycle()
                self.first_round_done()
                if self.ended:
                    return self.ended
                if self.options.max_cycles and self.cycles >= self.options.max_cycles:
                    return "max_cycles"
                wait = self.options.interval
                if self.options.duration:
                    remaining = self.options.duration - (time.monotonic() - started)
                    if remaining <= 0:
                        return "duration"
                    wait = min(wait, remaining)
                if self.stop_event.wait(wait):
                    return "stopped"
        except (Interrupted, KeyboardInterrupt) as interruption:
            return getattr(interruption, "signal_name", "SIGINT")

    def summary(self) -> dict[str, Any]:
        return {
            "deployment_uuid": self.deployment_uuid,
            "cycles": self.cycles,
            "registered": self.registered,
            "deregistered": self.deregistered,
            "services": list(self.services.values()),
            "out": self.options.out,
            **({"stale": True, "stale_reason": self._stale_reason or self._overrun_reason}
               if (self._stale_reason or self._overrun_reason) and not self.ended else {}),
            **({"ended_reason": self.ended_reason} if self.ended else {}),
        }


class _Job:
    """One piece of a cycle on its own daemon thread: a hung call blocks only itself."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self.done = threading.Event()
        self.bug: BaseException | None = None
        self._work = work
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as bug:  # re-raised on the cycle's thread (a bug, not an API error)
            self.bug = bug
        finally:
            self.done.set()

    def wait(self, deadline: float) -> bool:
        return self.done.wait(max(0.0, deadline - time.monotonic()))

    def raise_bug(self) -> None:
        if self.bug is not None:
            bug, self.bug = self.bug, None
            raise bug
