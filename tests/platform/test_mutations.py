"""Scripts that change something: set_replicas, stop_container, stop/delete_deployment, blacklist_host.

Each asserts the exact request, the confirmation or type check before it, and the read-back
after it (`verified`).
"""

from __future__ import annotations

import json

import pytest

from helpers import envelope
from helpers.fake_api import (
    AUTH,
    BLACKLIST,
    CONTAINERS,
    CONTAINER_UUID,
    DEP_UUID,
    DEPLOYMENT,
    DEPLOYMENTS,
    MACHINE,
    OPERATE,
    OTHER_UUID,
    PASSWORD,
    REPLICA_NUM,
    STOP_CONTAINER,
    body,
    container,
    deployment,
    expect_containers,
    expect_deployment,
    failed,
    ok,
    page,
)

pytestmark = pytest.mark.usefixtures("fast_read_back")  # read-backs after a change need no real pauses


# --- set_replicas -----------------------------------------------------------------------


def test_set_replicas_sends_and_reads_back(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=2), name="svc")
    api.put(REPLICA_NUM, json=envelope(None), match=[body(deployment_uuid=DEP_UUID, replica_num=4), AUTH])
    expect_deployment(api, deployment(replica_num=4))
    code, document, _ = run("set_replicas.py", "--name", "svc", "--replica-num", "4")
    ok(code, document, result_validator)
    assert (document["previous_replica_num"], document["replica_num"], document["verified"]) == (2, 4, True)


def test_set_replicas_reads_back_until_the_platform_shows_it(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=2))
    api.put(REPLICA_NUM, json=envelope(None))
    expect_deployment(api, deployment(replica_num=2))
    expect_deployment(api, deployment(replica_num=1))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replicas", "1")
    ok(code, document, result_validator)
    assert document["verified"] is True


def test_set_replicas_not_verified_is_said(run, api, result_validator, monkeypatch):
    from autodl_esd.platform import resolve

    monkeypatch.setattr(resolve, "READ_BACK_ATTEMPTS", 2)
    expect_deployment(api, deployment(replica_num=2))
    api.put(REPLICA_NUM, json=envelope(None))
    expect_deployment(api, deployment(replica_num=2))
    expect_deployment(api, deployment(replica_num=2))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "3")
    ok(code, document, result_validator)
    assert document["verified"] is False


@pytest.mark.parametrize("kind", ["Job", "Container"])
def test_set_replicas_refuses_other_types_before_calling(run, api, kind, result_validator):
    expect_deployment(api, deployment(kind=kind))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "3")
    failed(code, document, result_validator, "usage_error")
    assert "ReplicaSet" in document["message"]
    assert document["details"]["deployment_type"] == kind


def test_set_replicas_refuses_a_stopped_deployment(run, api, result_validator):
    expect_deployment(api, deployment(status="stopped"))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "3")
    failed(code, document, result_validator, "usage_error")


def test_set_replicas_unknown_deployment(run, api, result_validator):
    expect_deployment(api, None)
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "3")
    failed(code, document, result_validator, "not_found")


@pytest.mark.parametrize("value", ["-1", "two", ""])
def test_set_replicas_needs_a_count(run, value, result_validator):
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", value)
    failed(code, document, result_validator, "usage_error")


def test_set_replicas_to_zero_without_yes_describes_and_does_nothing(run, api, result_validator):
    # Zero replicas stops every container, like stop_deployment: it needs --yes too.
    expect_deployment(api, deployment(replica_num=2), name="svc")
    expect_containers(api, [container(), container(uuid=f"{DEP_UUID}-0a0a0a0a0a-bbbbbbbb", status="starting")])
    code, document, _ = run("set_replicas.py", "--name", "svc", "--replica-num", "0")  # the strict mock fails on any PUT
    failed(code, document, result_validator, "confirmation_required")
    assert DEP_UUID in document["message"] and "2 个" in document["message"]
    assert document["details"]["live_container_count"] == 2 and document["details"]["deployment"]["name"] == "svc"
    assert "--yes" in document["hint"]


