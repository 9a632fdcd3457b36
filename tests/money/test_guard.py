"""guard_deployment.py: stops a forgotten deployment once, on run time, spend or idleness.

End to end on the simulator: simulated hours pass with `advance()`, guards check every
0.05 s. Detached guards are real background processes; every one a test starts is ended
(cancelled or killed by pid) before the test returns.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


from helpers import ROOT, job_config, sim_service, write_config
from helpers import servers
from helpers.servers import pid_alive

pytestmark = pytest.mark.usefixtures("fast_read_back")  # read-backs after a change need no real pauses

SERVICE = str(ROOT / "examples" / "replicaset-service.json")
FAST = ("--interval", "0.05", "--quiet")
HOUR = 3600.0


def submit(run, config=SERVICE, *extra):
    code, out, _ = run("queue_submit.py", config, "--wait-running", "--interval", "0.05", "--quiet", *extra)
    assert code == 0, out
    return out


def operate_requests(simulator, uuid):
    return [p for m, path, p in simulator.request_log() if path == "/api/v1/dev/deployment/operate" and p and p.get("deployment_uuid") == uuid]


def replica_requests(simulator, uuid):
    return [p for m, path, p in simulator.request_log() if path == "/api/v1/dev/deployment/replica_num" and p and p.get("deployment_uuid") == uuid]


def deployment_of(simulator, uuid):
    return next((d for d in simulator.deployments() if d["uuid"] == uuid), None)


def guard_states():
    from autodl_esd.money import guard

    return guard.all_states()


# The shared bounded poll, generous for a loaded machine (it returns as soon as the condition holds).
wait_for = functools.partial(servers.wait_for, timeout=30.0)


def watching():
    return [s for s in guard_states() if s.get("status") == "watching" and s.get("last_check")]


def in_background(action):
    """Run `action` once the guard has made a first check (so it runs in the guard's loop)."""
    def body():
        wait_for(watching)
        action()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def detached():
    """Kill every detached guard a test leaves running (by the pid it recorded)."""
    yield
    for state in guard_states():
        pid = state.get("pid")
        if pid and state.get("status") not in ("acted", "cancelled"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- confirmation and input ------------------------------------------------------------------

def test_without_yes_it_says_what_will_be_stopped_and_when(sim, run, result_validator):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "2", "--quiet")
    assert (code, out["error_type"]) == (1, "confirmation_required")
    result_validator.validate(out)
    assert "运行满 2 小时" in out["details"]["plan"] and "停止整个部署" in out["details"]["plan"]
    assert out["details"]["live_container_count"] == 2
    assert guard_states() == []  # nothing written, nothing started

    simulator.advance(3 * HOUR)  # a limit already passed is said to act at once
    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "2", "--quiet")
    assert "已经超过, 守护启动后立即执行" in out["details"]["plan"]


@pytest.mark.parametrize("argv, fragment", [
    ([], "至少需要一个条件"),
    (["--idle-minutes", "5"], "--idle-url"),
    (["--max-runtime", "1", "--action", "scale-to"], "--floor"),
])
def test_a_guard_that_could_never_act_is_refused(sim, run, argv, fragment):
    sim()
    uuid = submit(run)["deployment_uuid"]
    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, *argv, "--yes", "--quiet")
    assert (code, out["error_type"]) == (1, "usage_error") and fragment in out["message"]


def test_list_is_empty_at_first(run):
    code, out, _ = run("guard_deployment.py", "--list", "--quiet")
    assert code == 0 and out["items"] == [] and out["count"] == 0


# --- acting ---------------------------------------------------------------------------------

def test_stops_after_max_runtime(sim, run, result_validator):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    in_background(lambda: simulator.advance(1.1 * HOUR))

    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "1", "--yes", *FAST)

    assert code == 0, out
    result_validator.validate(out)
    assert out["guard_status"] == "acted" and out["outcome"]["took_effect"] is True
    assert "1 小时" in out["message"]
    assert deployment_of(simulator, uuid)["status"] == "stopped"
    assert len(operate_requests(simulator, uuid)) == 1


