"""A one-machine simulated cluster and a ReplicaSet created on it straight through the API.

The machine's replicas serve `service_concurrency` requests at once like GPUs; the autoscale
gateway tests and the tests of what happens after a deployment is stopped use it with the
`sim` fixture (`sim(cluster=CLUSTER)`), then `deploy(instance, replicas)`.
"""

from __future__ import annotations

GPU = "RTX 4090"
CLUSTER = {
    "machines": [{"machine_id": "0d0d0d0d0d", "region": "westDC2", "gpu_name": GPU, "gpu_num": 4, "cpu_num": 48,
                  "memory_gb": 240, "price": 2000, "max_cuda": 124, "latency_seconds": 0.05, "service_concurrency": 2}],
    "images": [{"image_uuid": "image-db8346e037", "name": "llm"}],
}
# Waits poll and end as soon as their condition holds; the bound is for a loaded machine.
WAIT_SECONDS = 30

REQUEST = {
    "name": "autoscale-gateway", "deployment_type": "ReplicaSet", "replica_num": 1, "reuse_container": False,
    "container_template": {"gpu_name_set": [GPU], "gpu_num": 1, "cuda_v": 118, "cpu_num_from": 1, "cpu_num_to": 100,
                           "memory_size_from": 1, "memory_size_to": 256, "price_from": 100, "price_to": 3000,
                           "image_uuid": "image-db8346e037", "cmd": "python server.py --port 6006"},
}


def client():
    from autodl_esd.core.http import ApiClient
    from autodl_esd.core.settings import load_settings

    return ApiClient(load_settings())


def deploy(instance, replicas: int, **overrides) -> str:
    from autodl_esd.platform import api

    uuid = api.create_deployment(client(), {**REQUEST, "replica_num": replicas, **overrides})
    instance.wait_until(lambda: running(instance, uuid) == replicas, WAIT_SECONDS)
    return uuid


def running(instance, uuid: str) -> int:
    return sum(1 for c in instance.containers(uuid) if c["status"] == "running")
