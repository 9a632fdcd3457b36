"""The service registry of one deployment: build it, keep it current, write it, serve it.

A registry (schemas/registry.schema.json) lists the running containers of a deployment with
the URL a client calls. `serving.pool` (imported by users as `service_pool`) reads it and picks a replica per request.

- `build_registry`: one look at the container list (discover_services.py one-shot).
- `RegistryWatcher`: keeps it current, as AutoDL's best-practice guide describes: poll the
  container events from an offset (a `running` event registers the container, a
  `shutting_down`/`shutdown` one deregisters it), list every container now and then to heal
  a missed event, optionally probe each replica over HTTP. A failing API never empties the
  registry: the last good one is kept and marked `stale`.
- `write_atomically`: readers of the file never see half a registry.
- `RegistryEndpoint`: GET /services and GET /pick on a loopback port (IPv4 or IPv6 loopback;
  only loopback Host headers; idle connections time out; errors in the JSON error shape).

A hung API never stalls the watcher: each cycle runs the API poll and the health probes on
worker threads that do not wait for each other, waits for them at most `cycle_deadline`
seconds, then publishes what it has; an API poll still running then marks the registry stale.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ..platform import api
from ..platform.containers import STOPPING_STATUSES, primary_service_url
from ..core.deps import SKILL_ROOT, require
from ..core.errors import AutoDLError, ErrorType, Interrupted, error_document
from ..core.loopback import host_header_allowed
from ..core.output import Progress
from ..core.clock import now_timestamp
from ..platform.resolve import is_record_not_found

REGISTRY_SCHEMA = SKILL_ROOT / "schemas" / "registry.schema.json"
RUNNING = "running"
# The registry's timestamp format (RFC 3339 with an explicit offset), as the schema says.
TIMESTAMP_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
MACHINE_ID_PATTERN = re.compile(r"^[0-9a-f]{10}$")
# stop() waits for the endpoint's serve loop to notice; 0.1 s keeps Ctrl-C snappy at no cost.
SERVE_POLL_SECONDS = 0.1
# A cycle waits this many intervals for the API poll before publishing the last good registry
# marked stale: one slow answer is not an outage, three intervals of silence is worth saying.
CYCLE_DEADLINE_INTERVALS = 3
# ...but never less than this: one call to a loaded API takes a few hundred milliseconds, and a
# sub-second --interval must not flag every slightly slow answer.
MIN_CYCLE_DEADLINE_SECONDS = 1.0
# The endpoint drops a connection idle this long (a client that stalls mid-request included).
ENDPOINT_IDLE_SECONDS = 10.0
# A watch ends when this many looks in a row (one per cycle) say the deployment is stopped or
# gone: one answer may be a lagging read, two an interval apart are the platform's word. An
# API error in between neither counts nor resets (it is not an answer).
END_AFTER_LOOKS = 2
# Why a watch ended with its deployment (the guard's names for the same ends).
DEPLOYMENT_STOPPED, DEPLOYMENT_GONE = "deployment_stopped", "deployment_gone"


# The endpoint's pools read the registry this process builds; their (English) library
# warnings, e.g. "registry is stale", repeat what the watcher already logs in Chinese, so
# they go nowhere instead of onto the script's stderr.
QUIET_POOL_LOG = logging.getLogger(__name__ + ".endpoint_pool")
QUIET_POOL_LOG.addHandler(logging.NullHandler())
QUIET_POOL_LOG.propagate = False
# No records at all: newer pytest's caplog (9.2) sees records of non-propagating loggers too.
QUIET_POOL_LOG.disabled = True


def _timestamp_or_now(value: Any) -> str:
    return value if isinstance(value, str) and TIMESTAMP_PATTERN.match(value) else now_timestamp()


# --- building -------------------------------------------------------------------------


def service_entry(container: dict[str, Any], port: int | None = None) -> dict[str, Any] | None:
    """The registry item of a running container, or None when it has no usable URL."""
    url = primary_service_url(container, port)
    uuid = container.get("uuid")
    if not isinstance(uuid, str) or not uuid or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None  # a record we cannot use (missing or odd fields) is not registered
    machine_id = container.get("machine_id")
    if not isinstance(machine_id, str) or not MACHINE_ID_PATTERN.match(machine_id):
        machine_id = uuid.split("-")[1] if uuid.count("-") == 2 else machine_id
    return {
        "container_uuid": uuid,
        "url": url,
        "machine_id": machine_id,
        "gpu_name": container.get("gpu_name") or None,
        "since": _timestamp_or_now(container.get("started_at")),
        "healthy": None,  # unknown until a health probe says otherwise (see HealthTracker)
    }


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


def registry_document(
    deployment_uuid: str,
    services: list[dict[str, Any]],
    *,
    resynced_at: str | None = None,
    stale_reason: str | None = None,
    ended: str | None = None,
    ended_reason: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {"status": "success", "deployment_uuid": deployment_uuid, "generated_at": now_timestamp()}
    if resynced_at:
        document["resynced_at"] = resynced_at
    if stale_reason:
        document["stale"] = True
        document["stale_reason"] = stale_reason
    if ended:
        document["ended"] = ended
        document["ended_reason"] = ended_reason or ended
    document["services"] = services
    return document


@lru_cache(maxsize=1)
def _registry_validator() -> Any:
    jsonschema = require("jsonschema")
    schema = json.loads(REGISTRY_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def validate_registry(document: dict[str, Any]) -> None:
    """Raise ValueError when a document we are about to publish breaks the schema (a bug)."""
    errors = sorted(_registry_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(part) for part in errors[0].absolute_path)
        raise ValueError(f"registry breaks registry.schema.json at '{where}': {errors[0].message}")


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


# --- writing --------------------------------------------------------------------------


def check_writable(path: str | os.PathLike) -> None:
    """Raise ValueError unless `path` can be (re)written by `write_atomically`."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{target} 是一个目录, 需要文件路径")
    if not target.parent.is_dir():
        raise ValueError(f"目录不存在: {target.parent}")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise ValueError(f"目录不可写: {target.parent}")


