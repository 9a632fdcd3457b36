"""A submission: queue_submit's run as a durable record that outlives the process running it.

Every real (non-dry-run, non-simulated) queue_submit run writes a record under
`<state root>/submits/<run_id>.json` (background.py's job files) before it waits, and
updates it before each step takes effect:

    waiting -> submitting -> [reconciling] -> submitted
                         \\-> may_have_been_created      (ambiguous create, not seen in the window)
    waiting -> failed | cancelled                        (nothing created)

`--detach` does the checks in the foreground, writes the record and starts
`jobs.py --run RUN_ID` in the background, which continues from the record; so does
`jobs.py --resume` after a crash or reboot. A record whose create was sent is never
resumed by sending again: it reconciles by name first (submit.Submitter.recover_after_restart).
`jobs.py --status` reads the record and, while a create's outcome is unknown, looks once more.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core import background
from ..core.background import JobFiles, JobLock, is_running, local_now
from ..core.errors import AutoDLError, ErrorType, Interrupted
from ..core.output import Progress
from ..core.polling import DEFAULT_REMOTE_INTERVAL_SECONDS, default_interval, floor_interval
from ..core.sandbox import simulated_platform
from ..core.state import state_root
from ..money import guard
from ..money.estimate import cost_bounds, with_observed_rate
from ..money.spend import cost_so_far
from ..money.wallet import balance_check
from ..platform import api
from ..platform.notify import notify_quietly
from ..platform.resolve import deployment_by_uuid, read_back
from ..platform.stock import requested_stock
from . import submit as submit_engine
from .submit import DEFAULT_STARTUP_TIMEOUT_SECONDS, SubmissionCancelled, SubmitOptions, Submitter

KIND = "submit"
WAITING, SUBMITTING, RECONCILING, SUBMITTED = "waiting", "submitting", "reconciling", "submitted"
MAY_HAVE_BEEN_CREATED, FAILED, CANCELLED = "may_have_been_created", "failed", "cancelled"
# States after which the run never sends a create again.
CREATE_SENT_STATES = (SUBMITTING, RECONCILING, SUBMITTED, MAY_HAVE_BEEN_CREATED)
# jobs.py --status --wait re-reads the record this often: cheap, and prompt enough.
STATUS_POLL_SECONDS = 0.2
WAIT_FINISHED_COST_BASIS = ("与 cost_report.py 的 cost_yuan 同一算法 (运行时长 × 容器 price × gpu_num), 用跟踪结束时读到的容器记录 "
                            "(含已释放的) 算到 as_of; 容器都已停止时这就是这次运行的花费, 部署本身停止或删除前不再计费。")


def submits_dir() -> Path:
    return state_root() / "submits"


def files_for(run_id: str) -> JobFiles:
    return JobFiles(run_id, submits_dir())


def new_run_id() -> str:
    return f"s-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def jobs_command(flag: str, run_id: str) -> str:
    """A jobs.py command that works from any directory (agents run from their own)."""
    return f"python3 {background.script_path('jobs.py')} {flag} {run_id}"


@dataclass
class Request:
    """What queue_submit was asked to do, kept in the record so a resumed run does the same."""

    interval: float | None = None  # None: polling.default_interval of the host, set by submit()
    timeout: float = 0.0
    wait_running: bool = False
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS
    wait_finished: bool = False
    finish_timeout: float = 0.0
    allow_duplicate_name: bool = False
    show_password: bool = False
    reconcile_window: float | None = None  # None: submit.DEFAULT_RECONCILE_WINDOW_SECONDS
    notify: bool = False
    max_runtime: float | None = None
    max_cost: float | None = None
    guard_interval: float | None = None
    simulated: bool = False

    @classmethod
    def from_record(cls, stored: dict[str, Any]) -> Request:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in known})

    def submit_options(self, dry_run: bool = False) -> SubmitOptions:
        return SubmitOptions(
            interval=DEFAULT_REMOTE_INTERVAL_SECONDS if self.interval is None else self.interval, timeout=self.timeout,
            dry_run=dry_run, wait_running=self.wait_running,
            startup_timeout=self.startup_timeout, wait_finished=self.wait_finished, finish_timeout=self.finish_timeout,
            allow_duplicate_name=self.allow_duplicate_name, show_password=self.show_password,
            reconcile_window=self.window,
        )

    @property
    def window(self) -> float:
        # Looked up at call time: tests shorten the default for every run at once.
        return submit_engine.DEFAULT_RECONCILE_WINDOW_SECONDS if self.reconcile_window is None else self.reconcile_window

    @property
    def guarded(self) -> bool:
        return bool(self.max_runtime or self.max_cost)


# --- the foreground part of queue_submit ---------------------------------------------------


def submit(client: Any, config: dict[str, Any], request: Request, progress: Progress, partial: dict[str, Any],
           *, dry_run: bool = False, detach: bool = False) -> dict[str, Any]:
    """queue_submit: checks, then the dry run's plan, a detached record, or the whole run here."""
    if request.interval is None:  # no --interval: 30 s against the platform, 1 s against the simulator
        request.interval = default_interval(client.host)
    request.interval = floor_interval(request.interval, client.host, progress)
    cost = cost_bounds(config)  # offline: shown (stderr, result) before anything is submitted
    progress.log(f"费用: 每小时 {cost['hourly_yuan']['min']:g}..{cost['hourly_yuan']['max']:g} 元 ({cost['note']})")
    submitter = Submitter(client, config, request.submit_options(dry_run), progress, partial)
    if dry_run:
        result = submitter.run()
        result.update(_balance_plan(client, cost, progress, result))
        if request.guarded:
            result["guard_plan"] = _guard_plan(request, config)
        return {**result, "cost": cost}
    try:
        stock = submitter.prepare()
    except AutoDLError as error:
        submitter.mention_other_waiters(error)
        raise
    if request.simulated:  # the embedded simulator ends with this process: nothing to keep
        return Run(client, config, request, progress, partial, None, cost).go(submitter, stock)
    files = files_for(new_run_id())
    record = new_record(files, client, config, request, submitter, stock, cost)
    partial.update(run_id=files.job_id, state_file=str(files.state))
    if not detach:
        background.write_record(files, record)
        return Run(client, config, request, progress, partial, files, cost).go(submitter, stock)
    balance = _balance_plan(client, cost, progress, {"warnings": submitter.warnings})
    record.update(detached=True, plan=_plan(submitter, stock), balance=balance.get("balance"))
    background.write_record(files, record)
    view = start_detached(files, progress)
    warnings = balance["warnings"] + _unbounded_wait_warning(request, files.job_id, record["plan"]["would_submit_now"])
    return {**view, "detached": True, "plan": record["plan"], "cost": cost, "balance": balance.get("balance"),
            "timeout_seconds": request.timeout, "warnings": warnings,
            "next": f"{jobs_command('--status', files.job_id)} --wait 60"}


