"""`--help` imports nothing heavy: the deterministic side of bench/startup.py.

Timing is the bench's job (the machine is shared); this test checks the cause instead. Each
entry script's `--help` runs with `-X importtime`; beyond what a bare interpreter running
argparse's own help loads, none of the modules below may appear. Each costs about as much
as a bare interpreter start in a fresh venv, so one of them alone breaks the 2.5x target.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT

HEAVY = {
    "typing", "dataclasses", "inspect", "json", "pathlib", "traceback", "datetime", "shutil",
    "urllib.parse", "ipaddress", "threading", "random", "requests", "jsonschema", "dotenv",
}
# Entry scripts whose --help still pulls something heavy, and why (a known gap, reported).
KNOWN_SLOW_HELP: dict = {}


def entry_scripts() -> list:
    candidates = [ROOT / "queue_submit.py", *sorted((ROOT / "scripts").glob("*.py"))]
    return [path for path in candidates if "def build_parser" in path.read_text(encoding="utf-8")]


def imported_modules(*argv: str) -> set[str]:
    completed = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True,
                               text=True, timeout=60, env={"PATH": "", "COLUMNS": "100", "PYTHONNOUSERSITE": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in completed.stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture(scope="module")
def baseline() -> set[str]:
    return imported_modules("-c", "import argparse, signal, math; argparse.ArgumentParser(prog='x').format_help()")


@pytest.mark.parametrize("script", entry_scripts(), ids=lambda path: path.name)
def test_help_imports_nothing_heavy(script, baseline):
    if script.name in KNOWN_SLOW_HELP:
        pytest.xfail(KNOWN_SLOW_HELP[script.name])
    heavy = (imported_modules(str(script.relative_to(ROOT)), "--help") - baseline) & HEAVY
    assert not heavy, f"{script.name} --help imports {sorted(heavy)}"
