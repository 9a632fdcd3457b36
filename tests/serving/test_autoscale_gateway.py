"""The autoscaler inside the gateway, with real requests: the simulator's replicas serve
`service_concurrency` requests at once like GPUs, time runs 200x (a container starts in
~0.15 s), and the autoscaler's windows are a fraction of a second. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from helpers import ROOT, SCRIPTS
from helpers.sim_service import CLUSTER, REQUEST, WAIT_SECONDS, client, deploy, running

pytest.importorskip("simulator")
pytest.importorskip("aiohttp")

def replica_num(instance, uuid: str) -> int:
    return next(d for d in instance.deployments() if d["uuid"] == uuid)["replica_num"]


class InProcessGateway:
    """A gateway (with the autoscaler extension) on its own event loop thread."""

    def __init__(self, deployment_uuid: str, config, queue_timeout: float = 10.0, load_path: str | None = None, **options):
        from autodl_esd.platform import api
        from autodl_esd.serving.autoscale.controller import Autoscaler
        from autodl_esd.serving.autoscale.extension import GatewayAutoscaler
        from autodl_esd.serving.autoscale.scaler import ReplicaScaler
        from autodl_esd.serving.routing.gateway import Gateway, GatewayOptions
        from autodl_esd.serving.registry.watcher import RegistryWatcher, WatchOptions
        from autodl_esd.serving.routing.sources import WatcherSource

        self.lines: list[dict] = []
        watcher = RegistryWatcher(client(), deployment_uuid, WatchOptions(interval=0.05, resync_every=10))
        self.source = WatcherSource(watcher, stale_after=1.0)
        options = GatewayOptions(host="127.0.0.1", port=0, interval=0.1, queue_timeout=queue_timeout,
                                 deployment_uuid=deployment_uuid, load_path=load_path, **options)
        self.gateway = Gateway(self.source, options)
        deployment = api.list_deployments(client(), deployment_uuid=deployment_uuid)[0]
        self.autoscaler = Autoscaler(ReplicaScaler(client(), deployment), config, lambda: None, interval=0.05,
                                     emit=self.lines.append)
        self.extension = GatewayAutoscaler(self.autoscaler)
        self.gateway.add_extension(self.extension)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "InProcessGateway":
        self.thread.start()
        self.source.start()
        assert self.source.wait_first(WAIT_SECONDS)
        self.url = asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(30)
        self.source.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @contextlib.contextmanager
    def autoscaler_paused(self):
        """Hold the autoscaler's next tick (the gateway serves on) while the test looks, so a
        scale-down cannot land between the test's steps on a slow machine."""
        gate = threading.Lock()
        tick = self.autoscaler.tick

        def gated_tick(*args, **kwargs):
            with gate:
                return tick(*args, **kwargs)

        with gate:
            self.autoscaler.tick = gated_tick
            try:
                yield
            finally:
                self.autoscaler.tick = tick

    def get(self, path: str, timeout: float = 15.0) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body or b"{}")
            except ValueError:  # a replica's own error page, passed through
                return error.code, {}


