"""Long-running services started with --detach: a gateway (`gw-...`) or a registry watcher (`w-...`).

The detached process is the same script run with the same arguments minus `--detach`, plus
`--job-id ID`: it takes the job's lock, writes its record (`state: starting`, then
`running` with its ready document: url, registry, pid) and, when it ends, `stopped` with
its final summary. The parent returns the ready record. `jobs.py --cancel` stops it with
SIGTERM (the service drains and writes its summary); `--resume` starts it again with the
arguments kept in the record.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from . import background
from .background import JobFiles, JobLock, is_running, local_now
from .errors import AutoDLError, ErrorType
from .output import Progress
from .state import state_root

STARTING, RUNNING, STOPPED, FAILED = "starting", "running", "stopped", "failed"
PREFIXES = {"gateway": "gw", "watch": "w"}
WHAT = {"gateway": "网关", "watch": "服务发现"}
# A gateway or watcher is ready once its first registry read and its listening socket are
# up; on a loaded machine that can take several seconds more than a bare start.
READY_TIMEOUT_SECONDS = 30.0


def services_dir() -> Path:
    return state_root() / "services"


def files_for(run_id: str) -> JobFiles:
    return JobFiles(run_id, services_dir())


def kind_of(run_id: str) -> str:
    return "gateway" if run_id.startswith("gw-") else "watch"


def new_run_id(kind: str) -> str:
    return f"{PREFIXES[kind]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def read(files: JobFiles) -> dict[str, Any]:
    return background.read_record(files, "后台服务", "python3 scripts/jobs.py --list")


def start_detached(kind: str, script: str, argv: Sequence[str], progress: Progress) -> dict[str, Any]:
    """Run `script argv... --job-id ID` in the background; return its record once it is ready."""
    files = files_for(new_run_id(kind))
    args = [arg for arg in argv if arg != "--detach"]
    background.write_record(files, {"run_id": files.job_id, "kind": kind, "state": STARTING, "pid": None,
                                    "script": script, "argv": args, "created_at_local": local_now(),
                                    "log_file": str(files.log), "state_file": str(files.state)})
    return _spawn(files, progress)


def _spawn(files: JobFiles, progress: Progress) -> dict[str, Any]:
    record = read(files)
    kind = record.get("kind", kind_of(files.job_id))
    ready, pid = background.spawn(files, [background.script_path(record["script"]), *record["argv"], "--job-id", files.job_id],
                                  lambda r: r.get("state") in (RUNNING, STOPPED, FAILED), WHAT[kind],
                                  timeout=READY_TIMEOUT_SECONDS)
    if ready.get("state") != RUNNING:
        raise AutoDLError(ErrorType.INTERNAL_ERROR, f"后台{WHAT[kind]}启动后立即结束: {files.job_id}",
                          f"看日志 {files.log} 或 details.summary; 去掉 --detach 在前台运行可直接看到原因。",
                          {**view(ready, files), "log_tail": background.log_tail(files)})
    progress.log(f"{WHAT[kind]} {files.job_id} 已在后台运行 (pid {pid}), 日志: {files.log}; 停止: python3 scripts/jobs.py --cancel {files.job_id}")
    return view(read(files), files)


class ServiceRecord:
    """The detached process's side: hold the lock, say when ready, say how it ended."""

    def __init__(self, run_id: str) -> None:
        self.files = files_for(run_id)
        self.lock = JobLock(self.files)

    def __enter__(self) -> ServiceRecord:
        if not self.lock.acquire():
            raise AutoDLError(ErrorType.USAGE_ERROR, f"后台服务 {self.files.job_id} 已经在运行。",
                              "用 python3 scripts/jobs.py --status ID 查看。", {"run_id": self.files.job_id})
        self._save(pid=os.getpid(), state=STARTING)
        return self

    def ready(self, document: dict[str, Any]) -> None:
        self._save(state=RUNNING, ready=document, started_at_local=local_now(),
                   **{key: document[key] for key in ("url", "registry", "metrics_url") if key in document})

    def ended(self, summary: dict[str, Any] | None, failed: bool = False) -> None:
        self._save(state=FAILED if failed else STOPPED, pid=None, summary=summary, ended_at_local=local_now())

    def __exit__(self, *_exc: Any) -> None:
        record = read(self.files)
        if record.get("state") in (STARTING, RUNNING):  # ended without saying how (a bug or a signal)
            self._save(state=STOPPED, pid=None, ended_at_local=local_now())
        self.lock.release()

    def _save(self, **changes: Any) -> None:
        record = read(self.files)
        record.update(changes, updated_at_local=local_now())
        background.write_record(self.files, record)


def view(record: dict[str, Any], files: JobFiles) -> dict[str, Any]:
    alive = is_running(files)
    kind = record.get("kind", kind_of(files.job_id))
    shown = {"run_id": record.get("run_id", files.job_id), "kind": kind, "state": record.get("state"),
             "pid": record.get("pid") if alive else None, "alive": alive,
             "log_file": str(files.log), "state_file": str(files.state),
             "command": " ".join(["python3", f"scripts/{record.get('script')}", *record.get("argv", [])])}
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
            views.append(view(record, files_for(path.stem)) if record is not None else
                         {"run_id": path.stem, "kind": kind_of(path.stem), "state": "unreadable", "state_file": str(path)})
    return views


def stop(run_id: str, progress: Progress) -> dict[str, Any]:
    files = files_for(run_id)
    record = read(files)
    if not is_running(files):
        return {**view(record, files), "changed": False, "note": "进程已不在运行, 无需停止。"}
    stopped = background.stop_process(files, record.get("pid"), timeout=READY_TIMEOUT_SECONDS)
    progress.log(f"{WHAT[kind_of(run_id)]} {run_id} 已停止" if stopped else f"{run_id} 没有在 {READY_TIMEOUT_SECONDS:g} 秒内停止")
    return {**view_of(run_id), "changed": stopped}


def restart(run_id: str, progress: Progress) -> dict[str, Any]:
    files = files_for(run_id)
    record = read(files)
    if is_running(files):
        return {**view(record, files), "resumed": False, "note": "仍在运行, 不需要重新启动。"}
    return {**_spawn(files, progress), "resumed": True}
