"""Replicas left on a blacklisted machine (still_on_machine, --move-replicas) and the
single_machine warning, end to end against the simulator."""

from __future__ import annotations

import copy
import json

import pytest

from helpers import ROOT

pytest.importorskip("simulator")

FAST = ("--interval", "0.05", "--quiet")
SERVICE = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
BIG, SMALL = "aaaaaaaaaa", "bbbbbbbbbb"


def two_machines() -> dict:
    cluster = json.loads((ROOT / "scripts" / "simulator" / "default_cluster.json").read_text(encoding="utf-8"))
    template = cluster["machines"][0]
    # The big host has the most free cards, so the scheduler puts both replicas there.
    cluster["machines"] = [dict(template, machine_id=BIG),
                           dict(template, machine_id=SMALL, gpu_num=2, cpu_num=24, memory_gb=120)]
    cluster["background_load"] = []
    return cluster


@pytest.fixture
def service(sim, run, tmp_path):
    instance = sim(cluster=two_machines())
    path = tmp_path / "svc.json"
    path.write_text(json.dumps({**copy.deepcopy(SERVICE), "replica_num": 2}), encoding="utf-8")
    code, out, _ = run("queue_submit.py", str(path), "--wait-running", *FAST)
    assert code == 0, out
    assert {c["machine_id"] for c in out["containers"]} == {BIG}
    return instance, out["deployment_uuid"], [c["container_uuid"] for c in out["containers"]]


def test_single_machine_is_warned_by_list_containers_and_discover_services(service, run, result_validator):
    _instance, uuid, _ = service
    for script in ("list_containers.py", "discover_services.py"):
        code, document, _ = run(script, "--deployment-uuid", uuid, "--quiet")
        assert code == 0, document
        result_validator.validate(document)
        assert [w["code"] for w in document["warnings"]] == ["single_machine"], script
        assert BIG in document["warnings"][0]["message"]
        # The only machine the replicas run on may be the only healthy one left: the hint says
        # what moving them would do and offers no command ready to act on it.
        hint = document["warnings"][0]["hint"]
        assert "--yes" not in hint and "全部 2 个副本" in hint and "中断" in hint, hint


def test_blacklist_lists_the_replicas_still_on_the_machine_and_how_to_move_them(service, run, result_validator):
    instance, uuid, containers = service
    code, document, _ = run("blacklist_host.py", "--container-uuid", containers[0], "--quiet")
    assert code == 0, document
    result_validator.validate(document)
    assert {c["container_uuid"] for c in document["still_on_machine"]} == set(containers)
    assert sorted(document["move_commands"]) == sorted(
        f"python3 scripts/stop_container.py --container-uuid {c}" for c in containers)
    assert all("--decrease-one-replica-num" not in command for command in document["move_commands"])
    assert all(c["status"] == "running" for c in instance.containers(uuid)), "nothing was stopped"


def test_move_replicas_needs_yes_then_moves_them_off_the_machine(service, run, result_validator):
    instance, uuid, containers = service
    code, preview, _ = run("blacklist_host.py", "--container-uuid", containers[0], "--move-replicas", "--quiet")
    assert (code, preview["error_type"]) == (1, "confirmation_required"), preview
    result_validator.validate(preview)
    assert preview["details"]["would_stop_count"] == 2
    assert not any(m["blacklisted"] for m in instance.machines()), "the preview blacklisted nothing"

    code, document, _ = run("blacklist_host.py", "--container-uuid", containers[0], "--move-replicas", "--yes", "--quiet")
    assert code == 0, document
    result_validator.validate(document)
    assert [(m["outcome"], m["took_effect"]) for m in document["moved"]] == [("done", True)] * 2
    assert document["still_on_machine"] == []
    instance.wait_until(lambda: sum(1 for c in instance.containers(uuid) if c["status"] == "running") == 2, 30)
    assert {c["machine_id"] for c in instance.containers(uuid) if c["status"] == "running"} == {SMALL}
