"""The shipped example configs follow SKILL.md's own advice (an agent copies them)."""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT


def example_configs():
    """Every deployment config: the files in examples/ and the JSON blocks of examples.md."""
    found = [(path.name, json.loads(path.read_text(encoding="utf-8"))) for path in sorted((ROOT / "examples").glob("*.json"))]
    text = (ROOT / "examples.md").read_text(encoding="utf-8")
    for number, block in enumerate(re.findall(r"```json\n(.*?)```", text, re.S)):
        try:
            document = json.loads(block)
        except ValueError:
            continue
        for config in _configs_in(document):
            found.append((f"examples.md block {number}", config))
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


def test_the_simulated_service_routes_are_documented_where_users_look():
    """SKILL.md and README list the /svc routes the simulator really serves."""
    from simulator import server

    source = (ROOT / "scripts" / "simulator" / "server.py").read_text(encoding="utf-8")
    routes = list(server.OPENAI_ROUTES) + ["/metrics", "/health", "/files"]
    for route in ("/metrics", "/health", "/files"):
        assert f'subpath == "{route}"' in source, route  # the simulator still serves it
    for doc in ("SKILL.md", "README.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        for route in routes:
            assert f"`GET {route}`" in text or f"`POST {route}`" in text, (doc, route)