def fire(gateway: InProcessGateway, count: int, threads: int) -> list[int]:
    """`count` requests from `threads` clients at once; their HTTP statuses."""
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(n):
            status, _ = gateway.get("/predict")
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=worker, args=(count // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return statuses


def test_load_through_the_gateway_scales_up_and_back_down_and_status_and_metrics_show_it(sim):
    from autodl_esd.serving.autoscale.policy import AutoscaleConfig

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    config = AutoscaleConfig(min_replicas=1, max_replicas=3, target_inflight=2, look_back=0.3, upscale_delay=0.2,
                             downscale_delay=0.6)
    with InProcessGateway(uuid, config) as gw:
        statuses = fire(gw, 120, 8)  # 8 clients at once on 2-slot replicas: load 8 -> wants 4, max 3
        # Idle, the autoscaler steps down every 0.6 s: paused from the end of the load until
        # the scaled-up size has been read, however slowly the test gets through it.
        with gw.autoscaler_paused():
            assert statuses.count(200) == len(statuses)
            assert max(line.get("target", 0) for line in gw.lines if line["action"] == "scale_up") <= 3
            assert replica_num(instance, uuid) >= 2
            status, document = gw.get("/_gateway/status")
            shown = document["extensions"]["autoscaler"]
            assert shown["enabled"] is True and shown["last_decision"]["current"] >= 2
            with urllib.request.urlopen(gw.url + "/_gateway/metrics", timeout=5) as response:
                metrics = response.read().decode()
            assert "gateway_autoscaler_desired_replicas" in metrics and "gateway_autoscaler_current_replicas" in metrics
            assert "gateway_autoscaler_last_decision{action=" in metrics and "gateway_autoscaler_pending{reason=" in metrics
        instance.wait_until(lambda: replica_num(instance, uuid) == 1, WAIT_SECONDS)  # idle: one step at a time back to min
    downs = [line for line in gw.lines if line["action"] == "scale_down"]
    assert [line["target"] for line in downs] == sorted((line["target"] for line in downs), reverse=True)
    assert all(line["current"] - line["target"] == 1 for line in downs)
    assert gw.extension.final["final_replica_num"] == 1 and gw.extension.final["left_at_last_size"] is True


def test_scale_to_zero_and_the_first_request_after_it_is_held_then_served(sim):
    from autodl_esd.serving.autoscale.policy import AutoscaleConfig

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    config = AutoscaleConfig(min_replicas=0, max_replicas=2, scale_to_zero_after=0.3, look_back=0.2, upscale_delay=0.2,
                             downscale_delay=5)
    with InProcessGateway(uuid, config, queue_timeout=WAIT_SECONDS) as gw:
        # Someone watching /_gateway/status meanwhile is not traffic: it must not keep a replica up.
        instance.wait_until(lambda: gw.get("/_gateway/status")[0] == 200 and replica_num(instance, uuid) == 0
                            and running(instance, uuid) == 0, WAIT_SECONDS)
        # Routing stopped before the scale to zero (the registry only follows a moment later):
        # a request arriving now waits in the queue instead of reaching a stopping container.
        assert [r for r in gw.get("/_gateway/status")[1]["replicas"] if r["state"] != "draining"] == []
        began = time.monotonic()
        statuses = fire(gw, 4, 4)  # arrive at zero replicas: queued while one starts
        assert statuses == [200, 200, 200, 200]
        assert time.monotonic() - began < WAIT_SECONDS  # held in the queue, within its timeout
        assert any(line.get("reason") == "from_zero" for line in gw.lines)
        assert any(line.get("reason") == "idle" and line.get("target") == 0 for line in gw.lines)


def test_serve_gateway_autoscale_asks_for_yes_with_its_bounds_and_leaves_the_last_size_on_sigterm(sim, run, tmp_path):
    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    code, out, _ = run("serve_gateway.py", "--deployment-uuid", uuid, "--autoscale", "--max-replicas", "3",
                       "--max-hourly-cost", "5", "--listen", "127.0.0.1:0", "--quiet")
    assert code == 1 and out["error_type"] == "confirmation_required"
    bounds = out["details"]
    assert bounds["max_replicas"] == 3 and bounds["effective_max_replicas"] == 2  # 5 yuan/h at 2 yuan a replica
    assert bounds["price_per_replica_yuan"] == 2.0 and replica_num(instance, uuid) == 1

    code, out, _ = run("serve_gateway.py", "--deployment-uuid", uuid, "--autoscale", "--max-hourly-cost", "1.5",
                       "--listen", "127.0.0.1:0", "--quiet")
    assert code == 1 and out["error_type"] == "usage_error" and "一个副本都不够" in out["message"]

    code, out, _ = run("serve_gateway.py", "--deployment-uuid", uuid, "--min-replicas", "2")
    assert code == 1 and out["error_type"] == "usage_error"  # autoscale flags need --autoscale

    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "serve_gateway.py"), "--deployment-uuid", uuid, "--autoscale", "--yes",
         "--min-replicas", "2", "--max-replicas", "3", "--listen", "127.0.0.1:0", "--interval", "0.1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["status"] == "success"
        instance.wait_until(lambda: replica_num(instance, uuid) == 2, WAIT_SECONDS)  # below min: corrected at once
        with urllib.request.urlopen(ready["url"] + "/_gateway/status", timeout=5) as response:
            shown = json.loads(response.read())["extensions"]["autoscaler"]
        assert shown["config"]["min_replicas"] == 2
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    summary = json.loads(out)
    assert summary["status"] == "success"
    assert summary["autoscaler"]["final_replica_num"] == 2 == replica_num(instance, uuid)
    assert summary["autoscaler"]["left_at_last_size"] is True
    decisions = [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "autoscale"')]
    assert decisions and decisions[0]["action"] == "scale_up" and decisions[0]["reason"] == "min_replicas"


def test_with_load_path_load_from_other_clients_counts(sim):
    """Clients that call the replica directly never pass the gateway; its /metrics report does."""
    from autodl_esd.serving.autoscale.policy import AutoscaleConfig

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    replica_url = next(c for c in instance.containers(uuid) if c["status"] == "running")["info"]["service_url"]
    config = AutoscaleConfig(min_replicas=1, max_replicas=3, look_back=0.3, upscale_delay=0.2, downscale_delay=30)
    stop = threading.Event()

    def direct_client() -> None:
        while not stop.is_set():
            urllib.request.urlopen(replica_url + "/predict", timeout=10).read()

    with InProcessGateway(uuid, config, load_path="/metrics") as gw:
        others = [threading.Thread(target=direct_client) for _ in range(6)]
        for other in others:
            other.start()
        try:
            instance.wait_until(lambda: replica_num(instance, uuid) >= 2, WAIT_SECONDS)
        finally:
            stop.set()
            for other in others:
                other.join(10)
        up = next(line for line in gw.lines if line["action"] == "scale_up")
        # More load than one replica's target (the policy's look-back average: a slow start of
        # the clients can leave it anywhere above 2, not always 3), none of it through the gateway.
        assert up["load"] > config.target_inflight and gw.gateway.totals.proxied == 0


def test_a_replica_that_keeps_failing_requests_is_replaced_and_its_machine_reported(sim):
    from autodl_esd.serving.autoscale.policy import AutoscaleConfig

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    instance.set_machine_latency("0d0d0d0d0d", 0.5)  # every answer comes after the gateway gave up
    config = AutoscaleConfig(min_replicas=1, max_replicas=1)
    with InProcessGateway(uuid, config, upstream_timeout=0.1, retries=0, eject_seconds=0.05) as gw:
        first = next(c["uuid"] for c in instance.containers(uuid) if c["status"] == "running")

        def replaced(count: int) -> bool:
            gw.get("/predict", timeout=5)
            return len([line for line in gw.lines if line["action"] == "replace"]) >= count

        instance.wait_until(lambda: replaced(1), WAIT_SECONDS)
        record = next(line for line in gw.lines if line["action"] == "replace")
        assert record["container_uuid"] == first and record["reason"] == "repeated_failures"
        assert record["outcome"]["took_effect"] is True and replica_num(instance, uuid) == 1
        instance.wait_until(lambda: replaced(2), WAIT_SECONDS)  # the replacement lands on the same (slow) machine
        candidates = gw.get("/_gateway/status")[1]["extensions"]["autoscaler"]["blacklist_candidates"]
        assert [c["machine_id"] for c in candidates] == ["0d0d0d0d0d"] and "blacklist" not in candidates[0]


# ---- serve_gateway.py --autoscale: its confirmation, and its end when someone else stops the deployment


def test_autoscale_confirmation_shows_expected_and_template_worst_case(sim, run):
    from autodl_esd.money.estimate import cost_bounds

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    code, out, _ = run("serve_gateway.py", "--deployment-uuid", uuid, "--autoscale", "--max-replicas", "3",
                       "--listen", "127.0.0.1:0", "--quiet")
    assert code == 1 and out["error_type"] == "confirmation_required", out
    details = out["details"]
    assert details["price_source"] == "containers" and details["max_hourly_cost_yuan"] == 6.0  # 2 yuan x 3 today
    # The same figure a dry-run of the config at 3 replicas gives: 3 yuan/card x 1 card x 3.
    dry_run = cost_bounds({**REQUEST, "replica_num": 3})["worst_case_hourly_yuan"]
    assert details["worst_case_hourly_yuan"] == dry_run == 9.0
    assert details["worst_case"]["replicas"] == 3 and details["worst_case"]["gpu_num"] == 1
    assert "6 元/小时" in out["message"] and "最坏情况 9 元/小时" in out["message"]


def test_serve_gateway_autoscale_ends_with_a_stopped_deployment_and_says_nothing_bills(sim):
    from autodl_esd.platform import api

    instance = sim(cluster=CLUSTER)
    uuid = deploy(instance, 1)
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "serve_gateway.py"), "--deployment-uuid", uuid, "--autoscale", "--yes",
         "--max-replicas", "2", "--listen", "127.0.0.1:0", "--interval", "0.1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["status"] == "success"
        api.stop_deployment(client(), uuid)  # as the --max-cost guard does
        out, err = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    summary = json.loads(out)
    assert summary["status"] == "success" and summary["stopped_by"] == "deployment_stopped", err[-2000:]
    shown = summary["autoscaler"]
    assert shown["left_at_last_size"] is False and shown["deployment_ended"] == "deployment_stopped"
    assert "需要停掉时" not in shown["note"] and "不再产生费用" in shown["note"]
