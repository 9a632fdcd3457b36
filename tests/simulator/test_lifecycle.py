"""How long a simulated container's command runs (simulator/lifecycle.py's plan_run): the
common shell shapes of a Job's cmd, commands that never end, and a wrapped sleep run for
real on the simulator's clock."""

from __future__ import annotations

import pytest

from simulator import Simulator
from simulator.lifecycle import plan_run

DEFAULT_JOB_SECONDS = 63.0
SECONDS_TO_RUNNING = 29  # creating 20 + created 2 + starting 5 + oss_merged 2


@pytest.mark.parametrize("cmd, seconds, exit_code", [
    ("sleep 120", 120.0, 0),
    ('bash -c "sleep 120"', 120.0, 0),
    ("/bin/sh -lc 'cd /root && sleep 120'", 120.0, 0),
    ("python x.py && sleep 120", 120.0, 0),
    ("sleep 120; echo done", 120.0, 0),
    ("sleep 120 && echo done", 120.0, 0),
    ("sleep 2m", 120.0, 0),
    ("sleep 1m 30s", 90.0, 0),
    ("sleep 60\nsleep 60", 120.0, 0),
    ("echo start; sleep 30 | tee log", 30.0, 0),
    ("sleep 10; exit 3", 10.0, 3),
    ("python train.py; exit 3", 0.0, 3),
    ("false && sleep 100", 0.0, 1),
    ("false || sleep 100", 100.0, 0),
    ('bash -c "exit 3"; sleep 5', 5.0, 0),
    ('echo "a; sleep 999"; sleep 7', 7.0, 0),
    ("python app.py &", 0.0, 0),
    ("cd /root && python app.py &", 0.0, 0),
    ("python train.py", DEFAULT_JOB_SECONDS, 0),
])
def test_job_run_time_follows_the_common_shell_shapes(cmd, seconds, exit_code):
    plan = plan_run(cmd, keeps_running_by_default=False, default_seconds=DEFAULT_JOB_SECONDS)
    assert (plan.seconds, plan.exit_code) == (seconds, exit_code), cmd


@pytest.mark.parametrize("cmd", ["python app.py & sleep infinity", 'bash -c "python x.py; sleep infinity"',
                                 "python server.py --port 6006", "sleep inf"])
def test_job_that_never_ends_runs_until_stopped(cmd):
    assert plan_run(cmd, keeps_running_by_default=False, default_seconds=DEFAULT_JOB_SECONDS).seconds is None


def test_a_wrapped_sleep_job_runs_its_sleep_not_the_default():
    import requests

    with Simulator(speed=1, seed=3) as sim:
        body = {"name": "wrapped", "deployment_type": "Job", "replica_num": 1, "parallelism_num": 1,
                "container_template": {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118,
                                       "cpu_num_from": 1, "cpu_num_to": 100, "memory_size_from": 1, "memory_size_to": 256,
                                       "price_from": 10, "price_to": 9000, "image_uuid": "image-db8346e037",
                                       "cmd": 'bash -c "python x.py && sleep 120"'}}
        answer = requests.post(sim.url + "/api/v1/dev/deployment", json=body, headers={"Authorization": sim.token}, timeout=5).json()
        uuid = answer["data"]["deployment_uuid"]
        sim.advance(SECONDS_TO_RUNNING + 100)  # past the 63 s default, short of 120 s
        assert [c["status"] for c in sim.containers(uuid)] == ["running"]
        sim.advance(25)
        assert [c["status"] for c in sim.containers(uuid)] in (["shutting_down"], ["shutdown"])
