"""The ops scripts end to end against the local simulator on a loopback port.

Each test starts its own simulator with fast simulated time, creates deployments through
queue_submit.py, and drives the ops scripts in-process exactly as an agent would, checking
both the JSON they print and what the simulated platform ended up with.
"""

from __future__ import annotations

import copy
import json

import pytest

from helpers import ROOT

pytest.importorskip("simulator")

FAST = ("--interval", "0.05", "--quiet")
SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
JOB = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))


@pytest.fixture
def ok(run, result_validator):
    """Run a script, assert it succeeded and validates; return its document."""

    def _ok(script, *argv):
        code, document, _ = run(script, *argv)
        assert code == 0, document
        assert document["status"] == "success"
        result_validator.validate(document)
        return document

    return _ok


@pytest.fixture
def submit(ok, tmp_path):
    def _submit(config=SERVICE, *extra, **changes):
        config = {**copy.deepcopy(config), **changes}
        path = tmp_path / f"{config['name']}-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        return ok("queue_submit.py", str(path), *FAST, *extra)["deployment_uuid"], str(path)

    return _submit


def running(instance, deployment_uuid):
    return [c for c in instance.containers(deployment_uuid) if c["status"] == "running"]


def test_service_lifecycle(sim, ok, run, submit, result_validator):
    instance = sim()
    uuid, config_path = submit()
    name = SERVICE["name"]

    images = ok("list_images.py")
    assert SERVICE["container_template"]["image_uuid"] in {i["image_uuid"] for i in images["items"]}
    assert all(i["image_name"] for i in images["items"])

    followed = ok("container_events.py", "--name", name, "--follow", "--timeout", "30", *FAST)
    assert followed["reached"] is True and len(followed["reached_containers"]) == 2

    more = ok("container_events.py", "--deployment-uuid", uuid, "--offset", str(followed["next_offset"]))
    assert more["offset"] == followed["next_offset"]

    listed = ok("list_deployments.py", "--name", name)
    assert [d["uuid"] for d in listed["items"]] == [uuid]
    assert listed["items"][0]["template"]["memory_size_to_gb"] == SERVICE["container_template"]["memory_size_to"]

    containers = ok("list_containers.py", "--config", config_path, "--status", "running")
    assert containers["count"] == 2
    passwords = {c["info"]["root_password"] for c in instance.containers(uuid)}
    assert not any(p in json.dumps(containers) for p in passwords)
    assert all(c["service_urls"] for c in containers["items"])

    stock = ok("gpu_stock.py")
    used = {c["gpu_name"] for c in running(instance, uuid)}
    assert all(stock["stock"][gpu]["idle"] < stock["stock"][gpu]["total"] for gpu in used)

    scaled = ok("set_replicas.py", "--name", name, "--replica-num", "3")
    assert scaled["verified"] is True
    ok("container_events.py", "--deployment-uuid", uuid, "--follow", "--count", "3", "--timeout", "30", *FAST)
    instance.wait_until(lambda: len(running(instance, uuid)) == 3)

    victim = running(instance, uuid)[0]
    stopped = ok("stop_container.py", "--container-uuid", victim["uuid"], "--decrease-one-replica-num")
    assert stopped["verified"] is True and stopped["replica_num"] == 2
    instance.advance(120)
    assert len(running(instance, uuid)) == 2  # no replacement was started
    assert instance.deployments()[0]["replica_num"] == 2

    blacklisted = ok("blacklist_host.py", "--container-uuid", victim["uuid"], "--comment", "启动慢", "--expire-minutes", "60")
    assert blacklisted["machine_id"] == victim["machine_id"] and blacklisted["verified"] is True
    assert {m["machine_id"] for m in instance.machines() if m["blacklisted"]} == {victim["machine_id"]}
    entries = ok("list_blacklist.py")
    assert [e["machine_id"] for e in entries["items"]] == [victim["machine_id"]]

    code, refused, _ = run("stop_deployment.py", "--name", name)
    assert (code, refused["error_type"]) == (1, "confirmation_required")
    result_validator.validate(refused)
    assert refused["details"]["live_container_count"] == 2
    assert instance.deployments()[0]["status"] == "running"

    stopped_deployment = ok("stop_deployment.py", "--name", name, "--yes")
    assert stopped_deployment["verified"] is True and stopped_deployment["deployment"]["status"] == "stopped"

    deleted = ok("delete_deployment.py", "--deployment-uuid", uuid, "--yes")
    assert deleted["verified"] is True
    assert instance.deployments() == []
    assert ok("list_deployments.py")["items"] == []

    code, gone, _ = run("list_containers.py", "--deployment-uuid", uuid)
    assert (code, gone["error_type"]) == (1, "not_found")