def test_set_replicas_to_zero_with_yes(run, api, result_validator):
    expect_deployment(api, deployment(replica_num=2))
    api.put(REPLICA_NUM, json=envelope(None), match=[body(deployment_uuid=DEP_UUID, replica_num=0), AUTH])
    expect_deployment(api, deployment(replica_num=0))
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "0", "--yes")
    ok(code, document, result_validator)
    assert (document["replica_num"], document["verified"]) == (0, True)


# --- stop_container ---------------------------------------------------------------------


def expect_container(api, item):
    expect_containers(api, [item] if item else [], container_uuid=CONTAINER_UUID, released=True)


def test_stop_container_without_replacement(run, api, result_validator):
    expect_container(api, container())
    expect_deployment(api, deployment(replica_num=3))
    api.put(STOP_CONTAINER, json=envelope(None), match=[body(deployment_container_uuid=CONTAINER_UUID, decrease_one_replica_num=True), AUTH])
    expect_container(api, container(status="shutting_down"))
    expect_deployment(api, deployment(replica_num=2))
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--decrease-one-replica-num")
    ok(code, document, result_validator)
    assert (document["container_status"], document["verified"], document["replica_num"]) == ("shutting_down", True, 2)
    assert document["machine_id"] == MACHINE
    assert PASSWORD not in json.dumps(document)


def test_stop_container_public_fields_only_when_asked(run, api, result_validator):
    expect_container(api, container())
    expect_deployment(api, deployment())
    api.put(STOP_CONTAINER, json=envelope(None), match=[body(
        deployment_container_uuid=CONTAINER_UUID, decrease_one_replica_num=False, no_cache=True, cmd_before_shutdown="sync",
    )])
    expect_container(api, container(status="shutdown"))
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--no-cache", "--cmd-before-shutdown", "sync")
    ok(code, document, result_validator)
    assert document["verified"] is True
    # Without --decrease-one-replica-num: the deployment's unchanged replica_num, never null.
    assert document["replica_num"] == deployment()["replica_num"] and "expected_replica_num" not in document


def test_stop_container_never_reports_a_null_replica_num(run, api, result_validator, monkeypatch):
    from autodl_esd.platform import resolve

    monkeypatch.setattr(resolve, "READ_BACK_ATTEMPTS", 1)
    expect_container(api, container())
    expect_deployment(api, None)  # the deployment cannot be looked up: replica_num unknown
    api.put(STOP_CONTAINER, json=envelope(None))
    expect_container(api, container(status="shutdown"))
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID)
    ok(code, document, result_validator)
    assert "replica_num" not in document


def test_stop_container_decrease_on_a_job_warns(run, api, result_validator):
    expect_container(api, container())
    expect_deployment(api, deployment(kind="Job"))
    api.put(STOP_CONTAINER, json=envelope(None))
    expect_container(api, container(status="shutdown"))
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--decrease-one-replica-num")
    ok(code, document, result_validator)
    assert [w["code"] for w in document["warnings"]] == ["decrease_not_replicaset"]


@pytest.mark.parametrize("status", ["shutdown", "shutting_down"])
def test_stop_container_already_stopped_does_nothing(run, api, result_validator, status):
    expect_container(api, container(status=status))
    expect_deployment(api, deployment())
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID, "--decrease-one-replica-num")
    ok(code, document, result_validator)
    assert (document["changed"], document["container_status"]) == (False, status)


def test_stop_container_unknown(run, api, result_validator):
    expect_container(api, None)
    code, document, _ = run("stop_container.py", "--container-uuid", CONTAINER_UUID)
    failed(code, document, result_validator, "not_found")


@pytest.mark.parametrize(("script", "flag", "value"), [
    ("stop_container.py", "--container-uuid", DEP_UUID),
    ("stop_container.py", "--container-uuid", "nonexistent-uuid"),
    ("blacklist_host.py", "--container-uuid", "nonexistent-uuid"),
    ("stop_deployment.py", "--deployment-uuid", "my-service"),
    ("find_faulty_hosts.py", "--deployment-uuid", "my-service"),
    ("discover_services.py", "--deployment-uuid", "my-service"),
])
def test_malformed_uuid_is_a_usage_error(run, script, flag, value, result_validator):
    """Bad input is usage_error (no call made); not_found means well-formed but unknown."""
    code, document, _ = run(script, flag, value)
    failed(code, document, result_validator, "usage_error")
    assert "格式" in document["message"] and document["details"]


