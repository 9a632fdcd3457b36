"""Evidence for "is this the same deployment?": deployment_exists carries the live one's
created_at, status and same_config; recovered_by says how it matched; the dry run reports
duplicate_check and the exact request (token masked)."""

from __future__ import annotations

import copy
import json

import pytest

from helpers import ROOT

EXAMPLE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
FAST = ("--interval", "0.05", "--quiet")


def write(tmp_path, config, name="config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_compare_config_normalises_bytes_and_list_order():
    from autodl_esd.platform.evidence import compare_config

    config = copy.deepcopy(EXAMPLE)
    template = dict(config["container_template"], memory_size_from=config["container_template"]["memory_size_from"] * 1024**3,
                    memory_size_to=config["container_template"]["memory_size_to"] * 1024**3,
                    gpu_name_set=list(reversed(config["container_template"]["gpu_name_set"])))
    listed = {"uuid": "a" * 15, "deployment_type": "ReplicaSet", "template": template}
    assert compare_config(config, listed)["same_config"] is True
    listed["template"] = dict(template, cmd="sleep infinity")
    result = compare_config(config, listed)
    assert result["same_config"] is False and [d["field"] for d in result["differences"]] == ["cmd"]
    assert compare_config(config, {"uuid": "a" * 15})["same_config"] is None, "nothing to compare is unknown"


@pytest.mark.usefixtures("sim")
def test_deployment_exists_says_when_it_was_created_and_whether_the_config_is_the_same(sim, run, tmp_path, result_validator):
    sim()
    path = write(tmp_path, EXAMPLE)
    code, first, _ = run("queue_submit.py", path, *FAST)
    assert code == 0, first

    code, again, _ = run("queue_submit.py", path, *FAST)
    assert (code, again["error_type"]) == (1, "deployment_exists")
    result_validator.validate(again)
    details = again["details"]
    assert details["deployment_uuid"] == first["deployment_uuid"]
    assert details["status"] == "running" and details["created_at"].endswith("+08:00")
    assert details["same_config"] is True and "cmd" in details["compared_fields"]

    other = copy.deepcopy(EXAMPLE)
    other["container_template"]["gpu_num"] = 2
    code, different, _ = run("queue_submit.py", write(tmp_path, other, "other.json"), *FAST)
    assert different["error_type"] == "deployment_exists"
    assert different["details"]["same_config"] is False
    assert [d["field"] for d in different["details"]["differences"]] == ["gpu_num"]


def test_dry_run_reports_the_duplicate_check_and_the_exact_request(sim, run, tmp_path, result_validator):
    instance = sim()
    path = write(tmp_path, EXAMPLE)
    code, clean, _ = run("queue_submit.py", path, "--dry-run", *FAST)
    assert code == 0, clean
    result_validator.validate(clean)
    assert clean["duplicate_check"] == {"result": "none", "would_refuse": False}
    request = clean["http_request"]
    assert (request["method"], request["url"]) == ("POST", instance.url + "/api/v1/dev/deployment")
    assert request["headers"] == {"Authorization": "***", "Content-Type": "application/json"}
    assert request["body"] == clean["request"] == EXAMPLE
    assert instance.token not in json.dumps(clean)

    code, created, _ = run("queue_submit.py", path, *FAST)
    code, dry, _ = run("queue_submit.py", path, "--dry-run", *FAST)
    assert code == 0, dry
    check = dry["duplicate_check"]
    assert (check["result"], check["would_refuse"]) == ("exists", True)
    assert check["existing"]["deployment_uuid"] == created["deployment_uuid"] and check["existing"]["same_config"] is True
    assert dry["would_submit_now"] is False, "the real run would answer deployment_exists"
