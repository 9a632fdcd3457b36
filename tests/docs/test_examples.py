"""The shipped example configs follow SKILL.md's own advice (an agent copies them), and the
registry-watcher recipe of examples.md runs as printed against the simulator, and the price
basis is quoted as the code prints it."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

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


def recipe() -> str:
    examples = (ROOT / "examples.md").read_text(encoding="utf-8")
    section = examples[examples.index("### 短任务旁边跑注册表 watcher"):]
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


def test_examples_quote_the_basis_as_the_code_prints_it():
    from autodl_esd.money.estimate import CONTAINER_PRICE_BASIS

    text = (ROOT / "examples.md").read_text(encoding="utf-8")
    assert "口径相同" not in text
    assert text.count(CONTAINER_PRICE_BASIS) >= 3