# --- before a change is sent -------------------------------------------------------------
# Every error of a mutating script raised before its change left says took_effect: false and
# that nothing was sent (core.cli.run, one place); read-only scripts say nothing of the kind.

BEFORE_THE_SEND = [
    ("set_replicas.py", ["--deployment-uuid", DEP_UUID, "--replica-num", "-1"], "usage_error"),  # argparse
    ("set_replicas.py", ["--deployment-uuid", "my-service", "--replica-num", "1"], "usage_error"),
    ("stop_container.py", ["--container-uuid", "nonexistent-uuid"], "usage_error"),
    ("blacklist_host.py", ["--container-uuid", "nonexistent-uuid", "--expire-minutes", "0"], "usage_error"),
    ("stop_deployment.py", ["--deployment-uuid", "my-service", "--yes"], "usage_error"),
    ("delete_deployment.py", ["--deployment-uuid", "my-service", "--yes"], "usage_error"),
    ("find_faulty_hosts.py", ["--deployment-uuid", "my-service", "--apply", "--yes"], "usage_error"),
    ("guard_deployment.py", ["--deployment-uuid", DEP_UUID, "--yes", "--max-runtime", "0"], "usage_error"),
    ("queue_submit.py", ["/nonexistent/config.json"], "config_error"),
]


@pytest.mark.parametrize(("script", "argv", "error_type"), BEFORE_THE_SEND, ids=[f"{s}-{a[-1]}" for s, a, _ in BEFORE_THE_SEND])
def test_an_error_before_the_send_says_nothing_was_sent(run, result_validator, script, argv, error_type):
    from autodl_esd.core.errors import NOTHING_SENT

    code, document, _ = run(script, *argv)  # no mock: a request would fail the test
    failed(code, document, result_validator, error_type)
    assert document["details"]["took_effect"] is False and document["message"].endswith(NOTHING_SENT), document


def test_an_error_after_reads_but_before_the_send_says_nothing_was_sent(run, api, result_validator):
    from autodl_esd.core.errors import NOTHING_SENT

    expect_deployment(api, None)  # a read went out; no change did
    code, document, _ = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "3")
    failed(code, document, result_validator, "not_found")
    assert document["details"]["took_effect"] is False and NOTHING_SENT in document["message"]


def test_an_interrupt_before_the_send_says_nothing_was_sent(run, api, monkeypatch, result_validator):
    from autodl_esd.core.errors import Interrupted
    from autodl_esd.platform import resolve

    def interrupted(*_args, **_kwargs):
        raise Interrupted("SIGINT")

    monkeypatch.setattr(resolve, "resolve_from_args", interrupted)
    code, document, _ = run("stop_deployment.py", "--name", "svc", "--yes")
    failed(code, document, result_validator, "interrupted", exit_code=130)
    assert document["details"]["took_effect"] is False


def test_confirmation_required_says_took_effect_false_in_its_own_words(run, api, result_validator):
    expect_deployment(api, deployment(), name="svc")
    expect_containers(api, [container()])
    code, document, _ = run("stop_deployment.py", "--name", "svc")
    failed(code, document, result_validator, "confirmation_required")
    assert document["details"]["took_effect"] is False and document["message"].count("什么都没有做") == 1


def test_read_only_scripts_say_nothing_about_effects(run, result_validator):
    code, document, _ = run("list_containers.py", "--deployment-uuid", "my-service")
    failed(code, document, result_validator, "usage_error")
    assert "took_effect" not in document["details"]


