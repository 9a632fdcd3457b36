"""find_faulty_hosts.py: the counting rules (host_health) and the script with mocked HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from responses import matchers

from helpers import envelope, url

DEP = "833f1cd5a764fa3"
DEPLOYMENTS = "/api/v1/dev/deployment/list"
CONTAINERS = "/api/v1/dev/deployment/container/list"
EVENTS = "/api/v1/dev/deployment/container/event/list"
BLACKLIST = "/api/v1/dev/deployment/blacklist"
CST = timezone(timedelta(hours=8))
# The script looks back from the real clock, so the fixtures are placed relative to it.
NOW = datetime.now(CST).replace(microsecond=0)
BAD, GOOD, OTHER = "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"


def at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def stopped(machine: str, n: int, *, started: float | None, stopped_: float, status: str = "shutdown") -> dict:
    """A released container that ran from `started` to `stopped_` minutes ago (None: never ran)."""
    return {
        "uuid": f"{DEP}-{machine}-{n:08x}", "machine_id": machine, "status": status, "gpu_name": "RTX 4090",
        "data_center": "westDC2", "created_at": at(stopped_ + 30),
        "started_at": None if started is None else at(started), "stopped_at": at(stopped_),
    }


def running(machine: str, n: int) -> dict:
    return {"uuid": f"{DEP}-{machine}-{n:08x}", "machine_id": machine, "status": "running", "started_at": at(60), "stopped_at": None}


def analyse(containers, deployment_type="ReplicaSet", events=(), min_uptime=300, lookback_hours=24, **deployment):
    from autodl_esd.platform.host_health import analyse_machines

    deployment = {"uuid": DEP, "deployment_type": deployment_type, **deployment}
    return {m["machine_id"]: m for m in analyse_machines(deployment, containers, list(events), min_uptime=min_uptime,
                                                          lookback=timedelta(hours=lookback_hours), now=NOW)}


# --- counting rules ---------------------------------------------------------------------


def test_replicaset_counts_every_exit():
    machines = analyse([stopped(BAD, 1, started=None, stopped_=50),        # never ran
                        stopped(BAD, 2, started=40, stopped_=39.9),         # 6 s
                        stopped(BAD, 3, started=200, stopped_=20),          # 3 h, still an exit
                        running(BAD, 4)])
    bad = machines[BAD]
    assert bad["failures"] == 3 and bad["stopped_containers"] == 3
    assert [e["reason"] for e in bad["evidence"]] == ["never_running", "exited_early", "exited"]
    assert bad["evidence"][1]["uptime_seconds"] == 6.0
    assert bad["blacklist_via"] == f"{DEP}-{BAD}-00000003", "the latest failure carries the blacklisting"


@pytest.mark.parametrize("deployment_type", ["Job", "Container"])
def test_job_and_container_count_only_never_running_or_short_runs(deployment_type):
    machines = analyse([stopped(BAD, 1, started=None, stopped_=50),
                        stopped(BAD, 2, started=40, stopped_=38),          # 2 min < 5 min
                        stopped(BAD, 3, started=200, stopped_=20)],        # finished its work
                       deployment_type=deployment_type)
    assert [e["reason"] for e in machines[BAD]["evidence"]] == ["never_running", "exited_early"]


def test_min_uptime_is_the_boundary():
    containers = [stopped(BAD, 1, started=40, stopped_=38)]  # 120 s
    assert analyse(containers, "Job", min_uptime=120)[BAD]["failures"] == 0
    assert analyse(containers, "Job", min_uptime=121)[BAD]["failures"] == 1


def test_containers_stopped_with_the_deployment_do_not_count():
    containers = [stopped(BAD, 1, started=40, stopped_=10), stopped(BAD, 2, started=40, stopped_=30)]
    machines = analyse(containers, stopped_at=at(15))
    assert [e["container_uuid"][-1] for e in machines[BAD]["evidence"]] == ["2"]


def test_lookback_window_drops_old_stops():
    containers = [stopped(BAD, 1, started=None, stopped_=3 * 60), stopped(BAD, 2, started=None, stopped_=30)]
    assert analyse(containers, lookback_hours=1)[BAD]["failures"] == 1
    assert analyse(containers, lookback_hours=4)[BAD]["failures"] == 2


def test_events_fill_in_a_record_without_times():
    record = {"uuid": f"{DEP}-{BAD}-00000001", "machine_id": BAD, "status": "shutdown", "started_at": None, "stopped_at": None}
    events = [{"deployment_container_uuid": record["uuid"], "status": "running", "created_at": at(10)},
              {"deployment_container_uuid": record["uuid"], "status": "shutting_down", "created_at": at(9.5)},
              {"deployment_container_uuid": record["uuid"], "status": "shutdown", "created_at": at(9)}]
    evidence = analyse([record], "Job", events=events)[BAD]["evidence"][0]
    assert (evidence["reason"], evidence["uptime_seconds"]) == ("exited_early", 30.0)


def test_machines_are_sorted_worst_first():
    containers = [stopped(GOOD, 1, started=None, stopped_=5)] + [stopped(BAD, n, started=None, stopped_=n) for n in range(2, 5)]
    assert list(analyse(containers)) == [BAD, GOOD]


# --- the script -------------------------------------------------------------------------


CONTAINER_LIST = (
    [stopped(BAD, n, started=None, stopped_=10 * n) for n in (1, 2, 3)]
    + [stopped(OTHER, n, started=60, stopped_=59.95) for n in (4, 5, 6, 7)]
    + [stopped(GOOD, 8, started=None, stopped_=5), running(GOOD, 9)]
)


@pytest.fixture
def platform(mocked):
    deployment = {"uuid": DEP, "name": "svc", "deployment_type": "ReplicaSet", "status": "running", "stopped_at": None}
    mocked.post(url(DEPLOYMENTS), json=envelope({"list": [deployment], "max_page": 1}))
    mocked.post(url(CONTAINERS), json=envelope({"list": CONTAINER_LIST, "max_page": 1}),
                match=[matchers.json_params_matcher({"deployment_uuid": DEP, "released": True}, strict_match=False)])
    mocked.post(url(EVENTS), json=envelope({"list": []}))
    return mocked


def test_reports_machines_at_the_threshold_with_evidence(run, platform, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--quiet")

    assert code == 0, document
    result_validator.validate(document)
    assert [(m["machine_id"], m["failures"]) for m in document["items"]] == [(OTHER, 4), (BAD, 3)]
    assert document["count"] == 2 and document["applied"] == []
    assert document["below_threshold"] == [{"machine_id": GOOD, "failures": 1}]
    evidence = document["items"][1]["evidence"][0]
    assert set(evidence) == {"container_uuid", "status", "reason", "created_at", "started_at", "stopped_at", "uptime_seconds"}



def test_every_host_examined_is_listed_with_its_counts_healthy_ones_included(run, mocked, result_validator):
    healthy = "dddddddddd"
    mocked.post(url(DEPLOYMENTS), json=envelope({"list": [{"uuid": DEP, "deployment_type": "ReplicaSet"}], "max_page": 1}))
    mocked.post(url(CONTAINERS), json=envelope({"list": CONTAINER_LIST + [running(healthy, 10), running(healthy, 11)],
                                                "max_page": 1}))
    mocked.post(url(EVENTS), json=envelope({"list": []}))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--quiet")

    assert code == 0, document
    result_validator.validate(document)
    hosts = {h["machine_id"]: h for h in document["hosts_examined"]}
    assert set(hosts) == {BAD, OTHER, GOOD, healthy}
    assert hosts[healthy] == {"machine_id": healthy, "gpu_name": None, "data_center": None, "containers": 2, "live": 2,
                              "stopped_in_window": 0, "failures": 0, "verdict": "healthy"}
    assert (hosts[GOOD]["containers"], hosts[GOOD]["live"], hosts[GOOD]["failures"], hosts[GOOD]["verdict"]) == (2, 1, 1, "below_threshold")
    assert (hosts[OTHER]["failures"], hosts[OTHER]["verdict"]) == (4, "faulty")
    assert [h["machine_id"] for h in document["hosts_examined"]] == [OTHER, BAD, GOOD, healthy]

def test_min_failures_raises_the_bar(run, platform):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--min-failures", "4")
    assert code == 0 and [m["machine_id"] for m in document["items"]] == [OTHER]


def test_apply_without_yes_asks_first(run, platform, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply")

    assert (code, document["error_type"]) == (1, "confirmation_required")
    result_validator.validate(document)
    planned = document["details"]["would_blacklist"]
    assert [(p["machine_id"], p["container_uuid"]) for p in planned] == [(OTHER, f"{DEP}-{OTHER}-00000004"), (BAD, f"{DEP}-{BAD}-00000001")]
    assert (planned[1]["data_center"], planned[1]["gpu_name"], planned[1]["failure_reasons"]) == ("westDC2", "RTX 4090", {"never_running": 3})
    # The hint names the hosts, says running containers stay, and warns that user stops count.
    hint = document["hint"]
    assert f"{OTHER} (westDC2, RTX 4090, 失败 4 次)" in hint and BAD in hint
    assert "已在上面运行的容器不受影响" in hint and "stop_container.py" in hint and "evidence" in hint


def test_evidence_is_capped_per_machine_to_the_most_recent(run, mocked, result_validator):
    crash_loop = [stopped(BAD, n, started=None, stopped_=n) for n in range(1, 16)]  # n=1 is the most recent
    mocked.post(url(DEPLOYMENTS), json=envelope({"list": [{"uuid": DEP, "deployment_type": "ReplicaSet"}], "max_page": 1}))
    mocked.post(url(CONTAINERS), json=envelope({"list": crash_loop, "max_page": 1}))
    mocked.post(url(EVENTS), json=envelope({"list": []}))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--max-evidence", "4")

    assert code == 0, document
    result_validator.validate(document)
    machine = document["items"][0]
    assert (machine["failures"], machine["evidence_total"], len(machine["evidence"])) == (15, 15, 4)
    assert [e["container_uuid"][-1] for e in machine["evidence"]] == ["4", "3", "2", "1"]  # oldest first
    assert machine["blacklist_via"].endswith("00000001")
    assert "stop_container.py" in document["caveat"]


def test_evidence_cap_defaults_to_ten(run, mocked):
    mocked.post(url(DEPLOYMENTS), json=envelope({"list": [{"uuid": DEP, "deployment_type": "Job"}], "max_page": 1}))
    mocked.post(url(CONTAINERS), json=envelope({"list": [stopped(BAD, n, started=None, stopped_=n) for n in range(1, 13)], "max_page": 1}))
    mocked.post(url(EVENTS), json=envelope({"list": []}))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP)

    assert code == 0 and len(document["items"][0]["evidence"]) == 10 and document["items"][0]["evidence_total"] == 12
    assert "caveat" not in document  # only a ReplicaSet counts user-initiated stops


def test_apply_yes_blacklists_each_machine_once_through_its_latest_failure(run, platform, result_validator):
    for machine, n in ((OTHER, 4), (BAD, 1)):
        platform.post(url(BLACKLIST), json=envelope(None), match=[matchers.json_params_matcher({
            "deployment_container_uuid": f"{DEP}-{machine}-{n:08x}", "comment": "启动即崩溃", "expire_in_minutes": 120})])

    platform.get(url(BLACKLIST), json=envelope([{"machine_id": OTHER, "msg": "启动即崩溃"}, {"machine_id": BAD, "msg": "启动即崩溃"}]))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply", "--yes",
                            "--comment", "启动即崩溃", "--expire-minutes", "120")

    assert code == 0, document
    result_validator.validate(document)
    assert [a["machine_id"] for a in document["applied"]] == [OTHER, BAD]
    assert sum(1 for call in platform.calls if call.request.method == "POST" and call.request.url.endswith(BLACKLIST)) == 2
    assert document["verified"] is True  # read back from the blacklist
    assert document["applied"][1]["blacklist_entry"] == {"machine_id": BAD, "msg": "启动即崩溃"}
    assert [(a["expire_in_minutes"], a["expire_default"]) for a in document["applied"]] == [(120, False)] * 2


def test_apply_says_when_the_blacklist_cannot_be_read_back(run, platform, result_validator):
    platform.post(url(BLACKLIST), json=envelope(None))
    platform.post(url(BLACKLIST), json=envelope(None))
    platform.get(url(BLACKLIST), status=404, body="404 page not found")  # private cloud: no list endpoint

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply", "--yes")

    assert code == 0, document
    result_validator.validate(document)
    assert len(document["applied"]) == 2
    assert document["verified"] is False and document["read_back_error"]
    # No --expire-minutes: the integer the platform applies (never null), marked as its default.
    assert [(a["expire_in_minutes"], a["expire_default"]) for a in document["applied"]] == [(1440, True)] * 2
    assert "私有云" in document["expiry_note"]


def test_a_failed_blacklisting_says_what_was_already_done(run, platform, result_validator):
    platform.post(url(BLACKLIST), json=envelope(None))
    platform.post(url(BLACKLIST), json=envelope(None, code="PermissionDenied", msg="no"))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply", "--yes")

    assert (code, document["error_type"]) == (3, "api_error")
    result_validator.validate(document)
    assert [a["machine_id"] for a in document["details"]["applied"]] == [OTHER]
    assert document["details"]["failed_machine"] == BAD


def test_nothing_faulty_applies_nothing(run, mocked, result_validator):
    mocked.post(url(DEPLOYMENTS), json=envelope({"list": [{"uuid": DEP, "deployment_type": "ReplicaSet"}], "max_page": 1}))
    mocked.post(url(CONTAINERS), json=envelope({"list": [running(GOOD, 1)], "max_page": 1}))
    mocked.post(url(EVENTS), json=envelope({"list": []}))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply", "--yes")

    assert code == 0 and document["items"] == [] and document["applied"] == []
    result_validator.validate(document)


@pytest.mark.parametrize("flags", [("--yes",), ("--comment", "x"), ("--expire-minutes", "60")])
def test_blacklist_flags_without_apply_are_a_usage_error(run, flags, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, *flags)

    assert (code, document["error_type"]) == (1, "usage_error"), document
    result_validator.validate(document)
    assert "--apply" in document["message"]


# --- preview vs apply: as_of and --machine-id ---------------------------------------------


def test_output_says_the_platform_time_its_evidence_runs_to(run, platform, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--quiet")

    assert code == 0, document
    # The newest stamp read: stopped(GOOD, 8) stopped 5 minutes ago; every other stamp is older.
    assert document["as_of"] == at(5)
    assert document["as_of"].endswith("+08:00")


def test_the_preview_names_the_machine_id_flags_that_apply_exactly_it(run, platform, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply")

    assert (code, document["error_type"]) == (1, "confirmation_required")
    assert document["details"]["machine_id_flags"] == f"--machine-id {OTHER} --machine-id {BAD}"
    assert document["details"]["as_of"] == at(5)
    assert f"--machine-id {OTHER} --machine-id {BAD}" in document["hint"]


def test_apply_with_machine_id_blacklists_only_the_named_machine(run, platform, result_validator):
    platform.post(url(BLACKLIST), json=envelope(None), match=[matchers.json_params_matcher(
        {"deployment_container_uuid": f"{DEP}-{BAD}-00000001"}, strict_match=False)])
    platform.get(url(BLACKLIST), json=envelope([{"machine_id": BAD}]))

    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply", "--yes", "--machine-id", BAD)

    assert code == 0, document
    result_validator.validate(document)
    assert [a["machine_id"] for a in document["applied"]] == [BAD]
    assert document["not_named"] == [OTHER], "a machine that became faulty after the preview is left alone"
    assert sum(1 for call in platform.calls if call.request.method == "POST" and call.request.url.endswith(BLACKLIST)) == 1


def test_apply_refuses_a_named_machine_that_is_not_faulty_now(run, platform, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--apply", "--yes",
                            "--machine-id", BAD, "--machine-id", GOOD)

    assert (code, document["error_type"]) == (1, "usage_error"), document
    result_validator.validate(document)
    assert document["details"]["not_faulty_now"] == [GOOD]
    assert not any(call.request.url.endswith(BLACKLIST) for call in platform.calls), "nothing is blacklisted"


def test_machine_id_without_apply_is_a_usage_error(run, result_validator):
    code, document, _ = run("find_faulty_hosts.py", "--deployment-uuid", DEP, "--machine-id", BAD)
    assert (code, document["error_type"]) == (1, "usage_error")
