"""Doc tests: the skill's front matter, links, anchors, and the JSON shown in the docs."""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT

DOCS = ["SKILL.md", "README.md", "api-reference.md", "examples.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def without_code(text: str) -> str:
    return FENCE.sub("", text)


def front_matter(text: str) -> dict[str, str]:
    assert text.startswith("---\n"), "SKILL.md must open with YAML front matter"
    block = text.split("---\n", 2)[1]
    fields = {}
    for line in block.strip().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lowercase, punctuation dropped (CJK kept), spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in without_code(text).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def test_front_matter_follows_the_agent_skills_rules():
    fields = front_matter(read("SKILL.md"))
    assert set(fields) == {"name", "description"}
    assert fields["name"] == "autodl-elastic-deploy"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", fields["name"]) and len(fields["name"]) <= 64
    description = fields["description"]
    assert 0 < len(description) <= 1024
    assert "<" not in description and ">" not in description
    assert "Use when" in description
    for trigger in ("AutoDL", "弹性部署", "GPU", "排队", "副本"):
        assert trigger in description


def test_skill_md_is_a_short_router():
    assert len(read("SKILL.md").splitlines()) < 500


@pytest.mark.parametrize("name", ["api-reference.md", "examples.md"])
def test_long_reference_files_open_with_a_table_of_contents(name):
    text = read(name)
    if len(text.splitlines()) > 100:
        assert "目录" in "\n".join(text.splitlines()[:30])


@pytest.mark.parametrize("name", DOCS)
def test_relative_links_and_anchors_resolve_with_exact_case(name):
    text = read(name)
    for target in LINK.findall(without_code(text)):
        if re.match(r"[a-z]+:", target):
            continue  # absolute URL
        path_part, _, fragment = target.partition("#")
        if path_part:
            path = (ROOT / name).parent / path_part
            # exact case, even on case-insensitive file systems
            assert path.exists() and path.name in {p.name for p in path.parent.iterdir()}, f"{name}: broken link {target}"
        else:
            path = ROOT / name
        if fragment and path.suffix == ".md":
            assert fragment in anchors(path.read_text(encoding="utf-8")), f"{name}: no heading for #{fragment}"


def json_blocks(name: str) -> list[object]:
    blocks = []
    for language, body in FENCE.findall(read(name)):
        if language == "json":
            try:
                blocks.append(json.loads(body))
            except json.JSONDecodeError as error:
                pytest.fail(f"{name}: a ```json block does not parse: {error}\n{body[:200]}")
    return blocks


@pytest.mark.parametrize("name", ["SKILL.md", "examples.md"])
def test_every_json_block_is_a_valid_config_or_output(name, result_validator):
    from autodl_esd.platform.config import validate_config

    registry_keys = {"deployment_uuid", "generated_at", "services"}
    for block in json_blocks(name):
        if isinstance(block, dict) and "container_template" in block:
            assert validate_config(block) == [], f"{name}: example config does not validate: {block.get('name')}"
        elif isinstance(block, dict) and "status" in block and not registry_keys <= set(block):
            if set(block) == {"status", "url", "token"}:
                continue  # the simulator's ready line
            result_validator.validate(block)


def test_every_example_config_file_validates():
    from autodl_esd.platform.config import validate_config

    files = sorted((ROOT / "examples").glob("*.json"))
    assert len(files) >= 4
    for path in files:
        assert validate_config(json.loads(path.read_text(encoding="utf-8"))) == [], path.name


def test_every_example_config_is_shown_in_examples_md():
    text = read("examples.md")
    for path in (ROOT / "examples").glob("*.json"):
        assert f"examples/{path.name}" in text, f"examples.md does not show {path.name}"


def test_the_python_client_snippet_in_examples_md_runs(sim, run, tmp_path, monkeypatch, capsys):
    sim()
    code, submitted, _ = run("queue_submit.py", str(ROOT / "examples" / "replicaset-service.json"),
                             "--wait-running", "--interval", "0.05", "--quiet")
    assert code == 0, submitted
    code, registry, _ = run("discover_services.py", "--deployment-uuid", submitted["deployment_uuid"], "--quiet")
    assert code == 0, registry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "registry.json").write_text(json.dumps(registry), encoding="utf-8")

    # The client snippet (the watcher recipe also imports service_pool; tests/docs/test_examples.py runs it).
    [snippet] = [body for language, body in FENCE.findall(read("examples.md"))
                 if language == "python" and "service_pool" in body and "discover_services.py" not in body]
    exec(compile(snippet.replace("/path/to/autodl-elastic-deploy/scripts", str(ROOT / "scripts")), "examples.md", "exec"), {})

    printed = capsys.readouterr().out
    assert "没有可用副本" not in printed and "'completed': 1" in printed
