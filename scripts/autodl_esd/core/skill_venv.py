"""The skill's own virtual environment and the one re-exec into it.

Where it is: `<SKILL_DIR>/.venv` when that exists; else, for a skill folder installed
read-only, the per-user `$XDG_DATA_HOME/autodl-elastic-deploy/venv` (XDG default
`~/.local/share`).

The README's first command creates the .venv (Debian/Ubuntu's system Python is externally
managed, PEP 668, and refuses `pip install`). A script started by another interpreter (a
bare `python` on PATH) that lacks a runtime package replaces itself, once, with the same
command under `<SKILL_DIR>/.venv/bin/python`; the environment variable AUTODL_ESD_REEXEC
marks the second run so it can never loop. Only os and sys are imported here: this runs
on every start, `--help` included.
"""

from __future__ import annotations

import os
import sys

SKILL_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VENV_DIR = os.path.join(SKILL_ROOT, ".venv")
REEXEC_MARKER = "AUTODL_ESD_REEXEC"
# The import names of requirements.txt's packages (a test keeps the two in step): a script
# started by an interpreter that lacks any of them re-executes, so a gateway started with a
# system python3 that has requests but not aiohttp still finds the .venv.
RUNTIME_MODULES = ("requests", "dotenv", "jsonschema", "aiohttp", "prometheus_client")
APP_DIR = "autodl-elastic-deploy"


def user_venv_dir() -> str:
    """The per-user venv for a read-only skill folder: $XDG_DATA_HOME (absolute, as the XDG
    spec requires) else ~/.local/share, then autodl-elastic-deploy/venv."""
    data = os.environ.get("XDG_DATA_HOME")
    if not (data and os.path.isabs(data)):
        data = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, APP_DIR, "venv")


def venv_dir() -> str:
    """The venv scripts run in: <SKILL_DIR>/.venv if it exists, else the per-user one."""
    return VENV_DIR if os.path.isdir(VENV_DIR) else user_venv_dir()


def venv_python(venv: str | None = None) -> str:
    venv = VENV_DIR if venv is None else venv  # looked up at call time (tests move it)
    return os.path.join(venv, "Scripts", "python.exe") if os.name == "nt" else os.path.join(venv, "bin", "python")


def running_in(venv: str) -> bool:
    try:
        return os.path.samefile(sys.prefix, venv)
    except OSError:
        return False


def missing_runtime_module() -> str | None:
    # Here, not at the top: needed only when a .venv exists and this is not it (~0.8 ms).
    import importlib.util

    for name in RUNTIME_MODULES:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def reexec_in_skill_venv() -> None:
    """Before anything runs: if a runtime package cannot be imported here and the skill's
    venv (venv_dir(): its .venv, else the per-user one) exists, replace this process with the same command under the .venv's python.

    Called once at the start of an entry script's command-line run (never for in-process
    calls). No loop: the re-executed process carries AUTODL_ESD_REEXEC and never re-executes;
    if the .venv lacks the package too, `deps.require` answers dependency_missing as usual.
    """
    venv = venv_dir()
    target = venv_python(venv)
    if os.environ.get(REEXEC_MARKER) or running_in(venv) or not os.path.exists(target):
        return
    if missing_runtime_module() is None:
        return
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    os.environ[REEXEC_MARKER] = "1"
    sys.stderr.flush()
    try:
        os.execv(target, [target, *argv[1:]])
    except OSError:
        del os.environ[REEXEC_MARKER]  # not runnable (e.g. a broken venv): report as usual
