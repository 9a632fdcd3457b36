"""Docs that sent agents the wrong way (issue 9, item 3k): each fix is checked here, and the
registry-watcher recipe of examples.md is run for real against the simulator."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT

SKILL = (ROOT / "SKILL.md").read_text(encoding="utf-8")
EXAMPLES = (ROOT / "examples.md").read_text(encoding="utf-8")
API = (ROOT / "api-reference.md").read_text(encoding="utf-8")


def line_with(text: str, fragment: str) -> str:
    lines = [line for line in text.splitlines() if fragment in line]
    assert lines, f"no line with {fragment!r}"
    return lines[0]


def test_one_cuda_code_list_and_it_is_the_schema():
    schema = json.loads((ROOT / "schemas" / "deployment.schema.json").read_text(encoding="utf-8"))
    enums = {tuple(found) for found in _enums(schema) if all(isinstance(v, int) for v in found)}
    private_codes = max(enums, key=len)  # cuda_v: the public codes plus 0
    section = API[API.index("### CUDA 代码"):API.index("### GPU 型号名称")]
    documented = [int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.M)]
    assert documented == sorted(private_codes)
    from autodl_esd.platform.units import KNOWN_CUDA_CODES

    assert list(KNOWN_CUDA_CODES) == [code for code in documented if code]
    assert "已知 `111`" not in API, "no second, partial list"


def _enums(node):
    if isinstance(node, dict):
        if "enum" in node:
            yield node["enum"]
        for value in node.values():
            yield from _enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _enums(value)


def test_private_gpu_names_both_styles_and_gpu_stock_is_the_truth():
    row = line_with(API, "| GPU 型号写法 |")
    assert "NVIDIA GeForce RTX 4090" in row and "`RTX 4090`" in row.split("|")[3] and "gpu_stock.py" in row


def test_unknown_host_dialect_is_settled_by_doctor():
    step = line_with(SKILL, "4. 私有云默认地址")
    assert "doctor.py" in step and "dialect" in step


def test_list_blacklist_is_available_where_the_platform_has_the_route():
    row = line_with(SKILL, "| `scripts/list_blacklist.py` |")
    assert "平台有这个接口时" in row and "(公有云接口)" not in row


def test_reuse_container_guidance_for_services_and_jobs():
    bullet = line_with(SKILL, "- **容器复用**")
    assert "ReplicaSet" in bullet and "Job" in bullet


def test_interval_advice_for_a_short_timeout():
    row = line_with(SKILL, "| `--interval S` |")
    assert "--timeout" in row and "1/10" in row


def test_least_inflight_differs_from_random_only_when_requests_overlap():
    bullet = line_with(SKILL, "- **策略**")
    assert "least_inflight" in bullet and "random" in bullet and "重叠" in bullet


def recipe() -> str:
    section = EXAMPLES[EXAMPLES.index("### 短任务旁边跑注册表 watcher"):]
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
