"""Every command the docs tell an agent to run is accepted by that script's parser, and runs
as written on a stock Debian/Ubuntu.

Commands are taken from every doc (fenced shell blocks and inline code) and from each
script's own `--help` examples; `<SKILL_DIR>/` prefixes are stripped and placeholders such
as `<UUID>` are fine as strings. Only the parser runs: no network, no side effects. Docs and
scripts therefore cannot drift apart. A stock Debian/Ubuntu has no `python` (only
`python3`) and refuses `pip install` into its own interpreter (PEP 668), so no doc may say
either: the interpreters are `python3` and a venv's `bin/python`, and every install line
goes through the skill's `.venv`.
"""

from __future__ import annotations

import re
import shlex

import pytest

from helpers import ROOT, load_script
from helpers.docs import FENCE, SHELL_LANGUAGES, all_docs

DOCS = all_docs()
INLINE = re.compile(r"`([^`\n]+)`")
# `python [<SKILL_DIR>/]queue_submit.py ...` or `python [<SKILL_DIR>/]scripts/name.py ...`
# (`python app.py` inside a container's cmd is not ours and does not match.)
COMMAND = re.compile(r"\bpython3?\s+(?:<SKILL_DIR>/)?((?:scripts/[A-Za-z_]\w*|queue_submit)\.py)\b(.*)")
SCRIPT_NAME = re.compile(r"\bscripts/[A-Za-z_]\w*\.py\b")
# `python` as a word of its own: not `python3`, not a path's last part (`.venv/bin/python`),
# not part of a name (`python-dotenv`, `bare_python`).
BARE_PYTHON = re.compile(r"(?<![\w/.-])python(?![\w.-])")
# pip run by a venv's interpreter is the one safe install; any other pip install is not.
PIP_INSTALL = re.compile(r"(\S*)\s+-m\s+pip\s+install\b|\bpip3?\s+install\b")
VENV_PYTHON = re.compile(r"\S*/bin/python3?$")


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def command_lines(text: str) -> list[str]:
    """Lines of shell blocks, then inline code spans outside any block."""
    lines = [line for language, body in FENCE.findall(text) if language in SHELL_LANGUAGES for line in body.splitlines()]
    lines += INLINE.findall(FENCE.sub("", text))
    return lines


def doc_commands() -> list[tuple[str, str, str]]:
    """(doc, script path relative to the root, argument text) for every documented command."""
    found = []
    for doc in DOCS:
        for line in command_lines(read(doc)):
            match = COMMAND.search(line)
            if match:
                found.append((doc, match.group(1), match.group(2)))
    return found


def help_examples() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted([ROOT / "queue_submit.py", *(ROOT / "scripts").glob("*.py")]):
        if "def build_parser" not in path.read_text(encoding="utf-8"):
            continue  # a library module (e.g. service_pool.py), not an entry script
        for line in getattr(load_script(path), "EXAMPLES", []):
            match = COMMAND.search(line)
            assert match, f"{path.name}: --help example is not a python command: {line}"
            found.append((f"{path.name} --help", match.group(1), match.group(2)))
    return found


def parse(script: str, arguments: str) -> None:
    path = ROOT / script
    assert path.is_file(), f"no such script: {script}"
    argv = shlex.split(arguments, comments=True)
    if "--help" in argv or "-h" in argv:
        return  # prints help and exits; nothing to check
    load_script(path).build_parser().parse_args(argv)


def test_the_docs_show_commands_for_every_ops_script():
    documented = {script for _, script, _ in doc_commands()}
    for name in ["list_images", "gpu_stock", "list_deployments", "list_containers", "container_events", "set_replicas",
                 "stop_container", "stop_deployment", "delete_deployment", "blacklist_host", "list_blacklist"]:
        assert f"scripts/{name}.py" in documented, f"no documented command runs scripts/{name}.py"


