"""A change whose answer is lost: every mutating script reads back and says `took_effect`.

The platform may have carried out a stop, delete, scale, container stop or blacklisting
whose answer never came (timeout, reset, 5xx). Each script then looks again for longer than
the request usually lands and reports `took_effect: true` (a success) or `"unknown"`
(an error with what it last read): not seeing a change proves nothing, the platform can
commit it later. `false` is reserved for a refusal. The hint never invites a blind repeat.
"""

from __future__ import annotations

import requests

import pytest

from helpers import envelope
from helpers.fake_api import (
    BLACKLIST,
    CONTAINER_UUID,
    CONTAINERS,
    DEP_UUID,
    DEPLOYMENT,
    DEPLOYMENTS,
    MACHINE,
    OPERATE,
    REPLICA_NUM,
    STOP_CONTAINER,
    body,
    container,
    deployment,
    failed,
    list_body,
    ok,
    page,
)

TIMEOUT = {"body": requests.exceptions.ReadTimeout("Read timed out")}
UNAVAILABLE = {"status": 503, "json": envelope(None, code="ServiceUnavailable", msg="服务暂时不可用")}


@pytest.fixture(autouse=True)
def fake_time(monkeypatch):
    """effects' looks advance a fake clock instead of sleeping; a 1 s HTTP timeout -> 6 s grace."""
    from autodl_esd.platform import effects

    now = [0.0]
    monkeypatch.setattr(effects, "_now", lambda: now[0])
    monkeypatch.setattr(effects, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    monkeypatch.setenv("AUTODL_HTTP_TIMEOUT", "1")
    return now


def deployments_by_uuid(mocked, *items):
    """Answers to the deployment list filtered by uuid, in order; the last one repeats."""
    for item in items:
        mocked.post(DEPLOYMENTS, json=page([item] if item else []), match=[list_body(deployment_uuid=DEP_UUID)])


def calls(mocked, method, url):
    return [c for c in mocked.calls if c.request.method == method and c.request.url == url]


def test_delete_whose_answer_was_lost_and_retry_says_not_found_took_effect(run, mocked, result_validator):
    deployments_by_uuid(mocked, deployment(status="stopped"), None)
    mocked.post(CONTAINERS, json=page([]))
    mocked.delete(DEPLOYMENT, **TIMEOUT)
    mocked.delete(DEPLOYMENT, json=envelope(None, code="RecordNotFoundError", msg="记录不存在"))
    code, document, _ = run("delete_deployment.py", "--deployment-uuid", DEP_UUID, "--yes", "--quiet")
    ok(code, document, result_validator)
    assert (document["took_effect"], document["verified"], document["deleted"]) == (True, True, True)
    assert document["answer_lost"]["code"] == "RecordNotFoundError"


def test_stop_whose_answers_all_timed_out_but_happened_is_a_success(run, mocked, result_validator):
    deployments_by_uuid(mocked, deployment(), deployment(), deployment(status="stopped"))
    mocked.post(CONTAINERS, json=page([container()]))
    mocked.put(OPERATE, **TIMEOUT)
    code, document, err = run("stop_deployment.py", "--deployment-uuid", DEP_UUID, "--yes")
    ok(code, document, result_validator)
    assert (document["took_effect"], document["verified"]) == (True, True)
    assert document["looks"] == 2 and "读回确认" in err
    assert len(calls(mocked, "PUT", OPERATE)) == 4  # an absolute stop may be retried by the client


def test_scale_not_visible_after_the_grace_period_is_unknown_with_what_was_read(run, mocked, result_validator, fake_time):
    deployments_by_uuid(mocked, deployment(replica_num=2))
    mocked.put(REPLICA_NUM, **UNAVAILABLE)
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "4", "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    details = document["details"]
    # Not seen is no proof it did not happen: the platform may commit the write later.
    assert details["took_effect"] == "unknown" and details["deployment_uuid"] == DEP_UUID
    assert details["last_seen"] == {"status": "running", "replica_num": 2, "running_num": 2}
    assert "尚未看到变化" in document["message"] and "仍在途中" in document["message"]
    # Looked for at least the HTTP timeout plus the margin, with several fresh reads.
    assert details["looked_for_seconds"] >= 1 + 5 and details["looks"] >= 3
    assert details["looks_answered"] == details["looks"]
    assert "list_deployments.py" in document["hint"]
    assert "重新执行同一命令也无害" in document["hint"]  # an absolute count: repeating is harmless


def test_a_refused_change_did_not_take_effect_and_is_not_read_back(run, mocked, result_validator):
    deployments_by_uuid(mocked, deployment(replica_num=2))
    mocked.put(REPLICA_NUM, json=envelope(None, code="BadRequest", msg="部署已停止，无法设置副本数"))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "4", "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    assert document["details"]["took_effect"] is False
    assert len(calls(mocked, "POST", DEPLOYMENTS)) == 1  # the resolve only


def test_stop_container_with_decrease_is_sent_once_and_unknown_says_do_not_repeat(run, mocked, result_validator):
    lookup = [list_body(deployment_uuid=DEP_UUID, container_uuid=CONTAINER_UUID, released=True)]
    mocked.post(CONTAINERS, json=page([container()]), match=lookup)
    mocked.post(CONTAINERS, **UNAVAILABLE, match=lookup)  # every read-back fails
    deployments_by_uuid(mocked, deployment(replica_num=3))
    mocked.put(STOP_CONTAINER, **TIMEOUT)
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--decrease-one-replica-num", "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    details = document["details"]
    assert details["took_effect"] == "unknown" and details["container_uuid"] == CONTAINER_UUID
    assert details["looks_answered"] == 0 and details["read_back_error"]
    assert "不要直接重复执行" in document["hint"] and "list_containers.py" in document["hint"]
    # Relative change: never retried blindly by the HTTP layer either.
    assert len(calls(mocked, "PUT", STOP_CONTAINER)) == 1


def test_stop_container_not_visible_after_grace_is_unknown_and_tells_not_to_repeat(run, mocked, result_validator):
    lookup = [list_body(deployment_uuid=DEP_UUID, container_uuid=CONTAINER_UUID, released=True)]
    mocked.post(CONTAINERS, json=page([container()]), match=lookup)
    deployments_by_uuid(mocked, deployment(replica_num=3))
    mocked.put(STOP_CONTAINER, **UNAVAILABLE)
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--decrease-one-replica-num", "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    details = document["details"]
    assert details["took_effect"] == "unknown"
    assert details["last_seen"] == {"container_status": "running", "replica_num": 3}
    assert details["looks_answered"] == details["looks"] >= 3 and details["looked_for_seconds"] >= 1 + 5
    assert "不要直接重复执行" in document["hint"] and "list_containers.py" in document["hint"]
    assert len(calls(mocked, "PUT", STOP_CONTAINER)) == 1


def test_blacklist_on_the_private_cloud_with_a_lost_answer_is_unknown(run, mocked, result_validator):
    mocked.post(CONTAINERS, json=page([container()]))
    mocked.post(BLACKLIST, **TIMEOUT)
    mocked.get(BLACKLIST, status=404, body="404 page not found")
    code, document, _ = run("blacklist_host.py", "--container-uuid", CONTAINER_UUID, "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    details = document["details"]
    assert details["took_effect"] == "unknown" and details["machine_id"] == MACHINE
    assert "list_blacklist.py" in document["hint"]


def test_blacklist_with_a_lost_answer_found_in_the_list(run, mocked, result_validator):
    entry = {"machine_id": MACHINE, "data_center": "westDC2", "msg": "", "expired_time": "2026-01-06T16:34:57+08:00"}
    mocked.post(CONTAINERS, json=page([container()]))
    mocked.post(BLACKLIST, **UNAVAILABLE)
    mocked.get(BLACKLIST, json=envelope([entry]))
    code, document, _ = run("blacklist_host.py", "--container-uuid", CONTAINER_UUID, "--quiet")
    ok(code, document, result_validator)
    assert (document["took_effect"], document["blacklist_entry"]) == (True, entry)


def test_an_answered_change_says_it_took_effect(run, mocked, result_validator):
    deployments_by_uuid(mocked, deployment(replica_num=2), deployment(replica_num=4))
    mocked.put(REPLICA_NUM, json=envelope(None), match=[body(deployment_uuid=DEP_UUID, replica_num=4)])
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "4", "--quiet")
    ok(code, document, result_validator)
    assert (document["took_effect"], document["verified"]) == (True, True) and "answer_lost" not in document


def test_interrupt_while_the_change_is_in_flight_says_it_may_have_happened(run, mocked, result_validator, monkeypatch):
    from autodl_esd.platform import api
    from autodl_esd.core.errors import Interrupted

    deployments_by_uuid(mocked, deployment())
    mocked.post(CONTAINERS, json=page([container()]))

    def interrupted(*_args, **_kwargs):
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(api, "stop_deployment", interrupted)
    code, document, _ = run("stop_deployment.py", "--deployment-uuid", DEP_UUID, "--yes", "--quiet")
    failed(code, document, result_validator, "interrupted", exit_code=130)
    details = document["details"]
    assert (details["took_effect"], details["deployment_uuid"], details["signal"]) == ("unknown", DEP_UUID, "SIGTERM")
    assert "list_deployments.py --deployment-uuid" in document["hint"] and "不要直接重复" in document["hint"]
    assert "interrupt_hint" not in details


def test_find_faulty_hosts_apply_with_a_lost_answer_reports_took_effect(monkeypatch):
    """The library path (find_faulty_hosts --apply) goes through the same read-back."""
    from autodl_esd.platform import api, host_health
    from autodl_esd.core.errors import ApiError
    from autodl_esd.core.output import Progress

    def lost(*_args, **_kwargs):
        raise ApiError("timeout", msg="等待响应超时", retryable=True, ambiguous=True)

    monkeypatch.setattr(api, "add_to_blacklist", lost)
    monkeypatch.setattr(api, "list_blacklist", lambda client: [{"machine_id": MACHINE}])
    plan = [{"machine_id": MACHINE, "data_center": "westDC2", "gpu_name": "RTX 4090", "container_uuid": CONTAINER_UUID,
             "failures": 3, "failure_reasons": {}, "comment": "x"}]
    result = host_health.apply_blacklist(object(), plan, None, Progress(quiet=True))
    assert [step["machine_id"] for step in result["applied"]] == [MACHINE] and result["verified"] is True


def test_a_refused_relative_change_did_not_take_effect(run, mocked, result_validator):
    """An HTTP 200 business error is the platform's own no: false, nothing read back, sent once."""
    lookup = [list_body(deployment_uuid=DEP_UUID, container_uuid=CONTAINER_UUID, released=True)]
    mocked.post(CONTAINERS, json=page([container()]), match=lookup)
    deployments_by_uuid(mocked, deployment(replica_num=3))
    mocked.put(STOP_CONTAINER, json=envelope(None, code="BadRequest", msg="容器状态不允许停止"))
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--decrease-one-replica-num", "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    assert document["details"]["took_effect"] is False and "last_seen" not in document["details"]
    assert len(calls(mocked, "PUT", STOP_CONTAINER)) == 1
    assert len(calls(mocked, "POST", CONTAINERS)) == 1  # the lookup only: a refusal needs no look


def test_an_error_without_took_effect_is_unknown_never_false():
    """Consumers (bulk, move_replicas, the autoscaler, guards) read took_effect through one
    rule: false only when the error says the platform refused."""
    from autodl_esd.platform.effects import took_effect_of
    from autodl_esd.core.errors import ApiError

    assert took_effect_of(ApiError("lost", ambiguous=True)) == "unknown"
    refused = ApiError("no")
    refused.details["took_effect"] = False
    assert took_effect_of(refused) is False


def test_move_replicas_with_a_lost_answer_reports_unknown_with_how_to_check(monkeypatch):
    from autodl_esd.platform import api, host_health, resolve
    from autodl_esd.core.errors import ApiError
    from autodl_esd.core.output import Progress

    def lost(*_args, **_kwargs):
        raise ApiError("timeout", msg="等待响应超时", retryable=True, ambiguous=True)

    monkeypatch.setattr(api, "stop_container", lost)
    monkeypatch.setattr(resolve, "resolve_container", lambda client, uuid, deployment_uuid=None: container())
    partial: dict = {}
    moved = host_health.move_replicas(object(), [{"container_uuid": CONTAINER_UUID}], DEP_UUID, Progress(quiet=True), partial)
    assert [(m["outcome"], m["took_effect"]) for m in moved] == [("failed", "unknown")]
    assert moved[0]["check"].startswith("python3 scripts/list_containers.py")


@pytest.mark.parametrize(("answer", "took_effect"), [
    (UNAVAILABLE, "unknown"),
    ({"json": envelope(None, code="BadRequest", msg="部署已停止，无法设置副本数")}, False),
], ids=["lost", "refused"])
def test_an_error_after_the_send_keeps_its_own_took_effect_and_never_says_nothing_was_sent(
        run, mocked, result_validator, answer, took_effect):
    from autodl_esd.core.errors import NOTHING_SENT

    deployments_by_uuid(mocked, deployment(replica_num=2))
    mocked.put(REPLICA_NUM, **answer)
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "4", "--quiet")
    failed(code, document, result_validator, "api_error", exit_code=3)
    assert document["details"]["took_effect"] == took_effect and NOTHING_SENT not in document["message"]