def test_an_unreachable_platform_delays_the_stop_until_it_answers_again(sim, run):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]

    problems = []

    def failed_checks():
        return max([s.get("consecutive_failures") or 0 for s in guard_states()] or [0])

    def outage_while_the_limit_passes():
        try:
            simulator.set_faults("error_rate=1")  # every API call answers 5xx
            # A check that failed began after the outage did: no read from before it (whose
            # answer would carry the advanced clock) is still in flight when time moves.
            wait_for(lambda: failed_checks() >= 1)
            simulator.advance(1.5 * HOUR)
            seen = failed_checks()
            wait_for(lambda: failed_checks() >= seen + 2)  # it looked again past the limit...
            assert operate_requests(simulator, uuid) == []  # ... and could send nothing
        except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
            problems.append(error)
        finally:
            simulator.set_faults(None)  # never leave the guard failing forever

    thread = in_background(outage_while_the_limit_passes)
    code, out, stderr = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "1", "--yes", "--interval", "0.05")
    thread.join(30)

    assert not problems, problems
    assert code == 0 and out["guard_status"] == "acted", out
    assert "查询失败" in stderr  # it kept going through the outage
    assert out["last_check"]["runtime_hours"] >= 1.5  # counted on the platform's timestamps
    assert len(operate_requests(simulator, uuid)) == 1


def test_stops_when_spend_since_start_reaches_max_cost(sim, run):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    in_background(lambda: simulator.advance(2 * HOUR))  # two replicas, ~1.9 yuan/h each

    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-cost", "5", "--yes", *FAST)

    assert code == 0, out
    assert out["guard_status"] == "acted" and "花费" in out["message"]
    assert out["last_check"]["spent_yuan"] >= 5
    assert deployment_of(simulator, uuid)["status"] == "stopped"


class MetricsServer:
    """A stand-in for the gateway's /_gateway/metrics, rendered by prometheus_client; like the
    gateway it counts each scrape as a request (in flight while rendering, finished after).

    `before_render(scrape_number)` runs first on each scrape: traffic placed between the
    guard's scrapes, so what each scrape sees does not depend on thread scheduling."""

    def __init__(self, before_render=lambda number: None):
        from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

        self.registry = CollectorRegistry()
        self.requests = Histogram("http_server_request_duration_seconds", "request time", ["route"], registry=self.registry)
        self.active = Gauge("http_server_active_requests", "in flight", registry=self.registry)
        self.scrapes = 0

        def render():
            self.scrapes += 1
            before_render(self.scrapes)
            self.active.inc()
            try:
                return generate_latest(self.registry)
            finally:
                self.active.dec()
                self.requests.labels(route="/_gateway/metrics").observe(0.001)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = render()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_gateway/metrics"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_scales_down_a_service_idle_on_the_gateway_metrics(sim, run):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    last_request = {}

    def traffic(scrape_number):
        if scrape_number <= 6:  # a request before each of the first six scrapes, then silence
            metrics.requests.labels(route="/v1/chat/completions").observe(0.01)
            last_request["at"] = time.monotonic()

    metrics = MetricsServer(before_render=traffic)
    try:
        code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--idle-minutes", "0.01",
                           "--idle-url", metrics.url, "--action", "scale-to", "--floor", "1", "--yes", *FAST)
    finally:
        metrics.close()

    assert code == 0, out
    assert out["guard_status"] == "acted" and "没有请求" in out["message"]
    assert metrics.scrapes > 6  # it saw the traffic, then the silence
    assert time.monotonic() - last_request["at"] >= 0.6  # idle 0.01 min = 0.6 s after the last one
    assert deployment_of(simulator, uuid)["replica_num"] == 1
    assert replica_requests(simulator, uuid) == [{"deployment_uuid": uuid, "replica_num": 1}]


def test_requests_in_flight_are_not_idle():
    from autodl_esd.money.idle import Activity, IdleTracker

    # Each reading is a scrape the gateway counts: 1 in flight now, +1 finished by the next.
    tracker = IdleTracker()
    assert tracker.observe(Activity(10, 1), now=0) == 0
    assert tracker.observe(Activity(11, 1), now=30) == 30  # only our own previous scrape
    assert tracker.observe(Activity(12, 2), now=60) == 0  # someone else's request in flight
    assert tracker.observe(Activity(14, 1), now=90) == 0  # ... it finished (+1 ours, +1 theirs)
    assert tracker.observe(Activity(15, 1), now=120) == 30
    assert tracker.observe(Activity(3, 1), now=130) == 0  # the gateway restarted: counts moved
    # A guard restarted from its state file goes on counting the same quiet spell.
    restarted = IdleTracker.from_state(json.loads(json.dumps(tracker.to_state())))
    assert restarted.observe(Activity(4, 1), now=190) == 60