def _unbounded_wait_warning(request: Request, run_id: str, stock_now: bool) -> list[dict[str, Any]]:
    """A background wait without --timeout goes on until stock frees: said, so it is a choice
    (not when the stock read found room: the create goes out at once)."""
    if request.timeout or stock_now:
        return []
    return [{"code": "wait_without_limit", "path": "--timeout",
             "message": "没有 --timeout: 后台会一直等到有库存才创建 (可能很久), 直到被取消。",
             "hint": f"不想无限等待就取消后加 --timeout S 重新提交: {jobs_command('--cancel', run_id)}; 或把这一点告诉用户。"}]


def submit_simulated(ctx: Any, config: dict[str, Any], request: Request, *, dry_run: bool = False,
                     cluster: str | None = None, busy_seconds: float = 0.0) -> dict[str, Any]:
    """queue_submit --sim: the same run against a fresh embedded simulator (`ctx` is the
    script's cli.Context; its client then talks to the simulator). `busy_seconds`: other
    tenants hold every requested GPU type that long, to show the wait for stock."""
    busy_gpus = config["container_template"]["gpu_name_set"]
    with simulated_platform(ctx.progress, cluster=cluster, busy_seconds=busy_seconds, busy_gpus=busy_gpus) as settings:
        ctx.settings = settings
        result = submit(ctx.client(), config, request, ctx.progress, ctx.partial, dry_run=dry_run)
    return {**result, "simulated": True}


def new_record(files: JobFiles, client: Any, config: dict[str, Any], request: Request, submitter: Submitter,
               stock: Any, cost: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": files.job_id,
        "kind": KIND,
        "state": WAITING,
        "pid": None,
        "detached": False,
        "done": False,
        "host": getattr(client, "host", None),
        "name": config["name"],
        "deployment_type": config["deployment_type"],
        "config": config,
        "request": asdict(request),
        "cost": cost,
        "warnings": submitter.warnings,
        "last_stock": requested_stock(stock, submitter.gpu_names),
        "waited_seconds": 0.0,
        "may_have_been_created": False,
        "created_at_local": local_now(),
        "updated_at_local": local_now(),
        "state_file": str(files.state),
        "log_file": str(files.log),
        **submitter.snapshot(),
    }


