"""Long-running services started with --detach: a gateway (`gw-...`) or a registry watcher (`w-...`).

The detached process is the same script run with the same arguments minus `--detach`, plus
`--job-id ID`: it takes the job's lock, writes its record (`state: starting`, then
`running` with its ready document: url, registry, pid) and, when it ends, `stopped` with
its final summary. The parent returns the ready record. `jobs.py --cancel` stops it with
SIGTERM (the service drains and writes its summary); `--resume` starts it again with the
arguments kept in the record.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core import background
from ..core.background import JobFiles, JobLock, is_running, local_now
from ..core.errors import AutoDLError, ErrorType, Interrupted, error_document
from ..core.output import Progress, scrub, to_json
from ..core.state import state_root

STARTING, RUNNING, STOPPED, FAILED = "starting", "running", "stopped", "failed"
PREFIXES = {"gateway": "gw", "watch": "w"}
WHAT = {"gateway": "网关", "watch": "服务发现"}
# A gateway or watcher is ready once its first registry read and its listening socket are
# up; on a loaded machine that can take several seconds more than a bare start.
READY_TIMEOUT_SECONDS = 30.0


def services_dir() -> Path:
    return state_root() / "services"


def files_for(run_id: str) -> JobFiles:
    if not re.fullmatch(r"(gw|w)-[0-9A-Za-z-]+", run_id):  # it becomes a file name
        raise AutoDLError(ErrorType.USAGE_ERROR, f"不是后台网关/服务发现的 ID: {run_id!r}",
                          "ID 形如 gw-20261206-204100-1a2b3c 或 w-...; 用 python3 scripts/jobs.py --list 查看。", {"run_id": run_id})
    return JobFiles(run_id, services_dir())


def kind_of(run_id: str) -> str:
    return "gateway" if run_id.startswith("gw-") else "watch"


def new_run_id(kind: str) -> str:
    return f"{PREFIXES[kind]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def read(files: JobFiles) -> dict[str, Any]:
    return background.read_record(files, "后台服务", "python3 scripts/jobs.py --list")


# URL schemes of the Redis flags (--redis, --registry-redis): their password has a place in the environment.
REDIS_SCHEMES = ("redis", "rediss", "unix")


def refuse_passwords_in(urls: dict[str, str | None]) -> None:
    """usage_error for a URL flag holding a password: a detached service's command line is
    kept in its record (to --resume it), and nothing secret is written there."""
    from urllib.parse import urlsplit

    for flag, url in urls.items():
        try:
            parts = urlsplit(url) if url else None
            password = parts.password if parts else None
        except ValueError:
            continue  # not a URL: the run's own check says so
        if password:
            instead = ("地址里不写密码, 把密码放进环境变量 AUTODL_REDIS_PASSWORD (后台任务继承它, 不写进记录); 或"
                       if parts.scheme in REDIS_SCHEMES else f"让 {flag} 指向不需要密码的地址 (本机回环); 或")
            raise AutoDLError(ErrorType.USAGE_ERROR, f"{flag} 的地址里有密码, 不能用 --detach: 后台任务的命令行会写进任务记录。",
                              instead + "在前台运行 (如用 systemd / tmux 常驻)。", {"flag": flag})


def start_detached(kind: str, script: str, argv: Sequence[str], progress: Progress) -> dict[str, Any]:
    """Run `script argv... --job-id ID` in the background; return its record once it is ready.

    A service that could not start (its port taken, say) leaves no job behind: its error
    is this call's error, as the foreground run would have given it.
    """
    files = files_for(new_run_id(kind))
    args = [arg for arg in argv if arg != "--detach"]
    background.write_record(files, {"run_id": files.job_id, "kind": kind, "state": STARTING, "pid": None,
                                    "script": script, "argv": args, "created_at_local": local_now(),
                                    "log_file": str(files.log), "state_file": str(files.state)})
    try:
        return _spawn(files, progress)
    except AutoDLError as error:
        _let_an_ended_process_exit(files)
        if not is_running(files):  # one still starting after the wait keeps its record, to be cancelled
            error.details.setdefault("log_tail", background.log_tail(files))
            for key in ("run_id", "log_file", "state_file"):
                error.details.pop(key, None)
            for path in (files.state, files.lock, files.log):
                path.unlink(missing_ok=True)
        raise


def _let_an_ended_process_exit(files: JobFiles) -> None:
    """A service that recorded how it ended still holds its lock for a moment (it releases it
    on the way out); wait for that, bounded, so the job is not mistaken for one still starting."""
    deadline = time.monotonic() + background.STOP_TIMEOUT_SECONDS
    while is_running(files) and time.monotonic() < deadline:
        try:
            ended = read(files).get("state") in (STOPPED, FAILED)
        except AutoDLError:
            return
        if not ended:
            return
        time.sleep(background.POLL_SECONDS)


def _spawn(files: JobFiles, progress: Progress) -> dict[str, Any]:
    record = read(files)
    kind = record.get("kind", kind_of(files.job_id))
    ready, pid = background.spawn(files, [background.script_path(record["script"]), *record["argv"], "--job-id", files.job_id],
                                  lambda r: r.get("state") in (RUNNING, STOPPED, FAILED), WHAT[kind],
                                  timeout=READY_TIMEOUT_SECONDS)
    summary = ready.get("summary")
    if isinstance(summary, dict) and summary.get("status") == "error":  # it ended at once, and said why
        raise _as_error(summary, {"run_id": files.job_id, "log_file": str(files.log)})
    if ready.get("state") != RUNNING and not (ready.get("state") == STOPPED and summary):
        raise AutoDLError(ErrorType.INTERNAL_ERROR, f"后台{WHAT[kind]}启动后立即结束: {files.job_id}",
                          f"看日志 {files.log} 或 details.summary; 去掉 --detach 在前台运行可直接看到原因。",
                          {**view(ready, files), "log_tail": background.log_tail(files)})
    progress.log(f"{WHAT[kind]} {files.job_id} 已在后台运行 (pid {pid}), 日志: {files.log}; 停止: python3 scripts/jobs.py --cancel {files.job_id}")
    return view(read(files), files)


def _as_error(document: dict[str, Any], details: dict[str, Any]) -> AutoDLError:
    """The detached process's error document as this process's error (same type and words)."""
    try:
        error_type = ErrorType(document.get("error_type"))
    except ValueError:
        error_type = ErrorType.INTERNAL_ERROR
    return AutoDLError(error_type, str(document.get("message") or "后台服务启动失败。"), str(document.get("hint") or ""),
                       {**(document.get("details") or {}), **details})


class ServiceRecord:
    """The detached process's side: hold the lock, say when ready, say how it ended."""

    def __init__(self, run_id: str) -> None:
        self.files = files_for(run_id)
        self.lock = JobLock(self.files)

    def __enter__(self) -> ServiceRecord:
        if not self.lock.acquire():
            raise AutoDLError(ErrorType.USAGE_ERROR, f"后台服务 {self.files.job_id} 已经在运行。",
                              "用 python3 scripts/jobs.py --status ID 查看。", {"run_id": self.files.job_id})
        # A resumed service starts afresh: the last run's address and summary no longer hold.
        self._save(pid=os.getpid(), state=STARTING, **dict.fromkeys(_RUN_KEYS))
        return self

    def ready(self, document: dict[str, Any]) -> None:
        document = _scrubbed({**document, "pid": os.getpid()})
        self._save(state=RUNNING, ready=document, started_at_local=local_now(),
                   **{key: document[key] for key in ("url", "registry", "metrics_url") if key in document})

    def ended(self, summary: dict[str, Any] | None, failed: bool = False) -> None:
        # The pid stays: it tells `background.spawn` that this process ran and ended at once.
        self._save(state=FAILED if failed else STOPPED, summary=_scrubbed(summary), ended_at_local=local_now())

    def __exit__(self, *_exc: Any) -> None:
        record = read(self.files)
        if record.get("state") in (STARTING, RUNNING):  # ended without saying how (a bug or a signal)
            self._save(state=STOPPED, pid=None, ended_at_local=local_now())
        self.lock.release()

    def _save(self, **changes: Any) -> None:
        record = read(self.files)
        record.update(changes, updated_at_local=local_now())
        background.write_record(self.files, {key: value for key, value in record.items() if value is not None or key == "pid"})