def test_a_page_without_the_request_histogram_is_not_idle():
    from autodl_esd.money.idle import parse_activity

    with pytest.raises(ValueError):
        parse_activity("# HELP up up\n# TYPE up gauge\nup 1\n")
    with pytest.raises(ValueError):
        parse_activity("this is { not prometheus\n")


def test_a_job_that_finishes_ends_its_guard(sim, run, tmp_path):
    simulator = sim()
    job = json.loads((ROOT / "examples" / "job-training.json").read_text(encoding="utf-8"))
    job["container_template"]["cmd"] = "sleep 600"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    uuid = submit(run, str(path))["deployment_uuid"]
    in_background(lambda: simulator.advance(HOUR))

    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "5", "--yes", *FAST)

    assert code == 0 and out["guard_status"] == "deployment_finished", out
    assert operate_requests(simulator, uuid) == []
    # The Job's end as queue_submit --wait-finished reports it (waiting.wait_finished, when present).
    try:
        import autodl_esd.platform.follow  # noqa: F401
    except ImportError:
        assert out["job_end"] is None
    else:
        assert out["job_end"]["finished"] is True and len(out["job_end"]["containers"]) == 4


def test_a_deployment_deleted_meanwhile_ends_the_guard_saying_so(sim, run):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]

    def delete():
        with simulator.world.lock:
            simulator.world.delete_deployment(simulator.world.deployment(uuid))

    in_background(delete)
    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "1", "--yes", *FAST)

    assert code == 0 and out["guard_status"] == "deployment_gone", out
    assert "不存在" in out["message"]
    assert operate_requests(simulator, uuid) == []


# --- outliving the session: detach, list, kill, resume, cancel --------------------------------

def test_killed_and_restarted_it_still_acts_once_and_only_once(sim, run, detached):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    code, started, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "1", "--yes", "--detach", *FAST)
    assert code == 0 and started["alive"] and started["pid"], started
    assert started["state_file"].startswith(os.environ["XDG_STATE_HOME"])

    code, listed, _ = run("guard_deployment.py", "--list", "--quiet")
    [item] = listed["items"]
    assert item["alive"] and item["limits"]["max_runtime_hours"] == 1

    os.kill(started["pid"], signal.SIGKILL)  # a crash, not a cancel
    wait_for(lambda: not run("guard_deployment.py", "--list", "--quiet")[1]["items"][0]["alive"])
    simulator.advance(1.5 * HOUR)  # the limit passes while nothing watches
    _, listed, _ = run("guard_deployment.py", "--list", "--quiet")
    assert "--resume" in listed["items"][0]["hint"] and operate_requests(simulator, uuid) == []

    code, resumed, _ = run("guard_deployment.py", "--resume", started["guard_id"], "--detach", "--quiet")
    assert code == 0, resumed
    code, twice, _ = run("guard_deployment.py", "--resume", started["guard_id"], "--detach", "--quiet")
    assert code == 0 and twice["detached"] is False  # running or ended: no second process
    final = wait_for(lambda: next((s for s in guard_states() if s["status"] == "acted"), None))
    assert final["outcome"]["took_effect"] is True
    assert deployment_of(simulator, uuid)["status"] == "stopped"

    code, again, _ = run("guard_deployment.py", "--resume", started["guard_id"], "--quiet")  # a second restart
    assert code == 0 and again["guard_status"] == "acted"
    assert len(operate_requests(simulator, uuid)) == 1


def _crash_mid_action(run, simulator, uuid, action_args):
    """A guard whose intent is on file but whose outcome is not (it died while sending)."""
    from autodl_esd.money import guard

    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "9", *action_args, "--yes", "--detach", *FAST)
    assert code == 0, out
    run("guard_deployment.py", "--cancel", out["guard_id"], "--quiet")
    files = guard.files_for(out["guard_id"])
    files.cancel.unlink()
    state = guard.read_state(files)
    state.update(status="acting", acting={"reason": "max_runtime", "message": "部署已运行 9 小时。", "what": "…"}, pid=None)
    guard.write_state(files, state)
    return out["guard_id"]


def test_a_guard_that_died_after_its_stop_landed_does_not_send_it_again(sim, run, detached):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    guard_id = _crash_mid_action(run, simulator, uuid, [])
    run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")  # the request that landed
    before = len(operate_requests(simulator, uuid))

    code, out, _ = run("guard_deployment.py", "--resume", guard_id, "--quiet")

    assert code == 0 and out["guard_status"] == "acted", out
    assert out["outcome"]["settled_after_restart"] is True
    assert len(operate_requests(simulator, uuid)) == before


