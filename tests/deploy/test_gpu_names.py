"""GPU names the platform spells differently (facts §15): resolved in the request actually
sent, with a warning naming both, or a stop with the exact fix; never a create that cannot schedule."""

from __future__ import annotations

import copy

from helpers import envelope
from helpers.fake_api import CONFIG, IMAGE_UUID, IMAGES, STOCK, create_calls, page

VENDOR_4090 = "NVIDIA GeForce RTX 4090"


def creates(instance):
    return [body for method, path, body in instance.request_log()
            if method == "POST" and path == "/api/v1/dev/deployment"]


def test_dry_run_shows_the_platform_name_and_a_warning_naming_both(sim, run, config_file, result_validator):
    instance = sim(dialect="private")

    code, out, _ = run("queue_submit.py", config_file(), "--dry-run", "--quiet")

    assert code == 0, out
    result_validator.validate(out)
    [warning] = [w for w in out["warnings"] if w["code"] == "gpu_name_resolved"]
    assert "'RTX 4090'" in warning["message"] and f"'{VENDOR_4090}'" in warning["message"]
    assert out["request"]["container_template"]["gpu_name_set"] == [VENDOR_4090]
    assert out["http_request"]["body"]["container_template"]["gpu_name_set"] == [VENDOR_4090]
    assert out["would_submit_now"] is True and out["gpu_name"] == VENDOR_4090
    assert out["stock"] == {VENDOR_4090: {"idle": 20, "total": 20}}
    assert not creates(instance)


def test_the_create_sent_uses_the_platform_name_and_schedules(sim, run, config_file, result_validator):
    instance = sim(dialect="private")
    config = copy.deepcopy(CONFIG)
    config["container_template"]["gpu_name_set"] = ["rtx 4090", VENDOR_4090]  # one card, twice

    code, out, _ = run("queue_submit.py", config_file(config), "--quiet", "--interval", "0.2")

    assert code == 0, out
    result_validator.validate(out)
    assert any(w["code"] == "gpu_name_resolved" for w in out["warnings"])
    [sent] = creates(instance)
    assert sent["container_template"]["gpu_name_set"] == [VENDOR_4090]
    running = instance.wait_until(lambda: instance.containers(out["deployment_uuid"]))
    assert {c["gpu_name"] for c in running} == {VENDOR_4090}


def test_a_name_with_two_platform_spellings_stops_with_the_exact_fix(run, api, config_file, result_validator):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=envelope({
        VENDOR_4090: {"gpu_name": VENDOR_4090, "idle_gpu_num": 3, "total_gpu_num": 8},
        "GeForce RTX 4090": {"gpu_name": "GeForce RTX 4090", "idle_gpu_num": 3, "total_gpu_num": 8},
    }))

    code, out, _ = run("queue_submit.py", config_file(), "--quiet", "--interval", "0.01")

    assert (code, out["error_type"]) == (1, "gpu_type_not_found")
    result_validator.validate(out)
    assert out["details"]["candidates"] == {"RTX 4090": ["GeForce RTX 4090", VENDOR_4090]}
    assert "gpu_name_set" in out["hint"] and f"'{VENDOR_4090}'" in out["message"]
    assert not create_calls(api)


def test_another_model_is_never_taken_for_the_requested_one(run, api, config_file, result_validator):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=envelope({
        "NVIDIA GeForce RTX 4090 D": {"gpu_name": "NVIDIA GeForce RTX 4090 D", "idle_gpu_num": 3, "total_gpu_num": 8},
    }))

    code, out, _ = run("queue_submit.py", config_file(), "--quiet", "--interval", "0.01")

    assert (code, out["error_type"]) == (1, "gpu_type_not_found")
    result_validator.validate(out)
    assert out["details"]["did_you_mean"] == {"RTX 4090": ["NVIDIA GeForce RTX 4090 D"]}  # a hint, not a choice
    assert not create_calls(api)
