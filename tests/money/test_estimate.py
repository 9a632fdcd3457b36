"""Cost before spending: hourly bounds in validate_config and the dry run, --max-hourly-cost,
and the wallet (wallet_balance.py, the dry run's hours of balance, the simulator's wallet)."""

from __future__ import annotations

import copy
import json

import pytest

from helpers import ROOT
from helpers.fake_api import AUTH, WALLET, wallet

EXAMPLES = ROOT / "examples"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def write(tmp_path, config: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name, containers, gpus, low, high", [
    # ReplicaSet: replica_num containers at once
    ("replicaset-service.json", 2, 1, 0.2, 18.0),
    # Job: min(parallelism_num 2, replica_num 4)
    ("job-training.json", 2, 1, 0.2, 18.0),
    # Container: one
    ("container-debug.json", 1, 1, 0.1, 9.0),
    # public dialect, same arithmetic
    ("public-cloud-replicaset.json", 2, 1, 0.2, 18.0),
])
def test_validate_config_reports_hourly_bounds_for_each_type_and_dialect(run, name, containers, gpus, low, high):
    code, out, _ = run("validate_config.py", str(EXAMPLES / name), "--quiet")
    assert code == 0, out
    cost = out["cost"]
    assert cost["concurrent_containers"] == containers and cost["gpu_num"] == gpus
    assert cost["hourly_yuan"] == {"min": low, "max": high}
    assert cost["worst_case_hourly_yuan"] == high
    assert cost["expected_hourly_yuan"] is None  # no price is known before a create


def test_bounds_multiply_per_gpu_price_by_gpus_and_parallel_containers():
    from autodl_esd.money.estimate import cost_bounds

    job = example("job-training.json")
    job["container_template"].update(gpu_num=4, price_from=1500, price_to=2500)
    job.update(replica_num=10, parallelism_num=3)
    cost = cost_bounds(job)
    assert cost["per_gpu_hourly_yuan"] == {"min": 1.5, "max": 2.5}
    assert cost["per_container_hourly_yuan"] == {"min": 6.0, "max": 10.0}
    assert cost["hourly_yuan"] == {"min": 18.0, "max": 30.0}
    job.update(replica_num=2)  # fewer containers in all than may run at once
    assert cost_bounds(job)["concurrent_containers"] == 2


def test_max_hourly_cost_refuses_before_any_network_call(run, tmp_path, mocked, result_validator):
    # `mocked` has no routes: any HTTP call would fail the test.
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--max-hourly-cost", "10", "--quiet")
    assert (code, out["error_type"]) == (1, "validation_error")
    result_validator.validate(out)
    [problem] = out["details"]["errors"]
    assert problem["path"] == "container_template.price_to" and "18" in problem["message"]
    assert out["details"]["cost"]["worst_case_hourly_yuan"] == 18.0
    assert len(mocked.calls) == 0


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_max_hourly_cost_must_be_a_positive_number(run, value):
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--max-hourly-cost", value, "--quiet")
    assert (code, out["error_type"]) == (1, "usage_error")


def test_wallet_balance_in_yuan(run, api, result_validator):
    api.post(WALLET, json=wallet(assets=123_450, accumulate=9_000_000, voucher_balance=5_000), match=[AUTH])
    code, out, _ = run("wallet_balance.py", "--quiet")
    assert code == 0, out
    result_validator.validate(out)
    assert (out["balance_yuan"], out["accumulated_spend_yuan"], out["voucher_balance_yuan"]) == (123.45, 9000.0, 5.0)
    assert out["raw"] == {"assets": 123_450, "accumulate": 9_000_000, "voucher_balance": 5_000}


def test_wallet_balance_hours_and_low_balance_warning(run, api):
    api.post(WALLET, json=wallet(assets=20_000))
    code, out, _ = run("wallet_balance.py", "--hourly-cost", "18", "--quiet")
    assert code == 0 and out["hours_at_worst_case"] == 1.11 and out["low"] is True
    assert [w["code"] for w in out["warnings"]] == ["low_balance"]


