"""Waiting on deployments end to end against the simulator: set_replicas --wait,
queue_submit --wait-finished, container_events --follow --until finished, and a Job that
finishes before --wait-running's first look."""

from __future__ import annotations

import copy
import json

import pytest

from helpers import ROOT

pytest.importorskip("simulator")

FAST = ("--interval", "0.05", "--quiet")
SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
JOB = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))


def write(tmp_path, config, **changes) -> str:
    config = {**copy.deepcopy(config), **changes}
    path = tmp_path / f"{config['name']}.json"
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_set_replicas_wait_reaches_the_count_and_names_what_scale_down_stopped(sim, run, tmp_path, result_validator):
    instance = sim()
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE, replica_num=3), "--wait-running", *FAST)
    assert code == 0, out
    uuid = out["deployment_uuid"]
    before = {c["container_uuid"] for c in out["containers"]}

    code, down, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "1", "--wait", *FAST)
    assert code == 0, down
    result_validator.validate(down)
    assert down["reached"] is True and len(down["running"]) == 1
    stopped = {c["container_uuid"] for c in down["stopped_by_scale_down"]}
    assert len(stopped) == 2 and stopped <= before
    assert "find_faulty_hosts" in down["scale_down_note"]
    assert sum(1 for c in instance.containers(uuid) if c["status"] == "running") == 1

    code, up, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "2", "--wait", *FAST)
    assert code == 0, up
    assert len(up["running"]) == 2 and up["stopped_by_scale_down"] == []


def test_set_replicas_wait_timeout_says_the_scale_took_effect(sim, run, tmp_path, result_validator):
    instance = sim()
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE, replica_num=1), "--wait-running", *FAST)
    uuid = out["deployment_uuid"]
    instance.occupy("RTX 4090", 10**6)  # no card left for the new replicas
    instance.occupy("RTX A5000", 10**6)
    code, document, _ = run("set_replicas.py", "--deployment-uuid", uuid, "--replica-num", "3", "--wait",
                            "--timeout", "0.5", *FAST)
    assert (code, document["error_type"]) == (2, "startup_timeout"), document
    result_validator.validate(document)
    assert document["details"]["took_effect"] is True and document["details"]["deployment_uuid"] == uuid


def test_set_replicas_help_says_scale_down_stops_count_as_exits(run, capsys):
    from helpers import load_script, script_path

    with pytest.raises(SystemExit):
        load_script(script_path("set_replicas.py")).build_parser().parse_args(["--help"])
    assert "find_faulty_hosts.py" in capsys.readouterr().out


def job(tmp_path, **changes) -> str:
    return write(tmp_path, JOB, **{"replica_num": 2, "parallelism_num": 1, **changes})


def test_queue_submit_wait_finished_reports_counts_and_run_times(sim, run, tmp_path, result_validator):
    instance = sim()
    code, out, _ = run("queue_submit.py", job(tmp_path), "--wait-finished", *FAST)
    assert code == 0, out
    result_validator.validate(out)
    finish = out["finish"]
    assert (finish["finished"], finish["ended_by"], finish["target_finished"]) == (True, "target_reached", 2)
    assert finish["counts"]["finished_num"] >= 2
    done = [c for c in finish["containers"] if c["status"] == "shutdown"]
    assert len(done) >= 2 and all(c["run_seconds"] is not None and c["run_seconds"] > 0 for c in done)
    assert "退出码" in finish["exit_code_note"]
    assert len(instance.deployments()) == 1


def test_wait_finished_timeout_names_the_deployment_and_never_resubmits(sim, run, tmp_path, result_validator):
    instance = sim()
    config = job(tmp_path)
    slow = json.loads(open(config, encoding="utf-8").read())
    slow["container_template"]["cmd"] = "sleep infinity"
    open(config, "w", encoding="utf-8").write(json.dumps(slow))
    code, out, _ = run("queue_submit.py", config, "--wait-finished", "--finish-timeout", "0.3", *FAST)
    assert (code, out["error_type"]) == (2, "startup_timeout"), out
    result_validator.validate(out)
    assert out["details"]["deployment_uuid"] == instance.deployments()[0]["uuid"]
    assert out["details"]["deployment_created"] is True
    creates = [entry for entry in instance.request_log() if entry[0] == "POST" and entry[1] == "/api/v1/dev/deployment"]
    assert len(creates) == 1


def test_wait_finished_refuses_a_replicaset_before_any_call(run, tmp_path, mocked, result_validator):
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE), "--wait-finished", "--quiet")
    assert (code, out["error_type"]) == (1, "usage_error")
    assert not mocked.calls