def test_a_scale_down_of_unknown_fate_is_not_sent_again(sim, run, detached):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    guard_id = _crash_mid_action(run, simulator, uuid, ["--action", "scale-to", "--floor", "1"])

    code, out, _ = run("guard_deployment.py", "--resume", guard_id, "--quiet")

    assert code == 0 and out["guard_status"] == "action_unconfirmed", out
    assert out["outcome"]["took_effect"] == "unknown"
    assert replica_requests(simulator, uuid) == []


def test_cancel_ends_a_detached_guard_without_acting(sim, run, detached):
    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    code, started, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "1", "--yes", "--detach", *FAST)
    assert code == 0, started
    code, second, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-cost", "1", "--yes", "--quiet")
    assert (code, second["error_type"]) == (1, "usage_error")  # one guard per deployment

    code, cancelled, _ = run("guard_deployment.py", "--cancel", started["guard_id"], "--quiet")

    assert code == 0 and cancelled["guard_status"] == "cancelled" and not cancelled["alive"], cancelled
    simulator.advance(2 * HOUR)
    time.sleep(0.2)
    assert operate_requests(simulator, uuid) == [] and deployment_of(simulator, uuid)["status"] == "running"
    assert wait_for(lambda: not pid_alive(started["pid"]))


# --- stop and delete name the guards watching, whatever the deployment's state -------------

WATCHED = "watched-svc"  # a ReplicaSet on helpers.sim_service's one machine


def _watching_guard(uuid: str, name: str, deployment_type: str = "ReplicaSet") -> str:
    from autodl_esd.money import guard

    state = guard.new_state(None, {"uuid": uuid, "name": name, "deployment_type": deployment_type},
                            guard.Limits(max_runtime_hours=100), "stop", None, False, 30.0)
    state["status"] = "watching"  # between two checks, not yet seen the stop (no process: alive false)
    guard.save_new(state)
    return state["guard_id"]


def test_stopping_an_already_stopped_deployment_still_lists_the_guards_watching_it(sim, run):
    from autodl_esd.platform import api

    instance = sim(cluster=sim_service.CLUSTER)
    uuid = sim_service.deploy(instance, 1, name=WATCHED)
    api.stop_deployment(sim_service.client(), uuid)
    guard_id = _watching_guard(uuid, WATCHED)

    code, single, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")
    assert code == 0 and single["changed"] is False
    assert [g["guard_id"] for g in single["guards"]] == [guard_id] and "guards_note" in single

    code, bulk, _ = run("stop_deployment.py", "--name-glob", WATCHED + "*", "--yes", "--expect-uuids", uuid, "--quiet")
    assert code == 0 and bulk["items"][0]["outcome"] == "skipped", bulk
    assert [g["guard_id"] for g in bulk["items"][0]["guards"]] == [guard_id] and "guards_note" in bulk


def test_a_refused_stop_still_lists_the_guards_watching(sim, run, monkeypatch):
    from autodl_esd.platform import api
    from autodl_esd.core.errors import ApiError

    instance = sim(cluster=sim_service.CLUSTER)
    uuid = sim_service.deploy(instance, 1, name=WATCHED)
    guard_id = _watching_guard(uuid, WATCHED)

    def refused(client, deployment_uuid):
        raise ApiError("平台拒绝了停止", msg="refused", retryable=False)

    monkeypatch.setattr(api, "stop_deployment", refused)
    code, out, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")
    assert code != 0 and out["status"] == "error", out
    assert [g["guard_id"] for g in out["details"]["guards"]] == [guard_id], out


@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py"])
def test_bulk_results_carry_guards_and_cost_per_item(sim, run, tmp_path, result_validator, script):
    simulator = sim()
    uuids = {}
    for name in ("demo-a", "demo-b"):
        code, out, _ = run("queue_submit.py", job_config(tmp_path, name, cmd="sleep infinity"), *FAST)
        assert code == 0, out
        uuids[name] = out["deployment_uuid"]
    guard_id = _watching_guard(uuids["demo-a"], "demo-a", "Job")
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
    code, out, _ = run("queue_submit.py", job_config(tmp_path, "demo-a", cmd="sleep infinity"), *FAST)
    assert code == 0, out
    code, done, _ = run("delete_deployment.py", "--name-glob", "demo-*", "--yes",
                        "--expect-uuids", out["deployment_uuid"], "--quiet")
    assert code == 0, done
    assert "guards_note" not in done and "guards" not in done["items"][0]


# --- queue_submit's run is the approval; guard_deployment asks first -----------------------

SERVICE_CONFIG = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))


