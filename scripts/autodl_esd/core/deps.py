"""Lazy imports of the runtime dependencies, the skill's own virtual environment, and a
JSON error with an install command that works where the interpreter is when one is missing.

The skill installs into a virtual environment at its root, `<SKILL_DIR>/.venv` (the README's
first command creates it): on Debian/Ubuntu the system Python is "externally managed"
(PEP 668) and refuses `pip install`. The re-exec into that .venv lives in `skill_venv`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

from . import skill_venv
from .errors import AutoDLError, ErrorType

SKILL_ROOT = Path(__file__).resolve().parents[3]
VENV_DIR = Path(skill_venv.VENV_DIR)
REQUIREMENTS = SKILL_ROOT / "requirements.txt"

# Import name -> pip distribution name (they differ for python-dotenv).
_DISTRIBUTIONS = {"requests": "requests", "dotenv": "python-dotenv", "jsonschema": "jsonschema", "redis": "redis",
                  "aiohttp": "aiohttp", "prometheus_client": "prometheus-client"}
# Optional packages come from their own requirements file (scale-out: Redis; the MCP server).
_REQUIREMENTS = {"redis": "requirements-scaleout.txt", "mcp": "requirements-mcp.txt", "anyio": "requirements-mcp.txt"}


def venv_python(venv: Path | None = None) -> Path:
    return Path(skill_venv.venv_python(str(VENV_DIR if venv is None else venv)))


def _in_a_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _running_in(venv: Path) -> bool:
    return skill_venv.running_in(str(venv))


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_path("stdlib"))


def is_externally_managed() -> bool:
    """PEP 668: the distribution marks its Python with EXTERNALLY-MANAGED; pip refuses it."""
    return not _in_a_virtualenv() and (_stdlib_dir() / "EXTERNALLY-MANAGED").is_file()


def _has_pip() -> bool:
    return importlib.util.find_spec("pip") is not None


def _skill_root_writable() -> bool:
    return os.access(SKILL_ROOT, os.W_OK)


def target_venv() -> Path:
    """Where packages go: the skill's .venv if it exists; else an existing per-user venv;
    else the .venv when the skill folder is writable, the per-user venv when it is not
    (skill_venv.reexec_in_skill_venv finds either)."""
    if VENV_DIR.is_dir():
        return VENV_DIR
    user = Path(skill_venv.user_venv_dir())
    if venv_python(user).exists() or not _skill_root_writable():
        return user
    return VENV_DIR


def install_command(requirements_file: Path | None = None) -> str:
    """One command line that installs a requirements file (default: the runtime one)."""
    requirements = shlex.quote(str(REQUIREMENTS if requirements_file is None else requirements_file))
    venv = target_venv()
    skill_python = shlex.quote(str(venv_python(venv)))
    if _running_in(venv) or venv_python(venv).exists():
        return f"{skill_python} -m pip install -r {requirements}"
    if is_externally_managed() or not _has_pip():
        # pip would refuse (PEP 668) or is absent: give the skill its own environment.
        return f"{shlex.quote(sys.executable)} -m venv {shlex.quote(str(venv))} && {skill_python} -m pip install -r {requirements}"
    return f"{shlex.quote(sys.executable)} -m pip install -r {requirements}"


def require(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        distribution = _DISTRIBUTIONS.get(module_name, module_name)
        extra = _REQUIREMENTS.get(module_name)
        command = install_command(SKILL_ROOT / extra if extra else None)
        venv = target_venv()
        venv_note = f" 之后用 {venv_python(venv)} 运行脚本 (用别的 python 运行时脚本也会自动切换到它)。"
        raise AutoDLError(
            ErrorType.DEPENDENCY_MISSING,
            f"缺少运行依赖: {distribution} (当前解释器 {sys.executable})",
            f"执行: {command}" + (venv_note if str(venv) in command else ""),
            {
                "missing": distribution,
                "install_command": command,
                "python": sys.executable,
                "externally_managed": is_externally_managed(),
                "skill_venv": str(venv),
            },
        ) from None
