"""Spend so far (money/spend.py): cost_report.py's run time x price per container (released
included), per deployment, totals; and the same figure carried by stop and delete
(`cost_so_far`), which never blocks them."""

from __future__ import annotations

import json

import pytest

from helpers import ROOT, job_config
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

# The platform's clock at the time of the report: 2026-01-05 14:35 UTC = 22:35 +08:00.
PLATFORM_DATE = "Mon, 05 Jan 2026 14:35:00 GMT"


def released(uuid_suffix: str, started: str, stopped: str, price: int = 1000) -> dict:
    item = container(uuid=f"{DEP_UUID}-f94411a60c-{uuid_suffix}", status="shutdown")
    item.update(price=price, started_at=started, stopped_at=stopped)
    return item


def expect_all_containers(api, items):
    api.post(CONTAINERS, json=page(items), match=[list_body(deployment_uuid=DEP_UUID, released=True)],
             headers={"Date": PLATFORM_DATE})


def test_running_and_released_containers_of_one_deployment(run, api, result_validator):
    running = container()  # started 20:35 +08:00, price 1881: two hours by 22:35
    expect_deployment(api, deployment())
    expect_all_containers(api, [running, released("0000aaaa", "2026-01-05T20:00:00+08:00", "2026-01-05T20:30:00+08:00", price=2000)])

    code, out, _ = run("cost_report.py", "--deployment-uuid", DEP_UUID, "--quiet")

    assert code == 0, out
    result_validator.validate(out)
    [item] = out["items"]
    by_status = {c["status"]: c for c in item["containers"]}
    assert by_status["running"]["run_hours"] == pytest.approx(2.0, abs=0.001)
    assert by_status["running"]["cost_yuan"] == pytest.approx(3.762, abs=0.01)
    assert by_status["shutdown"]["run_hours"] == 0.5 and by_status["shutdown"]["cost_yuan"] == 1.0
    assert item["current_hourly_yuan"] == 1.881 and item["running_containers"] == 1
    assert item["cost_yuan"] == pytest.approx(4.762, abs=0.01)
    assert out["totals"]["cost_yuan"] == item["cost_yuan"] and out["totals"]["containers"] == 2
    assert out["as_of"].startswith("2026-01-05T22:35")


def test_since_clips_every_interval(run, api):
    expect_deployment(api, deployment())
    expect_all_containers(api, [container(), released("0000aaaa", "2026-01-05T20:00:00+08:00", "2026-01-05T20:30:00+08:00")])

    code, out, _ = run("cost_report.py", "--deployment-uuid", DEP_UUID, "--since", "2026-01-05T22:05:00+08:00", "--quiet")

    assert code == 0, out
    by_status = {c["status"]: c for c in out["items"][0]["containers"]}
    assert by_status["running"]["run_hours"] == pytest.approx(0.5, abs=0.001)
    assert by_status["shutdown"]["run_hours"] == 0 and by_status["shutdown"]["cost_yuan"] == 0
    assert out["since"] == "2026-01-05T22:05:00+08:00"


def test_a_container_that_never_ran_costs_nothing(run, api):
    creating = container(status="creating")
    creating.update(started_at=None)
    expect_deployment(api, deployment())
    expect_all_containers(api, [creating])
    code, out, _ = run("cost_report.py", "--deployment-uuid", DEP_UUID, "--quiet")
    assert code == 0 and out["totals"]["cost_yuan"] == 0 and out["items"][0]["containers"][0]["run_hours"] == 0


def test_an_empty_account_is_a_success_with_zeros(run, api, result_validator):
    api.post(DEPLOYMENTS, json=page([]))
    code, out, _ = run("cost_report.py", "--all", "--quiet")
    assert code == 0, out
    result_validator.validate(out)
    assert out["count"] == 0 and out["items"] == []
    assert out["totals"] == {"deployments": 0, "containers": 0, "cost_yuan": 0, "container_hours": 0,
                             "current_hourly_yuan": 0, "running_containers": 0}


@pytest.mark.parametrize("argv", [[], ["--all", "--name", "x"], ["--all", "--since", "yesterday"]])
def test_needs_exactly_one_of_a_selector_or_all(run, argv):
    code, out, _ = run("cost_report.py", *argv, "--quiet")
    assert (code, out["error_type"]) == (1, "usage_error")