def test_container_events_follow_until_finished_for_an_existing_job(sim, run, tmp_path, result_validator):
    sim()
    code, out, _ = run("queue_submit.py", job(tmp_path), *FAST)
    assert code == 0, out
    code, document, _ = run("container_events.py", "--deployment-uuid", out["deployment_uuid"], "--follow",
                            "--until", "finished", "--timeout", "30", "--interval", "0.05", "--quiet")
    assert code == 0, document
    result_validator.validate(document)
    assert document["finish"]["finished"] is True and document["finish"]["counts"]["finished_num"] >= 2
    assert any(event["status"] == "shutdown" for event in document["items"])


# ---- reads that fail on the way: counted, logged, never fatal before the deadline ----------

def answers(*steps):
    """A `responses` callback answering (status, body) steps in order; the last one repeats."""
    queue = list(steps)

    def callback(_request):
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return status, {}, json.dumps(body)

    return callback


def failed_reads(count: int) -> list:
    """`count` failed reads: a 503 on every attempt of the HTTP client's retries."""
    from autodl_esd.core import http
    from helpers import envelope

    return [(503, envelope(None, code="ServiceUnavailable", msg="服务暂时不可用"))] * (count * http.MAX_ATTEMPTS)


def test_set_replicas_wait_keeps_reading_through_failures_and_warns(run, result_validator):
    import responses

    from helpers.fake_api import CONTAINERS, DEP_UUID, DEPLOYMENTS, REPLICA_NUM, container, deployment, page
    from helpers import envelope

    from autodl_esd.core.polling import MAX_CONSECUTIVE_POLL_FAILURES

    reads = MAX_CONSECUTIVE_POLL_FAILURES + 2  # more in a row than the old limit allowed
    two = [container(f"{DEP_UUID}-0a0a0a0a0a-0000000{i}") for i in range(2)]
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_callback("POST", DEPLOYMENTS, content_type="application/json",
                          callback=answers((200, page([deployment(replica_num=2)])), (200, page([deployment(replica_num=1)]))))
        # The snapshot before the change answers; then the wait's reads fail, then one runs.
        mock.add_callback("POST", CONTAINERS, content_type="application/json",
                          callback=answers((200, page(two)), *failed_reads(reads), (200, page(two[:1]))))
        mock.put(REPLICA_NUM, json=envelope(None))
        code, document, err = run("set_replicas.py", "--deployment-uuid", DEP_UUID, "--replica-num", "1", "--wait",
                                  "--interval", "0.01", "--timeout", "60")
    assert code == 0, document
    result_validator.validate(document)
    assert document["reached"] is True and len(document["running"]) == 1
    [warning] = document["warnings"]
    assert (warning["code"], warning["failures"]) == ("follow_read_errors", reads)
    assert "503" in warning["last_error"] and warning["message"] and warning["hint"]
    assert f"查询容器失败 (第 {reads} 次)" in err and "继续等待" in err


def test_container_events_follow_failing_until_the_deadline_is_startup_timeout_with_the_last_error(run, result_validator):
    import responses

    from helpers.fake_api import DEP_UUID, DEPLOYMENTS, EVENTS, deployment, page
    from helpers import envelope

    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.post(DEPLOYMENTS, json=page([deployment()]))
        # The first read answers; every later one fails.
        mock.add_callback("POST", EVENTS, content_type="application/json",
                          callback=answers((200, envelope({"list": []})), *failed_reads(1)))
        code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--count", "1",
                                "--interval", "0.01", "--timeout", "0.3", "--quiet")
    assert (code, document["error_type"]) == (2, "startup_timeout"), document
    result_validator.validate(document)
    details = document["details"]
    assert details["deployment_uuid"] == DEP_UUID and "仍然存在" in document["message"]
    assert details["read_errors"] >= 1 and "503" in details["last_read_error"]
    assert "不要重新提交" in document["hint"]