# What one run of a service writes into its record (cleared when it starts again).
_RUN_KEYS = ("url", "registry", "metrics_url", "ready", "summary", "started_at_local", "ended_at_local")


def _scrubbed(document: Any) -> Any:
    """The document with every registered secret replaced (a last line of defence: nothing
    secret is put into a record in the first place)."""
    return None if document is None else json.loads(scrub(to_json(document)))


def run_service(run_id: str, serve: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]]) -> dict[str, Any]:
    """The detached process: `serve(on_ready)` under the job's record and lock. `on_ready`
    takes the ready document (url, registry, ...); the summary `serve` returns, or the error
    it raises, is recorded as how the service ended, then returned or raised as usual."""
    with ServiceRecord(run_id) as record:
        try:
            summary = serve(record.ready)
        except AutoDLError as error:
            record.ended(error.to_dict(), failed=error.error_type is not ErrorType.INTERRUPTED)
            raise
        except (Interrupted, KeyboardInterrupt) as interruption:  # a signal before serving began
            record.ended(error_document(ErrorType.INTERRUPTED, "后台服务在就绪前被停止。",
                                        "需要时用 python3 scripts/jobs.py --resume ID 重新启动。",
                                        {"signal": getattr(interruption, "signal_name", "SIGINT")}))
            raise
        except Exception as bug:
            record.ended(error_document(ErrorType.INTERNAL_ERROR, "脚本内部错误。", f"看日志 {record.files.log}; 请把它反馈给维护者。",
                                        {"exception": f"{type(bug).__name__}: {bug}"}), failed=True)
            raise
        record.ended({"status": "success", **summary})
        return summary


