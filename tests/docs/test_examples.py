"""The examples teach what the code does: the shipped configs follow SKILL.md's own advice
(an agent copies them), the registry-watcher recipe runs as printed against the simulator,
and every captured output the examples point at (tests/fixtures/docs/) is valid against its
schema, carries the fields the examples name, and quotes the price basis as the code does."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT
from helpers.docs import all_docs, links, read


def example_configs():
    """Every deployment config: the files in examples/ and the JSON blocks of examples.md."""
    found = [(path.name, json.loads(path.read_text(encoding="utf-8"))) for path in sorted((ROOT / "examples").glob("*.json"))]
    text = (ROOT / "references" / "examples.md").read_text(encoding="utf-8")
    for number, block in enumerate(re.findall(r"```json\n(.*?)```", text, re.S)):
        try:
            document = json.loads(block)
        except ValueError:
            continue
        for config in _configs_in(document):
            found.append((f"references/examples.md block {number}", config))
    return found


def _configs_in(document):
    if isinstance(document, dict):
        if "deployment_type" in document and "container_template" in document:
            yield document
        for value in document.values():
            yield from _configs_in(value)
    elif isinstance(document, list):
        for value in document:
            yield from _configs_in(value)


CONFIGS = example_configs()


def test_there_are_configs_to_check():
    assert any(c["deployment_type"] == "Job" for _, c in CONFIGS)
    assert any(c["deployment_type"] == "ReplicaSet" for _, c in CONFIGS)


@pytest.mark.parametrize("where, config", [(w, c) for w, c in CONFIGS if c["deployment_type"] == "Job"])
def test_a_job_does_not_reuse_old_output_and_records_its_exit_status(where, config):
    cmd = config["container_template"].get("cmd", "")
    if "sleep" in cmd:  # a debug/hold-open job, no program result to record
        return
    assert config.get("reuse_container") is not True or "rm " in cmd, where
    assert "$?" in cmd and "autodl-fs" in cmd, (where, cmd)


@pytest.mark.parametrize("where, config", [(w, c) for w, c in CONFIGS if c["deployment_type"] == "ReplicaSet"])
def test_a_service_listens_on_all_interfaces(where, config):
    cmd = config["container_template"].get("cmd", "")
    if re.search(r"--port\s+600[68]", cmd):
        assert "0.0.0.0" in cmd, (where, cmd)


def test_the_simulated_service_routes_are_documented_at_their_home():
    """references/simulator.md lists the /svc routes the simulator really serves; SKILL.md and
    the README send readers there instead of repeating them."""
    from simulator import server

    source = (ROOT / "scripts" / "simulator" / "server.py").read_text(encoding="utf-8")
    routes = list(server.OPENAI_ROUTES) + ["/metrics", "/health", "/files"]
    for route in ("/metrics", "/health", "/files"):
        assert f'subpath == "{route}"' in source, route  # the simulator still serves it
    home = read("references/simulator.md")
    for route in routes:
        assert f"`GET {route}`" in home or f"`POST {route}`" in home, route
    assert "references/simulator.md" in read("README.md") and "references/simulator.md" in read("SKILL.md")
    for doc in ("SKILL.md", "README.md"):
        assert "`GET /metrics`" not in read(doc), f"{doc} repeats the route table"


def recipe() -> str:
    examples = read("references/examples.md")
    section = examples[examples.index("## 短任务旁边跑 watcher"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_watcher_recipe_runs_beside_a_short_client(sim, run, tmp_path):
    """The recipe, as printed, against a simulated ReplicaSet: registry written, client served, watcher ended."""
    pytest.importorskip("simulator")
    instance = sim()
    config = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
    path = tmp_path / "svc.json"
    path.write_text(json.dumps(copy.deepcopy(config)), encoding="utf-8")
    code, out, _ = run("queue_submit.py", str(path), "--wait-running", "--interval", "0.05", "--quiet")
    assert code == 0, out
    script = recipe().replace('"/path/to/autodl-elastic-deploy"', repr(str(ROOT))).replace('"--interval", "5"', '"--interval", "0.1"')
    (tmp_path / "client.py").write_text(script, encoding="utf-8")
    env = {**os.environ, "AUTODL_HOST": instance.url, "AUTODL_TOKEN": instance.token}
    done = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert sum(1 for line in printed if "/svc/" in line) == 2, done.stdout  # each prompt went to a replica
    cycles, registered = map(int, printed[-1].split())
    assert cycles >= 1 and registered == config["replica_num"]


FIXTURES = sorted((ROOT / "tests" / "fixtures" / "docs").glob("*.json"))
# A "fields that matter" list: the bold lead-in naming the captured output, then bullets that
# each open with the field's path (`a.b`, `items[].c`).
FIELD_LIST = re.compile(r"\*\*看这些字段\*\* \(\[完整输出\]\(([^)]+)\)\):\n\n((?:- `[^`]+`.*\n)+)")


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_captured_outputs():
    assert len(FIXTURES) >= 40


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_a_captured_output_is_valid_against_its_schema(path, result_validator):
    import jsonschema

    document = load(path)
    if {"generated_at", "services"} <= set(document):  # a service registry (discover_services.py)
        schema = json.loads((ROOT / "schemas" / "registry.schema.json").read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema).validate(document)
    else:
        result_validator.validate(document)


def test_every_captured_output_is_pointed_at_from_the_docs():
    linked = {path.name for doc in all_docs() for path, _ in links(doc) if path.parent == ROOT / "tests" / "fixtures" / "docs"}
    assert linked == {path.name for path in FIXTURES}


def _has_path(document, parts):
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        items = document.get(head[:-2]) if isinstance(document, dict) else None
        return isinstance(items, list) and any(_has_path(item, rest) for item in items)
    return isinstance(document, dict) and head in document and _has_path(document[head], rest)


def test_the_fields_the_examples_name_are_in_the_captured_output():
    lists = FIELD_LIST.findall(read("references/examples.md"))
    assert len(lists) >= 10
    for target, bullets in lists:
        document = load((ROOT / "references" / target).resolve())
        for field in re.findall(r"^- `([^`]+)`", bullets, re.M):
            assert _has_path(document, field.split(".")), f"{target} has no {field}"


def test_a_field_the_output_lacks_would_be_caught():
    document = {"items": [{"cost_yuan": 1}], "totals": {"cost_yuan": 1}}
    assert _has_path(document, ["items[]", "cost_yuan"]) and _has_path(document, ["totals", "cost_yuan"])
    assert not _has_path(document, ["items[]", "run_hours"]) and not _has_path(document, ["cost"])


def test_captured_outputs_quote_the_basis_as_the_code_prints_it():
    from autodl_esd.money.estimate import CONTAINER_PRICE_BASIS

    quoting = [path.name for path in FIXTURES if CONTAINER_PRICE_BASIS in path.read_text(encoding="utf-8")]
    assert len(quoting) >= 3, quoting
    assert all("口径相同" not in path.read_text(encoding="utf-8") for path in FIXTURES)
