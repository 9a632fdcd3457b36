"""Background work that outlives the command that started it: guards, submits, gateways, watchers.

Each piece of background work is a *job* with four files under the state directory
(`<state root>/<kind's folder>/<job_id>.*`):

- `.json`   its record (written atomically; the one source of truth about the job),
- `.lock`   an exclusive flock held by the process running it, for as long as it runs:
            "alive" means some process holds it, so a crash or kill -9 frees it at once,
- `.log`    the running process's stdout and stderr,
- `.cancel` a marker asking the job to end (read by the job before its next step).

`spawn` starts a job's process in its own session (it survives the agent's command, its
terminal and its Ctrl-C) and waits until the process proves it runs by taking the lock.
Nothing secret is ever written to these files.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .deps import SKILL_ROOT
from .errors import AutoDLError, ErrorType, mark_change_sent
from .clock import now_timestamp
from .state import make_state_dir, write_json_atomically

# A Python start-up takes well under a second; ten leave room for a loaded machine.
START_TIMEOUT_SECONDS = 10.0
# How often a waiting parent re-reads the record: short enough to return promptly.
POLL_SECONDS = 0.05
# A job asked to end gets this long to finish its current step and write its record.
STOP_TIMEOUT_SECONDS = 10.0
# What `log_tail` shows of a log: enough lines to see why a job ended.
LOG_TAIL_CHARS = 2000


def local_now() -> str:
    """This machine's time (records label it `*_local`), on the +08:00 face every stamp of
    ours uses, so it compares at a glance with the platform's timestamps and progress lines."""
    return now_timestamp()


@dataclass
class JobFiles:
    """Where one job's record, lock, log and cancel marker live."""

    job_id: str
    directory: Path

    @property
    def state(self) -> Path:
        return self.directory / f"{self.job_id}.json"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.job_id}.lock"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.job_id}.log"

    @property
    def cancel(self) -> Path:
        return self.directory / f"{self.job_id}.cancel"

    def cancel_requested(self) -> bool:
        return self.cancel.exists()

    def request_cancel(self) -> None:
        make_state_dir(self.directory)
        self.cancel.write_text(local_now(), encoding="utf-8")


class JobLock:
    """An exclusive flock held for as long as a job's process runs."""

    def __init__(self, files: JobFiles) -> None:
        self.files = files
        self._fd: int | None = None

    def acquire(self) -> bool:
        make_state_dir(self.files.directory)
        fd = os.open(self.files.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_running(files: JobFiles) -> bool:
    """Whether some process holds the job's lock right now."""
    if not files.lock.exists():
        return False
    probe = JobLock(files)
    if probe.acquire():
        probe.release()
        return False
    return True


def write_record(files: JobFiles, record: dict[str, Any]) -> None:
    write_json_atomically(files.state, record)


def read_record(files: JobFiles, what: str, list_command: str) -> dict[str, Any]:
    """The job's record; not_found / config_error (with the fix) when it cannot be read."""
    try:
        return json.loads(files.state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutoDLError(ErrorType.NOT_FOUND, f"没有这个{what}: {files.job_id}",
                          f"用 {list_command} 查看全部{what}及其 ID。",
                          {"run_id": files.job_id, "state_dir": str(files.directory)}) from None
    except (OSError, ValueError) as error:  # ValueError: bad JSON or not UTF-8
        raise AutoDLError(ErrorType.CONFIG_ERROR, f"{what}的状态文件无法读取: {files.state} ({error})",
                          "文件可能被手工改坏; 删除它 (以及同名的 .lock/.log) 后重新创建。",
                          {"path": str(files.state)}) from None


def records_in(directory: Path, pattern: str) -> list[tuple[Path, dict[str, Any] | None]]:
    """(path, record) for every record in `directory` matching `pattern`, by name; None for
    one that cannot be read, so the caller lists it as unreadable rather than hiding it."""
    if not directory.is_dir():
        return []
    records: list[tuple[Path, dict[str, Any] | None]] = []
    for path in sorted(directory.glob(pattern)):
        try:
            records.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):  # bad JSON or not UTF-8
            records.append((path, None))
    return records


def log_tail(files: JobFiles, chars: int = LOG_TAIL_CHARS) -> str:
    if not files.log.exists():
        return ""
    with open(files.log, "rb") as log:
        log.seek(0, os.SEEK_END)
        size = log.tell()
        log.seek(max(0, size - chars * 4))  # UTF-8: at most 4 bytes a character
        return log.read().decode("utf-8", errors="replace")[-chars:]


def spawn(files: JobFiles, argv: Sequence[str], started: Callable[[dict[str, Any]], bool],
          what: str, timeout: float = START_TIMEOUT_SECONDS) -> tuple[dict[str, Any], int]:
    """Start `python argv...` detached, logging to the job's log; wait until `started(record)`
    holds while the child runs (or the child ended and left a final record).

    Returns (the record then, the child's pid). internal_error with the log's tail when the
    process neither started nor left a record saying why.
    """
    make_state_dir(files.directory)
    mark_change_sent()  # the child may change things whatever this process reports next
    with open(files.log, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(SKILL_ROOT),
            start_new_session=True,  # survives the agent's terminal and its Ctrl-C
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = child.poll() is not None
        try:
            record = json.loads(files.state.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # bad JSON or not UTF-8
            record = {}
        if record.get("pid") == child.pid and started(record):
            return record, child.pid
        if exited:
            if record.get("pid") == child.pid:  # it ran and ended at once (e.g. a limit already reached)
                return record, child.pid
            break
        time.sleep(POLL_SECONDS)
    raise AutoDLError(ErrorType.INTERNAL_ERROR, f"后台{what}没有启动起来: {files.job_id}",
                      f"看日志 {files.log}。", {"run_id": files.job_id, "log_tail": log_tail(files),
                                              "exit_code": child.poll(), "log_file": str(files.log)})


def stop_process(files: JobFiles, pid: Any, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """SIGTERM the process holding the job's lock; True when it let go of the lock in time."""
    if not is_running(files):
        return True
    if pid:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + timeout
    while is_running(files) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return not is_running(files)


def pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def script_path(name: str) -> str:
    """An entry script's path in scripts/ (what a detached job runs)."""
    return str(SKILL_ROOT / "scripts" / name)
