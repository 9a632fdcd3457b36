"""Every kind of background work, followed from one place (scripts/jobs.py).

A job's id says its kind: `s-...` a submission (submission.py), `g-...` a guard
(guard.py), `gw-...` a detached gateway and `w-...` a detached registry watcher
(serving/detached.py). Each kind keeps its own record under the state directory; this module
only routes: list them all, show one, wait for one, cancel, resume, read its log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .core import background
from .core.errors import AutoDLError, ErrorType
from .core.output import Progress
from .core.state import state_root
from .deploy import submission
from .money import guard
from .serving import detached

KINDS = ("submit", "guard", "gateway", "watch")


def kind_of(run_id: str) -> str:
    if run_id.startswith("s-"):
        return "submit"
    if run_id.startswith("g-"):
        return "guard"
    if run_id.startswith("gw-"):
        return "gateway"
    if run_id.startswith("w-"):
        return "watch"
    raise AutoDLError(ErrorType.USAGE_ERROR, f"不是后台任务的 ID: {run_id!r}",
                      "ID 以 s- (提交)、g- (守护)、gw- (网关) 或 w- (服务发现) 开头; 用 jobs.py --list 查看全部。",
                      {"run_id": run_id})


def files_for(run_id: str) -> background.JobFiles:
    kind = kind_of(run_id)
    if kind == "submit":
        return submission.files_for(run_id)
    if kind == "guard":
        return guard.files_for(run_id)
    return detached.files_for(run_id)


def list_all(kind: str | None = None) -> list[dict[str, Any]]:
    """Every job on this machine (this state directory), oldest first within a kind."""
    views: list[dict[str, Any]] = []
    if kind in (None, "submit"):
        views += [submission.view(record, submission.files_for(str(record.get("run_id"))))
                  if record.get("state") != "unreadable" else record for record in submission.all_records()]
    if kind in (None, "guard"):
        views += [guard.guard_view(state) if state.get("status") != "unreadable" else {**state, "kind": "guard", "run_id": state.get("guard_id")}
                  for state in guard.all_states()]
    if kind in (None, "gateway", "watch"):
        views += [view for view in detached.all_views() if kind in (None, view.get("kind"))]
    return views


def status(run_id: str, client: Any, progress: Progress, wait_seconds: float = 0.0) -> dict[str, Any]:
    kind = kind_of(run_id)
    files = files_for(run_id)
    if kind == "submit":
        if wait_seconds:
            submission.wait_for_change(files, wait_seconds)
        return submission.status(files, client, progress)
    if kind == "guard":
        if wait_seconds:
            _wait_while_alive(files, wait_seconds, lambda: guard.read_state(files).get("status") in guard.FINAL_STATUSES)
        return guard.guard_view(guard.read_state(files), files)
    if wait_seconds:
        _wait_while_alive(files, wait_seconds, lambda: False)
    return detached.view_of(run_id)


def _wait_while_alive(files: background.JobFiles, seconds: float, ended: Any) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and background.is_running(files) and not ended():
        time.sleep(min(background.POLL_SECONDS * 4, max(0.0, deadline - time.monotonic())))


def cancel(run_id: str, client: Any, progress: Progress) -> dict[str, Any]:
    kind = kind_of(run_id)
    if kind == "submit":
        return submission.cancel(submission.files_for(run_id))
    if kind == "guard":
        return guard.cancel(run_id, progress, client)
    return detached.stop(run_id, progress)


def resume(run_id: str, client: Any, progress: Progress) -> dict[str, Any]:
    kind = kind_of(run_id)
    if kind == "submit":
        return submission.resume_detached(submission.files_for(run_id), client, progress)
    if kind == "guard":
        files = guard.files_for(run_id)
        state = guard.read_state(files)
        if state.get("host") and client is not None and state["host"] != client.host:
            raise AutoDLError(ErrorType.USAGE_ERROR, f"守护 {run_id} 是为 {state['host']} 创建的, 现在的 AUTODL_HOST 是 {client.host}。",
                              "守护只在它创建时的平台上运行: 把 AUTODL_HOST 改回去再 --resume。", {"run_id": run_id})
        if state.get("status") in guard.FINAL_STATUSES or background.is_running(files):
            return {**guard.guard_view(state, files), "resumed": False}
        return {**guard.detach(files, Path(background.script_path("guard_deployment.py")), progress), "resumed": True}
    return detached.restart(run_id, progress)


def logs(run_id: str, tail_chars: int) -> dict[str, Any]:
    files = files_for(run_id)
    if not files.state.exists():
        raise AutoDLError(ErrorType.NOT_FOUND, f"没有这个后台任务: {run_id}", "用 jobs.py --list 查看全部后台任务及其 ID。",
                          {"run_id": run_id, "state_dir": str(state_root())})
    text = background.log_tail(files, tail_chars)
    size = files.log.stat().st_size if files.log.exists() else 0
    return {"run_id": run_id, "kind": kind_of(run_id), "log_file": str(files.log), "log_bytes": size,
            "tail": text, "truncated": len(text.encode("utf-8")) < size}