def test_queue_submit_guards_only_what_it_created_while_guard_deployment_asks_first(sim, run, deploy, tmp_path):
    from autodl_esd.money import guard

    sim()
    other = deploy(1)  # somebody's running service, same account
    path = write_config(tmp_path, "guarded", dict(SERVICE_CONFIG, name="guarded-run", replica_num=1))

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


# --- the decision itself ---------------------------------------------------------------------

def _state(**limits):
    from autodl_esd.money import guard

    return {"deployment_uuid": "833f1cd5a764fa3", "deployment_created_at": "2026-01-05T20:00:00+08:00",
            "started_platform_at": "2026-01-05T21:00:00+08:00", "action": "stop", "floor": None,
            "limits": {**guard.Limits().__dict__, **limits}}


def test_a_scale_down_never_scales_up():
    from autodl_esd.money.guard import Observation, judge
    from autodl_esd.core.clock import parse_timestamp

    state = {**_state(max_runtime_hours=1), "action": "scale-to", "floor": 2}
    deployment = {"uuid": "833f1cd5a764fa3", "created_at": "2026-01-05T20:00:00+08:00", "status": "running", "replica_num": 1}
    verdict = judge(state, Observation(deployment, [], parse_timestamp("2026-01-05T22:00:00+08:00")))
    assert (verdict.end, verdict.act) == ("not_needed", None) and "无需缩容" in verdict.message
    verdict = judge(state, Observation({**deployment, "replica_num": 3}, [], parse_timestamp("2026-01-05T22:00:00+08:00")))
    assert verdict.act == "max_runtime"


@pytest.mark.parametrize("deployment, containers, now, limits, end, act", [
    (None, [], "2026-01-05T22:00:00+08:00", {"max_runtime_hours": 1}, "deployment_gone", None),
    ({"uuid": "833f1cd5a764fa3", "created_at": "2026-01-06T00:00:00+08:00", "status": "running"}, [],
     "2026-01-06T02:00:00+08:00", {"max_runtime_hours": 1}, "deployment_gone", None),  # same uuid, other deployment
    ({"uuid": "833f1cd5a764fa3", "created_at": "2026-01-05T20:00:00+08:00", "status": "running"}, [],
     "2026-01-05T20:59:00+08:00", {"max_runtime_hours": 1}, None, None),
    ({"uuid": "833f1cd5a764fa3", "created_at": "2026-01-05T20:00:00+08:00", "status": "running"}, [],
     "2026-01-05T21:00:00+08:00", {"max_runtime_hours": 1}, None, "max_runtime"),
    # 2 yuan/h since 20:00, but spend counts from the guard's start at 21:00: 2 yuan by 22:00
    ({"uuid": "833f1cd5a764fa3", "created_at": "2026-01-05T20:00:00+08:00", "status": "running"},
     [{"status": "running", "price": 2000, "started_at": "2026-01-05T20:00:00+08:00", "stopped_at": None}],
     "2026-01-05T22:00:00+08:00", {"max_cost_yuan": 2.5}, None, None),
    ({"uuid": "833f1cd5a764fa3", "created_at": "2026-01-05T20:00:00+08:00", "status": "running"},
     [{"status": "running", "price": 2000, "started_at": "2026-01-05T20:00:00+08:00", "stopped_at": None}],
     "2026-01-05T22:30:00+08:00", {"max_cost_yuan": 2.5}, None, "max_cost"),
    ({"uuid": "833f1cd5a764fa3", "created_at": "2026-01-05T20:00:00+08:00", "status": "stopped", "deployment_type": "ReplicaSet"}, [],
     "2026-01-05T22:00:00+08:00", {"max_runtime_hours": 1}, "deployment_stopped", None),
])
def test_judge(deployment, containers, now, limits, end, act):
    from autodl_esd.money.guard import Observation, judge
    from autodl_esd.core.clock import parse_timestamp

    verdict = judge(_state(**limits), Observation(deployment, containers, parse_timestamp(now)))
    assert (verdict.end, verdict.act) == (end, act)


# --- against the real serving gateway --------------------------------------------------------