def write_atomically(path: str | os.PathLike, document: dict[str, Any]) -> None:
    """Replace `path` with the JSON document so a reader sees the old file or the new one.

    The temporary file lives in the same directory (os.replace is atomic only within one
    file system) and is fsynced first, so a crash cannot leave a renamed but empty file.
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, ensure_ascii=False, indent=2, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:  # also a signal mid-write: never leave the temporary file behind
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


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
    # Redis): a detached watcher is ready then (service_jobs).
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
            if is_record_not_found(error):  # "未查询到相关部署": a definite answer, worth a look
                self._look_at_deployment()

    def _look_at_deployment(self) -> None:
        """One look at the deployment; ends the watch after END_AFTER_LOOKS in a row say it ended."""
        from ..platform.resolve import deployment_by_uuid

        try:
            deployment = deployment_by_uuid(self.client, self.deployment_uuid)
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
            # comes before or after running (api-reference.md), and it must not hide a running.
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
        try:
            validate_registry(document)
        except ValueError as problem:
            document = self._without_unfit_records(document, problem)
            if document is None:
                return  # keep the last good registry (already logged)
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


# --- the loopback endpoint ------------------------------------------------------------


def parse_loopback_address(text: str) -> tuple[str, int]:
    """HOST:PORT for --serve; only loopback hosts (the registry is not for the network)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"不是 HOST:PORT: {text!r} (例: 127.0.0.1:8765)")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"只能监听本机回环地址 (127.0.0.1 / ::1 / localhost), 不能是 {host!r}: 注册表不应暴露到网络")
    return host, int(port_text)


