"""Submissions as durable records: queue_submit --detach, jobs.py --status/--cancel/--resume/--logs.

Each test starts its own simulator; a detached submission runs in a real background process
(`jobs.py --run ID`) that inherits the test's AUTODL_HOST/AUTODL_TOKEN/XDG_STATE_HOME.
Every process a test started is killed when it ends.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time

import pytest

from helpers import ROOT, SERVICE_EXAMPLE, creates, write_service_config
from helpers.servers import wait_for

pytest.importorskip("simulator")

EXAMPLE = SERVICE_EXAMPLE
GPUS = EXAMPLE["container_template"]["gpu_name_set"]
# Bounds of every wait below: far above what a loaded 2-core machine needs.
WAIT_SECONDS = 60.0


@pytest.fixture
def config_file(tmp_path):
    return lambda config=None, **changes: write_service_config(tmp_path, config, **changes)


@pytest.fixture
def started_runs():
    """Run ids whose processes are killed when the test ends (whatever it asserted)."""
    ids: list[str] = []
    yield ids
    from autodl_esd.core import background
    from autodl_esd import jobs

    for run_id in ids:
        files = jobs.files_for(run_id)
        try:
            pid = json.loads(files.state.read_text(encoding="utf-8")).get("pid")
        except (OSError, ValueError):
            continue
        if pid and background.is_running(files):
            os.kill(int(pid), signal.SIGKILL)
            wait_for(lambda: not background.is_running(files), WAIT_SECONDS, what="the killed process to let go of its lock")



def detach(run, config_file, started_runs, *flags, **config):
    code, out, err = run("queue_submit.py", config_file(**config), "--detach", "--interval", "0.05", *flags)
    assert code == 0, out
    started_runs.append(out["run_id"])
    return out


def status(run, run_id, *flags):
    code, out, _ = run("jobs.py", "--status", run_id, "--quiet", *flags)
    assert code == 0, out
    return out


def test_a_detached_submit_waits_in_the_background_and_creates_once(sim, run, config_file, started_runs, result_validator):
    instance = sim()
    for gpu in GPUS:
        instance.occupy(gpu, 10_000)

    out = detach(run, config_file, started_runs)

    result_validator.validate(out)
    assert out["kind"] == "submit" and out["state"] == "waiting" and out["alive"] is True and out["pid"]
    assert out["detached"] is True and out["may_have_been_created"] is False
    assert out["plan"]["would_submit_now"] is False and "cost" in out and out["log_file"].endswith(".log")
    assert "jobs.py --status" in out["next"] and out["next"].startswith(f"python3 {ROOT}/scripts/jobs.py")
    # No --timeout: the background wait has no end but a cancel, and the answer says so.
    assert out["timeout_seconds"] == 0 and [w["code"] for w in out["warnings"]] == ["wait_without_limit"]
    listed = run("jobs.py", "--list", "--quiet")[1]
    assert [item["run_id"] for item in listed["items"] if item["kind"] == "submit"] == [out["run_id"]]
    assert not creates(instance)

    instance.release_occupied()
    done = wait_for(lambda: (lambda s: s if s["done"] else None)(status(run, out["run_id"], "--wait", "5")), WAIT_SECONDS, what="the submit to finish")

    result_validator.validate(done)
    assert done["state"] == "submitted" and done["deployment_uuid"] and done["alive"] is False
    assert done["may_have_been_created"] is False  # a known uuid is no "maybe"
    assert done["result"]["deployment_uuid"] == done["deployment_uuid"]
    assert [d["uuid"] for d in instance.deployments()] == [done["deployment_uuid"]]
    assert len(creates(instance)) == 1
    logs = run("jobs.py", "--logs", out["run_id"], "--quiet")[1]
    assert logs["kind"] == "submit" and "部署已创建" in logs["tail"]


def test_no_wait_without_limit_warning_when_the_stock_read_found_room(sim, run, config_file, started_runs):
    instance = sim()
    out = detach(run, config_file, started_runs)

    assert out["plan"]["would_submit_now"] is True and out["timeout_seconds"] == 0
    assert "wait_without_limit" not in [w["code"] for w in out["warnings"]]
    done = wait_for(lambda: (lambda s: s if s["done"] else None)(status(run, out["run_id"], "--wait", "5")), WAIT_SECONDS, what="the submit to finish")
    assert done["state"] == "submitted" and len(creates(instance)) == 1


def test_cancel_ends_a_waiting_submit_without_a_create(sim, run, config_file, started_runs, result_validator):
    instance = sim()
    for gpu in GPUS:
        instance.occupy(gpu, 10_000)
    out = detach(run, config_file, started_runs, "--timeout", "600")
    assert out["timeout_seconds"] == 600 and not out["warnings"]

    code, cancelled, _ = run("jobs.py", "--cancel", out["run_id"], "--quiet")

    assert code == 0 and cancelled["changed"] is True
    assert cancelled["state"] == "cancelled" and cancelled["alive"] is False and cancelled["done"] is True
    assert cancelled["may_have_been_created"] is False
    instance.release_occupied()
    assert not creates(instance) and not instance.deployments()
    result_validator.validate(cancelled)
    again = run("jobs.py", "--cancel", out["run_id"], "--quiet")[1]
    assert again["changed"] is False


def test_kill_9_while_waiting_then_resume_goes_on_and_creates_once(sim, run, config_file, started_runs, result_validator):
    instance = sim()
    for gpu in GPUS:
        instance.occupy(gpu, 10_000)
    out = detach(run, config_file, started_runs)

    os.kill(out["pid"], signal.SIGKILL)
    dead = wait_for(lambda: (lambda s: s if not s["alive"] else None)(status(run, out["run_id"])), WAIT_SECONDS, what="the process to be gone")

    assert dead["state"] == "waiting" and "--resume" in dead["hint"]
    result_validator.validate(dead)
    code, resumed, _ = run("jobs.py", "--resume", out["run_id"], "--quiet")
    assert code == 0 and resumed["resumed"] is True and resumed["alive"] is True
    instance.release_occupied()
    done = wait_for(lambda: (lambda s: s if s["done"] else None)(status(run, out["run_id"], "--wait", "5")), WAIT_SECONDS, what="the resumed submit")

    assert done["state"] == "submitted" and len(creates(instance)) == 1 and len(instance.deployments()) == 1


def test_kill_9_after_the_create_was_sent_resumes_by_reconciling_never_by_sending(sim, run, config_file, started_runs,
                                                                                   monkeypatch):
    # The create commits at once but its answer takes 30 s: the process dies while waiting for it.
    instance = sim(faults="create_slow_seconds=30")
    out = detach(run, config_file, started_runs)
    wait_for(lambda: creates(instance), WAIT_SECONDS, what="the create to reach the platform")
    sending = status(run, out["run_id"])
    assert sending["state"] == "submitting" and sending["may_have_been_created"] is True

    os.kill(out["pid"], signal.SIGKILL)
    wait_for(lambda: not status(run, out["run_id"])["alive"], WAIT_SECONDS, what="the process to be gone")
    dead = status(run, out["run_id"])
    # --status looks the name up (no process is on it): the deployment that landed is this run's.
    assert dead["state"] == "submitted" and dead["deployment_uuid"] == instance.deployments()[0]["uuid"]
    assert dead["recovered"] is True and len(creates(instance)) == 1


def test_resume_after_a_crash_mid_create_never_sends_and_ends_may_have_been_created(sim, run, config_file, monkeypatch,
                                                                                     result_validator):
    """A record left in `submitting` whose create never reached the platform: resume only looks."""
    from autodl_esd.deploy import submission

    instance = sim()
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "1")
    files = submission.files_for(submission.new_run_id())
    config = copy.deepcopy(EXAMPLE)
    record = {
        "run_id": files.job_id, "kind": "submit", "state": "submitting", "pid": None, "done": False,
        "host": instance.url, "name": config["name"], "deployment_type": config["deployment_type"], "config": config,
        "request": {"interval": 0.05, "reconcile_window": 1.0}, "creates_sent": 1, "ambiguous_creates": 0,
        "known_before_send": [], "last_create_sent_epoch": time.time(), "may_have_been_created": True,
        "created_at_local": "2026-12-06T20:00:00+00:00",
    }
    files.directory.mkdir(parents=True)
    files.state.write_text(json.dumps(record), encoding="utf-8")

    code, out, _ = run("jobs.py", "--run", files.job_id, "--quiet")

    assert code == 3 and out["error_type"] == "submission_error"
    assert out["details"]["may_have_been_created"] is True and out["details"]["run_id"] == files.job_id
    assert not creates(instance)
    result_validator.validate(out)
    later = status(run, files.job_id)
    assert later["state"] == "may_have_been_created" and "不要重新提交" in later["hint"]
    # It lands after all: the next --status looks again and names it.
    instance_uuid = _create_directly(instance, config)
    found = status(run, files.job_id)
    assert found["state"] == "submitted" and found["deployment_uuid"] == instance_uuid and found["recovered"] is True


def _create_directly(instance, config):
    import requests

    answer = requests.post(instance.url + "/api/v1/dev/deployment", json=config,
                           headers={"Authorization": instance.token}, timeout=10).json()
    return answer["data"]["deployment_uuid"]


def test_a_foreground_submit_keeps_a_record_and_names_it(sim, run, config_file, result_validator):
    sim()
    code, out, _ = run("queue_submit.py", config_file(), "--interval", "0.05", "--quiet")

    assert code == 0 and out["run_id"].startswith("s-")
    shown = status(run, out["run_id"])
    assert shown["state"] == "submitted" and shown["done"] is True and shown["detached"] is False
    assert shown["deployment_uuid"] == out["deployment_uuid"]
    result_validator.validate(shown)


@pytest.mark.parametrize("flags, wrong", [
    (("--sim",), "--sim"),
    (("--dry-run",), "--dry-run"),
])
def test_detach_refuses_what_cannot_run_in_the_background(run, config_file, flags, wrong):
    code, out, _ = run("queue_submit.py", config_file(), "--detach", *flags, "--quiet")

    assert code == 1 and out["error_type"] == "usage_error" and wrong in out["message"]
    assert run("jobs.py", "--list", "--quiet")[1]["count"] == 0


@pytest.mark.parametrize("argv, error_type", [
    (("--status", "nope"), "usage_error"),
    (("--status", "s-20990101-000000-abcdef"), "not_found"),
    (("--cancel", "s-20990101-000000-abcdef"), "not_found"),
    (("--list", "--wait", "3"), "usage_error"),
    (("--run", "g-833f1cd5a764fa3-1a2b3c"), "usage_error"),
])
def test_jobs_bad_input_is_a_clear_error(run, argv, error_type, result_validator):
    code, out, _ = run("jobs.py", *argv, "--quiet")

    assert code == 1 and out["error_type"] == error_type
    result_validator.validate(out)


def test_a_finished_job_says_it_finished_and_how_to_read_its_cost_not_only_created():
    from types import SimpleNamespace

    from autodl_esd.deploy import submission

    record = {"state": submission.SUBMITTED, "done": True, "name": "train", "deployment_uuid": "d-1",
              "result": {"deployment_uuid": "d-1", "finish": {"ended_by": "target_reached"}}}
    message, hint = submission._explain(record, SimpleNamespace(job_id="s-1"), alive=False)
    assert "运行完毕" in message and "d-1" in message
    assert "cost_report.py --deployment-uuid d-1" in hint and "不要重新提交" in hint
    del record["result"]["finish"]  # a ReplicaSet, or no --wait-finished: created, and that is all
    message, _ = submission._explain(record, SimpleNamespace(job_id="s-1"), alive=False)
    assert message == "部署已创建: d-1。"
