"""Container state machine and how a start command decides a container's lifetime.

Statuses follow the private docs' order:
creating -> created -> starting -> oss_merged -> running -> shutting_down -> shutdown.
Every phase lasts a fixed number of simulated seconds; `running` lasts as long as the
command does (see `plan_run`).
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from typing import Any

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

# `sleep` operands: a number with an optional unit (GNU sleep sums several operands).
_SLEEP_OPERAND = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_SLEEP_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_FOREVER = ("infinity", "inf")
_EXIT = re.compile(r"^\d+$")
# Shells whose `-c SCRIPT` is read as the command itself (bash -c "sleep 120", sh -lc '...').
_SHELLS = ("bash", "sh", "dash", "zsh")
# Chain operators in a command line; a newline separates commands like `;`.
_SEPARATORS = ("&&", "||", ";", "&")
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


# Cached: every replica of a deployment enters `running` with the same command, and parsing
# it was most of the cost of that transition at 10,000 replicas (issue 22).
@functools.lru_cache(maxsize=1024)
def plan_run(cmd: str, keeps_running_by_default: bool, default_seconds: float) -> RunPlan:
    """Interpret a start command the way the platform's container lifetime rules imply.

    The container lives exactly as long as its command. The command line is read as a shell
    chain (`;`, `&&`, `||`, newlines, `|` pipelines, `&`) and walked in order; a
    `bash|sh [-l] -c "SCRIPT"` step is read the same way (its `exit` ends only that shell).
    Recognized steps:

    - `sleep N` (seconds, or with a unit: `30s`, `2m`, `1h`, `1d`; several operands add up)
      takes N simulated seconds; `sleep infinity` runs until stopped;
    - `exit K` ends the container there with exit code K; `false` fails (1), `true` succeeds;
    - `a && b` runs b only if a succeeded, `a || b` only if it failed; a command put in the
      background (`python app.py & ...`) takes no time and the shell goes on.

    Every other command (`python train.py`, `cd`, `echo`) succeeds and takes no simulated
    time. So `python x.py && sleep 120`, `sleep 120; echo done` and `bash -c "sleep 120"` all
    run 120 s, and `sleep 10; exit 3` fails with 3 after 10 s. A command line with none of
    the recognized steps ends at once when it ends in `&` (the parent shell returns), else
    runs `default_seconds`, or until stopped when it looks like a service or when
    `keeps_running_by_default` (ReplicaSet replicas are services).
    """
    steps = _chain(cmd)
    if steps is not None:
        walk = _walk(steps)
        if walk.forever:
            return RunPlan(None, 0)
        if walk.recognized:
            return RunPlan(walk.seconds, walk.status)
        if steps and steps[-1][0] == BACKGROUND:
            return RunPlan(0.0, 0)
    if _SERVICE_HINTS.search(cmd) or keeps_running_by_default:
        return RunPlan(None, 0)
    return RunPlan(default_seconds, 0)


BACKGROUND = "&"


@dataclass
class _Walk:
    seconds: float = 0.0
    status: int = 0
    recognized: bool = False
    forever: bool = False
    exited: bool = False


def _walk(steps: list[tuple[str, list[list[str]]]]) -> _Walk:
    """Run a chain in simulated time: how long it takes, its exit status, what was recognized."""
    walk = _Walk()
    for operator, pipeline in steps:
        if (operator == "&&" and walk.status != 0) or (operator == "||" and walk.status == 0):
            continue
        if operator == BACKGROUND:  # started in the background: no time, status 0
            walk.status = 0
            continue
        longest, status = 0.0, 0
        for words in pipeline:  # a pipeline lasts as long as its longest member; status of the last
            inner = _shell_script(words)
            nested = _chain(inner) if inner is not None else None
            if nested is not None:
                sub = _walk(nested)
                if sub.forever:
                    walk.forever = walk.recognized = True
                    return walk
                walk.recognized = walk.recognized or sub.recognized
                longest, status = max(longest, sub.seconds), sub.status
                continue
            kind, value = _step(words)
            if kind == "forever":
                walk.forever = walk.recognized = True
                return walk
            if kind != "other":
                walk.recognized = True
            if kind == "sleep":
                longest, status = max(longest, value), 0
            elif kind == "exit":
                status = walk.status if value is None else value
                if len(pipeline) == 1:  # `exit` ends this shell (in a pipeline, only its subshell)
                    walk.status, walk.exited = status, True
                    return walk
            else:
                status = value
        walk.seconds += longest
        walk.status = status
    return walk


def _chain(cmd: str) -> list[tuple[str, list[list[str]]]] | None:
    """[(operator before it, pipeline as a list of commands' words)]; the operator BACKGROUND
    marks a pipeline put in the background. None when the line does not parse."""
    lexer = shlex.shlex(cmd.replace("\n", " ; "), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes
        return None
    steps: list[tuple[str, list[list[str]]]] = []
    operator, pipeline, words = ";", [], []
    for token in tokens + [";"]:
        if token not in _SEPARATORS and token != "|":
            words.append(token)
            continue
        if words:
            pipeline.append(words)
            words = []
        if token == "|":
            continue
        if pipeline:
            steps.append((BACKGROUND if token == "&" else operator, pipeline))
        operator, pipeline = (";" if token == "&" else token), []
    return steps


def _shell_script(words: list[str]) -> str | None:
    """SCRIPT of `bash|sh [options] -c SCRIPT`, else None."""
    if not words or words[0].rsplit("/", 1)[-1] not in _SHELLS:
        return None
    for index, word in enumerate(words[1:-1], start=1):
        if not word.startswith("-") or word.startswith("--"):
            return None
        if "c" in word[1:]:
            return words[index + 1]
    return None


def _step(words: list[str]) -> tuple[str, Any]:
    """("sleep", seconds) | ("forever", None) | ("exit", code or None) | ("status", code) | ("other", 0)."""
    name, operands = words[0], words[1:]
    if name == "sleep" and operands:
        if any(operand in _FOREVER for operand in operands):
            return ("forever", None)
        total = 0.0
        for operand in operands:
            match = _SLEEP_OPERAND.match(operand)
            if match is None:
                return ("other", 0)  # not a sleep we can read: like any other command
            total += float(match.group(1)) * _SLEEP_UNITS[match.group(2)]
        return ("sleep", total)
    if name == "exit" and len(operands) <= 1 and all(_EXIT.match(o) for o in operands):
        return ("exit", int(operands[0]) % 256 if operands else None)
    if name in ("true", ":") and not operands:
        return ("status", 0)
    if name == "false" and not operands:
        return ("status", 1)
    return ("other", 0)
