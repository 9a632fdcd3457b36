"""Findings of a new-user trial: cost that survives a delete, price wording, price in yuan
on containers, guards in bulk results, a second waiting queue_submit, guard confirmation."""

from __future__ import annotations

import json

import pytest

from helpers.fake_api import (
    CONTAINERS,
    DEP_UUID,
    DEPLOYMENTS,
    container,
    deployment,
    expect_deployment,
    list_body,
    page,
)
from helpers import ROOT


# --- 2. price_estimates is a rate, said where it is printed ---------------------------------

def test_the_basis_says_price_estimates_is_the_current_rate_not_the_spend():
    from autodl_esd.money.estimate import CONTAINER_PRICE_BASIS, PRICE_ESTIMATES_BASIS

    assert "口径相同" not in CONTAINER_PRICE_BASIS
    assert PRICE_ESTIMATES_BASIS in CONTAINER_PRICE_BASIS
    for words in ("正在运行的容器", "每小时的费率", "为 0", "不是已花的钱", "cost_yuan"):
        assert words in PRICE_ESTIMATES_BASIS


def test_list_deployments_says_what_price_estimates_yuan_is(run, api):
    api.post(DEPLOYMENTS, json=page([deployment()]))
    code, out, _ = run("list_deployments.py", "--quiet")
    assert code == 0, out
    assert out["items"][0]["price_estimates_yuan"] == 3.762
    assert "不是已花的钱" in out["price_estimates_basis"]


def test_examples_quote_the_basis_as_the_code_prints_it():
    from autodl_esd.money.estimate import CONTAINER_PRICE_BASIS

    text = (ROOT / "examples.md").read_text(encoding="utf-8")
    assert "口径相同" not in text
    assert text.count(CONTAINER_PRICE_BASIS) >= 3


# --- 3. list_containers gives price in yuan beside the raw field ----------------------------

def test_list_containers_gives_price_in_yuan_per_hour(run, api):
    expect_deployment(api, deployment())
    api.post(CONTAINERS, json=page([container()]))
    code, out, _ = run("list_containers.py", "--deployment-uuid", DEP_UUID, "--quiet")
    assert code == 0, out
    [item] = out["items"]
    assert (item["price"], item["price_yuan"]) == (1881, 1.881)


def test_a_container_without_a_price_gets_no_yuan_figure():
    from autodl_esd.platform.containers import container_view

    record = container()
    del record["price"]
    assert "price_yuan" not in container_view(record)


# --- 1. the last cost figure survives a delete ---------------------------------------------

FAST = ("--interval", "0.05", "--quiet")
HOUR = 3600


def _write(tmp_path, name: str, config: dict) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def _job(tmp_path, name: str, cmd: str = "sleep 1800") -> str:
    job = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))
    job.update(name=name, replica_num=2, parallelism_num=2)
    job["container_template"]["cmd"] = cmd
    return _write(tmp_path, name, job)


def test_delete_carries_the_figure_cost_report_gave_just_before(sim, run, tmp_path, result_validator):
    simulator = sim()
    code, submitted, _ = run("queue_submit.py", _job(tmp_path, "trial-job"), *FAST)
    assert code == 0, submitted
    uuid = submitted["deployment_uuid"]
    simulator.advance(2 * HOUR)  # both containers ran their half hour and stopped
    code, report, _ = run("cost_report.py", "--deployment-uuid", uuid, "--quiet")
    assert code == 0, report
    before = report["items"][0]["cost_yuan"]
    assert before > 0 and report["items"][0]["price_estimates_yuan"] == 0.0  # a rate: none runs now

    code, deleted, _ = run("delete_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")

    assert code == 0, deleted
    result_validator.validate(deleted)
    assert deleted["cost_so_far_yuan"] == before
    assert deleted["cost_so_far"]["container_count"] == 2 and deleted["cost_so_far"]["as_of"]
    assert "cost_report" in deleted["cost_so_far"]["basis"]
    # ... and it is the last figure: the platform no longer lists the deployment.
    code, after, _ = run("cost_report.py", "--deployment-uuid", uuid, "--quiet")
    assert after["error_type"] == "not_found"


def test_the_delete_preview_already_shows_the_cost_so_far(sim, run, tmp_path):
    simulator = sim()
    code, submitted, _ = run("queue_submit.py", _job(tmp_path, "trial-job"), *FAST)
    assert code == 0, submitted
    simulator.advance(2 * HOUR)
    code, preview, _ = run("delete_deployment.py", "--deployment-uuid", submitted["deployment_uuid"], "--quiet")
    assert (code, preview["error_type"]) == (1, "confirmation_required")
    assert preview["details"]["cost_so_far_yuan"] > 0