def test_stopping_a_container_without_decrease_gets_a_replacement(sim, ok, submit):
    instance = sim()
    uuid, _ = submit(SERVICE, replica_num=1, name="single")
    ok("container_events.py", "--deployment-uuid", uuid, "--follow", "--timeout", "30", *FAST)
    first = running(instance, uuid)[0]["uuid"]
    result = ok("stop_container.py", "--container-uuid", first)
    assert result["verified"] is True and result["replica_num"] == 1  # unchanged, reported as a number
    replacement = instance.wait_until(lambda: [c for c in running(instance, uuid) if c["uuid"] != first], timeout=30)
    assert replacement


def test_same_name_twice_is_ambiguous_until_a_uuid_is_given(sim, ok, run, submit, result_validator):
    sim()
    first, _ = submit(SERVICE, name="twin", replica_num=1)
    second, _ = submit(SERVICE, "--allow-duplicate-name", name="twin", replica_num=1)
    code, document, _ = run("list_containers.py", "--name", "twin")
    assert (code, document["error_type"]) == (1, "usage_error")
    result_validator.validate(document)
    assert {c["deployment_uuid"] for c in document["details"]["candidates"]} == {first, second}
    assert ok("list_containers.py", "--deployment-uuid", second)["deployment"]["deployment_uuid"] == second


def test_set_replicas_refuses_a_job(sim, run, submit, result_validator):
    instance = sim()
    uuid, _ = submit(JOB)
    code, document, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "8")
    assert (code, document["error_type"]) == (1, "usage_error")
    result_validator.validate(document)
    assert not [entry for entry in instance.request_log() if entry[1].endswith("/replica_num")]


def test_private_cloud_has_no_blacklist_list(sim, ok, run, submit, result_validator):
    instance = sim(dialect="private")  # a dict of vendor names, like a live private cluster
    uuid, _ = submit()
    stock = ok("gpu_stock.py", "--gpu", "NVIDIA GeForce RTX 4090")
    assert set(stock["stock"]) == {"NVIDIA GeForce RTX 4090"} and isinstance(stock["raw"], dict)

    code, document, _ = run("list_blacklist.py")
    assert (code, document["error_type"]) == (3, "api_error")
    result_validator.validate(document)
    assert "私有云" in document["hint"]

    victim = instance.wait_until(lambda: instance.containers(uuid))[0]
    result = ok("blacklist_host.py", "--container-uuid", victim["uuid"])
    assert result["verified"] is False and result["machine_id"] == victim["machine_id"]


def test_region_stock_and_unknown_gpu(sim, ok, run, result_validator):
    instance = sim()
    by_region = ok("gpu_stock.py", "--region", "westDC2", "--region", "westDC3")
    total = sum(m["gpu_num"] for m in instance.machines() if m["region"] in ("westDC2", "westDC3"))
    assert by_region["stock"]["RTX 4090"]["total"] == total
    assert set(by_region["raw"]) == {"westDC2", "westDC3"}

    code, document, _ = run("gpu_stock.py", "--gpu", "RTX 9999")
    assert (code, document["error_type"]) == (1, "gpu_type_not_found")
    result_validator.validate(document)
    assert "RTX 4090" in document["details"]["available_gpus"]


