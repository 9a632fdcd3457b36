"""queue_submit.py end to end against the local simulator on a loopback port.

Each test starts its own simulator (fast simulated time), points the scripts at it through
AUTODL_HOST/AUTODL_TOKEN, and checks what the platform ended up with: never more than one
deployment per submission, whatever the faults.
"""

from __future__ import annotations

import copy
import json

import pytest
import requests

from helpers import CREATE_REQUEST, ROOT, SERVICE_EXAMPLE, creates, occupy_all, write_config, write_service_config

pytest.importorskip("simulator")

EXAMPLE = SERVICE_EXAMPLE


@pytest.fixture
def config_file(tmp_path):
    return lambda config=None, **changes: write_service_config(tmp_path, config, **changes)



def test_waits_until_stock_frees_then_submits(sim, run, config_file, result_validator):
    import threading

    instance = sim()
    for gpu_name in EXAMPLE["container_template"]["gpu_name_set"]:
        instance.occupy(gpu_name, 10_000)
    # The cards come back once the script has found none and looked again. (Tenants leaving
    # after 60 simulated seconds, 0.3 real ones, could be gone before a loaded machine's
    # first look, which then waited for nothing.)
    stock_polls = lambda: sum(1 for entry in instance.request_log() if entry[1] == "/api/v1/dev/machine/gpu_stock")
    released = {}

    def release_once_it_waits():
        instance.wait_until(lambda: stock_polls() >= 2, timeout=60)
        released["after_request"] = len(instance.request_log())
        instance.release_occupied()

    releaser = threading.Thread(target=release_once_it_waits, daemon=True)
    releaser.start()
    code, out, err = run("queue_submit.py", config_file(), "--interval", "0.05", "--timeout", "120")
    releaser.join(5)

    assert code == 0, out
    assert out["waited_seconds"] > 0 and "等待库存" in err
    log = instance.request_log()
    first_create = next(index for index, entry in enumerate(log) if entry[:2] == CREATE_REQUEST)
    assert first_create >= released["after_request"], "submitted before the background tenants released the cards"
    assert len(creates(instance)) == 1
    assert [d["uuid"] for d in instance.deployments()] == [out["deployment_uuid"]]
    result_validator.validate(out)


def test_wait_running_reports_reachable_service_urls(sim, run, config_file):
    sim()

    code, out, _ = run("queue_submit.py", config_file(), "--interval", "0.05", "--wait-running", "--quiet")

    assert code == 0, out
    assert len(out["containers"]) == EXAMPLE["replica_num"]
    for container in out["containers"]:
        assert container["status"] == "running" and container["root_password"] == "***"
        response = requests.get(container["service_urls"]["service_url"] + "/health", timeout=5)
        assert response.status_code == 200


def test_rerunning_the_command_does_not_buy_a_second_deployment(sim, run, config_file, result_validator):
    instance = sim()
    path = config_file()

    first = run("queue_submit.py", path, "--interval", "0.05", "--quiet")
    second = run("queue_submit.py", path, "--interval", "0.05", "--quiet")

    assert first[0] == 0
    assert second[0] == 1 and second[1]["error_type"] == "deployment_exists"
    assert second[1]["details"]["deployment_uuid"] == first[1]["deployment_uuid"]
    assert len(creates(instance)) == 1
    result_validator.validate(second[1])


def test_dry_run_creates_nothing(sim, run, config_file):
    instance = sim()

    code, out, _ = run("queue_submit.py", config_file(), "--dry-run", "--quiet")

    assert code == 0 and out["would_submit_now"] is True
    assert not creates(instance) and not instance.deployments()


def test_job_runs_to_completion(sim, run, config_file):
    instance = sim()
    job = copy.deepcopy(EXAMPLE)
    job.update(name="train-job", deployment_type="Job", replica_num=3, parallelism_num=2)
    job["container_template"]["cmd"] = "sleep 30"

    code, out, _ = run("queue_submit.py", config_file(job), "--interval", "0.05", "--wait-running", "--quiet")

    assert code == 0, out
    deployment = instance.wait_until(
        lambda: next((d for d in instance.deployments() if d["uuid"] == out["deployment_uuid"] and d["finished_num"] >= 3), None),
        timeout=30,
    )
    assert deployment["status"] == "stopped"
    finished = [c for c in instance.containers(out["deployment_uuid"]) if c["exit_code"] == 0]
    assert len(finished) == 3


@pytest.mark.parametrize("faults", [
    "error_rate=0.2",
    "create_error_after_commit=1",
    "slow_rate=0.3,slow_seconds=1.5",
])
def test_faults_never_cause_a_duplicate_deployment(sim, run, config_file, faults, monkeypatch, result_validator):
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "1")
    instance = sim(faults=faults)

    code, out, _ = run("queue_submit.py", config_file(), "--interval", "0.05", "--quiet")

    assert code == 0, out
    assert len(instance.deployments()) == 1
    assert instance.deployments()[0]["uuid"] == out["deployment_uuid"]
    result_validator.validate(out)


