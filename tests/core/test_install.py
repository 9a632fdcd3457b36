"""Fresh-machine install: the README's commands, the skill's .venv, dependency_missing advice.

The slow test copies the bundle to an empty directory, runs the README's first command
exactly as written (a fresh `.venv` built from nothing, pip installing requirements.txt,
the simulator demo), then starts a script with an interpreter that lacks the packages and
checks it re-executes under the `.venv`. When this machine has a Debian system Python
(externally managed, PEP 668, without the packages) that interpreter is the one used, and
the advice of its `dependency_missing` answer is executed as given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autodl_esd.core import deps, skill_venv
from autodl_esd.core.errors import AutoDLError, ErrorType
from helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
README_COMMANDS = re.findall(r"```bash\n(.+?)\n```", README)[:2]
DEMO_COMMAND, TEST_COMMAND = README_COMMANDS
# Building a venv and installing three packages takes ~10 s here; PyPI may be slow in CI.
INSTALL_TIMEOUT_SECONDS = 600
SYSTEM_PYTHON = Path("/usr/bin/python3")


# --- the advice ------------------------------------------------------------------------------

@pytest.fixture
def skill_root(tmp_path, monkeypatch):
    """A skill root with no .venv, and a stdlib directory whose marker the test controls."""
    monkeypatch.setattr(deps, "VENV_DIR", tmp_path / "skill" / ".venv")
    monkeypatch.setattr(deps, "REQUIREMENTS", tmp_path / "skill" / "requirements.txt")
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    monkeypatch.setattr(deps, "_stdlib_dir", lambda: stdlib)
    monkeypatch.setattr(deps, "_in_a_virtualenv", lambda: False)
    monkeypatch.setattr(deps, "_running_in", lambda venv: False)
    return tmp_path


def _advice() -> dict:
    with pytest.raises(AutoDLError) as caught:
        deps.require("autodl_esd_no_such_package")
    assert caught.value.error_type is ErrorType.DEPENDENCY_MISSING
    return caught.value.to_dict()


def test_externally_managed_interpreter_is_told_to_make_the_skill_venv(skill_root):
    (skill_root / "stdlib" / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n", encoding="utf-8")
    document = _advice()
    command = document["details"]["install_command"]
    venv = skill_root / "skill" / ".venv"
    assert document["details"]["externally_managed"] is True
    assert command == (f"{sys.executable} -m venv {venv} && {venv}/bin/python -m pip install -r "
                       f"{skill_root / 'skill' / 'requirements.txt'}")
    assert command in document["hint"] and f"{venv}/bin/python" in document["hint"]


def test_plain_interpreter_with_pip_is_told_to_pip_install(skill_root):
    document = _advice()
    assert document["details"]["externally_managed"] is False
    assert document["details"]["install_command"] == f"{sys.executable} -m pip install -r {skill_root / 'skill' / 'requirements.txt'}"


def test_interpreter_without_pip_is_told_to_make_the_skill_venv(skill_root, monkeypatch):
    monkeypatch.setattr(deps, "_has_pip", lambda: False)
    assert " -m venv " in _advice()["details"]["install_command"]


def test_an_existing_skill_venv_is_where_packages_go(skill_root):
    (skill_root / "stdlib" / "EXTERNALLY-MANAGED").write_text("", encoding="utf-8")
    python = skill_root / "skill" / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("", encoding="utf-8")
    assert _advice()["details"]["install_command"].startswith(f"{python} -m pip install -r ")


def test_reexec_needs_a_command_line_a_venv_and_no_marker(skill_root, monkeypatch):
    calls = []
    venv = skill_root / "skill" / ".venv"
    monkeypatch.setattr(skill_venv, "VENV_DIR", str(venv))
    monkeypatch.setattr(skill_venv, "running_in", lambda venv: False)
    monkeypatch.setattr(os, "execv", lambda *args: calls.append(args))
    monkeypatch.setattr(skill_venv, "missing_runtime_module", lambda: "requests")
    monkeypatch.delenv(skill_venv.REEXEC_MARKER, raising=False)
    skill_venv.reexec_in_skill_venv()
    assert calls == []  # no .venv yet
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("", encoding="utf-8")
    skill_venv.reexec_in_skill_venv()
    assert calls and calls[0][0] == str(python) and calls[0][1][0] == str(python)
    assert os.environ[skill_venv.REEXEC_MARKER] == "1"
    skill_venv.reexec_in_skill_venv()  # the re-executed process never re-executes again
    assert len(calls) == 1


def test_nothing_missing_means_no_reexec(skill_root, monkeypatch):
    venv = skill_root / "skill" / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("", encoding="utf-8")
    monkeypatch.setattr(skill_venv, "VENV_DIR", str(venv))
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("re-executed with every package present"))
    monkeypatch.delenv(skill_venv.REEXEC_MARKER, raising=False)
    skill_venv.reexec_in_skill_venv()


def test_the_reexec_checks_every_required_package_of_requirements_txt():
    """A gateway started by a python3 that has requests but not aiohttp must switch too."""
    import_names = {distribution.lower(): module for module, distribution in deps._DISTRIBUTIONS.items()}
    required = set()
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or ";" in line:  # a platform-marked line is optional (uvloop)
            continue
        distribution = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
        required.add(import_names.get(distribution, distribution))
    assert required == set(skill_venv.RUNTIME_MODULES)


def test_a_missing_gateway_package_decides_the_reexec(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client" else real_find_spec(name, *a))
    assert skill_venv.missing_runtime_module() == "prometheus_client"


def test_in_process_runs_never_reexec(run, monkeypatch):
    from autodl_esd.core import cli

    monkeypatch.setattr(cli, "reexec_in_skill_venv", lambda: pytest.fail("re-executed an in-process call"))
    assert run("validate_config.py", str(ROOT / "examples" / "replicaset-service.json"))[0] == 0


def test_readme_opens_with_two_pasteable_venv_commands():
    for command in README_COMMANDS:
        assert "\n" not in command and command.startswith("python3 -m venv .venv && .venv/bin/python -m pip install -r ")
    assert DEMO_COMMAND.endswith("queue_submit.py examples/replicaset-service.json --sim --sim-busy 3 --wait-running")
    assert TEST_COMMAND.endswith(".venv/bin/python -m pytest -q -n 4 --dist loadfile")  # parallel, a file per worker
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for step in TEST_COMMAND.split(" && "):
        assert step in ci.replace("--quiet --disable-pip-version-check ", "")


def test_pep723_metadata_lists_the_runtime_requirements():
    header = (ROOT / "queue_submit.py").read_text(encoding="utf-8").split('"""')[0]
    block = re.search(r"# /// script\n(.*?)# ///", header, re.S).group(1)
    listed = json.loads(re.search(r"dependencies = (\[.*\])", block).group(1))
    required = [line.strip() for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    # queue_submit needs the core three (the gateway's aiohttp is for serve_gateway.py only).
    assert set(listed) <= set(required)
    assert {entry.split(">=")[0] for entry in listed} == {"requests", "python-dotenv", "jsonschema"}


# --- the real thing ----------------------------------------------------------------------------

def _externally_managed_without_packages(python: Path) -> bool:
    if not python.is_file():
        return False
    probe = ("import sys, sysconfig, pathlib, importlib.util as u;"
             "m = (pathlib.Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED').is_file();"
             "sys.exit(0 if m and u.find_spec('requests') is None and u.find_spec('ensurepip') else 1)")
    return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=30).returncode == 0