class RegistryEndpoint:
    """GET /services (the registry) and GET /pick?policy=... on a loopback port.

    Both say `"stale": true` and `stale_reason` while the registry is the last good one kept
    through an API failure (/services as part of the registry document).

    /pick leases a replica from a `service_pool.ServicePool` fed by the registry and hands it
    back at once: the endpoint never sees the caller's request finish, so in-flight counts
    stay zero and `least_inflight` behaves like two random choices. Clients that can import
    service_pool should embed the pool (from_endpoint) instead.
    """

    def __init__(self, host: str, port: int, registry: Callable[[], dict[str, Any] | None],
                 allowed_hosts: tuple[str, ...] = ()) -> None:
        from .pool import POLICIES, ServicePool

        self.registry = registry
        self.allowed_hosts = allowed_hosts
        self.pools = {policy: ServicePool(policy=policy, refresh_interval=0, source=registry, logger=QUIET_POOL_LOG) for policy in POLICIES}
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), _handler_for(self))
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(SERVE_POLL_SECONDS,), name="registry-endpoint", daemon=True
        )

    def start(self) -> "RegistryEndpoint":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        from .pool import NoReplicaAvailable

        document = self.registry()
        if path not in ENDPOINT_PATHS:
            return 404, error_document(ErrorType.NOT_FOUND, f"没有这个路径: {path}", f"可用: {', '.join(ENDPOINT_PATHS)}",
                                    {"path": path, "available_paths": list(ENDPOINT_PATHS)})
        if document is None:
            return 503, _unavailable("注册表还没有生成 (第一次查询 AutoDL 尚未完成)。", "稍等一个轮询间隔后重试。")
        if path == "/services":
            return 200, document
        policy = (query.get("policy") or ["least_inflight"])[0]
        pool = self.pools.get(policy)
        if pool is None:
            return 400, error_document(ErrorType.USAGE_ERROR, f"未知策略 {policy!r}。", f"policy 可选: {', '.join(self.pools)}。",
                                    {"policy": policy, "available_policies": list(self.pools)})
        try:
            lease = pool.lease()
        except NoReplicaAvailable as reason:
            return 503, _unavailable(f"没有可用副本: {reason}",
                                     "副本可能都在启动或健康检查失败; 稍后重试, 或用 GET /services 查看各副本的 healthy。")
        lease.release()
        service = lease.service
        answer = {
            "status": "success", "policy": policy,
            "service": {"container_uuid": service.container_uuid, "url": service.url,
                        "machine_id": service.machine_id, "gpu_name": service.gpu_name},
        }
        if document.get("stale"):
            # The pick comes from the last good registry: replicas may have left since.
            answer.update(stale=True, stale_reason=document.get("stale_reason"),
                          note="注册表已过期 (查询 AutoDL 失败, 用的是上一次的结果): 这个副本可能已经不在了, 请求失败时换一个重试。")
        return 200, answer


ENDPOINT_PATHS = ("/services", "/pick")


def _unavailable(message: str, hint: str) -> dict[str, Any]:
    """Nothing to hand out yet: temporary, so api_error with retryable (HTTP 503)."""
    return error_document(ErrorType.API_ERROR, message, hint, {"code": None, "msg": message, "http_status": 503, "retryable": True})


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(endpoint: RegistryEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # A connection that sends nothing (or half a request) for this long is dropped.
        timeout = ENDPOINT_IDLE_SECONDS

        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            if not host_header_allowed(self.headers.get("Host"), endpoint.allowed_hosts):
                self._reply(421, error_document(ErrorType.USAGE_ERROR, f"不接受的 Host 请求头: {self.headers.get('Host')!r}。",
                                             "注册表接口只接受本机回环地址 (localhost / 127.0.0.1 / ::1) 作为 Host, 防止 DNS rebinding。",
                                             {"host": self.headers.get("Host")}))
                return
            parts = urlsplit(self.path)
            status, body = endpoint.answer(parts.path.rstrip("/") or "/", parse_qs(parts.query))
            self._reply(status, body)

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # Malformed requests, unsupported methods, oversized lines: JSON, not the stdlib's HTML page.
            self.close_connection = True
            try:
                self._reply(code, error_document(ErrorType.USAGE_ERROR, f"请求无法处理: HTTP {code} {message or ''}".strip(),
                                              "注册表接口只支持 GET /services 与 GET /pick。",
                                              {"http_status": code, "reason": explain or message or ""}))
            except OSError:
                pass  # the client is gone

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # stdout/stderr belong to the script's contract; requests are not progress

    return Handler