def test_slow_create_that_lands_after_the_client_gave_up_is_recovered(sim, run, config_file, monkeypatch):
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "0.5")
    instance = sim(faults="create_slow_seconds=1.5")

    code, out, err = run("queue_submit.py", config_file(), "--interval", "0.05")

    assert code == 0, out
    assert out["recovered"] is True and "核对" in err
    assert len(creates(instance)) == 1
    assert [d["uuid"] for d in instance.deployments()] == [out["deployment_uuid"]]


def test_sim_flag_runs_the_demo_without_a_token(run, config_file, monkeypatch, result_validator):
    monkeypatch.delenv("AUTODL_TOKEN")

    code, out, err = run("queue_submit.py", config_file(), "--sim", "--sim-busy", "1", "--wait-running")

    assert code == 0, out
    assert out["simulated"] is True and out["waited_seconds"] > 0
    assert len(out["containers"]) == EXAMPLE["replica_num"]
    assert "本地模拟器已启动" in err
    result_validator.validate(out)


def test_two_runs_of_one_config_buy_one_deployment(sim, config_file, result_validator):
    """An agent re-runs a command that "seemed stuck": both runs wait for stock; when it
    frees, the name check right before each create makes the later one deployment_exists.
    (If both checks fall before either create lands, both create; the run whose create landed
    last sees both in its look after the create and reports `duplicates`. The other run may
    have looked before the second landed, so only that one is certain to say so.)"""
    import os
    import subprocess
    import sys

    instance = sim()
    for gpu in EXAMPLE["container_template"]["gpu_name_set"]:
        instance.occupy(gpu, 1000)
    path = config_file()
    env = {**os.environ, "AUTODL_HOST": instance.url, "AUTODL_TOKEN": instance.token}
    command = [sys.executable, str(ROOT / "queue_submit.py"), path, "--interval", "0.1", "--quiet", "--timeout", "60"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting = lambda: len([r for r in instance.request_log() if r[1] == "/api/v1/dev/machine/gpu_stock"])
    instance.wait_until(lambda: waiting() >= 2, timeout=60)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = waiting()
    instance.wait_until(lambda: waiting() >= before + 4, timeout=60)  # both are polling now
    instance.release_occupied()
    documents = [json.loads(p.communicate(timeout=90)[0]) for p in (first, second)]
    for document in documents:
        result_validator.validate(document)
    uuids = sorted(d["uuid"] for d in instance.deployments())
    if len(uuids) == 1:
        outcomes = sorted(d.get("error_type", "success") for d in documents)
        assert outcomes == ["deployment_exists", "success"], documents
        assert {d.get("deployment_uuid") or d["details"]["deployment_uuid"] for d in documents} == set(uuids)
    else:  # both checks raced ahead of both creates: each names its own, the later one both
        assert sorted(d.get("deployment_uuid") for d in documents) == uuids, documents
        reported = [sorted(x["deployment_uuid"] for x in d["duplicates"]) for d in documents if "duplicates" in d]
        assert reported and all(duplicates == uuids for duplicates in reported), documents


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_reconcile_still_reports_the_create(sim, config_file, result_validator, signame):
    """A real process interrupted while it looks for a create that has not landed yet: the
    one document says the create may have happened (name to look it up by), and the
    deployment that lands afterwards is exactly that one."""
    import os
    import signal
    import subprocess
    import sys

    instance = sim(faults="commit_delay_seconds=1.5")
    env = {**os.environ, "AUTODL_HOST": instance.url, "AUTODL_TOKEN": instance.token, "AUTODL_HTTP_TIMEOUT": "0.3"}
    child = subprocess.Popen([sys.executable, str(ROOT / "queue_submit.py"), config_file(), "--interval", "0.1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stderr:  # progress: wait until it is looking for the create
            if "等待可能仍在途中的创建请求落地" in line:
                break
        child.send_signal(getattr(signal, signame))
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    document = json.loads(out)
    result_validator.validate(document)
    assert (child.returncode, document["error_type"]) == (130, "interrupted")
    details = document["details"]
    assert details["may_have_been_created"] is True and details["name"] == EXAMPLE["name"]
    assert "list_deployments.py --name" in document["hint"]
    landed = instance.wait_until(lambda: instance.deployments(), timeout=30)
    assert len(landed) == 1 and details.get("deployment_uuid", landed[0]["uuid"]) == landed[0]["uuid"]


def test_the_wait_says_per_replica_and_what_it_waits_for(sim, run, tmp_path):
    instance = sim()
    occupy_all(instance, EXAMPLE)
    path = write_config(tmp_path, "rs", dict(EXAMPLE, replica_num=2))
    code, out, err = run("queue_submit.py", path, "--interval", "0.1", "--timeout", "0.3", "--wait-running")
    assert out["error_type"] == "timeout"
    assert "需要 1 卡" not in err
    assert "每个副本 1 卡 × 2 个, 够 1 个副本即提交" in err
    assert "其余副本由平台在创建后陆续调度" in err and "--wait-running 之后再等它们全部运行" in err