def test_a_wallet_field_missing_is_null_not_zero(run, api):
    from helpers import envelope

    api.post(WALLET, json=envelope({"assets": 1000}))
    code, out, _ = run("wallet_balance.py", "--quiet")
    assert code == 0 and out["balance_yuan"] == 1.0 and out["accumulated_spend_yuan"] is None


# --- end to end on the simulator -------------------------------------------------------------

def test_dry_run_shows_cost_and_hours_of_balance(sim, run):
    sim(balance_yuan=30)
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--dry-run", "--quiet")
    assert code == 0, out
    assert out["cost"]["hourly_yuan"] == {"min": 0.2, "max": 18.0}
    assert out["balance"]["balance_yuan"] == 30.0 and out["balance"]["hours_at_worst_case"] == 1.67
    assert "low_balance" in [w["code"] for w in out["warnings"]]


def test_dry_run_with_enough_balance_does_not_warn(sim, run):
    sim(balance_yuan=1000)
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--dry-run",
                       "--max-hourly-cost", "18", "--quiet")
    assert code == 0, out
    assert out["balance"]["low"] is False and "low_balance" not in [w["code"] for w in out["warnings"]]


def test_running_containers_draw_the_simulated_wallet_down(sim, run):
    simulator = sim(balance_yuan=100)
    submitted_at = simulator.now()
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--wait-running",
                       "--interval", "0.05", "--quiet")
    assert code == 0, out
    # The real rate of what runs, from the containers' prices, beside the bounds.
    prices = [c["price"] for c in simulator.containers(out["deployment_uuid"]) if c["status"] == "running"]
    assert out["cost"]["expected_hourly_yuan"] == sum(prices) / 1000
    simulator.advance(3600)
    code, after, _ = run("wallet_balance.py", "--quiet")
    assert code == 0
    # About one hour of both: at least the hour jumped over, at most the platform time since
    # the submit (the x200 clock also runs while a loaded machine is slow to read the wallet).
    hours_at_most = (simulator.now() - submitted_at) / 3600
    spent = 100 - after["balance_yuan"]
    assert sum(prices) / 1000 * 0.999 <= spent <= sum(prices) / 1000 * hours_at_most + 0.001
    assert after["accumulated_spend_yuan"] == pytest.approx(spent, abs=0.01)


def test_gated_account_reads_its_wallet_but_not_its_deployments(sim, run):
    sim(gated=True, balance_yuan=42)
    code, out, _ = run("wallet_balance.py", "--quiet")
    assert code == 0 and out["balance_yuan"] == 42.0
    code, out, _ = run("list_deployments.py", "--quiet")
    assert (code, out["error_type"]) == (1, "auth_error")
    assert out["details"]["msg"] == "无当前资源访问权限"


def test_simulator_wallet_control_route(sim):
    import requests

    simulator = sim()
    answer = requests.post(simulator.url + "/_sim/wallet", json={"balance_yuan": 7.5, "voucher_yuan": 2, "blocked_yuan": 1},
                           headers={"Authorization": simulator.token}, timeout=5).json()
    data = answer["data"]
    assert (data["assets"], data["blocked_asset"], data["accumulate"], data["voucher_balance"]) == (7500, 1000, 0, 2000)


def test_simulator_wallet_has_the_real_fourteen_fields(sim):
    import requests

    simulator = sim()
    answer = requests.post(simulator.url + "/api/v1/dev/wallet/balance", json={},
                           headers={"Authorization": simulator.token}, timeout=5).json()
    assert set(answer["data"]) == {
        "id", "uid", "assets", "blocked_asset", "accumulate", "voucher_balance", "available_coupon_num",
        "to_expire_voucher_num", "certain_conditions_voucher_balance", "remittance_code", "total_recharge_asset",
        "exclusive_transfer_account", "created_at", "updated_at"}
    assert answer["data"]["blocked_asset"] == 0


# --- frozen money: available = assets - blocked_asset -----------------------------------------