@pytest.mark.parametrize(("doc", "script", "arguments"), doc_commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_documented_command_is_accepted_by_its_parser(doc, script, arguments):
    parse(script, arguments)


@pytest.mark.parametrize(("doc", "script", "arguments"), help_examples())
def test_help_example_is_accepted_by_its_parser(doc, script, arguments):
    parse(script, arguments)


def test_help_examples_and_suggested_commands_name_python3():
    """`--help` examples and the commands scripts print (`details.check`, `move_commands`, ...)
    are run as written, so they say python3 too (a container's cmd is the platform's business)."""
    offenders = []
    for path in [ROOT / "queue_submit.py", *(ROOT / "scripts").rglob("*.py")]:
        if path.name == "lint.py" or "simulator" in path.parts:
            continue  # advice about a container's cmd; the simulator's reading of one
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(?<![\w/.-])python (?:scripts/|queue_submit\.py|\{script)", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_script_named_in_the_docs_exists(doc):
    for name in set(SCRIPT_NAME.findall(read(doc))):
        assert (ROOT / name).is_file(), f"{doc} names {name}, which does not exist"
    assert (ROOT / "queue_submit.py").is_file()


def bare_python_lines(text: str) -> list[str]:
    """Lines that name a bare `python` (fence markers such as ```python are not text)."""
    return [line for line in text.splitlines() if not line.startswith("```") and BARE_PYTHON.search(line)]


def system_pip_lines(text: str) -> list[str]:
    """Lines that install with pip other than through a venv's `bin/python -m pip`."""
    found = []
    for line in text.splitlines():
        for match in PIP_INSTALL.finditer(line):
            if not (match.group(1) and VENV_PYTHON.search(match.group(1))):
                found.append(line)
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_no_doc_names_a_bare_python(doc):
    assert bare_python_lines(read(doc)) == [], f"{doc}: use python3 or <SKILL_DIR>/.venv/bin/python"


def test_no_script_builds_a_command_with_a_bare_python():
    """Commands the scripts print (feed_command, a job's command, an MCP preview's would_run)
    are pasted as they are: a bare `python` may be Python 2 or missing (Debian has python3)."""
    import ast

    found = []
    for path in [ROOT / "queue_submit.py", *sorted((ROOT / "scripts").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            parts = []
            if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
                parts = [node.elts[0]]  # an argv: its first word
            elif isinstance(node, ast.JoinedStr) and node.values:
                parts = [node.values[0]]  # an f-string command line: its first word
            for part in parts:
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and \
                        (part.value == "python" or part.value.startswith("python ")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"use python3 (or the skill's .venv/bin/python): {found}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_install_line_uses_the_venv(doc):
    assert system_pip_lines(read(doc)) == [], f"{doc}: install with <SKILL_DIR>/.venv/bin/python -m pip install (PEP 668)"


@pytest.mark.parametrize("line", [
    "python scripts/doctor.py", "`python app.py &`", "AUTODL_HOST=x python queue_submit.py c.json", "用 python 运行"])
def test_a_bare_python_would_be_caught(line):
    assert bare_python_lines(line) == [line]


@pytest.mark.parametrize("line", [
    "python3 scripts/doctor.py", "<SKILL_DIR>/.venv/bin/python queue_submit.py", "/root/miniconda3/bin/python app.py",
    "```python", "python-dotenv", "`bare_python` 警告", "Python 3.10+"])
def test_interpreters_that_exist_pass(line):
    assert bare_python_lines(line) == []


@pytest.mark.parametrize("line", [
    "python3 -m pip install -r requirements-mcp.txt", "pip install -r requirements.txt", "sudo pip3 install redis",
    "python -m pip install x"])
def test_a_system_pip_install_would_be_caught(line):
    assert system_pip_lines(line) == [line]


@pytest.mark.parametrize("line", [
    "<SKILL_DIR>/.venv/bin/python -m pip install -r <SKILL_DIR>/requirements.txt",
    "python3 -m venv .venv && .venv/bin/python -m pip install -r requirements-dev.txt"])
def test_a_venv_install_passes(line):
    assert system_pip_lines(line) == []


def test_a_drifted_command_would_be_caught():
    """The check is real: an unknown flag fails the parser."""
    from autodl_esd.core.errors import AutoDLError

    with pytest.raises(AutoDLError):
        parse("scripts/list_containers.py", "--name x --no-such-flag")