def _copy_bundle(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "*.pyc", ".env", "registry*.json")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def _run(argv, cwd: Path, timeout: float = 120, shell: bool = False) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AUTODL_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=shell)


@pytest.mark.slow
def test_fresh_install_runs_the_readme_demo(tmp_path):
    bundle = _copy_bundle(tmp_path / "skill")
    system = SYSTEM_PYTHON if _externally_managed_without_packages(SYSTEM_PYTHON) else None
    base = str(system or sys.executable)
    demo = ["queue_submit.py", "examples/replicaset-service.json", "--sim", "--sim-busy", "1", "--wait-running", "--quiet"]

    if system:
        # A stock Debian python: the script answers dependency_missing, and its advice works.
        first = _run([base, *demo], bundle)
        document = json.loads(first.stdout)
        assert (first.returncode, document["error_type"]) == (1, "dependency_missing"), first.stdout
        assert document["details"]["externally_managed"] is True
        install = _run(document["details"]["install_command"], bundle, INSTALL_TIMEOUT_SECONDS, shell=True)
        assert install.returncode == 0, install.stderr[-2000:]

    # The README's first command, as written, with `python3` being the interpreter at hand.
    command = DEMO_COMMAND.replace("python3 -m venv", f"{base} -m venv", 1)
    completed = _run(command, bundle, INSTALL_TIMEOUT_SECONDS, shell=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout[completed.stdout.index("{"):])  # pip may print first
    assert result["status"] == "success" and result["simulated"] is True and result["deployment_uuid"]
    assert (bundle / ".venv" / "bin" / "python").exists()

    # An interpreter without the packages (the system one, or a bare venv) re-executes
    # under the skill's .venv.
    if system is None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
        base = str(tmp_path / "bare" / "bin" / "python")
    rerun = _run([base, *demo], bundle)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-2000:]
    assert json.loads(rerun.stdout)["status"] == "success"

    # The marker stops a second re-exec: with it set, the same interpreter reports the gap.
    looped = subprocess.run([base, "scripts/validate_config.py", "examples/replicaset-service.json"], cwd=bundle,
                            env={"PATH": os.environ.get("PATH", ""), skill_venv.REEXEC_MARKER: "1"},
                            capture_output=True, text=True, timeout=60)
    answer = json.loads(looped.stdout)
    assert (looped.returncode, answer["error_type"]) == (1, "dependency_missing")
    assert answer["details"]["install_command"].startswith(f"{bundle / '.venv' / 'bin' / 'python'} -m pip install")
