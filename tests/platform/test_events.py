"""container_events.py: one read from an offset, and --follow until containers reach a status."""

from __future__ import annotations

import pytest

from helpers import envelope
from helpers.fake_api import AUTH, CONTAINER_UUID, DEP_UUID, DEPLOYMENTS, EVENTS, body, deployment, expect_deployment

pytestmark = pytest.mark.usefixtures("fast_read_back")  # read-backs after a change need no real pauses

C2 = f"{DEP_UUID}-0a0a0a0a0a-bbbbbbbb"
FAST = ("--interval", "0.01", "--quiet")


def event(uuid, status, at="2026-01-05T20:35:00+08:00"):
    return {"deployment_container_uuid": uuid, "status": status, "created_at": at}


def events_from(api, offset, items, **extra):
    api.post(EVENTS, json=envelope({"list": items}), match=[body(deployment_uuid=DEP_UUID, page_index=1, page_size=100, offset=offset, **extra), AUTH])


def test_events_from_an_offset(run, api, result_validator):
    expect_deployment(api, deployment())
    events_from(api, 5, [event(CONTAINER_UUID, "running")])
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--offset", "5")
    assert code == 0
    result_validator.validate(document)
    assert (document["offset"], document["next_offset"], document["count"]) == (5, 6, 1)
    assert "reached" not in document


def test_events_empty_is_success(run, api, result_validator):
    expect_deployment(api, deployment(), name="svc")
    events_from(api, 0, [])
    code, document, _ = run("container_events.py", "--name", "svc")
    assert code == 0
    result_validator.validate(document)
    assert (document["items"], document["next_offset"]) == ([], 0)


def test_events_of_one_container_find_the_deployment_from_its_uuid(run, api, result_validator):
    expect_deployment(api, deployment())
    events_from(api, 0, [event(CONTAINER_UUID, "running")], deployment_container_uuid=CONTAINER_UUID)
    code, document, _ = run("container_events.py", "--container-uuid", CONTAINER_UUID)
    assert code == 0
    result_validator.validate(document)
    assert document["deployment_uuid"] == DEP_UUID


def test_events_of_a_container_of_another_deployment_are_refused(run, api, result_validator):
    expect_deployment(api, deployment(), name="svc")
    other = "53a677bb3e281b8-f94411a60c-a394fb30"
    code, document, _ = run("container_events.py", "--name", "svc", "--container-uuid", other, "--follow")
    assert (code, document["error_type"]) == (1, "usage_error"), document
    result_validator.validate(document)
    assert "53a677bb3e281b8" in document["message"]


def test_events_need_a_deployment(run, result_validator):
    code, document, _ = run("container_events.py", "--container-uuid", "short")
    assert (code, document["error_type"]) == (1, "usage_error")
    result_validator.validate(document)


def test_follow_until_the_replicas_run(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=2), name="svc")
    events_from(api, 0, [event(CONTAINER_UUID, "creating"), event(CONTAINER_UUID, "running")])
    events_from(api, 2, [])
    events_from(api, 2, [event(C2, "running")])
    code, document, stderr = run("container_events.py", "--name", "svc", "--follow", "--interval", "0.01")
    assert code == 0, document
    result_validator.validate(document)
    assert document["reached"] is True
    assert document["reached_containers"] == [CONTAINER_UUID, C2]
    assert (document["target_count"], document["until"], document["next_offset"], document["count"]) == (2, "running", 3, 3)
    assert C2 in stderr  # new events are logged as they arrive


def test_follow_does_not_count_a_replica_that_ran_and_stopped(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=2))
    crashed = [event(CONTAINER_UUID, "running"), event(CONTAINER_UUID, "shutting_down"), event(C2, "running")]
    events_from(api, 0, crashed)
    events_from(api, 3, [])
    # The timeout leaves room for the one registered poll even on a loaded machine (0.05 s did
    # not: a stall before the first poll timed out without it); the 0.05 s interval keeps the
    # failing polls after it (nothing more is registered) under the ten-in-a-row limit.
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--timeout", "0.3",
                            "--interval", "0.05", "--quiet")
    assert (code, document["error_type"]) == (2, "startup_timeout"), document
    result_validator.validate(document)
    assert document["details"]["reached_containers"] == [C2]


def test_follow_until_a_stop_status_counts_stopped_containers(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=2))
    events_from(api, 0, [event(CONTAINER_UUID, "shutting_down"), event(CONTAINER_UUID, "shutdown")])
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--until", "shutting_down", "--count", "1", *FAST)
    assert code == 0, document
    assert document["reached_containers"] == [CONTAINER_UUID]


def test_follow_count_and_until(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=3))
    events_from(api, 0, [event(CONTAINER_UUID, "shutdown")])
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--until", "shutdown", "--count", "1", *FAST)
    assert code == 0
    result_validator.validate(document)
    assert document["reached_containers"] == [CONTAINER_UUID]


def test_follow_job_target_is_parallelism(run, api, result_validator):
    job = deployment(kind="Job", replica_num=10, parallelism_num=1)
    expect_deployment(api, job)
    events_from(api, 0, [event(CONTAINER_UUID, "running")])
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", *FAST)
    assert code == 0
    assert document["target_count"] == 1


def test_follow_timeout_is_startup_timeout_with_the_offset_to_continue(run, mocked, result_validator):
    mocked.post(DEPLOYMENTS, json=envelope({"list": [deployment()], "max_page": 1}))
    mocked.post(EVENTS, json=envelope({"list": [event(CONTAINER_UUID, "starting")]}), match=[body(deployment_uuid=DEP_UUID, page_index=1, page_size=100, offset=0)])
    mocked.post(EVENTS, json=envelope({"list": []}), match=[body(deployment_uuid=DEP_UUID, page_index=1, page_size=100, offset=1)])
    # Room for at least one poll from offset 1 (the strict mock wants it) on a loaded machine.
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--timeout", "0.3", *FAST)
    assert (code, document["error_type"]) == (2, "startup_timeout")
    result_validator.validate(document)
    details = document["details"]
    assert (details["deployment_uuid"], details["next_offset"], details["reached"]) == (DEP_UUID, 1, False)
    assert details["reached_containers"] == [] and details["target_count"] == 2


def test_follow_rides_out_a_failed_poll(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=1))
    events_from(api, 0, [])
    for _ in range(4):  # one poll = the client's four attempts
        api.post(EVENTS, status=503, json=envelope(None, code="ServiceUnavailable", msg="busy"))
    events_from(api, 0, [event(CONTAINER_UUID, "running")])
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", *FAST)
    assert code == 0, document
    assert document["reached"] is True


@pytest.mark.parametrize("flag", [("--interval", "0"), ("--timeout", "-1"), ("--until", "done"), ("--count", "0"), ("--offset", "-2")])
def test_follow_flags_are_checked(run, flag, result_validator):
    code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", *flag)
    assert (code, document["error_type"]) == (1, "usage_error")


def test_container_events_rejects_a_malformed_container_uuid_before_any_call(run, mocked):
    code, out, _ = run("container_events.py", "--deployment-uuid", "833f1cd5a764fa3", "--container-uuid", "not-a-uuid")

    assert code == 1 and out["error_type"] == "usage_error"
    assert out["details"]["expected_format"]
    assert not mocked.calls
