"""queue_submit's exactly-once rule against a mocked API.

- an ambiguous create is never sent again: it is looked up by name (fresh looks) until it
  appears or the reconcile window passes, then the run ends `may_have_been_created`;
- a create is sent again only after an answer that proves nothing was created;
- the name is checked again right before every create; another run's live deployment is
  deployment_exists, never adopted; one that appeared after this run's create was sent is;
- after a create, a second deployment of this run's name is reported as `duplicates`;
- from the moment a create was sent every outcome carries the uuid or
  `may_have_been_created: true` with the name to look it up by.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
import responses
from responses import matchers

from helpers import envelope
from helpers.fake_api import (
    CONTAINERS,
    CREATE,
    DEPLOYMENTS,
    EVENTS,
    FAST,
    IMAGE_UUID,
    IMAGES,
    NEW_UUID,
    STOCK,
    create_calls,
    deployments,
    expect_checks,
    expect_create,
    page,
    same_name,
    stock_list,
)

pytestmark = pytest.mark.usefixtures("fake_time")

LATE_UUID = "5b6c7d8e9f0a1b2"
OTHER_RUN = "0f1e2d3c4b5a697"
TIMEOUT = {"body": requests.exceptions.ReadTimeout("read timed out")}


# A reconcile window of a few (fake) seconds: several looks, one a second.
WINDOW_SECONDS = 6.0


@pytest.fixture
def real_grace(monkeypatch):
    """A reconcile window of WINDOW_SECONDS on the fake clock (the default is minutes)."""
    from autodl_esd.platform import effects
    from autodl_esd.deploy import submit

    monkeypatch.setattr(submit, "DEFAULT_RECONCILE_WINDOW_SECONDS", WINDOW_SECONDS)
    monkeypatch.setattr(effects, "MIN_LOOKS", 3)
    return WINDOW_SECONDS


def looks(api, answer, count):
    for _ in range(count):
        api.post(DEPLOYMENTS, json=answer)


def test_a_create_landing_late_is_found_within_the_reconcile_window(run, api, config_file, real_grace, fake_time):
    expect_checks(api, idle=3)
    expect_create(api, **TIMEOUT)
    looks(api, deployments(), 4)  # four fresh looks see nothing yet
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))  # the fifth sees it land
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))  # the look for duplicates

    code, out, err = run("queue_submit.py", config_file(), "--interval", "0.01")

    assert code == 0, out
    assert out["deployment_uuid"] == NEW_UUID and out["recovered"] is True
    assert out["recovered_by"]["rule"] == "name_lookup_after_send" and out["recovered_by"]["known_before_send"] == []
    assert len(create_calls(api)) == 1
    assert "等待可能仍在途中的创建请求落地" in err and "最多再看" in err


def test_an_ambiguous_create_is_never_sent_again(run, api, config_file, real_grace, fake_time, result_validator):
    sent_at = []
    expect_checks(api, idle=3)
    api.post(DEPLOYMENTS, json=deployments())

    def lost(_request):
        sent_at.append(fake_time[0])
        raise requests.exceptions.ReadTimeout("read timed out")

    api.add_callback(responses.POST, CREATE, callback=lost)
    looks(api, deployments(), int(real_grace) + 1)  # one look a second until the window has passed

    code, out, err = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "submission_error"
    details = out["details"]
    assert details["may_have_been_created"] is True and details["name"] == "svc" and details["retryable"] is False
    assert details["reconcile"]["looked_for_seconds"] >= real_grace
    assert len(sent_at) == 1 and len(create_calls(api)) == 1
    assert "不要重新提交" in out["hint"] and "重新运行" not in out["hint"]
    result_validator.validate(out)


def test_a_create_refused_outright_is_sent_again(run, api, config_file, result_validator):
    """An HTTP 200 business error proves nothing was created: the next create may go."""
    expect_checks(api, idle=3)
    expect_create(api, json=envelope(code="BadRequest", msg="当前算力规格暂无库存"))
    api.get(STOCK, json=stock_list(3))
    expect_create(api)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID and out["recovered"] is False
    assert len(create_calls(api)) == 2
    result_validator.validate(out)


def test_another_runs_create_landing_beside_ours_is_reported_as_duplicates(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    both = deployments([
        {"uuid": OTHER_RUN, "name": "svc", "status": "running", "created_at": "2026-01-05T20:34:07+08:00"},
        {"uuid": NEW_UUID, "name": "svc", "status": "running", "created_at": "2026-01-05T20:34:09+08:00"},
    ])
    expect_create(api, after=both)

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID
    by_uuid = {d["deployment_uuid"]: d for d in out["duplicates"]}
    assert by_uuid[OTHER_RUN]["keep"] is True and by_uuid[OTHER_RUN]["newer"] is False
    assert by_uuid[NEW_UUID]["newer"] is True and by_uuid[NEW_UUID]["reported"] is True
    [warning] = [w for w in out["warnings"] if w["code"] == "duplicate_deployments"]
    assert f"stop_deployment.py --deployment-uuid {NEW_UUID}" in warning["hint"]
    assert f"{NEW_UUID} --yes" not in warning["hint"], "the stop is offered as a preview, never ready to act"
    result_validator.validate(out)


def test_another_runs_deployment_before_the_create_is_deployment_exists(run, api, config_file, result_validator):
    """Two runs of one config: the second finds the first's deployment right before its create."""
    expect_checks(api, idle=0)
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=same_name(OTHER_RUN))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 1 and out["error_type"] == "deployment_exists"
    assert out["details"]["deployment_uuid"] == OTHER_RUN and out["details"]["may_have_been_created"] is False
    assert not create_calls(api)
    result_validator.validate(out)


