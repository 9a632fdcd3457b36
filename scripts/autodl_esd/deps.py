"""Lazy imports of the runtime dependencies, the skill's own virtual environment, and a
JSON error with an install command that works where the interpreter is when one is missing.

The skill installs into a virtual environment at its root, `<SKILL_DIR>/.venv` (the README's
first command creates it): on Debian/Ubuntu the system Python is "externally managed"
(PEP 668) and refuses `pip install`. A script started by another interpreter (a bare
`python` on PATH) that lacks a dependency re-executes itself once under
`<SKILL_DIR>/.venv/bin/python` when that exists (`reexec_in_skill_venv`); the environment
variable AUTODL_ESD_REEXEC marks the second run so it can never loop.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

from .errors import AutoDLError, ErrorType

SKILL_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = SKILL_ROOT / ".venv"
REQUIREMENTS = SKILL_ROOT / "requirements.txt"
REEXEC_MARKER = "AUTODL_ESD_REEXEC"

# Import name -> pip distribution name (they differ for python-dotenv).
_DISTRIBUTIONS = {"requests": "requests", "dotenv": "python-dotenv", "jsonschema": "jsonschema", "redis": "redis",
                  "aiohttp": "aiohttp", "prometheus_client": "prometheus-client"}
# Optional packages come from their own requirements file (scale-out: Redis).
_REQUIREMENTS = {"redis": "requirements-scaleout.txt"}
# What every script needs (requirements.txt); only these decide a re-exec under .venv.
_CORE_MODULES = ("requests", "dotenv", "jsonschema")


def venv_python(venv: Path | None = None) -> Path:
    venv = VENV_DIR if venv is None else venv  # looked up at call time (tests move it)
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _in_a_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _running_in(venv: Path) -> bool:
    try:
        return Path(sys.prefix).resolve() == venv.resolve()
    except OSError:
        return False


def _stdlib_dir() -> Path:
    import sysconfig

    return Path(sysconfig.get_path("stdlib"))


def is_externally_managed() -> bool:
    """PEP 668: the distribution marks its Python with EXTERNALLY-MANAGED; pip refuses it."""
    return not _in_a_virtualenv() and (_stdlib_dir() / "EXTERNALLY-MANAGED").is_file()


def _has_pip() -> bool:
    import importlib.util

    return importlib.util.find_spec("pip") is not None


def install_command(requirements_file: Path | None = None) -> str:
    """One command line that installs a requirements file (default: the runtime one)."""
    import shlex

    requirements = shlex.quote(str(REQUIREMENTS if requirements_file is None else requirements_file))
    skill_python = shlex.quote(str(venv_python()))
    if _running_in(VENV_DIR) or venv_python().exists():
        return f"{skill_python} -m pip install -r {requirements}"
    if is_externally_managed() or not _has_pip():
        # pip would refuse (PEP 668) or is absent: give the skill its own environment.
        return f"{shlex.quote(sys.executable)} -m venv {shlex.quote(str(VENV_DIR))} && {skill_python} -m pip install -r {requirements}"
    return f"{shlex.quote(sys.executable)} -m pip install -r {requirements}"


def require(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        distribution = _DISTRIBUTIONS.get(module_name, module_name)
        extra = _REQUIREMENTS.get(module_name)
        command = install_command(SKILL_ROOT / extra if extra else None)
        venv_note = f" 之后用 {venv_python()} 运行脚本 (用别的 python 运行时脚本也会自动切换到它)。"
        raise AutoDLError(
            ErrorType.DEPENDENCY_MISSING,
            f"缺少运行依赖: {distribution} (当前解释器 {sys.executable})",
            f"执行: {command}" + (venv_note if str(VENV_DIR) in command else ""),
            {
                "missing": distribution,
                "install_command": command,
                "python": sys.executable,
                "externally_managed": is_externally_managed(),
                "skill_venv": str(VENV_DIR),
            },
        ) from None


def _missing_runtime_module() -> str | None:
    import importlib.util

    for name in _CORE_MODULES:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def reexec_in_skill_venv() -> None:
    """Before anything runs: if a runtime dependency cannot be imported here and the skill's
    .venv exists, replace this process with the same command under the .venv's python.

    Called once at the start of an entry script's command-line run (never for in-process
    calls). No loop: the re-executed process carries AUTODL_ESD_REEXEC and never re-executes;
    if the .venv lacks the package too, `require` answers dependency_missing as usual.
    """
    target = venv_python()
    if os.environ.get(REEXEC_MARKER) or _running_in(VENV_DIR) or not target.exists():
        return
    if _missing_runtime_module() is None:
        return
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    os.environ[REEXEC_MARKER] = "1"
    sys.stderr.flush()
    try:
        os.execv(str(target), [str(target), *argv[1:]])
    except OSError:
        del os.environ[REEXEC_MARKER]  # not runnable (e.g. a broken venv): report as usual
