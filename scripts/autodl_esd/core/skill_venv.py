"""The skill's own virtual environment, `<SKILL_DIR>/.venv`, and the one re-exec into it.

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
# What every script needs (requirements.txt); only these decide a re-exec.
CORE_MODULES = ("requests", "dotenv", "jsonschema")


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

    for name in CORE_MODULES:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def reexec_in_skill_venv() -> None:
    """Before anything runs: if a runtime package cannot be imported here and the skill's
    .venv exists, replace this process with the same command under the .venv's python.

    Called once at the start of an entry script's command-line run (never for in-process
    calls). No loop: the re-executed process carries AUTODL_ESD_REEXEC and never re-executes;
    if the .venv lacks the package too, `deps.require` answers dependency_missing as usual.
    """
    target = venv_python()
    if os.environ.get(REEXEC_MARKER) or running_in(VENV_DIR) or not os.path.exists(target):
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
