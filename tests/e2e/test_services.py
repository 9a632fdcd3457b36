"""Services end to end against the local simulator: discovery follows crashes, the pool only
reaches running replicas, a faulty machine is found, blacklisted and then avoided.

The conftest `sim` fixture runs simulated time 200x (a container start-up of ~30 simulated
seconds takes ~0.15 s); every wait is bounded.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.request

import pytest

from helpers import ROOT, running_uuids

pytest.importorskip("simulator")

# Polling interval of the watcher in these tests (real seconds).
INTERVAL = 0.1
# The watcher lists everything only every 1000 cycles (100 s), so only its event polling can
# follow a crash within FOLLOW_SECONDS: slack for a loaded 2-core CI machine (idle: one
# interval), far below what a resync would take.
RESYNC_EVERY = 1000
FOLLOW_SECONDS = 10.0
# Waits poll and end as soon as their condition holds; the bound is for a loaded machine.
WAIT_SECONDS = 30.0
EXAMPLE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
FAULTY, HEALTHY = "0a0a0a0a0a", "0b0b0b0b0b"


def registry_uuids(path) -> set[str]:
    try:
        return {s["container_uuid"] for s in json.loads(path.read_text(encoding="utf-8"))["services"]}
    except FileNotFoundError:
        return set()


def fetch(service) -> dict:
    with urllib.request.urlopen(service.url + "/predict", timeout=5) as response:
        return json.loads(response.read())


def test_registry_follows_a_crash_and_the_pool_reaches_only_running_replicas(sim, deploy, run, tmp_path, recorded_watchers):
    from service_pool import ServicePool

    instance = sim()
    deployment_uuid = deploy(2)
    out = tmp_path / "registry.json"
    watchers = recorded_watchers  # stopped through their stop_event once the test is done
    finished: dict = {}
    watcher = threading.Thread(target=lambda: finished.update(result=run(
        "discover_services.py", "--deployment-uuid", deployment_uuid, "--watch", "--interval", str(INTERVAL),
        "--resync-every", str(RESYNC_EVERY), "--duration", "120", "--out", str(out), "--health-path", "/health", "--quiet")))
    watcher.start()
    try:
        first = instance.wait_until(lambda: registry_uuids(out) == running_uuids(instance, deployment_uuid) and registry_uuids(out),
                                    WAIT_SECONDS)
        # round_robin: ten requests surely reach both (least_inflight breaks ties at random)
        pool = ServicePool.from_file(out, refresh_interval=0, policy="round_robin")
        answers = [fetch_via(pool) for _ in range(10)]
        assert {a["container_uuid"] for a in answers} == first

        victim = sorted(first)[0]
        instance.crash_container(victim)
        crashed_at = time.monotonic()
        instance.wait_until(lambda: victim not in registry_uuids(out), FOLLOW_SECONDS)
        assert time.monotonic() - crashed_at <= FOLLOW_SECONDS  # by its events, not the 100 s resync

        # The ReplicaSet starts a replacement; the registry picks it up once it runs.
        replaced = instance.wait_until(lambda: len(registry_uuids(out) - first) == 1 and registry_uuids(out), WAIT_SECONDS)
        assert replaced == running_uuids(instance, deployment_uuid) and len(replaced) == 2
        answers = [fetch_via(pool) for _ in range(20)]
        assert {a["container_uuid"] for a in answers} <= replaced and victim not in {a["container_uuid"] for a in answers}
        assert all(row["failed"] == 0 for row in pool.stats())
    finally:
        for recorded in watchers:
            recorded.stop_event.set()
        watcher.join(timeout=30)
    code, summary, _ = finished["result"]
    assert code == 0, summary
    assert summary["registered"] >= 3 and summary["deregistered"] >= 1 and summary["stopped_by"] == "stopped"


def fetch_via(pool) -> dict:
    return pool.call(fetch, retries=0)


def faulty_cluster() -> dict:
    cluster = json.loads((ROOT / "scripts" / "simulator" / "default_cluster.json").read_text(encoding="utf-8"))
    template = cluster["machines"][0]
    # The faulty host has the most free cards, so the scheduler keeps choosing it.
    cluster["machines"] = [dict(template, machine_id=FAULTY),
                           dict(template, machine_id=HEALTHY, gpu_num=2, cpu_num=24, memory_gb=120)]
    cluster["background_load"] = []
    return cluster


def test_faulty_machine_is_found_blacklisted_and_then_avoided(sim, run, tmp_path, result_validator):
    instance = sim(cluster=faulty_cluster())
    instance.set_machine_faulty(FAULTY)
    config = dict(copy.deepcopy(EXAMPLE), replica_num=1)
    path = tmp_path / "service.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    code, out, _ = run("queue_submit.py", str(path), "--interval", "0.05", "--quiet")
    assert code == 0, out
    deployment_uuid = out["deployment_uuid"]

    def failures_on_faulty() -> int:
        return sum(1 for c in instance.containers(deployment_uuid) if c["machine_id"] == FAULTY and c["status"] == "shutdown")

    instance.wait_until(lambda: failures_on_faulty() >= 3, WAIT_SECONDS)

    code, report, _ = run("find_faulty_hosts.py", "--deployment-uuid", deployment_uuid, "--apply", "--yes", "--quiet")

    assert code == 0, report
    result_validator.validate(report)
    assert [m["machine_id"] for m in report["items"]] == [FAULTY]
    assert report["items"][0]["failures"] >= 3
    assert [a["machine_id"] for a in report["applied"]] == [FAULTY]
    assert [m["machine_id"] for m in instance.machines() if m["blacklisted"]] == [FAULTY]

    known = {c["uuid"] for c in instance.containers(deployment_uuid)}
    instance.wait_until(lambda: any(c["machine_id"] == HEALTHY and c["status"] == "running"
                                    for c in instance.containers(deployment_uuid)), WAIT_SECONDS)
    newer = [c for c in instance.containers(deployment_uuid) if c["uuid"] not in known]
    # The replacement may already have been placed (on HEALTHY) before `known` was read, so
    # `newer` can be empty on a loaded machine; whatever came after must avoid FAULTY.
    assert all(c["machine_id"] == HEALTHY for c in newer), "new containers avoid the blacklisted machine"
