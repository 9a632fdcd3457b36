"""Behaviour of the local AutoDL simulator: API contract, scheduling, controllers, faults.

Most tests run the clock at speed 1 and move time with `sim.advance()`, so every assertion
sees an exact simulated instant; tests of the ticker, the CLI and /svc use real speed-ups.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
import requests

from helpers import ROOT, SCRIPTS
from helpers.servers import free_port
from simulator import ClusterConfigError, Simulator
from simulator.faults import FaultInjector, FaultSpec

TOKEN = "sim-token"
CREATE = "/api/v1/dev/deployment"
STARTUP_EVENTS = ["creating", "created", "starting", "oss_merged", "running"]
SECONDS_TO_RUNNING = 29  # creating 20 + created 2 + starting 5 + oss_merged 2
# Simulated time all but stands still unless a test calls advance(): the phases a test steps
# through (created lasts 2 s, shutting_down 3 s) no longer move on by themselves while a
# loaded machine is slow between two of its steps, as they could at speed 1.
STILL = 0.001
GIB = 1024**3


# ----- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def sim():
    with Simulator(speed=STILL, seed=7) as simulator:
        yield simulator


def call(sim, method, path, body=None, token=TOKEN, **kwargs):
    headers = {"Authorization": token} if token is not None else {}
    return requests.request(method, sim.url + path, json=body, headers=headers, timeout=5, **kwargs)


def ok(sim, method, path, body=None, **kwargs):
    response = call(sim, method, path, body, **kwargs)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["code"] == "Success", document
    return document["data"]


def business_error(sim, method, path, body=None):
    response = call(sim, method, path, body)
    assert response.status_code == 200
    document = response.json()
    assert document["code"] != "Success" and document["data"] is None
    return document


def template(**overrides):
    base = {
        "gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118,
        "cpu_num_from": 1, "cpu_num_to": 100, "memory_size_from": 1, "memory_size_to": 256,
        "price_from": 10, "price_to": 9000, "image_uuid": "image-db8346e037",
        "cmd": "sleep infinity",
    }
    return {**base, **overrides}


def create(sim, deployment_type="ReplicaSet", replica_num=1, name="demo", extra=None, **template_overrides):
    body = {"name": name, "deployment_type": deployment_type,
            "container_template": template(**template_overrides)}
    if deployment_type != "Container":
        body["replica_num"] = replica_num
    if deployment_type == "Job":
        body["parallelism_num"] = replica_num
    body.update(extra or {})
    return ok(sim, "POST", CREATE, body)["deployment_uuid"]


def live(sim, deployment_uuid):
    return [c for c in sim.containers(deployment_uuid) if c["status"] != "shutdown"]


def statuses(sim, deployment_uuid):
    return sorted(c["status"] for c in live(sim, deployment_uuid))


def events(sim, deployment_uuid, **filters):
    body = {"deployment_uuid": deployment_uuid, "page_index": 1, "page_size": 1000, **filters}
    return ok(sim, "POST", "/api/v1/dev/deployment/container/event/list", body)["list"]


def stock(sim, gpu_name):
    for entry in ok(sim, "GET", "/api/v1/dev/machine/gpu_stock"):
        if gpu_name in entry:
            return entry[gpu_name]["idle_gpu_num"]
    raise AssertionError(f"{gpu_name} not in stock")


def deployment(sim, deployment_uuid):
    body = {"page_index": 1, "page_size": 10, "deployment_uuid": deployment_uuid}
    items = ok(sim, "POST", "/api/v1/dev/deployment/list", body)["list"]
    return items[0] if items else None


# ----- envelope, auth, routing -----------------------------------------------------------------

def test_envelope_carries_code_msg_data_and_request_id(sim):
    document = call(sim, "GET", "/api/v1/dev/machine/gpu_stock").json()
    assert set(document) == {"code", "msg", "data", "request_id"}
    assert document["code"] == "Success" and document["msg"] == ""
    assert re.fullmatch(r"[0-9a-f]{32}", document["request_id"])


@pytest.mark.parametrize("token, fragment", [(None, "Authorization"), ("wrong", "无效"),
                                             (f"Bearer {TOKEN}", "Bearer")])
def test_bad_authorization_is_401_with_envelope(sim, token, fragment):
    response = call(sim, "GET", "/api/v1/dev/machine/gpu_stock", token=token)
    assert response.status_code == 401
    assert response.json()["code"] == "Unauthorized"
    assert fragment in response.json()["msg"]


def test_routing_errors(sim):
    missing = call(sim, "POST", "/api/v1/dev/nope", {})
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"
    wrong_method = call(sim, "GET", "/api/v1/dev/deployment/list")
    assert wrong_method.status_code == 404
    malformed = requests.post(sim.url + "/api/v1/dev/deployment/list", data="{oops",
                              headers={"Authorization": TOKEN}, timeout=5)
    # A business error like any other: HTTP 200 with the code (facts §3.2).
    assert malformed.status_code == 200 and malformed.json()["code"] == "RequestParameterIsWrong"
    not_an_object = requests.post(sim.url + "/api/v1/dev/deployment/list", data="[1]",
                                  headers={"Authorization": TOKEN}, timeout=5)
    assert not_an_object.status_code == 200 and not_an_object.json()["code"] == "RequestParameterIsWrong"


def test_get_with_json_body_is_a_parameter_error(sim):
    document = business_error(sim, "GET", "/api/v1/dev/machine/gpu_stock", {"x": 1})
    assert document["code"] == "RequestParameterIsWrong"


def test_image_list_pages(sim):
    first = ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 1, "page_size": 10})
    second = ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 2, "page_size": 10})
    zero = ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 0, "page_size": 10})
    assert (first["max_page"], first["result_total"]) == (2, 12)
    assert len(first["list"]) == 10 and len(second["list"]) == 2
    assert zero["list"] == first["list"] and zero["page_index"] == 1
    item = first["list"][0]
    assert {"id", "image_uuid", "image_name", "name", "status", "created_at", "updated_at"} <= set(item)
    assert re.fullmatch(r"image-[0-9a-f]{10}", item["image_uuid"])
    shifted = ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 1, "page_size": 10, "offset": 5})
    assert shifted["list"][0] == first["list"][5] and shifted["max_page"] == 1


# ----- lifecycle, ids, units -------------------------------------------------------------------

def test_container_walks_every_status_with_events_in_order(sim):
    uuid = create(sim)
    assert re.fullmatch(r"[0-9a-f]{15}", uuid)
    assert statuses(sim, uuid) == ["creating"]
    for _ in range(4):
        sim.advance(20 if statuses(sim, uuid) == ["creating"] else 5)
    assert statuses(sim, uuid) == ["running"]
    assert [e["status"] for e in events(sim, uuid)] == STARTUP_EVENTS

    [container] = ok(sim, "POST", "/api/v1/dev/deployment/container/list",
                     {"deployment_uuid": uuid, "page_index": 1, "page_size": 10})["list"]
    assert re.fullmatch(rf"{uuid}-[0-9a-f]{{10}}-[0-9a-f]{{8}}", container["uuid"])
    assert container["uuid"].split("-")[1] == container["machine_id"]
    # 8 x RTX 4090 / 96 vCPU / 480 GB: one scheduling unit is 12 vCPU + 60 GB.
    assert container["cpu_num"] == 12 and container["memory_size"] == 60 * GIB
    assert container["info"]["service_url"] == f"{sim.url}/svc/{container['uuid']}"
    assert container["started_at"] and container["stopped_at"] is None
    listed = deployment(sim, uuid)
    assert listed["template"]["memory_size_to"] == 256 * GIB
    assert (listed["running_num"], listed["price_estimates"]) == (1, container["price"])


def test_event_offset_returns_only_newer_events(sim):
    uuid = create(sim)
    sim.advance(SECONDS_TO_RUNNING)
    newer = events(sim, uuid, offset=3)
    assert [e["status"] for e in newer] == STARTUP_EVENTS[3:]


def test_stock_drops_while_placed_and_recovers_after_stop(sim):
    before = stock(sim, "RTX 4090")
    uuid = create(sim, replica_num=2, gpu_num=2)
    assert stock(sim, "RTX 4090") == before - 4
    ok(sim, "PUT", "/api/v1/dev/deployment/operate", {"deployment_uuid": uuid, "operate": "stop"})
    assert stock(sim, "RTX 4090") == before - 4  # still shutting down
    sim.advance(3)
    assert stock(sim, "RTX 4090") == before
    assert deployment(sim, uuid)["status"] == "stopped"


def test_create_without_stock_fails_and_creates_nothing(sim):
    sim.occupy("RTX 4090", 100)
    document = business_error(sim, "POST", CREATE, {
        "name": "x", "deployment_type": "ReplicaSet", "replica_num": 1, "container_template": template()})
    assert document["msg"] == "当前算力规格暂无库存"
    assert ok(sim, "POST", "/api/v1/dev/deployment/list", {"page_index": 1, "page_size": 10})["list"] == []
    assert [r for r in sim.request_log() if r[:2] == ("POST", CREATE)] != []


def test_occupancy_expires_on_the_simulated_clock(sim):
    assert stock(sim, "NVIDIA A40") == 0  # the default cluster's background load
    assert sim.occupy("RTX 4090", 5, seconds=100) == 5
    assert stock(sim, "RTX 4090") == 15
    sim.advance(300)
    assert stock(sim, "RTX 4090") == 20 and stock(sim, "NVIDIA A40") == 4


def test_placement_honours_filters():
    with Simulator(speed=1) as sim:
        # Only the westDC3 host gives 16 vCPU per GPU.
        uuid = create(sim, cpu_num_from=13)
        assert live(sim, uuid)[0]["machine_id"] == "a2e9f0c473"
        # Only one host's driver reaches CUDA 12.4.
        uuid = create(sim, name="cuda", cuda_v=124)
        assert live(sim, uuid)[0]["machine_id"] == "4f1c2a9be0"
        # Eight GPUs must sit on one 8-GPU host.
        uuid = create(sim, name="big", gpu_num=8, memory_size_to=1024)
        assert live(sim, uuid)[0]["machine_id"] in ("4f1c2a9be0", "7d03e5b8c1")
        assert business_error(sim, "POST", CREATE, {
            "name": "x", "deployment_type": "Container",
            "container_template": template(image_uuid="image-ffffffffff")})["msg"] == "镜像不存在"


def test_create_validation_names_the_field(sim):
    document = business_error(sim, "POST", CREATE, {
        "name": "x", "deployment_type": "Job", "replica_num": 2, "container_template": template()})
    assert document["code"] == "RequestParameterIsWrong" and "parallelism_num" in document["msg"]


# ----- controllers -----------------------------------------------------------------------------

def test_replicaset_replaces_a_crashed_container(sim):
    uuid = create(sim)
    sim.advance(SECONDS_TO_RUNNING)
    [first] = live(sim, uuid)
    sim.crash_container(first["uuid"], exit_code=139)
    sim.advance(3)
    [replacement] = live(sim, uuid)
    assert replacement["uuid"] != first["uuid"]
    statuses_of_first = [e["status"] for e in events(sim, uuid, deployment_container_uuid=first["uuid"])]
    assert statuses_of_first == STARTUP_EVENTS + ["shutting_down", "shutdown"]


def test_scale_up_and_down_stops_newest_first(sim):
    uuid = create(sim)
    sim.advance(SECONDS_TO_RUNNING)
    ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 3})
    assert len(live(sim, uuid)) == 3
    oldest = sim.containers(uuid)[0]["uuid"]
    ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 1})
    sim.advance(3)
    assert [c["uuid"] for c in live(sim, uuid)] == [oldest]
    ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 0})
    sim.advance(3)
    assert live(sim, uuid) == [] and deployment(sim, uuid)["status"] == "running"


def test_replica_num_is_for_replicasets_only(sim):
    uuid = create(sim, deployment_type="Container")
    document = business_error(sim, "PUT", "/api/v1/dev/deployment/replica_num",
                              {"deployment_uuid": uuid, "replica_num": 2})
    assert "ReplicaSet" in document["msg"]


@pytest.mark.parametrize("decrease, expected_live", [(True, 1), (False, 2)])
def test_stop_container_with_and_without_decrease(sim, decrease, expected_live):
    uuid = create(sim, replica_num=2)
    sim.advance(SECONDS_TO_RUNNING)
    victim = live(sim, uuid)[0]["uuid"]
    ok(sim, "PUT", "/api/v1/dev/deployment/container/stop",
       {"deployment_container_uuid": victim, "decrease_one_replica_num": decrease})
    sim.advance(3)
    assert len(live(sim, uuid)) == expected_live
    assert deployment(sim, uuid)["replica_num"] == expected_live


def test_job_completes_replica_num_within_parallelism(sim):
    uuid = create(sim, deployment_type="Job", replica_num=4, extra={"parallelism_num": 2}, cmd="sleep 10")
    sim.advance(SECONDS_TO_RUNNING)
    sim.crash_container(live(sim, uuid)[0]["uuid"])  # a failure is retried, not counted
    for _ in range(10):
        sim.advance(20)
    assert deployment(sim, uuid)["status"] == "stopped"
    containers = sim.containers(uuid)
    assert sum(c["exit_code"] == 0 and c["stop_reason"] == "exited" for c in containers) == 4
    assert len(containers) == 5
    active, peak = set(), 0
    for event in events(sim, uuid):
        if event["status"] == "creating":
            active.add(event["deployment_container_uuid"])
        elif event["status"] == "shutting_down":
            active.discard(event["deployment_container_uuid"])
        peak = max(peak, len(active))
    assert peak == 2


@pytest.mark.parametrize("cmd", ["sleep 5", "exit 3"])
def test_container_type_runs_once(sim, cmd):
    uuid = create(sim, deployment_type="Container", cmd=cmd)
    sim.advance(SECONDS_TO_RUNNING + 10)
    assert len(sim.containers(uuid)) == 1
    listed = deployment(sim, uuid)
    assert (listed["status"], listed["finished_num"]) == ("stopped", 1)
    assert listed["stopped_at"] is not None


def test_stop_operate_validation_and_delete(sim):
    uuid = create(sim, replica_num=2)
    assert business_error(sim, "PUT", "/api/v1/dev/deployment/operate",
                          {"deployment_uuid": uuid, "operate": "start"})["code"] == "RequestParameterIsWrong"
    ok(sim, "DELETE", CREATE, {"deployment_uuid": uuid})
    assert deployment(sim, uuid) is None
    assert business_error(sim, "POST", "/api/v1/dev/deployment/container/list",
                          {"deployment_uuid": uuid, "page_index": 1, "page_size": 10})["code"] == "RecordNotFoundError"
    sim.advance(3)
    assert stock(sim, "RTX 4090") == 20


def test_released_filter_shows_stopped_containers(sim):
    uuid = create(sim, deployment_type="Container", cmd="sleep 1")
    sim.advance(SECONDS_TO_RUNNING + 5)
    body = {"deployment_uuid": uuid, "page_index": 1, "page_size": 10}
    assert ok(sim, "POST", "/api/v1/dev/deployment/container/list", body)["list"] == []
    released = ok(sim, "POST", "/api/v1/dev/deployment/container/list", {**body, "released": True})["list"]
    assert [c["status"] for c in released] == ["shutdown"] and released[0]["stopped_at"]


# ----- blacklist -------------------------------------------------------------------------------

def test_blacklisted_machine_gets_no_new_containers(sim):
    uuid = create(sim, cuda_v=122)  # two hosts qualify
    sim.advance(SECONDS_TO_RUNNING)
    [first] = live(sim, uuid)
    ok(sim, "POST", "/api/v1/dev/deployment/blacklist",
       {"deployment_container_uuid": first["uuid"], "comment": "slow start"})
    ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 4})
    newcomers = [c for c in live(sim, uuid) if c["uuid"] != first["uuid"]]
    assert len(newcomers) == 3
    assert first["machine_id"] not in {c["machine_id"] for c in newcomers}
    [entry] = ok(sim, "GET", "/api/v1/dev/deployment/blacklist")
    assert entry["machine_id"] == first["machine_id"] and entry["msg"] == "slow start"
    assert set(entry) == {"created_at", "updated_at", "data_center", "expired_time", "machine_id", "msg"}
    sim.advance(1440 * 60)
    assert ok(sim, "GET", "/api/v1/dev/deployment/blacklist") == []


def test_blacklist_expiry_limit(sim):
    uuid = create(sim)
    container = live(sim, uuid)[0]["uuid"]
    document = business_error(sim, "POST", "/api/v1/dev/deployment/blacklist",
                              {"deployment_container_uuid": container, "expire_in_minutes": 43201})
    assert document["code"] == "RequestParameterIsWrong" and "43200" in document["msg"]


# ----- reuse pool ------------------------------------------------------------------------------

def test_reuse_starts_faster_keeps_files_and_gets_a_new_uuid():
    with Simulator(speed=STILL, seed=3) as sim:
        uuid = create(sim, extra={"reuse_container": True}, cuda_v=124)  # one host only
        sim.advance(SECONDS_TO_RUNNING)
        [old] = live(sim, uuid)
        written = requests.post(f"{sim.url}/svc/{old['uuid']}/files", json={"/root/model.bin": "v1"}, timeout=5)
        assert written.status_code == 200
        # The pool only holds containers that reached `shutdown`: scale to 0, then back up.
        ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 0})
        sim.advance(3)
        ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 1})
        [new] = live(sim, uuid)
        sim.advance(3)  # reused containers skip most of `creating`
        assert live(sim, uuid)[0]["status"] == "created"
        sim.advance(9)
        files = requests.get(f"{sim.url}/svc/{new['uuid']}/files", timeout=5).json()["files"]
        assert files["/root/model.bin"] == "v1"
        assert files["/root/.sim_boot_history"].split() == [old["uuid"], new["uuid"]]
        assert new["uuid"] != old["uuid"] and sim.containers(uuid)[-1]["reused_from"] == old["uuid"]


def test_no_cache_keeps_a_container_out_of_the_pool(sim):
    uuid = create(sim, extra={"reuse_container": True}, cuda_v=124)
    sim.advance(SECONDS_TO_RUNNING)
    [old] = live(sim, uuid)
    ok(sim, "PUT", "/api/v1/dev/deployment/container/stop",
       {"deployment_container_uuid": old["uuid"], "no_cache": True, "decrease_one_replica_num": True})
    sim.advance(3)
    ok(sim, "PUT", "/api/v1/dev/deployment/replica_num", {"deployment_uuid": uuid, "replica_num": 1})
    assert sim.containers(uuid)[-1]["reused_from"] is None


@pytest.mark.parametrize("scope, reused", [("all", True), ("deployment", False)])
def test_reuse_scope_decides_whether_other_deployments_containers_qualify(sim, scope, reused):
    first = create(sim, name="first", extra={"reuse_container": True}, cuda_v=124)
    sim.advance(SECONDS_TO_RUNNING)
    ok(sim, "PUT", "/api/v1/dev/deployment/operate", {"deployment_uuid": first, "operate": "stop"})
    sim.advance(3)
    second = create(sim, name="second", cuda_v=124,
                    extra={"reuse_container": True, "reuse_container_scope": scope})
    assert (sim.containers(second)[0]["reused_from"] is not None) is reused


# ----- faults ----------------------------------------------------------------------------------

def test_error_rate_answers_5xx_but_spares_controls():
    with Simulator(speed=1, faults="error_rate=1") as sim:
        codes = {call(sim, "GET", "/api/v1/dev/machine/gpu_stock").status_code for _ in range(12)}
        assert codes <= {500, 502, 503} and len(codes) > 1
        state = requests.get(sim.url + "/_sim/state", headers={"Authorization": TOKEN}, timeout=5)
        assert state.status_code == 200


def test_slow_create_commits_before_answering():
    # The answer waits 10 s after the commit (in a daemon thread: stop() does not wait for
    # it); the commit shows well before that, however late a loaded machine gets to it.
    with Simulator(speed=1, faults={"create_slow_seconds": 10}) as sim:
        body = {"name": "slow", "deployment_type": "Container", "container_template": template()}
        with pytest.raises(requests.Timeout):
            requests.post(sim.url + CREATE, json=body, headers={"Authorization": TOKEN}, timeout=0.2)
        found = sim.wait_until(lambda: sim.deployments(), timeout=8)
        assert [d["name"] for d in found] == ["slow"]


def test_commit_delay_lands_a_write_after_the_client_gave_up():
    # 2 s of delay against a 0.2 s client timeout: the looks below fall inside it even when
    # a loaded machine stalls this test for a second or more.
    with Simulator(speed=1, faults={"commit_delay_seconds": 2}) as sim:
        body = {"name": "late", "deployment_type": "Container", "container_template": template()}
        with pytest.raises(requests.Timeout):
            requests.post(sim.url + CREATE, json=body, headers={"Authorization": TOKEN}, timeout=0.2)
        ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")  # reads are not held back by the write ...
        assert sim.deployments() == []  # ... which has not landed yet: a look now finds nothing
        found = sim.wait_until(lambda: sim.deployments(), timeout=30)
        assert [d["name"] for d in found] == ["late"]


def test_commit_delay_rate_delays_only_some_writes():
    spec = FaultSpec.parse("commit_delay_seconds=1,commit_delay_rate=0.5")
    injector = FaultInjector(spec, seed=3)
    delays = [injector.commit_delay() for _ in range(40)]
    assert set(delays) == {0.0, 1.0}


def test_create_error_after_commit_then_normal():
    with Simulator(speed=1, faults="create_error_after_commit=1") as sim:
        body = {"name": "flaky", "deployment_type": "Container", "container_template": template()}
        assert call(sim, "POST", CREATE, body).status_code == 503
        assert ok(sim, "POST", CREATE, {**body, "name": "second"})["deployment_uuid"]
        assert sorted(d["name"] for d in sim.deployments()) == ["flaky", "second"]
        assert len([r for r in sim.request_log() if r[:2] == ("POST", CREATE)]) == 2


def test_slow_rate_delays_answers():
    with Simulator(speed=1, faults="slow_rate=1,slow_seconds=0.2") as sim:
        started = time.monotonic()
        ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")
        assert time.monotonic() - started >= 0.2


def test_faulty_machine_crashes_its_containers():
    cluster = {"machines": [{"machine_id": "0123456789", "region": "westDC2", "gpu_name": "RTX 4090",
                             "gpu_num": 2, "cpu_num": 16, "memory_gb": 64, "price": 2000,
                             "max_cuda": 122, "faulty": True}],
               "images": [{"image_uuid": "image-db8346e037", "name": "x"}]}
    with Simulator(speed=1, cluster=cluster) as sim:
        uuid = create(sim)
        sim.advance(SECONDS_TO_RUNNING + 15)
        first = sim.containers(uuid)[0]
        assert first["stop_reason"] == "exited" and first["exit_code"] != 0
        assert len(sim.containers(uuid)) == 2  # the ReplicaSet replaced it


def test_fault_spec_errors():
    with pytest.raises(ValueError, match="未知故障"):
        Simulator(faults="explode=1")
    with pytest.raises(ValueError, match="超出范围"):
        Simulator(faults="error_rate=2")
    for endless in ("slow_seconds=inf", "create_slow_seconds=nan", "commit_delay_seconds=86400", "error_rate=nan"):
        with pytest.raises(ValueError, match="超出范围"):
            Simulator(faults=endless)


# ----- stock shapes, region stock, dialects ----------------------------------------------------

def test_stock_shapes():
    with Simulator(speed=1, stock_shape="dict") as sim:
        data = ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")
        assert data["RTX 4090"] == {"gpu_name": "RTX 4090", "idle_gpu_num": 20, "total_gpu_num": 20}


def test_region_stock(sim):
    data = ok(sim, "POST", "/api/v1/dev/machine/region/gpu_stock",
              {"region_sign": "westDC2", "gpu_name_set": ["RTX 4090"]})
    assert data == [{"RTX 4090": {"total_gpu_num": 16, "idle_gpu_num": 16, "chip_corp": "nvidia", "cpu_arch": "x86"}}]
    assert ok(sim, "POST", "/api/v1/dev/machine/region/gpu_stock", {"region_sign": "beijingDC4"}) == []
    assert business_error(sim, "POST", "/api/v1/dev/machine/region/gpu_stock", {})["code"] == "RequestParameterIsWrong"


VENDOR_4090 = "NVIDIA GeForce RTX 4090"


def test_private_dialect():
    with Simulator(speed=1, dialect="private") as sim:
        assert call(sim, "GET", "/api/v1/dev/deployment/blacklist").status_code == 404
        assert call(sim, "GET", "/api/v1/dev/deployment/ddp/overview?deployment_uuid=x").status_code == 404
        assert ok(sim, "POST", "/api/v2/image/list", {"page_index": 1, "page_size": 100})["result_total"] == 4
        image = ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 1, "page_size": 10})["list"][0]
        assert "name" in image and "image_name" not in image
        uuid = create(sim, gpu_name_set=[VENDOR_4090])
        container = live(sim, uuid)[0]
        assert {"service_url", "proxy_host", "custom_port", "ssh_command", "root_password"} == set(container["info"])
        assert container["gpu_name"] == VENDOR_4090


PUBLIC_ONLY_DEPLOYMENT_FIELDS = {"reuse_container_scope", "service_6006_port_protocol",
                                 "service_6008_port_protocol", "dc_list"}


def first_deployment(sim):
    return ok(sim, "POST", "/api/v1/dev/deployment/list", {"page_index": 1, "page_size": 10})["list"][0]


def test_private_views_carry_no_public_only_fields():
    with Simulator(speed=1, dialect="private") as sim:
        uuid = create(sim, gpu_name_set=[VENDOR_4090])
        deployment = first_deployment(sim)
        assert deployment["uuid"] == uuid and not PUBLIC_ONLY_DEPLOYMENT_FIELDS & set(deployment)
        container = live(sim, uuid)[0]
        assert "data_center" not in container and container["machine_id"]
    with Simulator(speed=1) as sim:  # "both" keeps every field
        uuid = create(sim)
        assert {"reuse_container_scope", "service_6006_port_protocol"} <= set(first_deployment(sim))
        assert "data_center" in live(sim, uuid)[0]


def test_private_stock_is_a_dict_of_vendor_names_by_default():
    with Simulator(speed=1, dialect="private") as sim:
        data = ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")
        assert data[VENDOR_4090] == {"gpu_name": VENDOR_4090, "idle_gpu_num": 20, "total_gpu_num": 20}
        assert set(data) == {VENDOR_4090, "NVIDIA RTX A5000", "NVIDIA A40"}
        assert sim.occupy("RTX 4090", 3) == 3  # test controls take either spelling
        assert ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")[VENDOR_4090]["idle_gpu_num"] == 17
    with Simulator(speed=1, dialect="private", stock_shape="list") as sim:
        assert {VENDOR_4090: {"idle_gpu_num": 20, "total_gpu_num": 20}} in ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")
    with Simulator(speed=1, dialect="private", gpu_names="cluster") as sim:
        assert "RTX 4090" in ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")
    with Simulator(speed=1) as sim:  # "both" keeps short names in a list
        assert {"RTX 4090": {"idle_gpu_num": 20, "total_gpu_num": 20}} in ok(sim, "GET", "/api/v1/dev/machine/gpu_stock")


def test_private_create_accepts_and_ignores_public_fields():
    with Simulator(speed=1, dialect="private") as sim:
        uuid = create(sim, gpu_name_set=[VENDOR_4090], dc_list=["beijingDC1"], cuda_v_from=113, cuda_v_to=128,
                      cuda_v=None)
        assert live(sim, uuid)[0]["gpu_name"] == VENDOR_4090  # placed although beijingDC1 has no 4090
        listed = first_deployment(sim)
        assert "dc_list" not in listed and "dc_list" not in listed["template"] and listed["template"]["cuda_v"] == 0
        document = business_error(sim, "POST", CREATE, {
            "name": "p", "deployment_type": "Container",
            "container_template": template(gpu_name_set=[VENDOR_4090], dc_list="westDC2")})
        assert "dc_list" in document["msg"]  # accepted means well-formed, then ignored


def test_public_dialect():
    with Simulator(speed=1, dialect="public") as sim:
        document = business_error(sim, "POST", CREATE, {
            "name": "p", "deployment_type": "Container", "container_template": template()})
        assert "dc_list" in document["msg"]
        assert call(sim, "POST", "/api/v2/image/list", {}).status_code == 404
        uuid = create(sim, dc_list=["westDC3"], cuda_v_from=113, cuda_v_to=128, cuda_v=None)
        assert live(sim, uuid)[0]["data_center"] == "westDC3"
        info = live(sim, uuid)[0]["info"]
        assert {"service_6006_port_url", "service_6008_port_url", "ssh_command", "root_password"} == set(info)
        image = ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 1, "page_size": 10})["list"][0]
        assert set(image) == {"id", "image_name", "image_uuid"}  # what the real public platform sends
        assert ok(sim, "GET", f"/api/v1/dev/deployment/ddp/overview?deployment_uuid={uuid}") == []


# ----- /svc and /_sim --------------------------------------------------------------------------

def test_service_endpoint_latency_and_dead_upstream():
    with Simulator(speed=1000) as sim:
        uuid = create(sim, cuda_v=124)
        container = sim.wait_until(lambda: [c for c in live(sim, uuid) if c["status"] == "running"], timeout=30)[0]
        sim.set_machine_latency(container["machine_id"], 0.2)
        started = time.monotonic()
        answer = requests.get(container["info"]["service_6006_port_url"] + "/predict", timeout=5)
        assert time.monotonic() - started >= 0.2
        assert answer.json()["container_uuid"] == container["uuid"]
        assert (answer.json()["path"], answer.json()["port"]) == ("/predict", 6006)
        # Every service URL is a root of the same service: <url>/health is the health check.
        for key in ("service_url", "service_6006_port_url", "service_6008_port_url"):
            assert requests.get(container["info"][key] + "/health", timeout=5).json() == {"ok": True}
        requests.post(container["info"]["service_6008_port_url"] + "/files", json={"/root/a": "1"}, timeout=5)
        assert requests.get(container["info"]["service_url"] + "/files", timeout=5).json()["files"]["/root/a"] == "1"
        ok(sim, "PUT", "/api/v1/dev/deployment/container/stop",
           {"deployment_container_uuid": container["uuid"], "decrease_one_replica_num": True})
        assert requests.get(container["info"]["service_url"], timeout=5).status_code == 502
        assert requests.get(sim.url + "/svc/nope", timeout=5).status_code == 404


@pytest.mark.parametrize("verbose", [False, True])
def test_a_client_hanging_up_is_not_a_traceback(capfd, verbose):
    # A client whose timeout is shorter than the service latency hangs up; the answer then
    # meets a closed socket. Routine: no BrokenPipeError/ConnectionResetError traceback.
    with Simulator(speed=1000, verbose=verbose) as sim:
        uuid = create(sim, cuda_v=124)
        container = sim.wait_until(lambda: [c for c in live(sim, uuid) if c["status"] == "running"], timeout=30)[0]
        sim.set_machine_latency(container["machine_id"], 0.5)
        # Count the connections whose handling ended: a fixed sleep for "the answers met the
        # closed sockets" is too short on a loaded machine, and the check below then sees nothing.
        ended = []
        serve = sim._server.process_request_thread

        def counted(request, client_address):
            try:
                serve(request, client_address)
            finally:
                ended.append(client_address)

        sim._server.process_request_thread = counted
        for _ in range(3):
            with pytest.raises(requests.exceptions.ReadTimeout):
                requests.get(container["info"]["service_url"] + "/predict", timeout=0.1)
        sim.wait_until(lambda: len(ended) >= 3, timeout=30)  # every answer met its closed socket
        sim.set_machine_latency(container["machine_id"], 0)
        assert requests.get(container["info"]["service_url"] + "/health", timeout=5).json() == {"ok": True}
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Errno" not in err and "----" not in err, err
    hung_up = [line for line in err.splitlines() if "断开" in line]
    assert (len(hung_up) > 0) == verbose, err


def test_http_controls():
    with Simulator(speed=1) as sim:
        headers = {"Authorization": TOKEN}
        assert requests.get(sim.url + "/_sim/state", timeout=5).status_code == 401
        occupied = requests.post(sim.url + "/_sim/occupy", json={"gpu_name": "RTX 4090", "count": 3},
                                 headers=headers, timeout=5).json()["data"]
        assert occupied == {"occupied": 3} and stock(sim, "RTX 4090") == 17
        requests.post(sim.url + "/_sim/release", headers=headers, timeout=5)
        requests.post(sim.url + "/_sim/advance", json={"seconds": 500}, headers=headers, timeout=5)
        state = requests.get(sim.url + "/_sim/state", headers=headers, timeout=5).json()["data"]
        assert state["now"] >= 500 and sum(m["free_gpus"] for m in state["machines"]) == 36
        bad = requests.post(sim.url + "/_sim/faulty", json={"machine_id": "nope"}, headers=headers, timeout=5)
        assert bad.status_code == 400 and bad.json()["msg"] == "请求参数错误：机器 nope 不存在"
        gone = requests.post(sim.url + "/_sim/crash", json={"container_uuid": "nope"}, headers=headers, timeout=5)
        assert gone.status_code == 400 and gone.json()["msg"] == "请求参数错误：容器 nope 不存在"


def test_ticker_advances_without_requests():
    with Simulator(speed=1000) as sim:
        uuid = create(sim)
        with sim.world.lock:
            created = sim.world.now

        def ticked_past_start_up():  # read without a request or a sync: only the ticker moves it
            with sim.world.lock:
                return sim.world.now >= created + SECONDS_TO_RUNNING

        sim.wait_until(ticked_past_start_up, timeout=30)  # polled: a fixed sleep proved no tick happened
        with sim.world.lock:
            assert [c.status for c in sim.world.containers.values() if c.deployment_uuid == uuid] == ["running"]
        assert statuses(sim, uuid) == ["running"]


def test_stop_is_idempotent():
    sim = Simulator().start()
    sim.stop()
    sim.stop()


def test_bad_cluster_reports_every_problem():
    with pytest.raises(ClusterConfigError) as caught:
        Simulator(cluster={"machines": [{"machine_id": "xyz", "gpu_num": 0}], "images": []})
    problems = " ".join(caught.value.problems)
    assert "machine_id" in problems and "gpu_num" in problems and "region" in problems


def test_simulator_service_ports_from_a_range_then_system_picked():
    port = free_port()
    with Simulator(speed=1, seed=2, service_ports=(port, port)) as sim:
        first, second = sim.service_address("a" * 15 + "-0a0a0a0a0a-00000001"), sim.service_address("a" * 15 + "-0a0a0a0a0a-00000002")
    assert urlsplit(first).port == port and urlsplit(first).path == ""
    assert urlsplit(second).port not in (None, port)
    with pytest.raises(ValueError):
        Simulator(service_ports=(10, 5))


# ----- CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_exits_cleanly_on_signals(signum):
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "autodl_sim.py"), "--port", "0", "--token", "t0k"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["status"] == "success" and ready["token"] == "t0k"
        answer = requests.get(ready["url"] + "/api/v1/dev/machine/gpu_stock",
                              headers={"Authorization": "t0k"}, timeout=5)
        assert answer.json()["code"] == "Success"
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_bad_arguments_are_json():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "autodl_sim.py"), "--speed", "0"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert json.loads(done.stdout)["error_type"] == "usage_error"


def test_a_bad_cluster_file_lists_every_problem_in_chinese_by_field_path(tmp_path, capsys):
    from helpers import load_script

    cluster = {"machines": [{"machine_id": "xyz", "region": "westDC2", "gpu_name": "RTX 4090", "gpu_num": 0,
                             "cpu_num": 8, "memory_gb": 32, "price": 1000, "max_cuda": 124, "ttft_seconds": -1}],
               "images": [{"image_uuid": "image-db8346e037", "name": "x"}], "machine": []}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster), encoding="utf-8")
    code = load_script(SCRIPTS / "autodl_sim.py").main(["--cluster", str(path)])
    document = json.loads(capsys.readouterr().out)
    assert (code, document["error_type"], document["details"]["path"]) == (1, "config_error", str(path))
    problems = document["details"]["problems"]
    assert problems == ["machines[0].machine_id: 必须是 10 位小写十六进制字符",
                        "machines[0].gpu_num: 必须是 >= 1 的整数",
                        "machines[0].ttft_seconds: 必须是 0..3600 之间的数或 null",
                        "machines: 至少需要一台机器",
                        "未知的顶层键: machine"]
    assert document["message"] == f"集群文件不可用: {path}: " + "; ".join(problems)
    assert "references/simulator.md" in document["hint"]


@pytest.mark.parametrize(("text", "problem"), [
    ('{"machines": [', "不是合法的 JSON: 第 1 行第 15 列"),
    ('{"machines": [], "images": [], "default_job_seconds": NaN}', "不是合法的 JSON: NaN 不是 JSON 允许的数字"),
    ("[]", "顶层必须是 JSON 对象"),
], ids=["truncated", "nan", "a-list"])
def test_a_cluster_file_that_is_not_a_cluster_object_says_why_in_chinese(tmp_path, text, problem):
    path = tmp_path / "cluster.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ClusterConfigError) as caught:
        Simulator(cluster=str(path))
    [only] = caught.value.problems
    assert only.startswith(problem), only


def test_a_missing_cluster_file_says_so_in_chinese(tmp_path):
    with pytest.raises(ClusterConfigError) as caught:
        Simulator(cluster=str(tmp_path / "none.json"))
    assert caught.value.problems == ["无法读取文件: 文件不存在"]


def test_autodl_sim_rejects_a_bad_service_ports_value():
    done = subprocess.run([sys.executable, str(SCRIPTS / "autodl_sim.py"), "--service-ports", "9000"], capture_output=True,
                          text=True, timeout=30)
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["error_type"] == "usage_error" and "--service-ports" in out["message"]


# ----- requests at the edges: pages, tokens, JSON types, methods, lengths, Host, CLI arguments -

def test_paginate_renders_only_the_page():
    # A crash-looping ReplicaSet leaves ~100k events per simulated day; formatting all of
    # them on every poll held the world lock for over a second.
    from simulator.routes import paginate

    rendered = []
    page = paginate(list(range(100_000)), {"page_index": 2, "page_size": 10, "offset": 5},
                    lambda item: rendered.append(item) or item)
    assert page["list"] == list(range(15, 25)) and rendered == page["list"]
    assert (page["result_total"], page["max_page"]) == (100_000, 10_000)  # 99 995 after the offset


@pytest.mark.parametrize("header", [f" {TOKEN} ", f"{TOKEN}\t", f"  {TOKEN}"])
def test_whitespace_around_the_token_is_not_part_of_it(sim, header):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    connection.putrequest("GET", "/api/v1/dev/machine/gpu_stock")
    connection.putheader("Authorization", header)  # requests refuses such headers; send raw
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["code"] == "Success"
    connection.close()
    with pytest.raises(ValueError):
        Simulator(token=" padded ")


@pytest.mark.parametrize("field, value", [("page_size", "5"), ("page_size", 5.0), ("page_index", "1"),
                                          ("page_index", 2**63), ("offset", True)])
def test_integer_fields_take_json_integers_only(sim, field, value):
    body = {"page_index": 1, "page_size": 10, field: value}
    document = business_error(sim, "POST", "/api/v1/dev/image/private/list", body)
    assert document["code"] == "RequestParameterIsWrong" and field in document["msg"]


def test_list_fields_take_json_lists_only(sim):
    body = {"name": "x", "deployment_type": "ReplicaSet", "replica_num": 1,
            "container_template": template(gpu_name_set="RTX 4090")}
    assert "gpu_name_set" in business_error(sim, "POST", CREATE, body)["msg"]
    assert "cuda_v" in business_error(sim, "POST", CREATE, {**body, "container_template": template(cuda_v="118")})["msg"]


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "HEAD"])
def test_unused_methods_get_the_envelope_404(sim, method):
    response = call(sim, method, "/api/v1/dev/machine/gpu_stock")
    assert response.status_code == 404
    if method == "HEAD":
        assert response.content == b""
    else:
        assert response.json()["code"] == "NotFound"
    assert call(sim, "GET", "/api/v1/dev/machine/gpu_stock").status_code == 200  # keep-alive intact


def test_request_log_keeps_only_the_most_recent(monkeypatch):
    import simulator.app

    monkeypatch.setattr(simulator.app, "REQUEST_LOG_LIMIT", 3)
    with Simulator(speed=1) as sim:
        for size in range(1, 6):
            ok(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 1, "page_size": size})
        assert [entry[2]["page_size"] for entry in sim.request_log()] == [3, 4, 5]


@pytest.mark.parametrize("path, body", [
    ("/_sim/advance", '{"seconds": NaN}'), ("/_sim/advance", '{"seconds": 1e400}'),
    ("/_sim/advance", '{}'), ("/_sim/latency", '{"machine_id": "4f1c2a9be0", "seconds": Infinity}'),
    ("/_sim/occupy", '{"gpu_name": "RTX 4090", "count": 1, "seconds": NaN}'),
])
def test_controls_refuse_non_finite_numbers_and_keep_the_clock_sane(sim, path, body):
    response = requests.post(sim.url + path, data=body, headers={"Authorization": TOKEN}, timeout=5)
    assert response.status_code == 400 and response.json()["code"] == "RequestParameterIsWrong"
    state = requests.get(sim.url + "/_sim/state", headers={"Authorization": TOKEN}, timeout=5).json()
    assert 0 <= state["data"]["now"] < 60


@pytest.mark.parametrize("speed", [float("nan"), float("inf"), 0, -1])
def test_speed_must_be_positive_and_finite(speed):
    with pytest.raises(ValueError):
        Simulator(speed=speed)


@pytest.mark.parametrize("argv, error_type, fragment", [
    (["--port", "99999"], "usage_error", "65535"),
    (["--port", "-1"], "usage_error", "65535"),
    (["--token", ""], "usage_error", "token"),
    (["--token", " padded "], "usage_error", "token"),
    (["--speed", "nan"], "usage_error", "speed"),
    (["--faults", "error_rate=2"], "usage_error", "error_rate"),
    (["--faults", "nonsense=1"], "usage_error", "nonsense"),
    (["--cluster", "/nonexistent/cluster.json"], "config_error", ""),
    (["--dialect", "martian"], "usage_error", "dialect"),
    (["--gpu-names", "marketing"], "usage_error", "gpu-names"),
])
def test_cli_refuses_bad_arguments_with_one_json_document(capsys, argv, error_type, fragment):
    import autodl_sim

    assert autodl_sim.main(argv) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["status"] == "error" and document["error_type"] == error_type
    assert fragment in json.dumps(document, ensure_ascii=False)


def test_cli_private_defaults_follow_the_live_private_cluster():
    import autodl_sim

    parser = autodl_sim.build_parser()
    args = parser.parse_args(["--dialect", "private"])
    assert (args.stock_shape, args.gpu_names) == (None, None)  # the Simulator picks dict + vendor
    assert "ignored" in parser.format_help() and "dc_list" in parser.format_help()
    assert parser.parse_args(["--dialect", "private", "--stock-shape", "list"]).stock_shape == "list"


def test_cli_loopback_detection():
    import autodl_sim

    assert all(map(autodl_sim.is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(autodl_sim.is_loopback, ["0.0.0.0", "192.168.1.5", "example.com"]))


@pytest.mark.parametrize("length, status", [(b"abc", 400), (b"-5", 400), (b"99999999999", 413)])
def test_bad_content_length_gets_an_answer_not_a_dropped_connection(sim, length, status):
    import socket

    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as raw:
        raw.sendall(b"POST /api/v1/dev/image/private/list HTTP/1.1\r\nHost: sim\r\n"
                    b"Authorization: " + TOKEN.encode() + b"\r\nContent-Length: " + length + b"\r\n\r\n")
        head = raw.recv(200)
    assert head.startswith(b"HTTP/1.1 %d" % status)


def test_service_concurrency_queues_requests_like_a_busy_gpu():
    """With concurrency 1, two requests to one replica take two service times, not one."""
    import threading
    import time as clock

    import requests

    with Simulator(speed=200, seed=3) as sim:
        response = requests.post(sim.url + "/api/v1/dev/deployment", headers={"Authorization": sim.token}, json={
            "name": "svc", "deployment_type": "ReplicaSet", "replica_num": 1,
            "container_template": {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118,
                                   "cpu_num_from": 1, "cpu_num_to": 100, "memory_size_from": 1, "memory_size_to": 256,
                                   "price_from": 100, "price_to": 9000, "image_uuid": "image-db8346e037",
                                   "cmd": "python server.py --port 6006"}}, timeout=5)
        deployment_uuid = response.json()["data"]["deployment_uuid"]
        container = sim.wait_until(lambda: next((c for c in sim.containers(deployment_uuid) if c["status"] == "running"), None))
        url = container["info"]["service_url"]
        sim.set_machine_latency(container["machine_id"], 0.2)

        def timed_pair() -> float:
            started = clock.perf_counter()
            threads = [threading.Thread(target=lambda: requests.get(url + "/predict", timeout=5)) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return clock.perf_counter() - started

        sim.set_machine_concurrency(container["machine_id"], 1)
        serialized = timed_pair()

        # A lower bound only (a noisy machine can only make it slower): it cannot pass unless
        # the second request waited for the first.
        assert serialized >= 0.4, "with concurrency 1 the second request waits for the first"
        with pytest.raises(ValueError):
            sim.set_machine_concurrency(container["machine_id"], -1)


def test_the_simulator_checks_host_and_answers_malformed_requests_in_json(sim):
    instance = sim  # this module's simulator (conftest's `sim` starts one the same way)
    port = instance.port
    request = urllib.request.Request(instance.url + "/api/v1/dev/machine/gpu_stock",
                                     headers={"Host": "evil.example", "Authorization": instance.token})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 421 and json.loads(refused.value.read())["code"] == "Forbidden"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 414 " in head.split(b"\r\n")[0] and json.loads(body)["code"] == "RequestParameterIsWrong"


# ----- bounded memory ---------------------------------------------------------------------------

def test_unauthenticated_requests_are_not_logged_and_big_bodies_are_summarised(sim):
    big = {"name": "x" * 200_000}
    for _ in range(5):
        assert call(sim, "POST", CREATE, big, token="wrong").status_code == 401
    assert sim.request_log() == []
    call(sim, "POST", "/api/v1/dev/deployment/list", big)
    [(method, path, params)] = sim.request_log()
    assert (method, path) == ("POST", "/api/v1/dev/deployment/list")
    assert params["truncated"] is True and params["size"] > 200_000 and len(params["head"]) <= 200
    ok(sim, "POST", "/api/v1/dev/deployment/list", {"page_size": 3})
    assert sim.request_log()[-1][2] == {"page_size": 3}  # small bodies stay inspectable


def test_files_per_container_are_capped(monkeypatch):
    from simulator import server

    monkeypatch.setattr(server, "MAX_FILE_BYTES_PER_CONTAINER", 300_000)
    with Simulator(speed=1, seed=7) as sim:
        uuid = create(sim)
        sim.advance(SECONDS_TO_RUNNING)
        [container] = live(sim, uuid)
        url = f"{sim.url}/svc/{container['uuid']}/files"
        assert requests.post(url, json={"/a": "x" * 200_000}, timeout=5).status_code == 200
        refused = requests.post(url, json={"/b": "y" * 200_000}, timeout=5)
        assert refused.status_code == 413 and "at most" in refused.json()["error"]
        assert "/b" not in requests.get(url, timeout=5).json()["files"]  # nothing half-written
        assert requests.post(url, json={"/a": "small"}, timeout=5).status_code == 200  # overwriting frees room


@pytest.mark.parametrize("seconds", [1e300, -1, "nan", "inf", 400 * 86400])
def test_advance_is_bounded_and_listings_keep_working(sim, seconds):
    response = call(sim, "POST", "/_sim/advance", {"seconds": seconds})
    expected = "JSON number" if isinstance(seconds, str) else "最多一年"  # a string is not a number at all
    assert response.status_code == 400 and expected in response.json()["msg"]
    ok(sim, "POST", "/api/v1/dev/deployment/list", {})
    assert ok(sim, "POST", "/_sim/advance", {"seconds": 365 * 86400})["now"] >= 365 * 86400
    ok(sim, "POST", "/api/v1/dev/deployment/list", {})


def test_old_events_are_trimmed_and_offsets_stay_absolute(monkeypatch):
    from simulator import world as world_module

    monkeypatch.setattr(world_module, "EVENTS_KEPT_PER_DEPLOYMENT", 20)
    monkeypatch.setattr(world_module, "EVENTS_TRIM_CHUNK", 5)
    with Simulator(speed=1, seed=7) as sim:
        uuid = create(sim, replica_num=2)
        for _ in range(6):  # each restart cycle adds several events per container
            sim.advance(SECONDS_TO_RUNNING)
            for container in live(sim, uuid):
                sim.crash_container(container["uuid"])
        page = ok(sim, "POST", "/api/v1/dev/deployment/container/event/list",
                  {"deployment_uuid": uuid, "page_index": 1, "page_size": 100})
        total, kept = page["result_total"], len(page["list"])
        assert kept <= 20 < total
        assert page["offset"] == total - kept  # starts at the oldest event still kept
        tail = ok(sim, "POST", "/api/v1/dev/deployment/container/event/list",
                  {"deployment_uuid": uuid, "page_index": 1, "page_size": 100, "offset": total - 3})
        assert tail["list"] == page["list"][-3:]  # an absolute offset still means the same events
        deployment = sim.world.deployment(uuid)
        ok(sim, "DELETE", CREATE, {"deployment_uuid": uuid})
        assert deployment.events == [] and deployment.events_base >= total  # the stop on delete adds some


def test_a_multi_gpu_containers_price_is_per_card_and_the_rate_counts_every_card(sim):
    """Container `price` is per card, like price_from/price_to (references/money.md, 计费口径)."""
    uuid = create(sim, gpu_num=2)
    sim.advance(SECONDS_TO_RUNNING)
    [container] = ok(sim, "POST", "/api/v1/dev/deployment/container/list",
                     {"deployment_uuid": uuid, "page_index": 1, "page_size": 10})["list"]
    host = next(m for m in sim.machines() if m["machine_id"] == container["machine_id"])
    assert container["gpu_num"] == 2 and container["price"] == host["price"]
    assert deployment(sim, uuid)["price_estimates"] == 2 * host["price"]