def _plan(submitter: Submitter, stock: Any) -> dict[str, Any]:
    dry = submitter.dry_run_result(stock)
    return {key: dry[key] for key in ("name", "deployment_type", "dialect", "stock", "would_submit_now", "gpu_name",
                                      "duplicate_check", "stock_filtered_by_config")}


def start_detached(files: JobFiles, progress: Progress) -> dict[str, Any]:
    """Start `jobs.py --run RUN_ID` in the background and return the record's view once it runs."""
    record, pid = background.spawn(files, [background.script_path("jobs.py"), "--run", files.job_id],
                                   lambda record: is_running(files), "提交")
    progress.log(f"提交 {files.job_id} 已在后台运行 (pid {pid}), 日志: {files.log}; "
                 f"用 {jobs_command('--status', files.job_id)} --wait 60 查看进展")
    return view(record, files)


# --- running a record (foreground, or the background process) -----------------------------


class Run:
    """One process's part of a submission: continues from the record's state, writes each step."""

    def __init__(self, client: Any, config: dict[str, Any], request: Request, progress: Progress,
                 partial: dict[str, Any], files: JobFiles | None, cost: dict[str, Any]) -> None:
        self.client, self.config, self.request = client, config, request
        self.progress, self.partial, self.files, self.cost = progress, partial, files, cost
        self.notices = Notices(request.notify, client, config, progress)
        self.guarded: dict[str, Any] = {}
        # Read once: while this process holds the record's lock it is the record's only writer.
        self.record = read(files) if files is not None else {}

    def save(self, **changes: Any) -> None:
        if self.files is None:
            return
        self.record.update(changes, updated_at_local=local_now())
        background.write_record(self.files, self.record)

    def _on_state(self, state: str, changes: dict[str, Any]) -> None:
        # "May have": only while a create's outcome is open; a known uuid is no longer a maybe,
        # and back to waiting only after answers that prove nothing was created.
        self.save(state=state, **changes, may_have_been_created=state in (SUBMITTING, RECONCILING))

    def options_for(self, submitter: Submitter) -> None:
        submitter.options.on_state = self._on_state
        submitter.options.on_created = self._created
        if self.files is not None:
            submitter.options.cancel_requested = self.files.cancel_requested

    def go(self, submitter: Submitter, stock: Any, *, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hold the record's lock and run to the end: a result, or an error that says the state."""
        lock = JobLock(self.files) if self.files is not None else None
        if lock is not None and not lock.acquire():
            raise AutoDLError(ErrorType.USAGE_ERROR, f"提交 {self.files.job_id} 已经有进程在运行。",
                              f"不需要再启动它: 用 {jobs_command('--status', self.files.job_id)} 查看。",
                              {"run_id": self.files.job_id})
        try:
            self.save(pid=os.getpid())
            self.options_for(submitter)
            result = self._go(submitter, stock, resume)
            # Written while the lock is held: a reader never sees the process gone and the record open.
            self.save(done=True, pid=None, result=result, ended_at_local=local_now(),
                      deployment_uuid=result.get("deployment_uuid"), may_have_been_created=False)
        except SubmissionCancelled:
            self.save(state=CANCELLED, done=True, pid=None, ended_at_local=local_now(), may_have_been_created=False,
                      message="已取消 (--cancel), 没有发出创建请求。")
            raise AutoDLError(ErrorType.INTERRUPTED, "提交已取消 (jobs.py --cancel), 没有发出创建请求, 没有创建任何部署。",
                              "不需要处理。", {"run_id": self._run_id(), "may_have_been_created": False, "state": CANCELLED})
        except Interrupted as interruption:
            self._interrupted(interruption)
            raise
        except AutoDLError as error:
            self._failed(error)
            raise
        finally:
            if lock is not None:
                lock.release()
        return {**result, **({"run_id": self.files.job_id} if self.files else {})}

    def _run_id(self) -> str | None:
        return self.files.job_id if self.files else None

    def _go(self, submitter: Submitter, stock: Any, resume: dict[str, Any] | None) -> dict[str, Any]:
        try:
            if resume is None:
                result = submitter.proceed(stock)
            elif resume.get("state") == SUBMITTED and resume.get("deployment_uuid"):
                uuid = resume["deployment_uuid"]
                self.progress.log(f"继续跟踪已创建的部署 {uuid}")
                result = submitter.follow(uuid, {"deployment_uuid": uuid, **submitter.summary(),
                                                 "recovered": bool(resume.get("recovered")), "warnings": submitter.warnings})
            elif resume.get("state") in (SUBMITTING, RECONCILING):  # a create may be in flight
                uuid, recovered = submitter.recover_after_restart()
                result = submitter.created(uuid, recovered, float(resume.get("waited_seconds") or 0))
            else:
                result = submitter.proceed(None, waited_before=_waited_before(resume))
        except AutoDLError as error:
            submitter.mention_other_waiters(error)
            if error.error_type in (ErrorType.TIMEOUT, ErrorType.STARTUP_TIMEOUT):
                self.notices.send(f"等待超时: {self.config['name']}", error.message)
                error.details.update(self.notices.report())
            if self.guarded:
                error.details["guard"] = self.guarded["guard"]
            if self.files is not None:
                error.details["run_id"] = self.files.job_id
            raise
        return self._finish(result)

    def _created(self, deployment_uuid: str) -> None:
        # Right after the create, before any wait: a guard must not depend on the wait succeeding.
        self.notices.created(deployment_uuid)
        if self.request.guarded:
            self.guarded.update(start_guard(self.request, self.client, deployment_uuid, self.progress))
            self.partial["guard"] = self.guarded["guard"]  # an interrupt from here on still names it
            if self.guarded.get("guard_warning"):
                self.progress.log(f"警告 [guard_not_started] {self.guarded['guard_warning']['message']}")
                self.notices.warnings.append(self.guarded["guard_warning"])
            self.save(guard=self.guarded.get("guard"))

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        cost = self.cost
        if result.get("containers") and result.get("deployment_uuid"):
            cost = _observed_cost(self.client, result["deployment_uuid"], cost)
        finish = result.get("finish")  # --wait-finished's report
        if finish:  # what the finished run cost, as cost_report.py counts it (released containers included)
            result.update(cost_so_far(self.client, {"uuid": result["deployment_uuid"]}, basis=WAIT_FINISHED_COST_BASIS,
                                      failed_hint="没能读到容器记录, 没有算出费用; 稍后用 cost_report.py 查看。"))
        if result.get("deployment_finished") or finish:
            how = "全部容器已运行完毕" if (finish or {}).get("finished", True) else "部署已停止 (未全部完成)"
            self.notices.send(f"已结束: {self.config['name']}", f"部署 {result['deployment_uuid']}: {how}。")
        elif self.request.wait_running:
            self.notices.send(f"容器已运行: {self.config['name']}",
                              f"部署 {result['deployment_uuid']}: {len(result.get('containers') or [])} 个容器在运行。")
        if self.request.guarded:
            result["guard"] = self.guarded.get("guard")
        result["cost"] = cost
        result.update(self.notices.report())
        result["warnings"] = result.get("warnings", []) + self.notices.warnings
        return result

    def _failed(self, error: AutoDLError) -> None:
        if self.files is None:
            return
        details = error.details
        document = error.to_dict()
        if details.get("deployment_created"):  # created; only the follow-up failed
            self.save(state=SUBMITTED, done=True, pid=None, error=document, ended_at_local=local_now(),
                      deployment_uuid=details["deployment_uuid"], may_have_been_created=False)
        elif details.get("may_have_been_created"):
            self.save(state=MAY_HAVE_BEEN_CREATED, done=True, pid=None, error=document, ended_at_local=local_now(),
                      may_have_been_created=True)
        else:
            self.save(state=FAILED, done=True, pid=None, error=document, ended_at_local=local_now(),
                      may_have_been_created=False)

    def _interrupted(self, interruption: Interrupted) -> None:
        """A signal: the record stays as it is (resumable), a cancel aside."""
        if self.files is None:
            return
        if self.files.cancel_requested() and self.record.get("state") == WAITING:
            self.save(state=CANCELLED, done=True, pid=None, ended_at_local=local_now(), may_have_been_created=False,
                      message="已取消 (--cancel), 没有发出创建请求。")
            self.partial.update(state=CANCELLED, may_have_been_created=False)
            return
        self.save(pid=None, stopped_by=getattr(interruption, "signal_name", "SIGINT"), stopped_at_local=local_now())
        self.partial["resume"] = f"{jobs_command('--resume', self.files.job_id)}"


def _waited_before(record: dict[str, Any]) -> float:
    """Seconds this submission already waited, on this machine's clock (across restarts)."""
    try:
        started = datetime.fromisoformat(str(record.get("created_at_local")))
    except ValueError:
        return float(record.get("waited_seconds") or 0)
    return max(0.0, time.time() - started.timestamp())


def read(files: JobFiles) -> dict[str, Any]:
    return background.read_record(files, "提交记录", f"python3 {background.script_path('jobs.py')} --list")


def read_on_its_host(files: JobFiles, client: Any) -> dict[str, Any]:
    """The record, when the client talks to the platform it was made for (usage_error otherwise)."""
    record = read(files)
    if record.get("host") and record["host"] != getattr(client, "host", None):
        raise AutoDLError(ErrorType.USAGE_ERROR,
                          f"提交 {files.job_id} 是为 {record['host']} 创建的, 现在的 AUTODL_HOST 是 {getattr(client, 'host', None)}。",
                          "提交只在它创建时的平台上继续: 把 AUTODL_HOST 改回去再 --resume。", {"run_id": files.job_id})
    return record


def resume_in_process(files: JobFiles, client: Any, progress: Progress, partial: dict[str, Any]) -> dict[str, Any]:
    """`jobs.py --run`: continue a record here (the detached process, or a resume)."""
    record = read_on_its_host(files, client)
    if record.get("done"):
        return {**view(record, files), "note": "这个提交已经结束, 没有可继续的。"}
    request = Request.from_record(record.get("request") or {})
    config = record["config"]
    partial.update(run_id=files.job_id, name=config.get("name"), state_file=str(files.state))
    if record.get("state") in (SUBMITTING, RECONCILING):
        partial.update(may_have_been_created=True, lookup=f"python3 {background.script_path('list_deployments.py')} --name {config.get('name')}")
    submitter = Submitter(client, config, request.submit_options(), progress, partial)
    submitter.warnings = list(record.get("warnings") or submitter.warnings)
    submitter.restore(record)
    run = Run(client, config, request, progress, partial, files, record.get("cost") or cost_bounds(config))
    return run.go(submitter, None, resume=record)


def resume_detached(files: JobFiles, client: Any, progress: Progress) -> dict[str, Any]:
    """`jobs.py --resume`: start the record's process again in the background."""
    record = read_on_its_host(files, client)
    if record.get("done") or is_running(files):
        return {**view(record, files), "resumed": False,
                "note": "这个提交已经结束, 没有可继续的。" if record.get("done") else "这个提交仍在运行, 不需要继续。"}
    if files.cancel.exists():
        files.cancel.unlink()
    background.write_record(files, {**record, "detached": True})
    return {**start_detached(files, progress), "resumed": True}


# --- looking at records -----------------------------------------------------------------------


def all_records() -> list[dict[str, Any]]:
    return [record if record is not None else {"run_id": path.stem, "kind": KIND, "state": "unreadable", "state_file": str(path)}
            for path, record in background.records_in(submits_dir(), "s-*.json")]


def status(files: JobFiles, client: Any, progress: Progress) -> dict[str, Any]:
    """The record's view; an outcome still unknown (and no process on it) is looked up once more."""
    record = read(files)
    if client is not None and not is_running(files):
        if record.get("state") in (MAY_HAVE_BEEN_CREATED, SUBMITTING, RECONCILING):
            record = _look_again(files, record, client, progress)
        elif record.get("state") == SUBMITTED and record.get("done") and _final_look_due(record):
            record = _final_look(files, record, client, progress)
    return view(record, files)


def _final_look_due(record: dict[str, Any]) -> bool:
    """The last look for duplicates is made once the reconcile window after the last send has passed."""
    sent = record.get("last_create_sent_epoch")
    window = Request.from_record(record.get("request") or {"interval": 0}).window
    return "final_look" not in record and isinstance(sent, (int, float)) and time.time() >= sent + window


def _new_since_first_send(client: Any, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Deployments with the record's name that were not listed before its first create was sent."""
    name, known = record.get("name"), set(record.get("known_before_send") or [])
    return [d for d in api.list_deployments(client, name=name)
            if d.get("name", name) == name and d.get("uuid") not in known]


def _final_look(files: JobFiles, record: dict[str, Any], client: Any, progress: Progress) -> dict[str, Any]:
    """Every deployment with the name that appeared since the first send, once nothing of this
    run can still land: two or more are reported as duplicates (another run, or a person)."""
    try:
        new = _new_since_first_send(client, record)
    except AutoDLError as error:
        progress.log(f"最后一次按名称复查失败: {error.message}")
        return record
    new.sort(key=lambda d: (str(d.get("created_at") or "~"), str(d.get("uuid"))))
    changes: dict[str, Any] = {"final_look": {"at_local": local_now(), "found": [d.get("uuid") for d in new]}}
    if len(new) > 1:
        changes["duplicates"] = [{"deployment_uuid": d.get("uuid"), "created_at": d.get("created_at"), "status": d.get("status"),
                                  "reported": d.get("uuid") == record.get("deployment_uuid"), "keep": index == 0}
                                 for index, d in enumerate(new)]
        progress.log(f"提交 {files.job_id}: 同名部署共 {len(new)} 个: {[d.get('uuid') for d in new]}")
    background.write_record(files, {**record, **changes, "updated_at_local": local_now()})
    return read(files)


def _look_again(files: JobFiles, record: dict[str, Any], client: Any, progress: Progress) -> dict[str, Any]:
    """One fresh listing by name: a deployment new since the first send is this run's."""
    name = record.get("name")
    try:
        new = _new_since_first_send(client, record)
    except AutoDLError as error:
        progress.log(f"按名称核对失败: {error.message}")
        return {**record, "last_look": {"at_local": local_now(), "error": error.message}}
    new.sort(key=lambda d: (str(d.get("created_at") or ""), str(d.get("uuid"))))
    look = {"at_local": local_now(), "found": [d.get("uuid") for d in new]}
    if not new:
        background.write_record(files, {**record, "last_look": look})
        return read(files)
    uuid = new[0].get("uuid")
    progress.log(f"提交 {files.job_id}: 按名称找到了结果不明的创建落地的部署 {uuid}")
    changes = {"state": SUBMITTED, "deployment_uuid": uuid, "recovered": True, "done": True, "last_look": look,
               "may_have_been_created": False,
               "result": {"deployment_uuid": uuid, "name": name, "deployment_type": record.get("deployment_type"),
                          "recovered": True, "recovered_by": {"rule": "name_lookup_after_send", "how": "status_look",
                                                              "known_before_send": sorted(record.get("known_before_send") or [])}}}
    if len(new) > 1:
        changes["duplicates"] = [{"deployment_uuid": d.get("uuid"), "created_at": d.get("created_at"),
                                  "keep": index == 0} for index, d in enumerate(new)]
    background.write_record(files, {**record, **changes, "updated_at_local": local_now()})
    return read(files)


def wait_for_change(files: JobFiles, seconds: float) -> dict[str, Any]:
    """Block up to `seconds` until the record is done (or its process is gone)."""
    deadline = time.monotonic() + seconds
    record = read(files)
    while time.monotonic() < deadline and not record.get("done") and is_running(files):
        time.sleep(min(STATUS_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        record = read(files)
    return record


def cancel(files: JobFiles) -> dict[str, Any]:
    """End a waiting submission without a create; one that has sent a create keeps its record."""
    record = read(files)
    if record.get("done"):
        return {**view(record, files), "changed": False, "note": "这个提交已经结束, 无需取消。"}
    if record.get("state") in CREATE_SENT_STATES:
        return {**view(record, files), "changed": False,
                "note": "创建请求已经发出, 取消不能撤回它: 提交记录保留, 它会继续核对/跟踪到结束。"
                        "不想要这个部署时, 等 deployment_uuid 出现后用 stop_deployment.py 停止。"}
    files.request_cancel()
    if is_running(files):
        background.stop_process(files, record.get("pid"))
    record = read(files)
    if record.get("state") == WAITING:
        lock = JobLock(files)
        if lock.acquire():
            try:
                record.update(state=CANCELLED, done=True, pid=None, ended_at_local=local_now(), may_have_been_created=False,
                              message="已取消 (--cancel), 没有发出创建请求。")
                background.write_record(files, record)
            finally:
                lock.release()
    return {**view(read(files), files), "changed": True}


def view(record: dict[str, Any], files: JobFiles) -> dict[str, Any]:
    """What jobs.py shows of a submission: the common fields, then what its state means."""
    state = record.get("state")
    alive = is_running(files)
    shown: dict[str, Any] = {
        "run_id": record.get("run_id", files.job_id),
        "kind": KIND,
        "state": state,
        "done": bool(record.get("done")),
        "pid": record.get("pid") if alive else None,
        "alive": alive,
        "detached": bool(record.get("detached")),
        "name": record.get("name"),
        "deployment_type": record.get("deployment_type"),
        "host": record.get("host"),
        "may_have_been_created": bool(record.get("may_have_been_created")),
        "created_at_local": record.get("created_at_local"),
        "updated_at_local": record.get("updated_at_local"),
        "log_file": str(files.log),
        "state_file": str(files.state),
    }
    for key in ("deployment_uuid", "recovered", "phase", "creates_sent", "guard", "duplicates", "last_look", "final_look",
                "stopped_by", "ended_at_local"):
        if record.get(key) is not None:
            shown[key] = record[key]
    if state == WAITING:
        shown["last_stock"] = record.get("last_stock")
        shown["waited_seconds"] = record.get("waited_seconds")
    if record.get("result") is not None:
        shown["result"] = record["result"]
    if record.get("error") is not None:
        shown["error"] = record["error"]
    shown["message"], shown["hint"] = _explain(record, files, alive)
    return shown


def _explain(record: dict[str, Any], files: JobFiles, alive: bool) -> tuple[str, str]:
    """(message, hint) in Chinese: what the state means and the next step."""
    run_id, name, state = files.job_id, record.get("name"), record.get("state")
    status_cmd = f"{jobs_command('--status', run_id)} --wait 60"
    lookup = f"python3 {background.script_path('list_deployments.py')} --name {name}"
    containers = f"python3 {background.script_path('list_containers.py')} --deployment-uuid {record.get('deployment_uuid')}"
    if state == WAITING:
        if alive:
            return f"正在等待 GPU 库存 (已等约 {record.get('waited_seconds') or 0:g} 秒), 还没有发出创建请求。", f"继续用 {status_cmd} 查看; 不想要了用 {jobs_command('--cancel', run_id)}。"
        return ("运行它的进程已经结束 (被中断、被杀或机器重启), 没有发出创建请求, 没有创建部署。",
                f"接着等待: {jobs_command('--resume', run_id)} (在后台继续); 不需要了: {jobs_command('--cancel', run_id)}。")
    if state in (SUBMITTING, RECONCILING):
        if alive:
            return "创建请求已发出, 正在等待结果 / 按名称核对是否已创建。", f"不要重新提交; 用 {status_cmd} 等结果。"
        return ("创建请求已发出, 但运行它的进程在知道结果前结束了: 部署可能已经创建。",
                f"不要重新提交: {jobs_command('--resume', run_id)} 会先按名称核对 (绝不再次发送创建), 或用 {lookup} 查看。")
    if state == SUBMITTED:
        uuid = record.get("deployment_uuid")
        if record.get("error"):
            return (f"部署已创建 ({uuid}), 但之后的跟踪出错: {record['error'].get('message')}",
                    f"不要重新提交: 用 {containers} 查看。")
        if not record.get("done"):
            what = {"wait_running": "等待容器运行", "wait_finished": "等待运行完毕"}.get(record.get("phase"), "收尾")
            if alive:
                return f"部署已创建 ({uuid}), 正在{what}。", f"用 {status_cmd} 等结果; 不要重新提交。"
            return (f"部署已创建 ({uuid}); 跟踪它的进程已结束。",
                    f"不要重新提交; 继续跟踪: {jobs_command('--resume', run_id)}, 或用 {containers} 查看。")
        duplicates = f" 注意: 同名部署共 {len(record['duplicates'])} 个 (见 duplicates)。" if record.get("duplicates") else ""
        result = record.get("result") or {}
        if result.get("finish"):  # --wait-finished: the Job has ended; say so, not only "created"
            cost_report = f"python3 {background.script_path('cost_report.py')} --deployment-uuid {uuid}"
            return (f"部署已创建 ({uuid}) 并已运行完毕 (见 result.finish)。{duplicates}",
                    f"花了多少: {cost_report}; 平台不报退出码, 成败看任务自己写的结果; 不要重新提交。")
        return f"部署已创建: {uuid}。{duplicates}", f"用 {containers} 查看容器; 不要重新提交。"
    if state == MAY_HAVE_BEEN_CREATED:
        return ("创建请求结果不明, 核对窗口内没有看到部署: 它可能已经创建, 也可能稍后才出现。为避免重复购买没有再次发送创建。",
                f"不要重新提交。稍后再运行 {jobs_command('--status', run_id)} (每次都会按名称再核对一次), 或用 {lookup} 查看。")
    if state == FAILED:
        error = record.get("error") or {}
        return f"提交失败, 没有创建部署: {error.get('message', '')}", error.get("hint") or "按 error 的提示处理。"
    if state == CANCELLED:
        return "已取消, 没有发出创建请求, 没有创建任何部署。", "不需要处理。"
    return f"提交记录无法读取或状态未知 ({state})。", f"查看 {files.state} 与日志 {files.log}。"


# --- what queue_submit adds around the engine: notifications, a guard, the wallet ------------


class Notices:
    """--notify: WeChat messages at the milestones; a failure is a warning, never an error."""

    def __init__(self, enabled: bool, client: Any, config: dict[str, Any], progress: Progress) -> None:
        self.enabled = bool(enabled)
        self.client, self.config, self.progress = client, config, progress
        self.sent: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []

    def created(self, deployment_uuid: str) -> None:
        self.send(f"已提交: {self.config['name']}", f"GPU 库存已满足, 已创建部署 {deployment_uuid} ({self.config['deployment_type']})。")

    def send(self, title: str, content: str) -> None:
        if not self.enabled:
            return
        outcome = notify_quietly(self.client.settings, title, content, self.config["name"], self.progress)
        self.sent.append({"title": outcome["title"], "sent": outcome["sent"]})
        if outcome.get("warning"):
            self.warnings.append(outcome["warning"])

    def report(self) -> dict[str, Any]:
        return {"notifications": self.sent} if self.enabled else {}


def _guard_limits(request: Request) -> guard.Limits:
    return guard.Limits(max_runtime_hours=request.max_runtime, max_cost_yuan=request.max_cost)


def _guard_plan(request: Request, config: dict[str, Any]) -> str:
    """What the guard started after the create will do (shown by the dry run)."""
    return guard.describe_plan({"limits": _guard_limits(request).__dict__, "action": "stop", "floor": None,
                                "deployment_name": config["name"], "deployment_uuid": "创建后的部署"})


def start_guard(request: Request, client: Any, deployment_uuid: str, progress: Progress) -> dict[str, Any]:
    """A detached guard for the deployment just created. A guard that cannot start is a
    warning: the deployment exists and must be reported, never turned into an error."""
    command = (f"python3 scripts/guard_deployment.py --deployment-uuid {deployment_uuid}"
               + (f" --max-runtime {request.max_runtime:g}" if request.max_runtime else "")
               + (f" --max-cost {request.max_cost:g}" if request.max_cost else "") + " --detach")
    if request.simulated:
        return _guard_warning(
            "模拟器随本次运行结束, 没有启动守护。", "在真实平台上运行时会启动; 想演示守护, 单独启动 autodl_sim.py 再运行。", command)
    try:
        deployment, _ = read_back(lambda: deployment_by_uuid(client, deployment_uuid), lambda d: d is not None)
        if deployment is None:
            return _guard_warning(f"部署 {deployment_uuid} 还没出现在部署列表里, 没有启动守护。", "稍后手动启动守护:", command)
        interval = floor_interval(request.guard_interval or guard.DEFAULT_INTERVAL_SECONDS, client.host, progress)
        limits = _guard_limits(request)
        guard.check_request(deployment, limits, "stop", None)
        state = guard.new_state(client, deployment, limits, "stop", None, request.notify, interval)
        files = guard.save_new(state)
        started = guard.detach(files, Path(background.script_path("guard_deployment.py")), progress)
    except AutoDLError as error:
        return _guard_warning(f"守护没有启动: {error.message}", error.hint + " 手动启动守护:", command)
    return {"guard": started}


def _guard_warning(message: str, hint: str, command: str) -> dict[str, Any]:
    return {"guard": None, "guard_warning": {"code": "guard_not_started", "path": "--max-runtime/--max-cost",
                                             "message": message,
                                             "hint": f"{hint} {command} (先这样运行: 它只预览守护何时停止什么 (details.plan); "
                                                     "这是用户提交时要的守护, 预览与之一致再加 --yes)"}}


def _balance_plan(client: Any, cost: dict[str, Any], progress: Progress, result: dict[str, Any]) -> dict[str, Any]:
    """The wallet: hours covered at the worst case, a warning when that is low."""
    balance, warnings = balance_check(client, cost)
    for warning in warnings:
        progress.log(f"警告 [{warning['code']}] {warning['message']} {warning['hint']}")
    return {"balance": balance, "warnings": result.get("warnings", []) + warnings}


def _observed_cost(client: Any, deployment_uuid: str, cost: dict[str, Any]) -> dict[str, Any]:
    """Once containers run, their real prices give the expected rate (best effort)."""
    try:
        return with_observed_rate(cost, api.list_containers(client, deployment_uuid))
    except AutoDLError:
        return cost
