"""Container state machine and how a start command decides a container's lifetime.

Statuses follow the private docs' order:
creating -> created -> starting -> oss_merged -> running -> shutting_down -> shutdown.
Every phase lasts a fixed number of simulated seconds; `running` lasts as long as the
command does (see `plan_run`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CREATING, CREATED, STARTING, OSS_MERGED = "creating", "created", "starting", "oss_merged"
RUNNING, SHUTTING_DOWN, SHUTDOWN = "running", "shutting_down", "shutdown"

STARTUP_PHASES = (CREATING, CREATED, STARTING, OSS_MERGED)
# Statuses in which a container holds its GPUs (everything but the final one).
LIVE_STATUSES = (*STARTUP_PHASES, RUNNING, SHUTTING_DOWN)
ALL_STATUSES = (*LIVE_STATUSES, SHUTDOWN)

# Simulated seconds per phase. Pulling the image dominates a real start, so `creating` is
# the long one; a reused container already has the image and skips most of it.
PHASE_SECONDS = {
    CREATING: 20.0,
    CREATED: 2.0,
    STARTING: 5.0,
    OSS_MERGED: 2.0,
    SHUTTING_DOWN: 3.0,
}
REUSED_CREATING_SECONDS = 3.0

# Containers on a faulty machine die this many simulated seconds after reaching `running`
# (drawn uniformly), early enough for failure analysis to spot the pattern.
FAULTY_CRASH_AFTER_SECONDS = (5.0, 15.0)
# Exit code of a crash we inject (faulty host, crash_container default): a plain failure.
CRASH_EXIT_CODE = 1

_NEXT_PHASE = {CREATING: CREATED, CREATED: STARTING, STARTING: OSS_MERGED, OSS_MERGED: RUNNING}

# The last command of a chain, e.g. "cd /root && sleep 100" -> "sleep 100".
_LAST_COMMAND = re.compile(r"(?:^|&&|\|\||;)\s*([^;&|]*?)\s*$")
_SLEEP = re.compile(r"^sleep\s+(infinity|inf|\d+(?:\.\d+)?)$")
_EXIT = re.compile(r"^exit\s+(\d+)$")
# Commands that serve until stopped (web servers, model servers).
_SERVICE_HINTS = re.compile(
    r"app\.py|\bserve\b|server|uvicorn|gunicorn|http\.server|--port\b|flask\s+run|streamlit|gradio"
)


@dataclass(frozen=True)
class RunPlan:
    """How long the command runs (simulated seconds, None = until stopped) and its exit code."""

    seconds: float | None
    exit_code: int


def next_phase(status: str) -> str:
    """The status that follows a start-up phase."""
    return _NEXT_PHASE[status]


def plan_run(cmd: str, keeps_running_by_default: bool, default_seconds: float) -> RunPlan:
    """Interpret a start command the way the platform's container lifetime rules imply.

    The container lives exactly as long as its command: `sleep N` runs N seconds,
    `sleep infinity` and anything that looks like a service run until stopped, `exit K` /
    `false` fail at once, and a command left in the background (`python app.py &`) ends
    immediately because its parent shell returns. Anything else runs `default_seconds`, or
    until stopped when `keeps_running_by_default` (ReplicaSet replicas are services).
    """
    text = cmd.strip()
    if text.endswith("&") and not text.endswith("&&"):
        return RunPlan(0.0, 0)
    last = _LAST_COMMAND.search(text)
    last_command = last.group(1) if last else text
    sleep = _SLEEP.match(last_command)
    if sleep:
        value = sleep.group(1)
        return RunPlan(None if value.startswith("inf") else float(value), 0)
    exit_match = _EXIT.match(last_command)
    if exit_match:
        return RunPlan(0.0, int(exit_match.group(1)))
    if last_command in ("false", "true"):
        return RunPlan(0.0, 1 if last_command == "false" else 0)
    if _SERVICE_HINTS.search(text) or keeps_running_by_default:
        return RunPlan(None, 0)
    return RunPlan(default_seconds, 0)