def test_every_mutating_parser_is_a_mutating_tool():
    """The parser's flag (what core.cli.run acts on) agrees with the MCP catalog's policy."""
    from autodl_esd.mcp import catalog
    from helpers import ROOT, SCRIPTS, load_script

    flagged = {path.name for path in [ROOT / "queue_submit.py", *SCRIPTS.glob("*.py")]
               if "def build_parser" in path.read_text(encoding="utf-8") and getattr(load_script(path).build_parser(), "mutating", False)}
    tools = catalog.build_catalog()
    mutating_tools = {tool.script.name for tool in tools.values() if tool.policy.mutating}
    assert flagged <= mutating_tools and {"queue_submit.py", "set_replicas.py", "stop_deployment.py", "delete_deployment.py",
                                          "stop_container.py", "blacklist_host.py", "guard_deployment.py"} <= flagged


# --- stop_deployment / delete_deployment ------------------------------------------------


@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py"])
def test_destructive_without_yes_describes_and_does_nothing(run, api, script, result_validator):
    expect_deployment(api, deployment(), name="svc")
    expect_containers(api, [container(), container(uuid=f"{DEP_UUID}-0a0a0a0a0a-bbbbbbbb", status="starting")])
    code, document, _ = run(script, "--name", "svc")  # the strict mock fails on any PUT/DELETE
    failed(code, document, result_validator, "confirmation_required")
    details = document["details"]
    assert details["deployment"]["name"] == "svc" and details["deployment"]["deployment_type"] == "ReplicaSet"
    assert details["live_container_count"] == 2
    assert PASSWORD not in json.dumps(document)


def test_stop_deployment_with_yes(run, api, result_validator):
    expect_deployment(api, deployment())
    expect_containers(api, [container()])
    expect_containers(api, [container()], released=True)  # the cost so far, read before the stop
    api.put(OPERATE, json=envelope(None), match=[body(deployment_uuid=DEP_UUID, operate="stop"), AUTH])
    expect_deployment(api, deployment(status="stopped"))
    code, document, _ = run("stop_deployment.py", "--deployment-uuid", DEP_UUID, "--yes")
    ok(code, document, result_validator)
    assert (document["verified"], document["deployment"]["status"]) == (True, "stopped")
    # Named as what it is: the containers as they were before the stop (status still running).
    assert "stopped_containers" not in document
    assert [(c["container_uuid"], c["status"]) for c in document["containers_before_stop"]] == [(CONTAINER_UUID, "running")]
    assert document["containers_before_stop_count"] == 1


def test_stop_deployment_already_stopped(run, api, result_validator):
    expect_deployment(api, deployment(status="stopped"))
    code, document, _ = run("stop_deployment.py", "--deployment-uuid", DEP_UUID, "--yes")
    ok(code, document, result_validator)
    assert document["changed"] is False


def test_stop_deployment_ambiguous_name_never_stops(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([deployment(), deployment(uuid=OTHER_UUID)]))
    code, document, _ = run("stop_deployment.py", "--name", "svc", "--yes")
    failed(code, document, result_validator, "usage_error")
    assert len(document["details"]["candidates"]) == 2


def test_delete_deployment_with_yes(run, api, result_validator):
    expect_deployment(api, deployment(status="stopped"))
    expect_containers(api, [])
    expect_containers(api, [], released=True)  # the last cost figure, read before the delete
    api.delete(DEPLOYMENT, json=envelope(None), match=[body(deployment_uuid=DEP_UUID), AUTH])
    expect_deployment(api, None)
    code, document, _ = run("delete_deployment.py", "--deployment-uuid", DEP_UUID, "--yes")
    ok(code, document, result_validator)
    assert (document["deleted"], document["verified"]) == (True, True)


def test_delete_deployment_read_back_failure_is_reported_not_raised(run, api, result_validator, monkeypatch):
    from autodl_esd.platform import resolve

    monkeypatch.setattr(resolve, "READ_BACK_ATTEMPTS", 1)
    expect_deployment(api, deployment(status="stopped"))
    expect_containers(api, [])
    api.delete(DEPLOYMENT, json=envelope(None))
    api.post(DEPLOYMENTS, json=envelope(None, code="BadRequest", msg="参数错误"))
    code, document, _ = run("delete_deployment.py", "--deployment-uuid", DEP_UUID, "--yes")
    ok(code, document, result_validator)
    assert document["verified"] is False and "read_back_error" in document