def test_stop_of_a_running_service_carries_its_cost_so_far(sim, run, deploy):
    simulator = sim()
    uuid = deploy(2)
    simulator.advance(2 * HOUR)
    reported_from = simulator.now()
    code, report, _ = run("cost_report.py", "--deployment-uuid", uuid, "--quiet")
    assert code == 0, report
    before = report["items"][0]

    code, stopped, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")

    assert code == 0, stopped
    # Running containers keep billing between the two reads (simulated seconds): a bit more,
    # never less, and no more than the platform time between them at the running rate (at
    # x200 a loaded machine's second between the reads is 200 of them: no fixed 2%).
    between_hours = (simulator.now() - reported_from) / 3600
    assert before["cost_yuan"] <= stopped["cost_so_far_yuan"] <= before["cost_yuan"] + before["current_hourly_yuan"] * between_hours + 0.01
    assert stopped["cost_so_far"]["hourly_yuan_before"] == before["current_hourly_yuan"] > 0


def test_a_failed_cost_read_never_blocks_the_delete(run, monkeypatch):
    from autodl_esd.platform import api
    from autodl_esd.money import spend
    from autodl_esd.core.errors import ApiError

    real = api.list_containers

    def failing(client, uuid, **kwargs):
        if kwargs.get("released"):
            raise ApiError("平台出错", msg="boom", retryable=True)
        return real(client, uuid, **kwargs)

    monkeypatch.setattr(api, "list_containers", failing)
    outcome = spend.cost_before_change(object(), {"uuid": DEP_UUID}, [])
    assert outcome["cost_so_far_yuan"] is None and "平台出错" in outcome["cost_so_far"]["error"]


# --- 4. bulk stop/delete list the guards watching each deployment --------------------------

def _watching_guard(uuid: str, name: str) -> str:
    from autodl_esd.money import guard

    state = guard.new_state(None, {"uuid": uuid, "name": name, "deployment_type": "Job"},
                            guard.Limits(max_runtime_hours=100), "stop", None, False, 30.0)
    state["status"] = "watching"  # as a guard between two checks (no process: alive false)
    guard.save_new(state)
    return state["guard_id"]


@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py"])
def test_bulk_results_carry_guards_and_cost_per_item(sim, run, tmp_path, result_validator, script):
    simulator = sim()
    uuids = {}
    for name in ("demo-a", "demo-b"):
        code, out, _ = run("queue_submit.py", _job(tmp_path, name, cmd="sleep infinity"), *FAST)
        assert code == 0, out
        uuids[name] = out["deployment_uuid"]
    guard_id = _watching_guard(uuids["demo-a"], "demo-a")
    simulator.advance(HOUR)
    expect = ",".join(sorted(uuids.values()))

    code, done, _ = run(script, "--name-glob", "demo-*", "--yes", "--expect-uuids", expect, "--quiet")

    assert code == 0, done
    result_validator.validate(done)
    items = {item["name"]: item for item in done["items"]}
    assert [g["guard_id"] for g in items["demo-a"]["guards"]] == [guard_id]
    assert items["demo-a"]["guards"][0]["alive"] is False
    assert "guards" not in items["demo-b"]
    assert "下一次检查" in done["guards_note"] and "--cancel" in done["guards_note"]
    for item in items.values():
        assert item["outcome"] == "done" and item["cost_so_far_yuan"] > 0, item


def test_bulk_results_without_guards_have_no_guard_note(sim, run, tmp_path):
    sim()
    code, out, _ = run("queue_submit.py", _job(tmp_path, "demo-a", cmd="sleep infinity"), *FAST)
    assert code == 0, out
    code, done, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--yes",
                        "--expect-uuids", out["deployment_uuid"], "--quiet")
    assert code == 0, done
    assert "guards_note" not in done and "guards" not in done["items"][0]


# --- 5. a second queue_submit for the same name hears about the first ----------------------

SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))


def _markers():
    from autodl_esd.core.state import state_root

    return sorted((state_root() / "queue_waiting").glob("*/*.json"))


def _occupy_all(instance):
    for gpu in SERVICE["container_template"]["gpu_name_set"]:
        instance.occupy(gpu, 1000)