def test_another_runs_deployment_after_a_clear_refusal_is_not_adopted(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    expect_create(api, json=envelope(code="BadRequest", msg="当前算力规格暂无库存"))
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=same_name(OTHER_RUN))  # ours was refused: this one is not ours

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 1 and out["error_type"] == "deployment_exists"
    assert out["details"]["deployment_uuid"] == OTHER_RUN
    assert len(create_calls(api)) == 1
    result_validator.validate(out)


def test_interrupt_during_the_reconcile_says_it_may_have_been_created(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    expect_create(api, **TIMEOUT)

    def interrupt(_request):
        os.kill(os.getpid(), signal.SIGINT)
        return 200, {}, json.dumps(deployments())

    api.add_callback(responses.POST, DEPLOYMENTS, callback=interrupt)
    api.post(DEPLOYMENTS, json=deployments())  # the one look on the way out: still nothing

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 130 and out["error_type"] == "interrupted"
    details = out["details"]
    assert details["may_have_been_created"] is True and details["name"] == "svc"
    assert "list_deployments.py --name svc" in out["hint"] and "不要重新提交" in out["hint"]
    result_validator.validate(out)


def test_interrupt_during_the_reconcile_names_the_uuid_found_on_the_way_out(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    expect_create(api, **TIMEOUT)

    def interrupt(_request):
        os.kill(os.getpid(), signal.SIGTERM)
        return 200, {}, json.dumps(deployments())

    api.add_callback(responses.POST, DEPLOYMENTS, callback=interrupt)
    api.post(DEPLOYMENTS, json=same_name(LATE_UUID))  # it landed meanwhile

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 130 and out["details"]["deployment_uuid"] == LATE_UUID
    assert out["details"]["may_have_been_created"] is True
    assert LATE_UUID in out["hint"]
    result_validator.validate(out)


def test_interrupt_during_the_create_call_itself(run, api, config_file, result_validator):
    expect_checks(api, idle=3)
    api.post(DEPLOYMENTS, json=deployments())

    def interrupt(_request):
        os.kill(os.getpid(), signal.SIGINT)
        raise requests.exceptions.ConnectionError("Connection reset by peer")

    api.add_callback(responses.POST, CREATE, callback=interrupt)
    api.post(DEPLOYMENTS, json=same_name(NEW_UUID))

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 130 and out["details"]["deployment_uuid"] == NEW_UUID
    result_validator.validate(out)


@pytest.mark.parametrize("failing", [EVENTS, CONTAINERS])
def test_a_follow_up_whose_reads_keep_failing_ends_at_its_deadline_naming_the_deployment(
        run, api, config_file, failing, monkeypatch, result_validator):
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)
    expect_checks(api, idle=3)
    expect_create(api)
    if failing == CONTAINERS:
        api.post(EVENTS, json=page([]))
    api.post(failing, status=503, json=envelope(code="ServiceUnavailable"))  # then unregistered: connection errors

    code, out, _ = run("queue_submit.py", config_file(), "--wait-running", "--startup-timeout", "1", *FAST)

    assert code == 2 and out["error_type"] == "startup_timeout"
    details = out["details"]
    assert details["deployment_uuid"] == NEW_UUID and details["deployment_created"] is True
    assert details["read_errors"] >= 2 and details["last_read_error"]
    assert "不要重新提交" in out["hint"]
    result_validator.validate(out)


def test_a_follow_up_goes_on_through_failed_reads_to_success(run, api, config_file, monkeypatch, result_validator):
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)
    expect_checks(api, idle=3)
    expect_create(api)
    for _ in range(5):  # more failures in a row than the HTTP client's own retries
        api.post(EVENTS, status=503, json=envelope(code="ServiceUnavailable"))
    api.post(EVENTS, json=page([]))
    running = [{"uuid": f"{NEW_UUID}-c{index}", "status": "running"} for index in range(2)]
    api.post(CONTAINERS, json=page(running))

    code, out, _ = run("queue_submit.py", config_file(), "--wait-running", *FAST)

    assert code == 0 and out["deployment_uuid"] == NEW_UUID and len(out["containers"]) == 2
    [warning] = [w for w in out["warnings"] if w["code"] == "follow_read_errors"]
    assert warning["failures"] == 5
    result_validator.validate(out)