def test_follow_times_out_when_stock_is_gone(sim, run, submit, result_validator):
    instance = sim()
    uuid, _ = submit(SERVICE, replica_num=1, name="lonely")
    code, document, _ = run("container_events.py", "--deployment-uuid", uuid, "--follow", "--count", "5", "--timeout", "0.3", *FAST)
    assert (code, document["error_type"]) == (2, "startup_timeout")
    result_validator.validate(document)
    assert document["details"]["deployment_uuid"] == uuid
    assert document["details"]["next_offset"] > 0


def test_changes_that_commit_after_the_client_gave_up_report_took_effect(sim, ok, submit, monkeypatch):
    """Every write commits 0.6 s late while the client waits 0.25 s: each script's answer is
    lost (the HTTP layer even retries the absolute ones), and each reads back and reports
    took_effect: true; the relative stop (--decrease-one-replica-num) is sent exactly once."""
    instance = sim(faults="commit_delay_seconds=0.6")
    uuid, _ = submit(SERVICE, "--wait-running", replica_num=3, name="late-writes")
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "0.25")

    scaled = ok("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "2")
    assert (scaled["took_effect"], scaled["verified"]) == (True, True) and scaled["answer_lost"]
    instance.wait_until(lambda: len(running(instance, uuid)) == 2)

    victim = running(instance, uuid)[0]
    stopped = ok("stop_container.py", "--container-uuid", victim["uuid"], "--decrease-one-replica-num")
    assert (stopped["took_effect"], stopped["replica_num"]) == (True, 1) and stopped["answer_lost"]
    stops = [r for r in instance.request_log() if r[:2] == ("PUT", "/api/v1/dev/deployment/container/stop")]
    assert len(stops) == 1
    assert instance.deployments()[0]["replica_num"] == 1

    blacklisted = ok("blacklist_host.py", "--container-uuid", victim["uuid"])
    assert blacklisted["took_effect"] is True

    assert ok("stop_deployment.py", "--deployment-uuid", uuid, "--yes")["took_effect"] is True
    deleted = ok("delete_deployment.py", "--deployment-uuid", uuid, "--yes")
    assert (deleted["took_effect"], deleted["verified"]) == (True, True)
    assert instance.deployments() == []


def test_a_relative_stop_that_commits_after_the_look_is_unknown_never_false(sim, ok, run, submit, monkeypatch, result_validator):
    """The measured bug: the platform commits a stop with --decrease-one-replica-num seconds
    after the script stopped looking. The output must not say took_effect false (that
    invites a rerun that decrements again): it says unknown, and the one request lands once."""
    from autodl_esd.platform import effects

    instance = sim()
    uuid, _ = submit(SERVICE, "--wait-running", replica_num=2, name="late-stop")
    # Grace 0.5 s timeout + 0.5 s margin: the look ends ~1.5 s after the send, far before
    # the commit 6 s after it (slack for a loaded machine, which only makes the look later).
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "0.5")
    monkeypatch.setattr(effects, "IN_FLIGHT_MARGIN_SECONDS", 0.5)
    monkeypatch.setattr(effects, "LOOK_PAUSE_SECONDS", 0.1)  # still several looks within the grace
    instance.set_faults("commit_delay_seconds=6")

    victim = running(instance, uuid)[0]
    code, document, _ = run("stop_container.py", "--container-uuid", victim["uuid"], "--decrease-one-replica-num", "--quiet")
    assert (code, document["error_type"]) == (3, "api_error"), document
    result_validator.validate(document)
    details = document["details"]
    assert details["took_effect"] == "unknown", details
    assert details["last_seen"] == {"container_status": "running", "replica_num": 2}
    assert "不要直接重复执行" in document["hint"] and details["check"] in document["hint"]

    # The write lands later, once: replica_num goes down by exactly one.
    instance.wait_until(lambda: instance.deployments()[0]["replica_num"] != 2)
    assert instance.deployments()[0]["replica_num"] == 1
    stops = [r for r in instance.request_log() if r[:2] == ("PUT", "/api/v1/dev/deployment/container/stop")]
    assert len(stops) == 1