def test_a_second_run_while_the_first_waits_says_so_at_once_and_on_timeout(sim, run, tmp_path, result_validator):
    import os
    import subprocess
    import sys

    instance = sim()
    _occupy_all(instance)
    path = _write(tmp_path, "rs", SERVICE)
    first = subprocess.Popen([sys.executable, str(ROOT / "queue_submit.py"), path, "--wait-running", "--interval", "0.2", "--quiet"],
                             env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        instance.wait_until(lambda: _markers(), timeout=60)  # the first is waiting now

        code, second, err = run("queue_submit.py", path, "--wait-running", "--interval", "0.1", "--timeout", "0.3")

        assert (code, second["error_type"]) == (2, "timeout"), second
        result_validator.validate(second)
        assert f"另一个 queue_submit (pid {first.pid}, 自 " in second["message"] and "不要重复提交" in second["message"]
        assert second["details"]["waiting_runs"][0]["pid"] == first.pid
        assert second["details"]["waiting_runs"][0]["still_waiting"] is True
        # Said at once, before this run's own wait began.
        lines = err.splitlines()
        said = next(i for i, line in enumerate(lines) if "another_run_waiting" in line)
        waits = next(i for i, line in enumerate(lines) if "等待库存" in line)
        assert said < waits and f"pid {first.pid}" in lines[said]
        assert len(_markers()) == 1, "the second run's own marker is gone; the first's stays"
        assert first.poll() is None, "the first run is untouched"
    finally:
        first.kill()  # SIGKILL: its marker stays behind, unlocked
        first.communicate(timeout=60)
    # A marker left by a run that is gone is ignored: no warning, and the wait is as before.
    code, third, _ = run("queue_submit.py", path, "--interval", "0.1", "--timeout", "0.3", "--quiet")
    assert third["error_type"] == "timeout" and "另一个" not in third["message"] and "waiting_runs" not in third["details"]
    assert instance.deployments() == [], "nothing was bought by any of the three"


def test_a_stale_marker_is_ignored_and_cleared(run, tmp_path):
    import os
    import time

    from autodl_esd.deploy import waiting_runs

    directory = waiting_runs.marker_dir("http://h", "rs")
    directory.mkdir(parents=True)
    stale = directory / "99999999-deadbeef.json"
    stale.write_text(json.dumps({"pid": 99999999, "host": "http://h", "name": "rs", "started_epoch": 1}), encoding="utf-8")
    assert waiting_runs.live_waiters("http://h", "rs") == []
    os.utime(stale, (time.time() - 60, time.time() - 60))
    assert waiting_runs.live_waiters("http://h", "rs") == [] and not stale.exists()


def test_a_live_marker_is_seen_and_removed_when_its_run_ends():
    from autodl_esd.deploy import waiting_runs

    with waiting_runs.waiting_marker("http://h", "rs", "ReplicaSet") as mine:
        assert mine is not None and mine.exists()
        [seen] = waiting_runs.live_waiters("http://h", "rs")
        assert seen["name"] == "rs" and seen["pid"] and seen["started_at"]
        assert waiting_runs.live_waiters("http://h", "rs", exclude=mine) == []
        assert waiting_runs.live_waiters("http://other", "rs") == [] and waiting_runs.live_waiters("http://h", "rs2") == []
    assert not mine.exists() and waiting_runs.live_waiters("http://h", "rs") == []
    assert not mine.parent.exists()  # no empty folder left behind per deployment name


def test_a_marker_folder_stays_while_another_run_still_waits_in_it():
    from autodl_esd.deploy import waiting_runs

    with waiting_runs.waiting_marker("http://h", "rs", "ReplicaSet") as first:
        with waiting_runs.waiting_marker("http://h", "rs", "ReplicaSet") as second:
            assert first.parent == second.parent
        assert first.exists() and [w["pid"] for w in waiting_runs.live_waiters("http://h", "rs")]


def test_deployment_exists_names_the_run_that_is_waiting(sim, run, deploy, tmp_path):
    from autodl_esd.deploy import waiting_runs

    instance = sim()
    deploy(1)  # a deployment with this name already exists
    path = _write(tmp_path, "rs", SERVICE)
    with waiting_runs.waiting_marker(instance.url, SERVICE["name"], "ReplicaSet"):  # another run, mid-wait
        code, out, err = run("queue_submit.py", path, "--interval", "0.1")
    assert (code, out["error_type"]) == (1, "deployment_exists"), out
    assert "也在等待同名部署" in out["message"] and out["details"]["waiting_runs"][0]["still_waiting"] is True
    assert "another_run_waiting" in err


def test_a_dry_run_warns_about_a_waiting_run_too(sim, run, tmp_path):
    from autodl_esd.deploy import waiting_runs

    instance = sim()
    path = _write(tmp_path, "rs", SERVICE)
    with waiting_runs.waiting_marker(instance.url, SERVICE["name"], "ReplicaSet"):
        code, out, _ = run("queue_submit.py", path, "--dry-run", "--quiet")
    assert code == 0, out
    [warning] = [w for w in out["warnings"] if w["code"] == "another_run_waiting"]
    assert "不要重复提交" in warning["message"] and warning["waiting_runs"][0]["deployment_type"] == "ReplicaSet"


def test_the_wait_says_per_replica_and_what_it_waits_for(sim, run, tmp_path):
    instance = sim()
    _occupy_all(instance)
    path = _write(tmp_path, "rs", dict(SERVICE, replica_num=2))
    code, out, err = run("queue_submit.py", path, "--interval", "0.1", "--timeout", "0.3", "--wait-running")
    assert out["error_type"] == "timeout"
    assert "需要 1 卡" not in err
    assert "每个副本 1 卡 × 2 个, 够 1 个副本即提交" in err
    assert "其余副本由平台在创建后陆续调度" in err and "--wait-running 之后再等它们全部运行" in err


# --- 6. the guard confirmation rule: queue_submit's run is the approval, guard_deployment asks --

def test_queue_submit_guards_only_what_it_created_while_guard_deployment_asks_first(sim, run, deploy, tmp_path):
    from autodl_esd.money import guard

    sim()
    other = deploy(1)  # somebody's running service, same account
    path = _write(tmp_path, "guarded", dict(SERVICE, name="guarded-run", replica_num=1))

    # No --yes on queue_submit (it has none): the run itself is the approved spend.
    code, out, _ = run("queue_submit.py", path, "--interval", "0.05", "--max-runtime", "100", "--guard-interval", "30", "--quiet")
    assert code == 0, out
    try:
        assert out["guard"] and out["guard"]["deployment_uuid"] == out["deployment_uuid"] != other
        watched = {s["deployment_uuid"] for s in guard.all_states() if s.get("status") not in guard.FINAL_STATUSES}
        assert watched == {out["deployment_uuid"]}, "never a guard on a deployment this run did not create"

        # An existing deployment: guard_deployment without --yes only describes its plan.
        code, asked, _ = run("guard_deployment.py", "--deployment-uuid", other, "--max-runtime", "100", "--quiet")
        assert (code, asked["error_type"]) == (1, "confirmation_required"), asked
        assert {s["deployment_uuid"] for s in guard.all_states()} == {out["deployment_uuid"]}, "nothing written"
    finally:
        run("guard_deployment.py", "--cancel", out["guard"]["guard_id"], "--quiet")


def test_the_confirmation_rule_is_documented_where_both_are_described():
    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    reference = (ROOT / "api-reference.md").read_text(encoding="utf-8")
    assert "这次提交本身就是用户批准的花费" in skill and "这次提交本身就是用户批准的花费" in reference


def test_the_cost_figure_costs_one_extra_container_list_read(run, monkeypatch):
    """Single delete: the live list (what would stop) and one released=True read (the cost)."""
    import responses

    from helpers.fake_api import DEPLOYMENT
    from helpers import envelope

    from autodl_esd.platform import resolve

    monkeypatch.setattr(resolve, "_sleep", lambda seconds: None)
    listed = [deployment(status="stopped")]
    bodies = []

    def containers(request):
        bodies.append(json.loads(request.body))
        return 200, {}, json.dumps(page([released_container()]))

    def delete(request):
        listed.clear()
        return 200, {}, json.dumps(envelope(None))

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback("POST", DEPLOYMENTS, callback=lambda request: (200, {}, json.dumps(page(listed))),
                          content_type="application/json")
        mock.add_callback("POST", CONTAINERS, callback=containers, content_type="application/json")
        mock.add_callback("DELETE", DEPLOYMENT, callback=delete, content_type="application/json")
        code, out, _ = run("delete_deployment.py", "--deployment-uuid", DEP_UUID, "--yes", "--quiet")
    assert code == 0, out
    assert [b.get("released") for b in bodies] == [None, True]
    assert out["cost_so_far_yuan"] == 1.0  # half an hour at 2 yuan/h


def released_container() -> dict:
    item = container(status="shutdown")
    item.update(price=2000, started_at="2026-01-05T20:00:00+08:00", stopped_at="2026-01-05T20:30:00+08:00")
    return item