def test_a_failed_check_before_a_retry_says_nothing_was_created(run, api, config_file, monkeypatch, result_validator):
    """Only refusals come before a retry, so a failed name check then means nothing exists."""
    from autodl_esd.core import http

    monkeypatch.setattr(http, "MAX_ATTEMPTS", 1)
    expect_checks(api, idle=3)
    expect_create(api, json=envelope(code="BadRequest", msg="当前算力规格暂无库存"))
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, status=503, json=envelope(code="ServiceUnavailable"))  # the check before the retry

    code, out, _ = run("queue_submit.py", config_file(), *FAST)

    assert code == 3 and out["error_type"] == "api_error"
    assert out["details"]["may_have_been_created"] is False and out["details"]["name"] == "svc"
    assert "本次没有创建任何部署" in out["hint"]
    assert len(create_calls(api)) == 1
    result_validator.validate(out)


def test_recovered_says_how_it_matched_and_when_the_deployment_was_created(run, api, config_file, real_grace, fake_time):
    landed = {"uuid": NEW_UUID, "name": "svc", "status": "running", "created_at": "2099-01-01T12:00:00+08:00"}
    expect_checks(api, idle=3)
    expect_create(api, **TIMEOUT)
    api.post(DEPLOYMENTS, json=deployments([landed]))  # the first look sees it
    api.post(DEPLOYMENTS, json=deployments([landed]))  # the look for duplicates

    code, out, _ = run("queue_submit.py", config_file(), "--interval", "0.01", "--quiet")

    assert code == 0 and out["recovered"] is True, out
    how = out["recovered_by"]
    assert how["matched_on"] == {"name": "svc", "not_listed_before_first_send": True}
    assert how["deployment_created_at"] == "2099-01-01T12:00:00+08:00"
    assert how["submit_started_at_local"].endswith("+08:00") and how["created_after_submit_began"] is True
    assert "submit_started_at" not in how  # every local time is labelled as such


def test_created_after_submit_is_judged_on_the_platforms_clock(run, api, config_file, real_grace, fake_time):
    """The platform's clock runs an hour behind ours: a deployment it stamped after our first
    read came back is after the submit began, though before it on this machine's clock."""
    from email.utils import formatdate

    platform_start = time.time() - 3600
    landed = {"uuid": NEW_UUID, "name": "svc", "status": "running",
              "created_at": datetime.fromtimestamp(platform_start + 60, timezone(timedelta(hours=8))).isoformat(timespec="seconds")}
    api.post(IMAGES, json=page([{"image_uuid": IMAGE_UUID, "image_name": "app"}]),
             headers={"Date": formatdate(platform_start, usegmt=True)})
    api.get(STOCK, json=stock_list(3))
    api.post(DEPLOYMENTS, json=deployments(), match=[matchers.json_params_matcher({"name": "svc", "page_index": 1, "page_size": 100})])
    expect_create(api, **TIMEOUT)
    api.post(DEPLOYMENTS, json=deployments([landed]))
    api.post(DEPLOYMENTS, json=deployments([landed]))

    code, out, _ = run("queue_submit.py", config_file(), "--interval", "0.01", "--quiet")

    assert code == 0 and out["recovered"] is True, out
    how = out["recovered_by"]
    assert how["submit_started_at_platform"] < landed["created_at"] < how["submit_started_at_local"]
    assert how["created_after_submit_began"] is True
