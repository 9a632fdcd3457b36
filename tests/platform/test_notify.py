"""Notifications (notify.py, --notify) and the guard queue_submit starts (--max-runtime/--max-cost)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import responses
from responses import matchers

from helpers import ROOT, TEST_TOKEN, envelope

SERVICE = str(ROOT / "examples" / "replicaset-service.json")


@pytest.fixture
def detached():
    """Kill every detached guard a test leaves running (by the pid its state recorded), even
    when the test failed before it could cancel it."""
    yield
    from autodl_esd.money import guard

    for state in guard.all_states():
        if state.get("pid"):
            try:
                os.kill(state["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def titles(simulator):
    return [m["title"] for m in simulator.wechat_messages()]


def test_notify_sends_a_message_the_simulator_records(sim, run, result_validator):
    simulator = sim()
    code, out, _ = run("notify.py", "--title", "训练完成", "--content", "4 个容器都已结束", "--name", "job", "--quiet")
    assert code == 0, out
    result_validator.validate(out)
    assert out["sent"] is True and out["wechat_host"] == simulator.url
    [message] = simulator.wechat_messages()
    assert (message["title"], message["content"], message["name"]) == ("训练完成", "4 个容器都已结束", "job")


def test_notify_goes_to_the_www_host_not_the_developer_host(run, monkeypatch):
    monkeypatch.setenv("AUTODL_HOST", "https://api.autodl.com")
    with responses.RequestsMock() as mock:
        mock.post("https://www.autodl.com/api/v1/wechat/message/send", json=envelope(None),
                  match=[matchers.json_params_matcher({"title": "hi", "content": "body"}),
                         matchers.header_matcher({"Authorization": TEST_TOKEN})])
        code, out, _ = run("notify.py", "--title", "hi", "--content", "body", "--quiet")
    assert code == 0 and out["wechat_host"] == "https://www.autodl.com", out


def test_wechat_host_can_be_set(monkeypatch):
    from autodl_esd.platform.notify import wechat_host
    from autodl_esd.core.settings import Settings

    real = Settings(host="https://private.autodl.com", http_timeout=30, token="x" * 10)
    assert wechat_host(real, {}) == "https://www.autodl.com"
    assert wechat_host(real, {"AUTODL_WECHAT_HOST": "https://wechat.example.com/"}) == "https://wechat.example.com"
    assert wechat_host(Settings("http://127.0.0.1:5000", 30, "x" * 10), {}) == "http://127.0.0.1:5000"


def test_local_rate_limit_five_a_minute(sim, run, result_validator):
    simulator = sim()
    for index in range(5):
        code, out, _ = run("notify.py", "--title", f"第 {index} 条", "--quiet")
        assert code == 0, out
    code, out, _ = run("notify.py", "--title", "第 6 条", "--quiet")
    assert (code, out["error_type"]) == (3, "api_error")
    result_validator.validate(out)
    assert out["details"]["rate_limited"] is True and 0 < out["details"]["retry_after_seconds"] <= 60
    assert len(simulator.wechat_messages()) == 5  # the sixth never left this machine


def test_local_rate_limit_fifty_a_day(sim, run):
    from autodl_esd.platform.notify import SendLog

    simulator = sim()
    now = time.time()
    with SendLog() as log:  # fifty sent over the last day, none in the last minute
        log.save([now - 120 - i * 1000 for i in range(50)])
    code, out, _ = run("notify.py", "--title", "今天第 51 条", "--quiet")
    assert (code, out["error_type"]) == (3, "api_error") and "每天 50 条" in out["message"]
    assert simulator.wechat_messages() == []


def test_a_refused_message_does_not_use_up_the_quota(sim, run):
    from autodl_esd.platform.notify import SendLog

    simulator = sim()
    simulator.set_wallet(wechat_bound=False)
    code, out, _ = run("notify.py", "--title", "x", "--quiet")
    assert (code, out["error_type"]) == (3, "api_error") and "绑定微信" in out["message"]
    with SendLog() as log:
        assert log.times(time.time()) == []


def test_queue_submit_notifies_submitted_and_running(sim, run):
    simulator = sim()
    code, out, _ = run("queue_submit.py", SERVICE, "--wait-running", "--notify", "--interval", "0.05", "--quiet")
    assert code == 0, out
    assert titles(simulator) == ["已提交: llm-inference-service", "容器已运行: llm-inference-service"]
    assert out["notifications"] == [{"title": t, "sent": True} for t in titles(simulator)]


def test_queue_submit_notifies_a_stock_timeout(sim, run):
    simulator = sim()
    for gpu in ("RTX 4090", "RTX A5000"):
        simulator.occupy(gpu, 1000)
    code, out, _ = run("queue_submit.py", SERVICE, "--timeout", "0.2", "--notify", "--interval", "0.05", "--quiet")
    assert (code, out["error_type"]) == (2, "timeout")
    assert titles(simulator) == ["等待超时: llm-inference-service"]
    assert out["details"]["notifications"][0]["sent"] is True


def test_a_failed_notification_is_a_warning_not_a_failure(sim, run):
    simulator = sim()
    simulator.set_wallet(wechat_bound=False)
    code, out, _ = run("queue_submit.py", SERVICE, "--notify", "--interval", "0.05", "--quiet")
    assert code == 0 and out["deployment_uuid"], out
    assert "notification_failed" in [w["code"] for w in out["warnings"]]
    assert out["notifications"] == [{"title": "已提交: llm-inference-service", "sent": False}]


def test_dry_run_shows_the_guard_it_would_start(sim, run):
    sim()
    code, out, _ = run("queue_submit.py", SERVICE, "--dry-run", "--max-runtime", "6", "--max-cost", "50", "--quiet")
    assert code == 0, out
    assert "运行满 6 小时" in out["guard_plan"] and "50 元" in out["guard_plan"]


def test_queue_submit_starts_a_guard_that_stops_the_deployment_and_notifies(sim, run, detached):
    from autodl_esd.money import guard

    simulator = sim()
    code, out, _ = run("queue_submit.py", SERVICE, "--wait-running", "--max-runtime", "1", "--notify",
                       "--guard-interval", "0.05", "--interval", "0.05", "--quiet")
    assert code == 0, out
    started = out["guard"]
    try:
        assert started["alive"] and started["deployment_uuid"] == out["deployment_uuid"]
        simulator.advance(1.2 * 3600)
        deadline = time.monotonic() + 30  # polls: generous for a loaded machine
        while guard.read_state(guard.files_for(started["guard_id"]))["status"] != "acted":
            assert time.monotonic() < deadline, "the guard did not act"
            time.sleep(0.02)
    finally:
        state = guard.read_state(guard.files_for(started["guard_id"]))
        if state.get("pid"):
            os.kill(state["pid"], signal.SIGKILL)
    assert next(d for d in simulator.deployments() if d["uuid"] == out["deployment_uuid"])["status"] == "stopped"
    assert titles(simulator)[-1] == "守护: 已执行"
    assert "已停止部署" in simulator.wechat_messages()[-1]["content"]


def test_guard_not_started_with_sim_is_a_warning(run):
    code, out, _ = run("queue_submit.py", SERVICE, "--sim", "--max-runtime", "1", "--quiet")
    assert code == 0 and out["guard"] is None, out
    assert "guard_not_started" in [w["code"] for w in out["warnings"]]


def test_the_guard_starts_right_after_the_create_even_when_a_wait_then_fails(sim, run, detached):
    sim(speed=1)  # real time: containers take ~30 s to start, far beyond --startup-timeout
    code, out, _ = run("queue_submit.py", SERVICE, "--wait-running", "--startup-timeout", "0.5", "--max-runtime", "1",
                       "--guard-interval", "0.05", "--interval", "0.05", "--quiet")
    assert (code, out["error_type"]) == (2, "startup_timeout"), out
    started = out["details"]["guard"]
    try:
        assert started["alive"] and started["deployment_uuid"] == out["details"]["deployment_uuid"]
    finally:
        code, cancelled, _ = run("guard_deployment.py", "--cancel", started["guard_id"], "--quiet")
    assert code == 0 and cancelled["guard_status"] == "cancelled"


def test_queue_submit_notifies_a_finished_job(sim, run, tmp_path):
    import json

    from helpers import load_script, script_path

    parser = load_script(script_path("queue_submit.py")).build_parser()
    if not any("--wait-finished" in action.option_strings for action in parser._actions):
        pytest.skip("queue_submit --wait-finished is not on this branch yet")
    simulator = sim()
    job = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))
    job["container_template"]["cmd"] = "sleep 60"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    code, out, _ = run("queue_submit.py", str(path), "--wait-finished", "--notify", "--interval", "0.05", "--quiet")
    assert code == 0, out
    assert titles(simulator)[-1] == "已结束: resnet-batch-training"
    assert "全部容器已运行完毕" in simulator.wechat_messages()[-1]["content"]
