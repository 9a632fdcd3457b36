"""Imports flow one way: the import-linter contract in `.importlinter` holds.

The contract states the layers of autodl_esd (jobs | mcp > serving > deploy > money >
platform > core), no cycles between sibling modules at any depth, and that the simulator
and autodl_esd stay apart (only core.sandbox embeds it, for --sim). A failure prints
lint-imports' own report: which import breaks which rule, and a cycle's edges.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SCRIPTS

CONFIG = ROOT / ".importlinter"
# Building the graph of ~80 modules takes a second or two; slack for a loaded CI machine.
LINT_TIMEOUT_SECONDS = 120


def lint_imports_command() -> list[str] | None:
    """lint-imports beside this interpreter (the venv's), else on PATH; None when absent."""
    beside = Path(sys.executable).with_name("lint-imports")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("lint-imports")
    return [found] if found else None


def test_the_import_contract_is_kept():
    command = lint_imports_command()
    if command is None:
        message = "import-linter is not installed (pip install -r requirements-dev.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; in CI the contract must be checked")
        pytest.skip(message)
    # The root packages live in scripts/; no cache directory is written into the repo.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run([*command, "--no-cache", "--no-logo", str(CONFIG)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=LINT_TIMEOUT_SECONDS)
    if done.returncode != 0:
        pytest.fail(f"lint-imports: imports break the contract in {CONFIG.name}:\n{done.stdout}{done.stderr}", pytrace=False)


def test_only_core_sandbox_imports_the_simulator_and_only_on_demand():
    """What the contract cannot say: the one allowed import of the simulator sits inside a
    function, so importing core.sandbox (or anything above it) never loads the simulator."""
    found = []
    for path in sorted((SCRIPTS / "autodl_esd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(inner) for function in functions for inner in ast.walk(function)}
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(name == "simulator" or name.startswith("simulator.") for name in names):
                found.append((path.relative_to(SCRIPTS).as_posix(), id(node) in nested))
    assert found and all(where == "autodl_esd/core/sandbox.py" and in_function for where, in_function in found), found
