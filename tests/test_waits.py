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


def job(tmp_path, **changes) -> str:
    return write(tmp_path, JOB, **{"replica_num": 2, "parallelism_num": 1, **changes})


def test_queue_submit_wait_finished_reports_counts_and_run_times(sim, run, tmp_path, result_validator):
    instance = sim()
    code, out, _ = run("queue_submit.py", job(tmp_path), "--wait-finished", *FAST)
    assert code == 0, out
    result_validator.validate(out)
    finish = out["finish"]
    assert (finish["finished"], finish["ended_by"], finish["target_finished"]) == (True, "target_reached", 2)
    assert finish["counts"]["finished_num"] >= 2
    done = [c for c in finish["containers"] if c["status"] == "shutdown"]
    assert len(done) >= 2 and all(c["run_seconds"] is not None and c["run_seconds"] > 0 for c in done)
    assert "退出码" in finish["exit_code_note"]
    assert len(instance.deployments()) == 1


def test_wait_finished_timeout_names_the_deployment_and_never_resubmits(sim, run, tmp_path, result_validator):
    instance = sim()
    config = job(tmp_path)
    slow = json.loads(open(config, encoding="utf-8").read())
    slow["container_template"]["cmd"] = "sleep infinity"
    open(config, "w", encoding="utf-8").write(json.dumps(slow))
    code, out, _ = run("queue_submit.py", config, "--wait-finished", "--finish-timeout", "0.3", *FAST)
    assert (code, out["error_type"]) == (2, "startup_timeout"), out
    result_validator.validate(out)
    assert out["details"]["deployment_uuid"] == instance.deployments()[0]["uuid"]
    assert out["details"]["deployment_created"] is True
    creates = [entry for entry in instance.request_log() if entry[0] == "POST" and entry[1] == "/api/v1/dev/deployment"]
    assert len(creates) == 1


def test_wait_finished_refuses_a_replicaset_before_any_call(run, tmp_path, mocked, result_validator):
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE), "--wait-finished", "--quiet")
    assert (code, out["error_type"]) == (1, "usage_error")
    assert not mocked.calls


def test_container_events_follow_until_finished_for_an_existing_job(sim, run, tmp_path, result_validator):
    sim()
    code, out, _ = run("queue_submit.py", job(tmp_path), *FAST)
    assert code == 0, out
    code, document, _ = run("container_events.py", "--deployment-uuid", out["deployment_uuid"], "--follow",
                            "--until", "finished", "--timeout", "30", "--interval", "0.05", "--quiet")
    assert code == 0, document
    result_validator.validate(document)
    assert document["finish"]["finished"] is True and document["finish"]["counts"]["finished_num"] >= 2
    assert any(event["status"] == "shutdown" for event in document["items"])