@pytest.mark.parametrize(("flag", "value", "filters"), [("--deployment-uuid", DEP_UUID, {}), ("--name", "svc", {"name": "svc"})])
def test_delete_deployment_unknown(run, api, flag, value, filters, result_validator):
    # A repeated delete (the first timed out) lands here: still not_found, so a typo never
    # looks like success, but the hint says a just-deleted deployment is gone for good.
    expect_deployment(api, None, **filters)
    code, document, _ = run("delete_deployment.py", flag, value, "--yes")
    failed(code, document, result_validator, "not_found")
    assert "删除已经生效" in document["hint"] and "list_deployments.py" in document["hint"]


def test_not_found_hint_of_other_scripts_says_nothing_about_deleting(run, api, result_validator):
    expect_deployment(api, None, name="svc")
    code, document, _ = run("stop_deployment.py", "--name", "svc", "--yes")
    failed(code, document, result_validator, "not_found")
    assert "删除已经生效" not in document["hint"]


# --- blacklist_host ---------------------------------------------------------------------

ENTRY = {"machine_id": MACHINE, "data_center": "westDC2", "msg": "启动慢", "expired_time": "2026-01-06T16:34:57+08:00"}


def test_blacklist_host_names_the_machine_and_verifies(run, api, result_validator):
    expect_container(api, container(status="shutdown"))
    api.post(BLACKLIST, json=envelope(None), match=[body(deployment_container_uuid=CONTAINER_UUID, comment="启动慢", expire_in_minutes=4320), AUTH])
    api.get(BLACKLIST, json=envelope([ENTRY]))
    expect_containers(api, [container(), container(uuid=f"{DEP_UUID}-{MACHINE}-00000002", status="shutdown"),
                            container(uuid=f"{DEP_UUID}-0123456789-00000003", machine="0123456789")])
    code, document, _ = run("blacklist_host.py", "--container-uuid", CONTAINER_UUID, "--comment", "启动慢", "--expire-minutes", "4320")
    ok(code, document, result_validator)
    # Only the live container on the blacklisted machine is left there; moving it keeps replica_num.
    assert [c["container_uuid"] for c in document["still_on_machine"]] == [CONTAINER_UUID]
    assert document["move_commands"] == [f"python3 scripts/stop_container.py --container-uuid {CONTAINER_UUID}"]
    assert (document["machine_id"], document["data_center"], document["gpu_name"]) == (MACHINE, "westDC2", "RTX 4090")
    assert (document["verified"], document["blacklist_entry"]) == (True, ENTRY)
    assert (document["expire_in_minutes"], document["expire_default"]) == (4320, False)


def test_blacklist_host_private_cloud_cannot_verify(run, api, result_validator):
    expect_container(api, container())
    api.post(BLACKLIST, json=envelope(None), match=[body(deployment_container_uuid=CONTAINER_UUID)])
    api.get(BLACKLIST, status=404, body="404 page not found")
    api.post(CONTAINERS, status=502, body="bad gateway")  # the look after the blacklisting fails: still a success
    code, document, _ = run("blacklist_host.py", "--container-uuid", CONTAINER_UUID)
    ok(code, document, result_validator)
    assert document["still_on_machine"] == [] and document["still_on_machine_error"]
    assert document["verified"] is False and document["read_back_error"]
    # No flag: the integer the platform applies, flagged as its default; the private-cloud note is text.
    assert (document["expire_in_minutes"], document["expire_default"]) == (1440, True)
    assert "私有云" in document["expiry_note"]


@pytest.mark.parametrize("minutes", ["0", "43201", "1.5"])
def test_blacklist_host_expiry_is_checked_locally(run, minutes, result_validator):
    code, document, _ = run("blacklist_host.py", "--container-uuid", CONTAINER_UUID, "--expire-minutes", minutes)
    failed(code, document, result_validator, "usage_error")


def test_blacklist_host_unknown_container(run, api, result_validator):
    expect_container(api, None)
    code, document, _ = run("blacklist_host.py", "--container-uuid", CONTAINER_UUID)
    failed(code, document, result_validator, "not_found")
