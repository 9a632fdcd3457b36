"""Doc tests: the skill's front matter, its size, the shape of references/, links and
anchors, and the JSON shown in the docs."""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT
from helpers.docs import FENCE, agent_docs, all_docs, anchors, approx_tokens, links, read, without_code

# SKILL.md is read whole, in one tool call: the Agent Skills guidance is under 500 lines and
# about 5,000 tokens; tool outputs cut long files, so the bytes are bounded too (14 KiB).
SKILL_MAX_BYTES = 14 * 1024
SKILL_MAX_TOKENS = 5_000
# A reference file is opened for one topic; past ~10,000 tokens it is cut like SKILL.md was.
REFERENCE_MAX_TOKENS = 10_000
# The README is for people: a newcomer reads it top to bottom.
README_MAX_TOKENS = 6_000
# Every agent-facing doc together (doc_weight.py's measure), so moving text does not grow it.
AGENT_DOCS_MAX_TOKENS = 60_000


def front_matter(text: str) -> dict[str, str]:
    assert text.startswith("---\n"), "SKILL.md must open with YAML front matter"
    block = text.split("---\n", 2)[1]
    fields = {}
    for line in block.strip().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


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


def test_skill_md_fits_one_read():
    text = read("SKILL.md")
    assert len(text.encode("utf-8")) <= SKILL_MAX_BYTES, f"SKILL.md is {len(text.encode())} bytes; move detail to references/"
    assert approx_tokens(text) <= SKILL_MAX_TOKENS
    assert len(text.splitlines()) < 500


