"""cost_report.py: run time x price per container (released included), per deployment, totals."""

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