# --- end to end on the simulator -------------------------------------------------------------

def test_cost_report_of_a_finished_job_and_a_running_replicaset(sim, run, tmp_path):
    simulator = sim()
    job = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))
    job["container_template"]["cmd"] = "sleep 1800"  # each container runs half a simulated hour
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    code, job_out, _ = run("queue_submit.py", str(job_file), "--interval", "0.05", "--quiet")
    assert code == 0, job_out
    service_submitted_at = simulator.now()
    code, rs_out, _ = run("queue_submit.py", str(ROOT / "examples" / "replicaset-service.json"),
                          "--wait-running", "--interval", "0.05", "--quiet")
    assert code == 0, rs_out
    simulator.advance(4 * 3600)  # the Job (4 containers, 2 at a time) is long finished

    # The x200 clock runs on while the report reads: bracket it by the wallet and the clock.
    spent_before = simulator.wallet()["accumulate"] / 1000
    code, out, _ = run("cost_report.py", "--all", "--quiet")
    spent_after = simulator.wallet()["accumulate"] / 1000
    service_hours_at_most = (simulator.now() - service_submitted_at) / 3600

    assert code == 0, out
    items = {i["deployment_uuid"]: i for i in out["items"]}
    finished, service = items[job_out["deployment_uuid"]], items[rs_out["deployment_uuid"]]
    assert finished["status"] == "stopped" and finished["container_count"] == 4
    assert finished["current_hourly_yuan"] == 0
    for row in finished["containers"]:  # half an hour each, at its own price
        assert row["run_hours"] == pytest.approx(0.5, abs=0.01)
        assert row["cost_yuan"] == pytest.approx(row["hourly_yuan"] * 0.5, abs=0.01)
    running = [c for c in simulator.containers(rs_out["deployment_uuid"]) if c["status"] == "running"]
    assert service["current_hourly_yuan"] == sum(c["price"] for c in running) / 1000
    assert service["current_hourly_yuan"] * 4 * 0.999 <= service["cost_yuan"] <= service["current_hourly_yuan"] * service_hours_at_most + 0.01
    # The report agrees with what the simulated wallet was charged (rounding aside).
    assert spent_before * 0.99 <= out["totals"]["cost_yuan"] <= spent_after * 1.01


# --- the last cost figure: stop and delete carry the spend so far ----------------------------

FAST = ("--interval", "0.05", "--quiet")
HOUR = 3600


def test_delete_carries_the_figure_cost_report_gave_just_before(sim, run, tmp_path, result_validator):
    simulator = sim()
    code, submitted, _ = run("queue_submit.py", job_config(tmp_path, "billed-job"), *FAST)
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
    code, submitted, _ = run("queue_submit.py", job_config(tmp_path, "billed-job"), *FAST)
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


def test_a_multi_gpu_container_bills_its_per_card_price_times_its_cards(run, api, result_validator):
    """Container `price` is per card, like price_from/price_to (references/money.md, 计费口径)."""
    two_cards = container()  # started 20:35 +08:00: two hours by 22:35
    two_cards.update(gpu_num=2, price=1500)
    expect_deployment(api, deployment())
    expect_all_containers(api, [two_cards])

    code, out, _ = run("cost_report.py", "--deployment-uuid", DEP_UUID, "--quiet")

    assert code == 0, out
    result_validator.validate(out)
    [item] = out["items"]
    [row] = item["containers"]
    assert row["price_yuan"] == 1.5 and row["hourly_yuan"] == 3.0
    assert row["cost_yuan"] == pytest.approx(6.0, abs=0.01)
    assert item["current_hourly_yuan"] == 3.0
    assert "price × gpu_num" in out["basis"] and "来源未说明" not in out["basis"]


def test_the_container_view_shows_the_per_card_and_the_whole_hourly_price():
    from autodl_esd.platform.containers import redact_container

    shown = redact_container({"uuid": "c", "gpu_num": 4, "price": 2000})
    assert shown["price_yuan"] == 2.0 and shown["hourly_yuan"] == 8.0