def view(record: dict[str, Any], files: JobFiles) -> dict[str, Any]:
    alive = is_running(files)
    kind = record.get("kind", kind_of(files.job_id))
    shown = {"run_id": record.get("run_id", files.job_id), "kind": kind, "state": record.get("state"),
             "pid": record.get("pid") if alive else None, "alive": alive,
             "log_file": str(files.log), "state_file": str(files.state),
             "command": shlex.join(["python3", str(background.script_path(str(record.get("script")))), *record.get("argv", [])]),
             "done": record.get("state") in (STOPPED, FAILED)}
    for key in ("url", "registry", "metrics_url", "ready", "summary", "created_at_local", "started_at_local", "ended_at_local"):
        if record.get(key) is not None:
            shown[key] = record[key]
    if record.get("state") in (STARTING, RUNNING) and not alive:
        shown["hint"] = f"进程已不在运行 (崩溃、被杀或机器重启): python3 scripts/jobs.py --resume {files.job_id} 用同样的参数重新启动。"
    return shown


def view_of(run_id: str) -> dict[str, Any]:
    files = files_for(run_id)
    return view(read(files), files)


def all_views() -> list[dict[str, Any]]:
    views = []
    for pattern in ("gw-*.json", "w-*.json"):
        for path, record in background.records_in(services_dir(), pattern):
            views.append(view(record, JobFiles(path.stem, services_dir())) if record is not None else
                         {"run_id": path.stem, "kind": kind_of(path.stem), "state": "unreadable", "state_file": str(path)})
    return views


def stop(run_id: str, progress: Progress) -> dict[str, Any]:
    files = files_for(run_id)
    record = read(files)
    if not is_running(files):
        return {**view(record, files), "changed": False, "note": "进程已不在运行, 无需停止。"}
    # A gateway first lets in-flight requests finish (its --drain-seconds, in its ready
    # document), then writes its summary; the margin is for that and a loaded machine.
    timeout = READY_TIMEOUT_SECONDS + float((record.get("ready") or {}).get("drain_seconds") or 0)
    stopped = background.stop_process(files, record.get("pid"), timeout=timeout)
    progress.log(f"{WHAT[kind_of(run_id)]} {run_id} 已停止" if stopped else f"{run_id} 没有在 {timeout:g} 秒内停止")
    shown = view_of(run_id)
    if not stopped:
        shown["hint"] = f"它还在结束中 (等待进行中的请求); 稍后用 python3 scripts/jobs.py --status {run_id} 查看, 必要时 kill -9 {record.get('pid')}。"
    return {**shown, "changed": stopped}


def restart(run_id: str, progress: Progress) -> dict[str, Any]:
    files = files_for(run_id)
    record = read(files)
    if is_running(files):
        return {**view(record, files), "resumed": False, "note": "仍在运行, 不需要重新启动。"}
    return {**_spawn(files, progress), "resumed": True}
