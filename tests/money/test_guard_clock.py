"""Guards on a platform clock that runs ahead (the simulator's --speed): the next check is
never scheduled past a deadline, and every timestamp of a guard record is on the platform's
clock (the local one is named `*_local`)."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest

from helpers import ROOT
from autodl_esd.money import guard
from autodl_esd.core.clock import parse_timestamp

SERVICE = str(ROOT / "examples" / "replicaset-service.json")
HOUR = 3600.0


def submit(run):
    code, out, _ = run("queue_submit.py", SERVICE, "--wait-running", "--interval", "0.05", "--quiet")
    assert code == 0, out
    return out["deployment_uuid"]


@pytest.mark.parametrize("figures, rate, probing, expected", [
    ({}, None, False, 60.0),                                   # nothing to aim at: the interval
    ({"runtime_left_hours": 1.0}, None, False, 60.0),          # far off: the interval
    ({"runtime_left_hours": 0.1}, 30.0, False, 360 / 31.5),    # 6 platform minutes at x30
    ({"budget_left_hours": 0.1}, 30.0, False, 360 / 31.5),
    ({"idle_minutes_left": 0.5}, 30.0, False, 30.0),           # idleness is real minutes
    ({"runtime_left_hours": 0.0}, 30.0, False, guard.MIN_SLEEP_SECONDS),
    ({"runtime_left_hours": 5.0}, None, True, guard.RATE_PROBE_SECONDS),
])
def test_next_check_is_never_past_a_deadline(figures, rate, probing, expected):
    assert guard.next_sleep(60.0, figures, rate, probing) == pytest.approx(expected)


def test_clock_note_only_when_the_platform_runs_at_another_pace():
    assert guard.clock_note(None) is None and guard.clock_note(1.01) is None
    assert "30 倍速" in guard.clock_note(30.0)


def test_at_speed_a_long_interval_does_not_overshoot_the_run_time_limit(sim, run):
    simulator = sim()  # 200 platform seconds per real second
    uuid = submit(run)
    deployment = next(d for d in simulator.deployments() if d["uuid"] == uuid)
    runtime_now = (simulator.clock.wall_time(simulator.clock.now()) - parse_timestamp(deployment["created_at"])).total_seconds()
    # The limit is 10 platform minutes ahead (~3 real seconds); the old schedule slept the
    # full 20 s interval first, more than an hour of platform time past the limit.
    limit_hours = (runtime_now + 600) / HOUR
    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", f"{limit_hours:.5f}",
                       "--interval", "20", "--yes", "--quiet")
    assert code == 0 and out["guard_status"] == "acted", out
    overshoot_hours = out["last_check"]["runtime_hours"] - limit_hours
    assert -0.001 <= overshoot_hours < 0.1, (limit_hours, out["last_check"])
    assert out["platform_clock_rate"] == pytest.approx(200, rel=0.25)
    assert "倍速" in out["clock_note"]


def test_a_guard_record_uses_the_platform_clock_for_every_timestamp(sim, run):
    simulator = sim()
    uuid = submit(run)
    simulator.advance(2 * HOUR)  # the platform is now two hours ahead of this machine
    code, out, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "1", "--yes", "--interval", "0.05", "--quiet")
    assert code == 0 and out["guard_status"] == "acted", out

    created, ended = parse_timestamp(out["created_at"]), parse_timestamp(out["ended_at"])
    started = min(parse_timestamp(c["started_at"]) for c in simulator.containers(uuid))
    assert created >= started + timedelta(hours=1.9)  # after the containers started
    assert 0 <= (ended - created).total_seconds() < 600  # same clock: minutes apart, not hours
    local = parse_timestamp(out["created_at_local"])
    assert (created - local).total_seconds() > HOUR  # the local one is there, and named so
    state = guard.read_state(guard.files_for(out["guard_id"]))
    assert "updated_at" not in state and state["updated_at_local"]


# --- stop/delete tell about the guards watching the deployment ------------------------------

@pytest.mark.parametrize("script", ["stop_deployment.py", "delete_deployment.py"])
def test_stop_and_delete_name_the_guards_that_will_end_at_their_next_check(sim, run, script):
    sim()
    uuid = submit(run)
    code, started, _ = run("guard_deployment.py", "--deployment-uuid", uuid, "--max-runtime", "100",
                           "--interval", "30", "--yes", "--detach", "--quiet")
    assert code == 0, started
    # Hold the guard still: left running, its next look (1 s later, to measure the clock
    # rate) can land after the stop on a loaded machine and end it, which is not the point here.
    guard_pid = guard.read_state(guard.files_for(started["guard_id"]))["pid"]
    os.kill(guard_pid, signal.SIGSTOP)
    try:
        code, out, _ = run(script, "--deployment-uuid", uuid, "--yes", "--quiet")
        assert code == 0, out
        assert out["guards"] == [{"guard_id": started["guard_id"], "guard_status": "watching", "alive": True,
                                  "interval_seconds": 30.0}]
        assert "下一次检查" in out["guards_note"] and "--cancel" in out["guards_note"]
        # Read only: the guard itself is untouched.
        assert guard.read_state(guard.files_for(started["guard_id"]))["status"] == "watching"
    finally:
        os.kill(guard_pid, signal.SIGCONT)
        run("guard_deployment.py", "--cancel", started["guard_id"], "--quiet")


def test_stop_without_guards_says_nothing_about_guards(sim, run):
    sim()
    uuid = submit(run)
    code, out, _ = run("stop_deployment.py", "--deployment-uuid", uuid, "--yes", "--quiet")
    assert code == 0 and "guards" not in out


def test_queue_submit_shows_the_guard_on_the_same_clock_as_the_containers(sim, run):
    simulator = sim()
    simulator.advance(HOUR)  # the platform is an hour ahead of this machine
    code, out, _ = run("queue_submit.py", SERVICE, "--wait-running", "--interval", "0.05", "--max-runtime", "100",
                       "--guard-interval", "30", "--quiet")
    assert code == 0 and out["guard"], out
    try:
        created = parse_timestamp(out["guard"]["created_at"])
        started = [parse_timestamp(c["started_at"]) for c in simulator.containers(out["deployment_uuid"]) if c.get("started_at")]
        deployment = next(d for d in simulator.deployments() if d["uuid"] == out["deployment_uuid"])
        # The guard starts right after the create, before the containers run: on one clock
        # it sits between the deployment's creation and a few platform minutes later.
        assert parse_timestamp(deployment["created_at"]) - timedelta(seconds=2) <= created
        assert started and created <= max(started) + timedelta(minutes=5)
        assert out["guard"]["created_at_local"]
    finally:
        run("guard_deployment.py", "--cancel", out["guard"]["guard_id"], "--quiet")
