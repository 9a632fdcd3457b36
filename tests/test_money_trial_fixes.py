"""Findings of a new-user trial: cost that survives a delete, price wording, price in yuan
on containers, guards in bulk results, a second waiting queue_submit, guard confirmation."""

from __future__ import annotations

import json

import pytest

from api_fakes import (  # noqa: F401 (fixture)
    CONTAINERS, DEP_UUID, DEPLOYMENTS, api, container, deployment, expect_deployment, list_body, page,
)
from conftest import ROOT


# --- 2. price_estimates is a rate, said where it is printed ---------------------------------

def test_the_basis_says_price_estimates_is_the_current_rate_not_the_spend():
    from autodl_esd.cost import CONTAINER_PRICE_BASIS, PRICE_ESTIMATES_BASIS

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
    from autodl_esd.cost import CONTAINER_PRICE_BASIS

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
    from autodl_esd.containers import container_view

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
    code, report, _ = run("cost_report.py", "--deployment-uuid", uuid, "--quiet")
    assert code == 0, report
    before = report["items"][0]

    code, stopped, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")

    assert code == 0, stopped
    # Running containers keep billing between the two reads (simulated seconds): a bit more, never less.
    assert before["cost_yuan"] <= stopped["cost_so_far_yuan"] <= before["cost_yuan"] * 1.02
    assert stopped["cost_so_far"]["hourly_yuan_before"] == before["current_hourly_yuan"] > 0


def test_a_failed_cost_read_never_blocks_the_delete(run, monkeypatch):
    from autodl_esd import api, spend
    from autodl_esd.errors import ApiError

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
    from autodl_esd import guard

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