def test_the_readme_and_the_agent_docs_stay_within_budget():
    assert approx_tokens(read("README.md")) <= README_MAX_TOKENS
    total = sum(approx_tokens(read(name)) for name in agent_docs() + [f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")])
    assert total <= AGENT_DOCS_MAX_TOKENS, f"agent-facing docs are ~{total} tokens"


def test_references_are_one_level_deep():
    entries = list((ROOT / "references").iterdir())
    assert entries and all(entry.is_file() and entry.suffix == ".md" for entry in entries), entries


@pytest.mark.parametrize("name", [n for n in all_docs() if n.startswith(("references/", "docs/")) or n in {"README.md", "bench/README.md"}])
def test_long_files_open_with_a_table_of_contents_and_references_stay_small(name):
    text = read(name)
    if len(text.splitlines()) > 100:
        head = "\n".join(text.splitlines()[:40])
        assert re.search(r"^## (目录|Contents)$", head, re.M), f"{name}: over 100 lines and no table of contents near the top"
    if name.startswith("references/"):
        assert approx_tokens(text) <= REFERENCE_MAX_TOKENS, f"{name}: ~{approx_tokens(text)} tokens; split it"


def test_a_file_without_a_table_of_contents_would_be_caught():
    long_text = "# t\n\n" + "line\n" * 120
    assert not re.search(r"^## (目录|Contents)$", "\n".join(long_text.splitlines()[:40]), re.M)


def test_skill_md_points_at_every_reference_file():
    linked = {path.name for path, _ in links("SKILL.md") if path.parent == ROOT / "references"}
    assert linked == {path.name for path in (ROOT / "references").glob("*.md")}


@pytest.mark.parametrize("name", all_docs())
def test_relative_links_and_anchors_resolve_with_exact_case(name):
    for path, fragment in links(name):
        # exact case, even on case-insensitive file systems
        assert path.exists() and path.name in {p.name for p in path.parent.iterdir()}, f"{name}: broken link {path}"
        if fragment and path.suffix == ".md":
            assert fragment in anchors(path.read_text(encoding="utf-8")), f"{name}: no heading for #{fragment} in {path.name}"


def test_every_doc_path_the_code_names_exists():
    """Hints and help texts send users to docs by path: those files must exist."""
    named = set()
    for path in [ROOT / "queue_submit.py", *(ROOT / "scripts").rglob("*.py")]:
        named |= set(re.findall(r"(?<![\w./-])((?:references/|docs/|bench/)?[\w-]+\.md)\b", path.read_text(encoding="utf-8")))
    assert named
    for name in named:
        assert (ROOT / name).is_file(), f"the code names {name}, which does not exist"


def json_blocks(name: str) -> list[object]:
    blocks = []
    for language, body in FENCE.findall(read(name)):
        if language == "json":
            try:
                blocks.append(json.loads(body))
            except json.JSONDecodeError as error:
                pytest.fail(f"{name}: a ```json block does not parse: {error}\n{body[:200]}")
    return blocks


@pytest.mark.parametrize("name", agent_docs())
def test_every_json_block_is_a_valid_config_or_output(name, result_validator):
    from autodl_esd.platform.config import validate_config

    for block in json_blocks(name):
        if isinstance(block, dict) and "container_template" in block:
            assert validate_config(block) == [], f"{name}: example config does not validate: {block.get('name')}"
        elif isinstance(block, dict) and block.get("status") in {"success", "error"}:
            result_validator.validate(block)


def test_every_example_config_file_validates():
    from autodl_esd.platform.config import validate_config

    files = sorted((ROOT / "examples").glob("*.json"))
    assert len(files) >= 4
    for path in files:
        assert validate_config(json.loads(path.read_text(encoding="utf-8"))) == [], path.name


def test_every_example_config_is_shown_in_the_examples():
    text = read("references/examples.md")
    for path in (ROOT / "examples").glob("*.json"):
        assert f"examples/{path.name}" in text, f"references/examples.md does not show {path.name}"


def test_the_python_client_snippet_in_the_examples_runs(sim, run, tmp_path, monkeypatch, capsys):
    sim()
    code, submitted, _ = run("queue_submit.py", str(ROOT / "examples" / "replicaset-service.json"),
                             "--wait-running", "--interval", "0.05", "--quiet")
    assert code == 0, submitted
    code, registry, _ = run("discover_services.py", "--deployment-uuid", submitted["deployment_uuid"], "--quiet")
    assert code == 0, registry
    monkeypatch.chdir(tmp_path)
    (tmp_path / "registry.json").write_text(json.dumps(registry), encoding="utf-8")

    # The client snippet (the watcher recipe also imports service_pool; tests/docs/test_examples.py runs it).
    [snippet] = [body for language, body in FENCE.findall(read("references/examples.md"))
                 if language == "python" and "service_pool" in body and "discover_services.py" not in body]
    exec(compile(snippet.replace("/path/to/autodl-elastic-deploy/scripts", str(ROOT / "scripts")), "examples.md", "exec"), {})

    printed = capsys.readouterr().out
    assert "没有可用副本" not in printed and "'completed': 1" in printed


def test_without_code_drops_fenced_blocks():
    assert "## inside" not in without_code("a\n```bash\n## inside\n```\nb\n")


def test_the_readme_leads_a_newcomer_through():
    """Set-up commands first, then contents, what it is, the six-step walkthrough, configuration,
    layout and where to read more, in that order."""
    text = read("README.md")
    headings = re.findall(r"^## (.+)$", without_code(text), re.M)
    assert headings == ["Contents", "What it is", "Serve an LLM in 6 commands", "Configuration", "Layout", "Where to read more"]
    before_contents = text[:text.index("## Contents")]
    assert before_contents.count("```bash") == 2, "the two set-up commands come first"
    walkthrough = text[text.index("## Serve an LLM in 6 commands"):text.index("## Configuration")]
    assert re.findall(r"^\*\*(\d)\. ", walkthrough, re.M) == ["1", "2", "3", "4", "5", "6"]
    for script in ("autodl_sim.py", "queue_submit.py", "serve_gateway.py", "cost_report.py", "delete_deployment.py"):
        assert script in walkthrough
