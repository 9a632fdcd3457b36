"""Waiting on deployments end to end against the simulator: set_replicas --wait,
queue_submit --wait-finished, container_events --follow --until finished, and a Job that
finishes before --wait-running's first look."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import ROOT

pytest.importorskip("simulator")

FAST = ("--interval", "0.05", "--quiet")
SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
JOB = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))


def write(tmp_path, config, **changes) -> str:
    config = {**copy.deepcopy(config), **changes}
    path = tmp_path / f"{config['name']}.json"
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_set_replicas_wait_reaches_the_count_and_names_what_scale_down_stopped(sim, run, tmp_path, result_validator):
    instance = sim()
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE, replica_num=3), "--wait-running", *FAST)
    assert code == 0, out
    uuid = out["deployment_uuid"]
    before = {c["container_uuid"] for c in out["containers"]}

    code, down, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "1", "--wait", *FAST)
    assert code == 0, down
    result_validator.validate(down)
    assert down["reached"] is True and len(down["running"]) == 1
    stopped = {c["container_uuid"] for c in down["stopped_by_scale_down"]}
    assert len(stopped) == 2 and stopped <= before
    assert "find_faulty_hosts" in down["scale_down_note"]
    assert sum(1 for c in instance.containers(uuid) if c["status"] == "running") == 1

    code, up, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "2", "--wait", *FAST)
    assert code == 0, up
    assert len(up["running"]) == 2 and up["stopped_by_scale_down"] == []


def test_set_replicas_wait_timeout_says_the_scale_took_effect(sim, run, tmp_path, result_validator):
    instance = sim()
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE, replica_num=1), "--wait-running", *FAST)
    uuid = out["deployment_uuid"]
    instance.occupy("RTX 4090", 10**6)  # no card left for the new replicas
    instance.occupy("RTX A5000", 10**6)
    code, document, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "3", "--wait",
                            "--timeout", "0.5", *FAST)
    assert (code, document["error_type"]) == (2, "startup_timeout"), document
    result_validator.validate(document)
    assert document["details"]["took_effect"] is True and document["details"]["deployment_uuid"] == uuid


def test_set_replicas_help_says_scale_down_stops_count_as_exits(run, capsys):
    from conftest import load_script, script_path

    with pytest.raises(SystemExit):
        load_script(script_path("set_replicas.py")).build_parser().parse_args(["--help"])
    assert "find_faulty_hosts.py" in capsys.readouterr().out