def test_idle_guard_on_the_real_gateway_waits_out_traffic_then_scales_down(sim, run, monkeypatch):
    """serve_gateway's own /_gateway/metrics: the guard's scrapes do not count as traffic,
    steady traffic keeps the service up, silence for --idle-minutes scales it down."""
    pytest.importorskip("aiohttp")
    import requests

    from autodl_esd.money import idle
    from autodl_esd.core.http import ApiClient
    from autodl_esd.serving.registry.watcher import RegistryWatcher, WatchOptions
    from autodl_esd.serving.routing.sources import WatcherSource
    from autodl_esd.core.settings import Settings
    from helpers.loop_thread import LoopThread

    simulator = sim()
    uuid = submit(run)["deployment_uuid"]
    loop = LoopThread()
    source = None
    try:
        client = ApiClient(Settings(host=simulator.url, http_timeout=5, token=simulator.token))
        source = WatcherSource(RegistryWatcher(client, uuid, WatchOptions(interval=0.1, resync_every=5)), stale_after=0.3)
        source.start()
        assert source.wait_first(5)
        gateway = loop.gateway(source, deployment_uuid=uuid, interval=0.1)
        # Steady traffic through the first 20 scrapes (19 pauses of 0.05 s: at least 0.95 s,
        # longer than the 0.6 s of idleness that acts), then silence. One request through the
        # gateway just before each scrape: a loaded machine cannot open a gap in it.
        session = requests.Session()
        answered, read_activity = [], idle.read_activity

        def scrape_after_a_request(url):
            if len(answered) < 20:
                assert session.get(gateway.url + "/predict", timeout=5).status_code == 200
                answered.append(time.monotonic())
            return read_activity(url)

        monkeypatch.setattr(idle, "read_activity", scrape_after_a_request)
        code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--idle-minutes", "0.01",
                           "--idle-url", gateway.url + "/_gateway/metrics", "--action", "scale-to", "--floor", "1",
                           "--yes", *FAST)
        acted_at = time.monotonic()
    finally:
        if source is not None:
            loop.call(source.stop)
        loop.close()

    assert code == 0 and out["guard_status"] == "acted", out
    # Not while traffic flowed (it scraped on through all 20 requests, over more than 0.6 s),
    # and 0.01 min after the last request was answered.
    assert len(answered) == 20 and answered[-1] - answered[0] >= 0.6
    assert acted_at - answered[-1] >= 0.59
    assert deployment_of(simulator, uuid)["replica_num"] == 1
    assert replica_requests(simulator, uuid) == [{"deployment_uuid": uuid, "replica_num": 1}]


# --- with a mocked platform ------------------------------------------------------------------

def test_a_stop_the_platform_refuses_is_tried_three_times_then_reported(run, api):
    from helpers.fake_api import DEP_UUID, OPERATE, deployment, expect_deployment
    from helpers import envelope

    old = deployment(created_at="2026-01-05T20:00:00+08:00")  # long past a 1 h limit
    expect_deployment(api, old)  # resolving --deployment-uuid
    for _ in range(3):
        expect_deployment(api, old)  # the guard's look before acting
        api.put(OPERATE, json=envelope(code="BadRequest", msg="部署状态不允许停止"))

    code, out, _ = run("guard_deployment.py", "--deployment-uuid", DEP_UUID, "--max-runtime", "1", "--yes", *FAST)

    assert code == 0 and out["guard_status"] == "action_failed", out
    assert out["outcome"]["took_effect"] is False and "拒绝" in out["message"]


def test_a_stop_whose_answer_is_lost_and_not_yet_visible_is_unconfirmed_not_failed(run, monkeypatch):
    """Not seeing the stop after a lost answer is no refusal: action_unconfirmed, took_effect
    unknown with how to check, and the guard does not count it as refused and try again."""
    import responses

    from helpers.fake_api import DEP_UUID, DEPLOYMENTS, OPERATE, deployment, page
    from helpers import envelope

    from autodl_esd.platform import effects

    now = [0.0]
    monkeypatch.setattr(effects, "_now", lambda: now[0])
    monkeypatch.setattr(effects, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    old = deployment(created_at="2026-01-05T20:00:00+08:00")  # long past a 1 h limit
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.post(DEPLOYMENTS, json=page([old]))  # the stop never becomes visible
        mock.put(OPERATE, status=503, json=envelope(None, code="ServiceUnavailable", msg="服务暂时不可用"))
        code, out, _ = run("guard_deployment.py", "--deployment-uuid", DEP_UUID, "--max-runtime", "1", "--yes", *FAST)
        sent = [c for c in mock.calls if c.request.url == OPERATE]

    assert code == 0 and out["guard_status"] == "action_unconfirmed", out
    assert out["outcome"]["took_effect"] == "unknown" and "list_deployments.py" in out["outcome"]["check"]
    assert len(sent) == 4  # one stop, retried by the HTTP client only (an absolute change)
