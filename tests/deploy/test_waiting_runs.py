"""Markers of queue_submit runs waiting for stock (deploy/waiting_runs.py): a second run of
the same name hears about the first at once and on its timeout, in deployment_exists and in
a dry run; a marker left by a run that is gone is ignored and cleared."""

from __future__ import annotations

import json

from helpers import ROOT, occupy_all, write_config

SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))


def _markers():
    from autodl_esd.core.state import state_root

    return sorted((state_root() / "queue_waiting").glob("*/*.json"))


def test_a_second_run_while_the_first_waits_says_so_at_once_and_on_timeout(sim, run, tmp_path, result_validator):
    import os
    import subprocess
    import sys

    instance = sim()
    occupy_all(instance, SERVICE)
    path = write_config(tmp_path, "rs", SERVICE)
    first = subprocess.Popen([sys.executable, str(ROOT / "queue_submit.py"), path, "--wait-running", "--interval", "0.2", "--quiet"],
                             env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        instance.wait_until(lambda: _markers(), timeout=60)  # the first is waiting now

        code, second, err = run("queue_submit.py", path, "--wait-running", "--interval", "0.1", "--timeout", "0.3")

        assert (code, second["error_type"]) == (2, "timeout"), second
        result_validator.validate(second)
        assert f"另一个 queue_submit (pid {first.pid}, 自 " in second["message"] and "不要重复提交" in second["message"]
        assert second["details"]["waiting_runs"][0]["pid"] == first.pid
        assert second["details"]["waiting_runs"][0]["still_waiting"] is True
        # Said at once, before this run's own wait began.
        lines = err.splitlines()
        said = next(i for i, line in enumerate(lines) if "another_run_waiting" in line)
        waits = next(i for i, line in enumerate(lines) if "等待库存" in line)
        assert said < waits and f"pid {first.pid}" in lines[said]
        assert len(_markers()) == 1, "the second run's own marker is gone; the first's stays"
        assert first.poll() is None, "the first run is untouched"
    finally:
        first.kill()  # SIGKILL: its marker stays behind, unlocked
        first.communicate(timeout=60)
    # A marker left by a run that is gone is ignored: no warning, and the wait is as before.
    code, third, _ = run("queue_submit.py", path, "--interval", "0.1", "--timeout", "0.3", "--quiet")
    assert third["error_type"] == "timeout" and "另一个" not in third["message"] and "waiting_runs" not in third["details"]
    assert instance.deployments() == [], "nothing was bought by any of the three"


def test_a_stale_marker_is_ignored_and_cleared(run, tmp_path):
    import os
    import time

    from autodl_esd.deploy import waiting_runs

    directory = waiting_runs.marker_dir("http://h", "rs")
    directory.mkdir(parents=True)
    stale = directory / "99999999-deadbeef.json"
    stale.write_text(json.dumps({"pid": 99999999, "host": "http://h", "name": "rs", "started_epoch": 1}), encoding="utf-8")
    assert waiting_runs.live_waiters("http://h", "rs") == []
    os.utime(stale, (time.time() - 60, time.time() - 60))
    assert waiting_runs.live_waiters("http://h", "rs") == [] and not stale.exists()


def test_a_live_marker_is_seen_and_removed_when_its_run_ends():
    from autodl_esd.deploy import waiting_runs

    with waiting_runs.waiting_marker("http://h", "rs", "ReplicaSet") as mine:
        assert mine is not None and mine.exists()
        [seen] = waiting_runs.live_waiters("http://h", "rs")
        assert seen["name"] == "rs" and seen["pid"] and seen["started_at"]
        assert waiting_runs.live_waiters("http://h", "rs", exclude=mine) == []
        assert waiting_runs.live_waiters("http://other", "rs") == [] and waiting_runs.live_waiters("http://h", "rs2") == []
    assert not mine.exists() and waiting_runs.live_waiters("http://h", "rs") == []
    assert not mine.parent.exists()  # no empty folder left behind per deployment name


def test_a_marker_folder_stays_while_another_run_still_waits_in_it():
    from autodl_esd.deploy import waiting_runs

    with waiting_runs.waiting_marker("http://h", "rs", "ReplicaSet") as first:
        with waiting_runs.waiting_marker("http://h", "rs", "ReplicaSet") as second:
            assert first.parent == second.parent
        assert first.exists() and [w["pid"] for w in waiting_runs.live_waiters("http://h", "rs")]


def test_deployment_exists_names_the_run_that_is_waiting(sim, run, deploy, tmp_path):
    from autodl_esd.deploy import waiting_runs

    instance = sim()
    deploy(1)  # a deployment with this name already exists
    path = write_config(tmp_path, "rs", SERVICE)
    with waiting_runs.waiting_marker(instance.url, SERVICE["name"], "ReplicaSet"):  # another run, mid-wait
        code, out, err = run("queue_submit.py", path, "--interval", "0.1")
    assert (code, out["error_type"]) == (1, "deployment_exists"), out
    assert "也在等待同名部署" in out["message"] and out["details"]["waiting_runs"][0]["still_waiting"] is True
    assert "another_run_waiting" in err


def test_a_dry_run_warns_about_a_waiting_run_too(sim, run, tmp_path):
    from autodl_esd.deploy import waiting_runs

    instance = sim()
    path = write_config(tmp_path, "rs", SERVICE)
    with waiting_runs.waiting_marker(instance.url, SERVICE["name"], "ReplicaSet"):
        code, out, _ = run("queue_submit.py", path, "--dry-run", "--quiet")
    assert code == 0, out
    [warning] = [w for w in out["warnings"] if w["code"] == "another_run_waiting"]
    assert "不要重复提交" in warning["message"] and warning["waiting_runs"][0]["deployment_type"] == "ReplicaSet"
