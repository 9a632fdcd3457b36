"""Markers of queue_submit runs waiting for stock, so a second run of the same name says so.

An impatient agent starts the same `queue_submit.py` again in another shell while the first
still waits for GPU stock. Nothing is bought twice either way (the name check right before
every create stays the only rule for that), but the second run should say at once that
another run already waits. So each waiting run leaves a marker:

    <state_root>/queue_waiting/<sha256(host, name)[:16]>/<pid>-<random>.json

holding its pid and start time, and keeps an exclusive flock on it for as long as it waits.
A marker whose lock nobody holds belongs to a run that is gone (killed, crashed): it is
ignored, and removed once it is old enough not to be one still being written. Markers are
advisory only: a failure to write or read one never changes what the run does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from ..core.state import state_root

WAITING_DIR = "queue_waiting"
# A marker is created and locked in one step; one unlocked for this long is not being
# written right now but left by a run that died, and may be removed.
STALE_AFTER_SECONDS = 10.0


def marker_dir(host: str, name: str) -> Path:
    key = hashlib.sha256(f"{host}\0{name}".encode("utf-8")).hexdigest()[:16]
    return state_root() / WAITING_DIR / key


def _held(path: Path) -> bool:
    """Whether a live process holds the marker's lock (an open of our own counts too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops a shared lock just taken
    return False


def live_waiters(host: str, name: str, exclude: Path | None = None) -> list[dict[str, Any]]:
    """Other runs waiting for this host + name right now, oldest first."""
    directory = marker_dir(host, name)
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    found = []
    for path in paths:
        if exclude is not None and path == exclude:
            continue
        if not _held(path):
            _remove_if_stale(path)
            continue
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written this instant; the next look sees it
        if isinstance(marker, dict) and marker.get("host") == host and marker.get("name") == name:
            found.append(marker)
    return sorted(found, key=lambda m: m.get("started_epoch") or 0)


def _remove_if_stale(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > STALE_AFTER_SECONDS:
            path.unlink()
    except OSError:
        pass


@contextmanager
def waiting_marker(host: str, name: str, deployment_type: str | None) -> Iterator[Path | None]:
    """Hold a marker for this run while the block runs; None when it cannot be written."""
    directory = marker_dir(host, name)
    path = directory / f"{os.getpid()}-{secrets.token_hex(4)}.json"
    fd: int | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = datetime.now().astimezone().replace(microsecond=0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started_at": now.isoformat(), "started_epoch": time.time(),
                                 "host": host, "name": name, "deployment_type": deployment_type},
                                ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except OSError:
        if fd is not None:
            os.close(fd)
            _unlink(path)
        fd = None
    try:
        yield path if fd is not None else None
    finally:
        if fd is not None:
            _unlink(path)  # before closing: nobody sees it unlocked
            os.close(fd)
            try:
                directory.rmdir()  # one folder per name would pile up; kept while others wait
            except OSError:
                pass


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def describe(waiter: dict[str, Any]) -> str:
    """`另一个 queue_submit (pid N, 自 T 起)`, as the messages say it."""
    started = str(waiter.get("started_at") or "?")
    waited = waiter.get("started_epoch")
    since = f", 已等 {time.time() - waited:.0f} 秒" if isinstance(waited, (int, float)) else ""
    return f"另一个 queue_submit (pid {waiter.get('pid')}, 自 {started} 起{since})"


def warning_for(waiters: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The `warnings` entry when other runs already wait for this name."""
    first = waiters[0]
    more = f" (共 {len(waiters)} 个)" if len(waiters) > 1 else ""
    return {
        "code": "another_run_waiting", "path": "name",
        "message": f"{describe(first)}{more}正在等待同名部署 {name} 的库存; 不要重复提交: 它拿到库存就会创建, "
                   "本次若也等到, 创建前的同名检查会让本次返回 deployment_exists (两次几乎同时创建时, 结果的 duplicates 指出多出的那个)。",
        "hint": f"等那个运行的结果 (它的终端或日志); 不想再等就结束它: kill {first.get('pid')}。"
                "要第二个同名部署才加 --allow-duplicate-name。",
        "waiting_runs": [{key: w.get(key) for key in ("pid", "started_at", "deployment_type")} for w in waiters],
    }