def test_wait_finished_reads_through_failures_and_an_auth_error_still_ends_at_once(run, result_validator):
    import responses

    from helpers.fake_api import CONTAINERS, DEP_UUID, DEPLOYMENTS, EVENTS, deployment, page
    from helpers import envelope

    running = (200, page([deployment(kind="Job", replica_num=1)]))
    finished = (200, page([deployment(kind="Job", replica_num=1, status="stopped", finished_num=1)]))
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        # The resolve and the first look answer; three reads fail; then the Job has finished.
        mock.add_callback("POST", DEPLOYMENTS, content_type="application/json",
                          callback=answers(running, running, *failed_reads(3), finished))
        mock.post(EVENTS, json=envelope({"list": []}))
        mock.post(CONTAINERS, json=page([]))
        code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--until", "finished",
                                "--interval", "0.01", "--timeout", "60", "--quiet")
    assert code == 0, document
    result_validator.validate(document)
    assert document["finish"]["finished"] is True
    [warning] = document["warnings"]
    assert (warning["code"], warning["failures"]) == ("follow_read_errors", 3)

    # A rejected token is not a blip: the follow ends at once, whatever its deadline.
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_callback("POST", DEPLOYMENTS, content_type="application/json",
                          callback=answers(running, (401, envelope(None, code="Unauthorized", msg="令牌无效"))))
        mock.post(EVENTS, json=envelope({"list": []}))
        code, document, _ = run("container_events.py", "--deployment-uuid", DEP_UUID, "--follow", "--until", "finished",
                                "--interval", "0.01", "--timeout", "600", "--quiet")
    assert (code, document["error_type"]) == (1, "auth_error"), document
    result_validator.validate(document)


def test_read_errors_count_log_and_report():
    import io

    from autodl_esd.core.errors import ApiError, AutoDLError, ErrorType
    from autodl_esd.core.output import Progress
    from autodl_esd.core.polling import ReadErrors

    stream = io.StringIO()
    errors = ReadErrors(Progress(stream=stream), "查询部署")
    assert (errors.failures, errors.last_error, errors.warning(), errors.details()) == (0, None, None, {})
    for _ in range(3):
        errors.record(ApiError("平台暂时不可用。"))
    errors.reset()
    errors.record(ApiError("等待响应超时。"))
    assert errors.failures == 4 and errors.in_a_row == 1 and errors.last_error == "等待响应超时。"
    assert "查询部署失败 (第 4 次): 等待响应超时。 继续等待。" in stream.getvalue()
    assert errors.details() == {"read_errors": 4, "last_read_error": "等待响应超时。"}
    warning = errors.warning()
    assert (warning["code"], warning["path"], warning["failures"], warning["last_error"]) == ("follow_read_errors", "", 4, "等待响应超时。")
    with pytest.raises(AutoDLError):  # not a read failure to wait out
        errors.record(AutoDLError(ErrorType.AUTH_ERROR, "令牌被拒绝"))


def test_wait_finished_reports_what_the_run_cost_as_cost_report_counts_it(sim, run, tmp_path, result_validator):
    sim()
    code, out, _ = run("queue_submit.py", job(tmp_path), "--wait-finished", *FAST)
    assert code == 0, out
    result_validator.validate(out)
    assert out["cost_so_far_yuan"] is not None and out["cost_so_far_yuan"] > 0
    assert out["cost_so_far"]["container_count"] >= 2 and "cost_report.py" in out["cost_so_far"]["basis"]
    code, report, _ = run("cost_report.py", "--deployment-uuid", out["deployment_uuid"], "--quiet")
    assert code == 0, report
    assert report["items"][0]["cost_yuan"] == pytest.approx(out["cost_so_far_yuan"], abs=0.01)


def test_without_interval_a_loopback_host_is_polled_every_second(sim, run, tmp_path, monkeypatch):
    """A silent 30 s sleep is 30 simulated minutes at --speed 60: the simulator gets 1 s."""
    from autodl_esd.core.polling import DEFAULT_REMOTE_INTERVAL_SECONDS, default_interval
    from autodl_esd.deploy import submission

    sim()
    seen = []
    original = submission.Run.go

    def spy(self, submitter, stock, **kwargs):
        seen.append((self.request.interval, submitter.options.interval))
        return original(self, submitter, stock, **kwargs)

    monkeypatch.setattr(submission.Run, "go", spy)
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE, replica_num=1), "--quiet")
    assert code == 0, out
    assert seen == [(1.0, 1.0)]
    code, out, _ = run("queue_submit.py", write(tmp_path, SERVICE, name="given", replica_num=1), "--interval", "0.05", "--quiet")
    assert code == 0, out
    assert seen[-1] == (0.05, 0.05)  # an explicit --interval is kept
    assert default_interval("https://private.autodl.com") == DEFAULT_REMOTE_INTERVAL_SECONDS == 30.0


def test_queue_submit_help_says_what_notify_sends_without_a_wait(capsys):
    from helpers import load_script

    with pytest.raises(SystemExit):
        load_script(ROOT / "queue_submit.py").build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "只加 --notify 时只发 已提交" in text and "--detach 时这些都由后台进程" in text
    assert "autodl_sim.py 的模拟器) 时默认 1" in text
