"""Hold the simulator to the documented API, not to our client.

Requests are sent the way the API docs' own samples send them (raw token header, JSON
bodies, the example bodies of autodl-api-facts.md section 7), and responses are checked
field by field against the documented shapes and types.
"""

from __future__ import annotations

import re

import pytest
import requests

from simulator import Simulator

TOKEN = "fidelity-token"
HEADERS = {"Authorization": TOKEN, "Content-Type": "application/json"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")
HEX15 = re.compile(r"^[0-9a-f]{15}$")

# Section 7.2.3, the public sample as published (its image exists in the default cluster).
PUBLIC_CREATE = {
    "name": "api自动创建",
    "deployment_type": "ReplicaSet",
    "replica_num": 2,
    "reuse_container": True,
    "container_template": {
        "dc_list": ["westDC2", "westDC3"],
        "gpu_name_set": ["RTX 4090"],
        "gpu_num": 1,
        "cuda_v_from": 113,
        "cuda_v_to": 128,
        "cpu_num_from": 1,
        "cpu_num_to": 100,
        "memory_size_from": 1,
        "memory_size_to": 256,
        "cmd": "sleep 100",
        "price_from": 10,
        "price_to": 9000,
        "image_uuid": "image-db8346e037",
    },
}
# Section 7.2.5, the private sample: one cuda_v, no dc_list.
PRIVATE_CREATE = {
    "name": "private-sample",
    "deployment_type": "Job",
    "replica_num": 2,
    "parallelism_num": 1,
    "container_template": {
        "gpu_name_set": ["RTX A5000"],
        "gpu_num": 1,
        "cuda_v": 118,
        "cpu_num_from": 1,
        "cpu_num_to": 100,
        "memory_size_from": 1,
        "memory_size_to": 256,
        "price_from": 100,
        "price_to": 9000,
        "image_uuid": "image-db8346e037",
        "cmd": "sleep 100",
    },
}


@pytest.fixture(scope="module")
def sim():
    # Simulated time stands (all but) still: running_containers steps it. At speed 1000 the
    # samples' `sleep 100` ran 0.1 real seconds, a window a poll on a loaded machine can miss
    # (the Job's two containers then finish unseen and the wait fails).
    with Simulator(token=TOKEN, speed=0.001, seed=11) as simulator:
        yield simulator


def api(sim, method, path, body=None, params=None):
    response = requests.request(method, sim.url + path, json=body, params=params, headers=HEADERS, timeout=5)
    assert response.status_code == 200
    document = response.json()
    assert document["code"] == "Success", document
    assert document["msg"] == "" and re.fullmatch(r"[0-9a-f]{32}", document["request_id"])
    return document["data"]


def assert_types(item, expected):
    for key, kind in expected.items():
        assert key in item, f"missing {key}"
        assert isinstance(item[key], kind), f"{key}={item[key]!r} is not {kind}"


def assert_page(data):
    assert_types(data, {"list": list, "page_index": int, "page_size": int, "max_page": int, "offset": int})


def running_containers(sim, deployment_uuid, count):
    def ready():
        data = api(sim, "POST", "/api/v1/dev/deployment/container/list",
                   {"deployment_uuid": deployment_uuid, "page_index": 1, "page_size": 10})
        running = [c for c in data["list"] if c["status"] == "running"]
        if len(running) >= count:
            return running
        sim.advance(5)  # toward the end of start-up (29 s); `sleep 100` runs for 20 such steps
        return None
    return sim.wait_until(ready, timeout=30)


@pytest.fixture(scope="module")
def public_deployment(sim):
    data = api(sim, "POST", "/api/v1/dev/deployment", PUBLIC_CREATE)
    assert set(data) == {"deployment_uuid"} and HEX15.match(data["deployment_uuid"])
    return data["deployment_uuid"]


def test_7_1_private_image_list(sim):
    data = api(sim, "POST", "/api/v1/dev/image/private/list", {"page_index": 1, "page_size": 10})
    assert_page(data)
    for item in data["list"]:
        assert_types(item, {"id": int, "image_name": str, "image_uuid": str, "status": str,
                            "created_at": str, "updated_at": str})
        assert re.fullmatch(r"image-[0-9a-f]{10}", item["image_uuid"]) and item["status"] == "finished"
        assert TIMESTAMP.match(item["created_at"])


def test_7_2_private_sample_creates_a_job(sim):
    data = api(sim, "POST", "/api/v1/dev/deployment", PRIVATE_CREATE)
    [container] = running_containers(sim, data["deployment_uuid"], 1)
    assert container["gpu_name"] == "RTX A5000"


def test_7_3_deployment_list(sim, public_deployment):
    data = api(sim, "POST", "/api/v1/dev/deployment/list",
               {"page_index": 1, "page_size": 10, "name": "api自动创建"})
    assert_page(data)
    assert isinstance(data["result_total"], int)
    [item] = data["list"]
    assert_types(item, {
        "id": int, "uid": int, "uuid": str, "name": str, "deployment_type": str, "status": str,
        "replica_num": int, "parallelism_num": int, "reuse_container": bool,
        "starting_num": int, "running_num": int, "finished_num": int, "image_uuid": str,
        "template": dict, "price_estimates": int, "created_at": str, "updated_at": str,
    })
    assert item["uuid"] == public_deployment and item["status"] in ("running", "stopped")
    assert "stopped_at" in item
    template = item["template"]
    assert_types(template, {"gpu_name_set": list, "gpu_num": int, "image_uuid": str, "cmd": str,
                            "memory_size_from": int, "memory_size_to": int, "cpu_num_from": int,
                            "cpu_num_to": int, "price_from": int, "price_to": int})
    assert (template["memory_size_from"], template["memory_size_to"]) == (1 * 1024**3, 256 * 1024**3)
    for status in ("running", "stopped"):
        api(sim, "POST", "/api/v1/dev/deployment/list", {"page_index": 1, "page_size": 10, "status": status})


def test_7_4_and_7_5_events_and_containers(sim, public_deployment):
    containers = running_containers(sim, public_deployment, 2)
    for container in containers:
        assert_types(container, {
            "id": int, "uuid": str, "machine_id": str, "deployment_uuid": str, "status": str,
            "gpu_name": str, "gpu_num": int, "cpu_num": int, "memory_size": int,
            "image_uuid": str, "price": (int, float), "data_center": str, "info": dict,
            "started_at": str, "created_at": str, "updated_at": str,
        })
        assert container["stopped_at"] is None and container["data_center"] in ("westDC2", "westDC3")
        assert re.fullmatch(rf"{public_deployment}-[0-9a-f]{{10}}-[0-9a-f]{{8}}", container["uuid"])
        assert_types(container["info"], {
            "ssh_command": str, "root_password": str, "service_url": str, "proxy_host": str,
            "custom_port": int, "service_6006_port_url": str, "service_6008_port_url": str,
        })
        assert container["info"]["ssh_command"].startswith("ssh -p ")
    data = api(sim, "POST", "/api/v1/dev/deployment/container/event/list",
               {"deployment_uuid": public_deployment, "page_index": 1, "page_size": 10, "offset": 0})
    for event in data["list"]:
        assert set(event) == {"deployment_container_uuid", "status", "created_at"}
        assert TIMESTAMP.match(event["created_at"])


def test_7_6_to_7_9_mutations_return_null(sim, public_deployment):
    first = running_containers(sim, public_deployment, 2)[0]
    assert api(sim, "PUT", "/api/v1/dev/deployment/container/stop", {
        "deployment_container_uuid": first["uuid"], "decrease_one_replica_num": False,
        "no_cache": True, "cmd_before_shutdown": "sleep 1"}) is None
    assert api(sim, "PUT", "/api/v1/dev/deployment/replica_num",
               {"deployment_uuid": public_deployment, "replica_num": 3}) is None
    assert api(sim, "POST", "/api/v1/dev/deployment/blacklist", {
        "deployment_container_uuid": first["uuid"], "expire_in_minutes": 60, "comment": "慢"}) is None
    [entry] = api(sim, "GET", "/api/v1/dev/deployment/blacklist")
    assert_types(entry, {"created_at": str, "updated_at": str, "data_center": str,
                         "expired_time": str, "machine_id": str, "msg": str})
    assert api(sim, "GET", "/api/v1/dev/deployment/ddp/overview",
               params={"deployment_uuid": public_deployment}) == []
    assert api(sim, "PUT", "/api/v1/dev/deployment/operate",
               {"deployment_uuid": public_deployment, "operate": "stop"}) is None
    assert api(sim, "DELETE", "/api/v1/dev/deployment", {"deployment_uuid": public_deployment}) is None


def test_7_12_global_stock(sim):
    data = api(sim, "GET", "/api/v1/dev/machine/gpu_stock")
    assert isinstance(data, list)
    for entry in data:
        [(name, figures)] = entry.items()
        assert_types(figures, {"idle_gpu_num": int, "total_gpu_num": int})
        assert 0 <= figures["idle_gpu_num"] <= figures["total_gpu_num"]


def test_7_13_region_stock(sim):
    data = api(sim, "POST", "/api/v1/dev/machine/region/gpu_stock",
               {"region_sign": "westDC2", "gpu_name_set": ["RTX 4090"]})
    [entry] = data
    assert_types(entry["RTX 4090"], {"total_gpu_num": int, "idle_gpu_num": int, "chip_corp": str, "cpu_arch": str})


def test_7_15_private_system_images(sim):
    data = api(sim, "POST", "/api/v2/image/list", {"page_index": 1, "page_size": 100})
    assert isinstance(data["result_total"], int)
    for item in data["list"]:
        assert_types(item, {"image_uuid": str, "name": str, "url": str, "cuda_version": str,
                            "chip_corp": str, "cpu_arch": str})
        assert item["image_uuid"].startswith("base-image-")


def test_3_2_business_errors_are_http_200(sim):
    response = requests.put(sim.url + "/api/v1/dev/deployment/operate", headers=HEADERS, timeout=5,
                            json={"deployment_uuid": "000000000000000", "operate": "stop"})
    assert response.status_code == 200
    document = response.json()
    assert document["code"] == "RecordNotFoundError" and document["data"] is None and document["msg"]
