"""queue_submit.py against a mocked API: every branch of validate -> check -> wait -> submit."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import requests
import responses
from responses import matchers

from helpers import ROOT, TEST_TOKEN, envelope
from helpers.fake_api import (
    CONFIG,
    CONTAINERS,
    CREATE,
    DEPLOYMENTS,
    EVENTS,
    FAST,
    IMAGE_UUID,
    IMAGES,
    NEW_UUID,
    REGION_STOCK,
    STOCK,
    WALLET,
    create_calls,
    deployments,
    expect_checks,
    expect_create,
    page,
    same_name,
    stock_list,
    wallet,
)

pytestmark = pytest.mark.usefixtures("fake_time")


def test_waits_for_stock_then_submits_once(run, api, config_file, result_validator):
    expect_checks(api, idle=0)
    api.get(STOCK, json=stock_list(0))
    api.get(STOCK, json=stock_list(1))
    expect_create(api)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0, out
    assert out["deployment_uuid"] == NEW_UUID
    assert out["waited_seconds"] >= 0 and out["recovered"] is False
    assert out["warnings"] == []
    assert len(create_calls(api)) == 1
    result_validator.validate(out)


def test_dict_shaped_stock_is_understood(run, api, config_file):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID, "name": "app"}]))
    api.get(STOCK, json=envelope({"RTX 4090": {"gpu_name": "RTX 4090", "idle_gpu_num": 3, "total_gpu_num": 8}}))
    api.post(DEPLOYMENTS, json=deployments())
    expect_create(api)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID


def test_dry_run_checks_everything_and_creates_nothing(run, api, config_file, result_validator):
    expect_checks(api, idle=5)

    code, out, _ = run("queue_submit.py", config_file(), "--dry-run", *FAST)

    assert code == 0
    assert out["dry_run"] is True and out["would_submit_now"] is True
    assert out["request"] == CONFIG
    assert out["stock"] == {"RTX 4090": {"idle": 5, "total": 8}}
    assert not create_calls(api)
    assert TEST_TOKEN not in json.dumps(out)
    result_validator.validate(out)


def test_image_check_reads_every_page(run, api, config_file, result_validator):
    api.post(IMAGES, json=page([{"image_uuid": "image-aaaaaaaaaa", "image_name": "a"}], 1, 2),
             match=[matchers.json_params_matcher({"page_index": 1, "page_size": 100})])
    api.post(IMAGES, json=page([{"image_uuid": "image-bbbbbbbbbb", "name": "b"}], 2, 2),
             match=[matchers.json_params_matcher({"page_index": 2, "page_size": 100})])

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 1 and out["error_type"] == "image_not_found"
    assert out["details"]["requested"] == IMAGE_UUID
    assert out["details"]["available_images"] == [
        {"image_uuid": "image-aaaaaaaaaa", "image_name": "a"},
        {"image_uuid": "image-bbbbbbbbbb", "image_name": "b"},
    ]
    result_validator.validate(out)


def test_unknown_gpu_type(run, api, config_file, result_validator):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3, name="RTX A5000"))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 1 and out["error_type"] == "gpu_type_not_found"
    assert out["details"]["available_gpus"] == ["RTX A5000"]
    result_validator.validate(out)


def test_refuses_a_live_deployment_with_the_same_name(run, api, config_file, result_validator):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=deployments([{"uuid": "aaaaaaaaaaaaaaa", "name": "svc", "status": "running"}]))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 1 and out["error_type"] == "deployment_exists"
    assert out["details"]["deployment_uuid"] == "aaaaaaaaaaaaaaa"
    result_validator.validate(out)


def test_duplicate_name_allowed_on_request_and_stopped_ones_ignored(run, api, config_file):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=deployments([{"uuid": "aaaaaaaaaaaaaaa", "name": "svc", "status": "running"}]))
    expect_create(api)

    code, out, _ = run("queue_submit.py", config_file(), "--allow-duplicate-name", *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID


@pytest.mark.parametrize("failure", [
    {"status": 503, "json": envelope(code="ServiceUnavailable")},
    {"body": requests.exceptions.ConnectionError("reset by peer")},
    {"body": requests.exceptions.ReadTimeout("read timed out")},
])
def test_failed_stock_poll_is_logged_and_the_wait_goes_on(run, api, config_file, failure, monkeypatch):
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)  # one HTTP try per poll keeps the sequence short
    expect_checks(api, idle=0)
    api.get(STOCK, **failure)
    api.get(STOCK, json=stock_list(2))
    expect_create(api)

    code, out, err = run("queue_submit.py", config_file(), "--interval", "0.01")

    assert code == 0 and out["deployment_uuid"] == NEW_UUID
    assert "查询库存失败" in err


def test_auth_error_while_waiting_ends_the_wait(run, api, config_file, result_validator):
    expect_checks(api, idle=0)
    api.get(STOCK, status=401, json=envelope(code="Unauthorized", msg="token invalid"))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 1 and out["error_type"] == "auth_error"
    assert not create_calls(api)
    result_validator.validate(out)


def test_timeout_reports_the_last_stock(run, config_file, result_validator):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
        mock.get(STOCK, json=stock_list(0, total=8))
        mock.post(DEPLOYMENTS, json=deployments())

        code, out, _ = run("queue_submit.py", config_file(), "--interval", "0.01", "--timeout", "0.1", "--quiet")

        assert not [c for c in mock.calls if c.request.url == CREATE]
    assert code == 2 and out["error_type"] == "timeout"
    assert out["details"]["last_stock"] == {"RTX 4090": {"idle": 0, "total": 8}}
    assert out["details"]["elapsed_seconds"] >= 0.1
    # Nothing was created and the document says so: re-running the same command is safe.
    assert out["details"]["took_effect"] is False and "未发送任何改动请求" in out["message"]
    result_validator.validate(out)


def test_multi_gpu_container_needs_that_many_idle_cards(run, api, config_file):
    config = copy.deepcopy(CONFIG)
    config["container_template"]["gpu_num"] = 4
    expect_checks(api, idle=2)
    api.get(STOCK, json=stock_list(4))
    api.post(DEPLOYMENTS, json=deployments())
    api.post(CREATE, json=envelope({"deployment_uuid": NEW_UUID}), match=[matchers.json_params_matcher(config)])
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))

    code, out, _ = run("queue_submit.py", config_file(config), *FAST)

    assert code == 0 and len(create_calls(api)) == 1


@pytest.mark.parametrize("ambiguous", [
    {"body": requests.exceptions.ReadTimeout("read timed out")},
    {"status": 502, "body": "<html>bad gateway</html>"},
    {"body": requests.exceptions.ConnectionError("Connection reset by peer")},
])
def test_ambiguous_create_is_reconciled_by_name_before_any_retry(run, api, config_file, ambiguous, result_validator):
    expect_checks(api, idle=3)
    expect_create(api, **ambiguous)
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))  # the reconcile finds it
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))  # the look for duplicates: only it

    code, out, err = run("queue_submit.py", config_file(), "--interval", "0.01")

    assert code == 0, out
    assert out["deployment_uuid"] == NEW_UUID and out["recovered"] is True
    assert len(create_calls(api)) == 1, "an ambiguous create must not be blindly retried"
    assert "核对" in err
    result_validator.validate(out)


def test_ambiguous_create_not_found_is_never_sent_again(run, api, config_file, monkeypatch, result_validator):
    from autodl_esd.platform import effects

    monkeypatch.setattr(effects, "MIN_LOOKS", 1)
    expect_checks(api, idle=3)
    expect_create(api, body=requests.exceptions.ReadTimeout("read timed out"))
    api.post(DEPLOYMENTS, json=deployments())  # reconcile: nothing there (yet)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "submission_error"
    assert out["details"]["may_have_been_created"] is True and out["details"]["retryable"] is False
    assert out["details"]["name"] == "svc" and out["details"]["failure_kind"] == "outcome_unknown"
    assert "不要重新提交" in out["hint"] and "重新运行" not in out["hint"]
    assert len(create_calls(api)) == 1
    result_validator.validate(out)


def test_reconcile_ignores_same_name_deployments_that_existed_before(run, api, config_file, monkeypatch):
    from autodl_esd.platform import effects

    monkeypatch.setattr(effects, "MIN_LOOKS", 1)
    old = {"uuid": "aaaaaaaaaaaaaaa", "name": "svc", "status": "stopped"}
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=deployments([old]))
    monkeypatch.setattr(effects, "MIN_LOOKS", 2)
    landed = deployments([old, {"uuid": NEW_UUID, "name": "svc", "status": "running"}])
    expect_create(api, before=deployments([old]), status=503, json=envelope(code="ServiceUnavailable"))
    api.post(DEPLOYMENTS, json=deployments([old]))  # reconcile: only the old one
    api.post(DEPLOYMENTS, json=landed)  # then ours lands
    api.post(DEPLOYMENTS, json=landed)  # the look for duplicates

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID and out["recovered"] is True
    assert len(create_calls(api)) == 1


def test_three_clear_create_failures_are_a_submission_error(run, api, config_file, result_validator):
    refused = envelope(code="BadRequest", msg="当前算力规格暂无库存")
    expect_checks(api, idle=3)
    for attempt in range(3):
        expect_create(api, json=refused)
        if attempt < 2:
            api.get(STOCK, json=stock_list(3))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "submission_error"
    assert out["details"]["api_response"]["msg"] == "当前算力规格暂无库存"
    assert len(out["details"]["attempts"]) == 3
    # Every create was answered with a refusal: nothing can exist under this name.
    assert out["details"]["may_have_been_created"] is False and out["details"]["name"] == "svc"
    assert out["details"]["suggestion"]
    assert len(create_calls(api)) == 3
    result_validator.validate(out)


def test_region_stock_is_summed_over_dc_list(run, api, config_file):
    config = copy.deepcopy(CONFIG)
    template = config["container_template"]
    del template["cuda_v"]
    template.update({"dc_list": ["westDC2", "westDC3"], "cuda_v_from": 118, "cuda_v_to": 128})
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    for region, idle in (("westDC2", 0), ("westDC3", 1)):
        api.post(REGION_STOCK, json=stock_list(idle), match=[matchers.json_params_matcher({"region_sign": region})])
    api.post(DEPLOYMENTS, json=deployments())
    filters = {key: template[key] for key in ("gpu_name_set", "cuda_v_from", "cuda_v_to", "cpu_num_from", "cpu_num_to",
                                              "memory_size_from", "memory_size_to", "price_from", "price_to")}
    for region, idle in (("westDC2", 0), ("westDC3", 1)):
        api.post(REGION_STOCK, json=stock_list(idle), match=[matchers.json_params_matcher({"region_sign": region, **filters})])

    code, out, _ = run("queue_submit.py", config_file(config), "--dry-run", *FAST)

    assert code == 0 and out["dialect"] == "public"
    assert out["stock"] == {"RTX 4090": {"idle": 1, "total": 16}}
    assert out["stock_filtered_by_config"] is True


def test_public_dry_run_counts_only_hosts_the_filters_accept(run, api, config_file, result_validator):
    """Idle cards exist, but not on a host within memory_size_to: would_submit_now says no, and why."""
    config = copy.deepcopy(CONFIG)
    template = config["container_template"]
    del template["cuda_v"]
    template.update({"dc_list": ["westDC2"], "cuda_v_from": 118, "cuda_v_to": 128, "memory_size_to": 16})
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.post(REGION_STOCK, json=stock_list(5), match=[matchers.json_params_matcher({"region_sign": "westDC2"})])
    api.post(DEPLOYMENTS, json=deployments())
    api.post(REGION_STOCK, json=envelope([]), match=[matchers.json_params_matcher(
        {"region_sign": "westDC2", "memory_size_to": 16}, strict_match=False)])

    code, out, _ = run("queue_submit.py", config_file(config), "--dry-run", *FAST)

    assert code == 0, out
    result_validator.validate(out)
    assert out["would_submit_now"] is False and out["gpu_name"] is None
    codes = [w["code"] for w in out["warnings"]]
    assert "filters_exclude_idle_hosts" in codes and "low_memory_ceiling" in codes
    hint = next(w["hint"] for w in out["warnings"] if w["code"] == "filters_exclude_idle_hosts")
    assert "memory_size_to=16" in hint


def test_no_capacity_suggestion_names_upper_bounds_and_the_likely_culprit(run, api, config_file, result_validator):
    config = copy.deepcopy(CONFIG)
    config["container_template"].update(memory_size_to=16, price_to=500)
    expect_checks(api, idle=4)
    for attempt in range(3):
        api.post(DEPLOYMENTS, json=deployments())
        api.post(CREATE, json=envelope(code="BadRequest", msg="当前算力规格暂无库存"),
                 match=[matchers.json_params_matcher(config)])
        if attempt < 2:
            api.get(STOCK, json=stock_list(4))

    code, out, _ = run("queue_submit.py", config_file(config), *FAST)

    assert (code, out["error_type"]) == (3, "submission_error"), out
    result_validator.validate(out)
    assert out["details"]["failure_kind"] == "no_capacity"
    suggestion = out["details"]["suggestion"]
    for name in ("memory_size_to", "cpu_num_to", "price_to", "cuda_v"):
        assert name in suggestion
    assert "memory_size_to=16" in suggestion and "price_to=500" in suggestion
    likely = {f["field"] for f in out["details"]["capacity_filters"] if f["likely"]}
    assert likely == {"container_template.memory_size_to", "container_template.price_to"}


def test_invalid_config_fails_before_any_network_call(run, config_file, mocked, result_validator):
    config = copy.deepcopy(CONFIG)
    config["container_template"]["cuda_v"] = "11.8"
    config["container_template"]["price_to"] = 9.5

    code, out, _ = run("queue_submit.py", config_file(config))

    assert code == 1 and out["error_type"] == "validation_error"
    assert {e["path"] for e in out["details"]["errors"]} == {"container_template.cuda_v", "container_template.price_to"}
    assert not mocked.calls
    result_validator.validate(out)


def container(status, uuid_suffix="a394fb30"):
    return {
        "uuid": f"{NEW_UUID}-f94411a60c-{uuid_suffix}",
        "machine_id": "f94411a60c",
        "deployment_uuid": NEW_UUID,
        "status": status,
        "gpu_name": "RTX 4090",
        "gpu_num": 1,
        "info": {"ssh_command": "ssh -p 2222 root@region-1.autodl.com", "root_password": "s3cret-pass",
                 "service_url": "https://region-1.autodl.com:21294"},
    }


def test_wait_running_follows_containers_and_redacts_passwords(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    expect_create(api)
    api.post(EVENTS, json=page([]), match=[matchers.json_params_matcher(
        {"deployment_uuid": NEW_UUID, "page_index": 1, "page_size": 100, "offset": 0})])
    api.post(CONTAINERS, json=page([container("creating"), container("creating", "b0000000")]))
    running_events = [{"deployment_container_uuid": container("running")["uuid"], "status": "running"},
                      {"deployment_container_uuid": container("running", "b0000000")["uuid"], "status": "running"}]
    api.post(EVENTS, json=page(running_events), match=[matchers.json_params_matcher(
        {"deployment_uuid": NEW_UUID, "page_index": 1, "page_size": 100, "offset": 0})])
    api.post(CONTAINERS, json=page([container("running"), container("running", "b0000000")]))

    code, out, _ = run("queue_submit.py", config_file(), "--wait-running", *FAST)

    assert code == 0, out
    assert out["target_running"] == 2
    assert [c["service_urls"]["service_url"] for c in out["containers"]] == ["https://region-1.autodl.com:21294"] * 2
    assert "s3cret-pass" not in json.dumps(out)
    # both replicas on machine f94411a60c: one host failure takes the service down
    assert [w for w in out["warnings"] if w["code"] == "single_machine"][0]["path"] == "machine_id"
    result_validator.validate(out)


def test_startup_timeout_keeps_the_deployment_uuid(run, config_file, result_validator):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
        mock.get(STOCK, json=stock_list(3))
        mock.post(DEPLOYMENTS, json=deployments())
        mock.post(CREATE, json=envelope({"deployment_uuid": NEW_UUID}))
        mock.post(EVENTS, json=page([]))
        mock.post(CONTAINERS, json=page([container("creating")]))

        code, out, _ = run("queue_submit.py", config_file(), "--wait-running", "--startup-timeout", "0.1", *FAST)

    assert code == 2 and out["error_type"] == "startup_timeout"
    assert out["details"]["deployment_uuid"] == NEW_UUID
    assert "took_effect" not in out["details"] and "未发送" not in out["message"]  # created: never "nothing sent"
    result_validator.validate(out)


def test_sigint_while_waiting_for_stock_is_interrupted(run, api, config_file, result_validator):
    expect_checks(api, idle=0)

    def interrupt(_request):
        os.kill(os.getpid(), signal.SIGINT)
        return 200, {}, json.dumps(stock_list(0))

    api.add_callback(responses.GET, STOCK, callback=interrupt)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 130 and out["error_type"] == "interrupted"
    assert "deployment_uuid" not in out["details"]
    result_validator.validate(out)


def test_sigterm_after_create_reports_the_deployment(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    expect_create(api)

    def terminate(_request):
        os.kill(os.getpid(), signal.SIGTERM)
        return 200, {}, json.dumps(page([]))

    api.add_callback(responses.POST, EVENTS, callback=terminate)

    code, out, _ = run("queue_submit.py", config_file(), "--wait-running", *FAST)

    assert code == 130 and out["error_type"] == "interrupted"
    assert out["details"]["deployment_uuid"] == NEW_UUID
    assert out["details"]["signal"] == "SIGTERM"
    result_validator.validate(out)


def test_help_lists_flags_and_exit_codes(capsys):
    from helpers import load_script

    module = load_script(ROOT / "queue_submit.py")
    assert module.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--interval", "--timeout", "--dry-run", "--wait-running", "--allow-duplicate-name", "--quiet"):
        assert flag in text
    assert "130" in text


def test_wait_running_ends_when_a_short_job_already_finished(run, api, config_file, result_validator):
    job = copy.deepcopy(CONFIG)
    job.update(deployment_type="Job", replica_num=1, parallelism_num=1)
    expect_checks(api, idle=3)
    api.post(DEPLOYMENTS, json=deployments())
    api.post(CREATE, json=envelope({"deployment_uuid": NEW_UUID}), match=[matchers.json_params_matcher(job)])
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))
    api.post(EVENTS, json=page([]))
    api.post(CONTAINERS, json=page([]))
    api.post(DEPLOYMENTS, json=deployments([{"uuid": NEW_UUID, "name": "svc", "status": "stopped", "replica_num": 1,
                                              "running_num": 0, "starting_num": 0, "finished_num": 1}]),
             match=[matchers.json_params_matcher({"deployment_uuid": NEW_UUID, "page_index": 1, "page_size": 100})])

    code, out, _ = run("queue_submit.py", config_file(job), "--wait-running", *FAST)

    assert code == 0, out
    assert out["deployment_finished"] is True and out["containers"] == []
    # Not a bare success with no containers: it says the Job finished first, with the counts.
    assert out["finished_before_running"] is True
    assert (out["counts"]["status"], out["counts"]["finished_num"]) == ("stopped", 1)
    result_validator.validate(out)


def test_a_failed_poll_between_create_attempts_does_not_end_the_run(run, api, config_file, monkeypatch):
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)
    expect_checks(api, idle=3)
    expect_create(api, json=envelope(code="BadRequest", msg="当前算力规格暂无库存"))
    api.get(STOCK, status=503, json=envelope(code="ServiceUnavailable"))
    api.get(STOCK, json=stock_list(3))
    expect_create(api)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID
    assert len(create_calls(api)) == 2


def test_a_mistyped_gpu_name_beside_a_good_one_is_a_warning_with_a_suggestion(run, api, config_file):
    config = copy.deepcopy(CONFIG)
    config["container_template"]["gpu_name_set"] = ["RTX 4090", "A5000"]
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=envelope([{"RTX 4090": {"idle_gpu_num": 3, "total_gpu_num": 8}},
                                  {"RTX A5000": {"idle_gpu_num": 0, "total_gpu_num": 4}}]))
    api.post(DEPLOYMENTS, json=deployments())

    code, out, err = run("queue_submit.py", config_file(config), "--dry-run", "--interval", "0.01")

    assert code == 0
    [warning] = [w for w in out["warnings"] if w["code"] == "unknown_gpu_name"]
    assert "A5000" in warning["message"] and "RTX A5000" in warning["hint"]
    assert "unknown_gpu_name" in err, "warnings are also shown on stderr before anything is submitted"


def test_all_gpu_names_unknown_suggests_the_likely_spelling(run, api, config_file):
    config = copy.deepcopy(CONFIG)
    config["container_template"]["gpu_name_set"] = ["4090"]
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3))

    code, out, _ = run("queue_submit.py", config_file(config), *FAST)

    assert code == 1 and out["error_type"] == "gpu_type_not_found"
    assert out["details"]["did_you_mean"] == {"4090": ["RTX 4090"]}


def test_a_stopped_deployment_with_the_same_name_is_a_warning(run, api, config_file):
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=deployments([{"uuid": "aaaaaaaaaaaaaaa", "name": "svc", "status": "stopped"}]))
    expect_create(api)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0
    assert [w["code"] for w in out["warnings"]] == ["stopped_deployment_with_same_name"]


def test_submission_error_carries_the_warnings_that_may_explain_it(run, api, config_file):
    config = copy.deepcopy(CONFIG)
    config["container_template"].update(price_from=1, price_to=9)  # yuan, not yuan x 1000: no host is that cheap
    refused = envelope(code="BadRequest", msg="当前算力规格暂无库存")
    expect_checks(api, idle=3)
    for attempt in range(3):
        api.post(DEPLOYMENTS, json=deployments())
        api.post(CREATE, json=refused)
        if attempt < 2:
            api.get(STOCK, json=stock_list(3))

    code, out, _ = run("queue_submit.py", config_file(config), *FAST)

    assert code == 3 and out["error_type"] == "submission_error"
    assert [w["code"] for w in out["details"]["warnings"]] == ["price_looks_like_yuan"]
    assert "warnings" in out["details"]["suggestion"]


def test_token_missing_points_to_the_simulator_for_a_free_try(run, config_file, monkeypatch):
    monkeypatch.delenv("AUTODL_TOKEN")

    code, out, _ = run("queue_submit.py", config_file())

    assert code == 1 and out["error_type"] == "token_missing"
    assert "--sim" in out["hint"]


def test_a_create_refused_for_its_parameters_is_not_retried(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    expect_create(api, json=envelope(code="RequestParameterIsWrong", msg="请求参数错误：私有云部署不支持 dc_list"))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "submission_error"
    assert out["details"]["failure_kind"] == "rejected" and out["details"]["retryable"] is False
    assert "不是库存问题" in out["details"]["suggestion"]
    assert len(create_calls(api)) == 1
    result_validator.validate(out)


def test_repeated_platform_faults_on_create_say_retry_later(run, api, config_file, monkeypatch, result_validator):
    from autodl_esd.platform import effects

    monkeypatch.setattr(effects, "MIN_LOOKS", 1)
    expect_checks(api, idle=3)
    for attempt in range(3):
        # 429: refused before any work was done, so each one proves nothing was created.
        expect_create(api, status=429, json=envelope(code="TooManyRequests", msg="请求过于频繁"))
        if attempt < 2:
            api.get(STOCK, json=stock_list(3))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["details"]["failure_kind"] == "platform_fault"
    assert out["details"]["retryable"] is True and "稍后" in out["details"]["suggestion"]
    result_validator.validate(out)


def test_an_unknown_create_outcome_that_cannot_be_checked_is_never_retried(run, api, config_file, monkeypatch, result_validator):
    from autodl_esd.platform import effects
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)
    monkeypatch.setattr(effects, "MIN_LOOKS", 2)
    expect_checks(api, idle=3)
    expect_create(api, body=requests.exceptions.ReadTimeout("read timed out"))
    api.post(DEPLOYMENTS, status=503, json=envelope(code="ServiceUnavailable"))
    api.post(DEPLOYMENTS, status=503, json=envelope(code="ServiceUnavailable"))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "api_error"
    assert out["details"]["may_have_been_created"] is True and out["details"]["retryable"] is False
    assert "list_deployments.py --name svc" in out["hint"]
    assert len(create_calls(api)) == 1
    result_validator.validate(out)


def test_a_failure_before_submitting_says_nothing_was_created(run, api, config_file, monkeypatch):
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)
    api.post(IMAGES, status=503, json=envelope(code="ServiceUnavailable"))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "api_error"
    assert "还没有创建任何部署" in out["hint"]


def test_more_replicas_than_cards_is_a_warning(run, api, config_file):
    config = copy.deepcopy(CONFIG)
    config["replica_num"] = 20
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID}]))
    api.get(STOCK, json=stock_list(3, total=8))
    api.post(DEPLOYMENTS, json=deployments())
    api.post(WALLET, json=wallet(assets=5_000_000))  # 5000 yuan: no low-balance warning

    code, out, _ = run("queue_submit.py", config_file(config), "--dry-run", "--quiet")

    assert code == 0 and [w["code"] for w in out["warnings"]] == ["more_cards_than_exist"]


def test_a_config_for_the_other_cloud_is_a_warning(run, config_file, monkeypatch):
    monkeypatch.setenv("AUTODL_HOST", "https://api.autodl.com")  # public cloud, private-dialect config
    public = "https://api.autodl.com"
    with responses.RequestsMock() as mock:
        mock.post(public + "/api/v1/dev/image/private/list", json=page([{"image_uuid": IMAGE_UUID}]))
        mock.get(public + "/api/v1/dev/machine/gpu_stock", json=stock_list(3))
        mock.post(public + "/api/v1/dev/deployment/list", json=deployments())
        mock.post(public + "/api/v1/dev/wallet/balance", json=wallet())

        code, out, _ = run("queue_submit.py", config_file(), "--dry-run", "--quiet")

    assert code == 0 and [w["code"] for w in out["warnings"]] == ["dialect_host_mismatch"]
