"""Every command the docs tell an agent to run is accepted by that script's parser.

Commands are taken from SKILL.md and examples.md (fenced shell blocks and inline code), and
from each script's own `--help` examples; `<SKILL_DIR>/` prefixes are stripped and
placeholders such as `<UUID>` are fine as strings. Only the parser runs: no network, no
side effects. Docs and scripts therefore cannot drift apart.
"""

from __future__ import annotations

import re
import shlex

import pytest

from helpers import ROOT, load_script

DOCS = ["SKILL.md", "examples.md"]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+)`")
# `python [<SKILL_DIR>/]queue_submit.py ...` or `python [<SKILL_DIR>/]scripts/name.py ...`
# (`python app.py` inside a container's cmd is not ours and does not match.)
COMMAND = re.compile(r"\bpython3?\s+(?:<SKILL_DIR>/)?((?:scripts/[A-Za-z_]\w*|queue_submit)\.py)\b(.*)")
SCRIPT_NAME = re.compile(r"\bscripts/[A-Za-z_]\w*\.py\b")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


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


@pytest.mark.parametrize("doc", DOCS)
def test_every_script_named_in_the_docs_exists(doc):
    for name in set(SCRIPT_NAME.findall(read(doc))):
        assert (ROOT / name).is_file(), f"{doc} names {name}, which does not exist"
    assert (ROOT / "queue_submit.py").is_file()


def test_a_drifted_command_would_be_caught():
    """The check is real: an unknown flag fails the parser."""
    from autodl_esd.core.errors import AutoDLError

    with pytest.raises(AutoDLError):
        parse("scripts/list_containers.py", "--name x --no-such-flag")