def test_frozen_money_is_not_available(run, api, result_validator):
    api.post(WALLET, json=wallet(assets=16_800, blocked_asset=5_000))
    code, out, _ = run("wallet_balance.py", "--hourly-cost", "2", "--quiet")
    assert code == 0, out
    result_validator.validate(out)
    assert (out["balance_yuan"], out["blocked_yuan"], out["available_yuan"]) == (16.8, 5.0, 11.8)
    assert out["hours_at_worst_case"] == 5.9  # 11.8 / 2, not 16.8 / 2
    assert out["raw"]["blocked_asset"] == 5_000 and out["raw"]["uid"] == 100001  # every raw field kept
    assert out["low"] is False and out["warnings"] == []


def test_low_balance_is_judged_on_the_available_money(run, api):
    # 16.8 in total covers 16.8 / 2 = 8.4 hours; the 1.8 available covers 0.9: low.
    api.post(WALLET, json=wallet(assets=16_800, blocked_asset=15_000))
    code, out, _ = run("wallet_balance.py", "--hourly-cost", "2", "--quiet")
    assert code == 0 and out["available_yuan"] == 1.8 and out["low"] is True
    assert [w["code"] for w in out["warnings"]] == ["low_balance"]
    assert "可用余额 1.8 元 (冻结 15 元)" in out["warnings"][0]["message"]


def test_dry_run_judges_hours_on_the_available_money(sim, run):
    sim(balance_yuan=16.8, blocked_yuan=5)
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--dry-run", "--quiet")
    assert code == 0, out
    balance = out["balance"]
    assert (balance["balance_yuan"], balance["blocked_yuan"], balance["available_yuan"]) == (16.8, 5.0, 11.8)
    assert balance["hours_at_worst_case"] == round(11.8 / out["cost"]["worst_case_hourly_yuan"], 2)
    warning = next(w for w in out["warnings"] if w["code"] == "low_balance")
    assert "可用余额 11.8 元" in warning["message"]


def test_dry_run_warns_when_only_the_frozen_part_is_large(sim, run):
    # 1000 yuan in total would not warn (test above); with 995 of it frozen it must.
    sim(balance_yuan=1000, blocked_yuan=995)
    code, out, _ = run("queue_submit.py", str(EXAMPLES / "replicaset-service.json"), "--dry-run",
                       "--max-hourly-cost", "18", "--quiet")
    assert code == 0, out
    assert out["balance"]["low"] is True and "low_balance" in [w["code"] for w in out["warnings"]]


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e308"])
def test_simulator_refuses_a_bad_blocked_amount(run, value):
    code, out, _ = run("autodl_sim.py", "--blocked-yuan", value)
    assert (code, out["error_type"]) == (1, "usage_error")


def test_cost_bounds_do_not_depend_on_the_dialect_fields():
    from autodl_esd.money.estimate import cost_bounds

    public = example("public-cloud-replicaset.json")
    private = copy.deepcopy(example("replicaset-service.json"))
    assert cost_bounds(public)["hourly_yuan"] == cost_bounds(private)["hourly_yuan"]


# --- price_estimates is a rate, and the basis says so where it is printed ------------------


def test_the_basis_says_price_estimates_is_the_current_rate_not_the_spend():
    from autodl_esd.money.estimate import CONTAINER_PRICE_BASIS, PRICE_ESTIMATES_BASIS

    assert "口径相同" not in CONTAINER_PRICE_BASIS
    assert PRICE_ESTIMATES_BASIS in CONTAINER_PRICE_BASIS
    for words in ("正在运行的容器", "每小时的费率", "为 0", "不是已花的钱", "cost_yuan"):
        assert words in PRICE_ESTIMATES_BASIS


def test_the_running_rate_counts_each_containers_cards():
    from autodl_esd.money.estimate import CONTAINER_PRICE_BASIS, running_rate

    rate = running_rate([{"status": "running", "gpu_num": 2, "price": 1000},
                         {"status": "running", "gpu_num": 1, "price": 1881},
                         {"status": "shutdown", "gpu_num": 8, "price": 1000}])
    assert rate["hourly_yuan"] == 3.881 and rate["running_containers"] == 2
    assert "每张 GPU" in CONTAINER_PRICE_BASIS
    assert "来源未说明" not in CONTAINER_PRICE_BASIS and "price × gpu_num" in CONTAINER_PRICE_BASIS

