"""Lazy imports of the runtime dependencies, with a JSON error when one is missing."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from .errors import AutoDLError, ErrorType

SKILL_ROOT = Path(__file__).resolve().parents[2]

# Import name -> pip distribution name (they differ for python-dotenv).
_DISTRIBUTIONS = {"requests": "requests", "dotenv": "python-dotenv", "jsonschema": "jsonschema", "redis": "redis",
                  "aiohttp": "aiohttp", "prometheus_client": "prometheus-client"}
# Optional packages come from their own requirements file (scale-out: Redis).
_REQUIREMENTS = {"redis": "requirements-scaleout.txt"}


def require(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        distribution = _DISTRIBUTIONS.get(module_name, module_name)
        install = f"pip install -r {SKILL_ROOT / _REQUIREMENTS.get(module_name, 'requirements.txt')}"
        raise AutoDLError(
            ErrorType.DEPENDENCY_MISSING,
            f"缺少运行依赖: {distribution}",
            f"执行: {install}",
            {"missing": distribution, "install_command": install},
        ) from None
