#!/usr/bin/env python3
"""Autoscaling bench: a day-shaped trace, fixed replica_num at the peak need vs --autoscale.

Both run side by side in one process, on one simulator, over the same arrivals: two
ReplicaSets (one fixed at the peak need, one started at 1 with the autoscaler), each behind
its own in-process gateway. Replicas serve like batching GPUs: `service_concurrency`
requests at once, `SERVICE_SECONDS` each, the rest queue. The trace (quiet night, morning
ramp, lunchtime spike, evening decay) is compressed: one hour of the day lasts
`--day-seconds` / 24 real seconds. The simulator runs at `SIM_SPEED`, so a container start
(~30 simulated s) takes ~0.5 real s, a tenth of a compressed hour (a six-minute image pull).
The autoscaler's delays are compressed with the day, keeping Ray Serve's proportions to
request time where they matter: look-back and upscale delay a fifth of an hour (1 s at the
default day: ten samples, ten request lifetimes), downscale delay one hour. Requests stay
real (0.1 s), which is what makes look-back averaging meaningful.

Reports the bill (replica-hours: running containers x compressed hours), p50/p95 latency,
requests dropped or answered 5xx, and the replica count per hour as a text chart.

    python bench/autoscale.py [--day-seconds S] [--peak-rps N] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

# Simulated seconds per real second: a container start-up (~30 simulated s) takes 0.5 s.
SIM_SPEED = 60.0
# Real seconds one request keeps a replica's slot (a short LLM answer, scaled down).
SERVICE_SECONDS = 0.1
# Requests one replica serves at once (a batching GPU); more queue inside the replica.
SERVICE_CONCURRENCY = 4
TARGET_INFLIGHT = 2.0
DEFAULT_DAY_SECONDS = 120.0  # real seconds for the whole day: 5 s per compressed hour
DEFAULT_PEAK_RPS = 60.0  # real requests per second at the lunchtime peak
# The autoscaler's windows as shares of a compressed hour (see the module docstring).
LOOK_BACK_HOURS = UPSCALE_DELAY_HOURS = 0.2
DOWNSCALE_DELAY_HOURS = 1.0
# How often the autoscaler ticks (real seconds): ten samples per default look-back.
AUTOSCALER_INTERVAL_SECONDS = 0.1
MAX_REPLICAS = 8
# (hour of day, share of the peak rate); linear in between.
TRACE = [(0, 0.05), (6, 0.05), (7, 0.2), (9, 0.6), (11.5, 0.6), (12, 1.0), (13.5, 1.0), (14, 0.55),
         (18, 0.5), (21, 0.15), (23, 0.05), (24, 0.05)]
# The bench samples replica counts this often (real seconds).
SAMPLE_SECONDS = 0.05
# A request waiting longer than this is counted as dropped (the gateway's queue gives up at 30 s).
CLIENT_TIMEOUT_SECONDS = 60.0
MACHINES = ("1a1a1a1a1a", "2b2b2b2b2b", "3c3c3c3c3c")


def rate_share(hour: float) -> float:
    for (h0, s0), (h1, s1) in zip(TRACE, TRACE[1:]):
        if h0 <= hour <= h1:
            return s0 + (s1 - s0) * (hour - h0) / (h1 - h0)
    return TRACE[-1][1]


def cluster() -> dict:
    machine = {"region": "westDC2", "gpu_name": "RTX 4090", "gpu_num": 8, "cpu_num": 64, "memory_gb": 256,
               "price": 2000, "max_cuda": 124, "latency_seconds": SERVICE_SECONDS,
               "service_concurrency": SERVICE_CONCURRENCY}
    return {"machines": [dict(machine, machine_id=m) for m in MACHINES],
            "images": [{"image_uuid": "image-db8346e037", "name": "llm"}]}


def request_body(name: str, replicas: int) -> dict:
    return {"name": name, "deployment_type": "ReplicaSet", "replica_num": replicas, "reuse_container": False,
            "container_template": {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118, "cpu_num_from": 1,
                                   "cpu_num_to": 100, "memory_size_from": 1, "memory_size_to": 256,
                                   "price_from": 100, "price_to": 3000, "image_uuid": "image-db8346e037",
                                   "cmd": "python server.py --port 6006"}}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Side:
    """One deployment behind one gateway, and what the bench measured for it."""

    def __init__(self, name: str, deployment_uuid: str):
        self.name = name
        self.deployment_uuid = deployment_uuid
        self.gateway = None
        self.extension = None
        self.url = ""
        self.latencies: list[float] = []
        self.failed = 0
        self.by_status: dict[int, int] = {}
        self.samples: list[tuple[float, int, int]] = []  # (sim time, running, replica_num)


async def start_gateway(side: Side, client_factory, hour: float, autoscale: bool, decisions: list) -> None:
    from autodl_esd.platform import api
    from autodl_esd.serving.autoscale.controller import Autoscaler
    from autodl_esd.serving.autoscale.extension import GatewayAutoscaler
    from autodl_esd.serving.autoscale.policy import AutoscaleConfig
    from autodl_esd.serving.autoscale.scaler import ReplicaScaler
    from autodl_esd.serving.routing.gateway import Gateway, GatewayOptions
    from autodl_esd.serving.registry.watcher import RegistryWatcher, WatchOptions
    from autodl_esd.serving.routing.sources import WatcherSource

    watcher = RegistryWatcher(client_factory(), side.deployment_uuid, WatchOptions(interval=0.05, resync_every=20))
    source = WatcherSource(watcher, stale_after=1.0)
    options = GatewayOptions(host="127.0.0.1", port=0, interval=0.1, queue_timeout=30.0, deployment_uuid=side.deployment_uuid)
    gateway = Gateway(source, options)
    if autoscale:
        client = client_factory()
        deployment = api.list_deployments(client, deployment_uuid=side.deployment_uuid)[0]
        config = AutoscaleConfig(min_replicas=1, max_replicas=MAX_REPLICAS, target_inflight=TARGET_INFLIGHT,
                                 look_back=LOOK_BACK_HOURS * hour, upscale_delay=UPSCALE_DELAY_HOURS * hour,
                                 downscale_delay=DOWNSCALE_DELAY_HOURS * hour)
        autoscaler = Autoscaler(ReplicaScaler(client, deployment), config, lambda: None,
                                interval=AUTOSCALER_INTERVAL_SECONDS, emit=decisions.append)
        side.extension = GatewayAutoscaler(autoscaler)
        gateway.add_extension(side.extension)
    source.start()
    source.wait_first(10)
    side.gateway = gateway
    side.url = await gateway.start()


async def drive(sides: list[Side], day_seconds: float, peak_rps: float, seed: int) -> None:
    import aiohttp

    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(side: Side) -> None:
            began = time.perf_counter()
            try:
                async with session.post(side.url + "/v1/predict", data=b'{"prompt": "hi"}') as response:
                    await response.read()
                    side.by_status[response.status] = side.by_status.get(response.status, 0) + 1
                    if response.status >= 500:
                        side.failed += 1
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                side.failed += 1
                return
            side.latencies.append(time.perf_counter() - began)

        tasks = []
        start = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= day_seconds:
                break
            rate = peak_rps * rate_share(24 * elapsed / day_seconds)
            await asyncio.sleep(rng.expovariate(rate) if rate > 0 else 0.05)
            for side in sides:  # the same arrival for both: a paired comparison
                tasks.append(asyncio.ensure_future(one(side)))
        await asyncio.gather(*tasks)


def sample_replicas(sim, sides: list[Side], stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_SECONDS):
        now = time.monotonic()
        deployments = {d["uuid"]: d for d in sim.deployments()}
        containers = sim.containers()
        for side in sides:
            running = sum(1 for c in containers if c["deployment_uuid"] == side.deployment_uuid and c["status"] == "running")
            side.samples.append((now, running, deployments[side.deployment_uuid]["replica_num"]))


def replica_hours(side: Side, hour: float) -> float:
    total = 0.0
    for (t0, running, _), (t1, _, _) in zip(side.samples, side.samples[1:]):
        total += running * (t1 - t0)
    return total / hour


def hourly_means(side: Side, start: float, hour_seconds: float) -> list[float]:
    buckets: list[list[int]] = [[] for _ in range(24)]
    for at, running, _ in side.samples:
        hour = int((at - start) / hour_seconds)
        if 0 <= hour < 24:
            buckets[hour].append(running)
    return [statistics.mean(b) if b else 0.0 for b in buckets]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--day-seconds", type=float, default=DEFAULT_DAY_SECONDS, help="real seconds for the whole day")
    parser.add_argument("--peak-rps", type=float, default=DEFAULT_PEAK_RPS, help="requests per real second at the peak")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from autodl_esd.platform import api
    from autodl_esd.core.http import ApiClient
    from autodl_esd.core.settings import load_settings
    from simulator import Simulator

    hour = args.day_seconds / 24
    peak_load = args.peak_rps * SERVICE_SECONDS
    fixed_replicas = math.ceil(peak_load / TARGET_INFLIGHT)  # the peak need at the same target
    sim = Simulator(cluster=cluster(), speed=SIM_SPEED, seed=args.seed).start()
    settings = load_settings({"AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token})

    def client_factory():
        return ApiClient(settings)

    client = client_factory()
    fixed = Side("fixed at peak", api.create_deployment(client, request_body("bench-fixed", fixed_replicas)))
    auto = Side("autoscaler", api.create_deployment(client, request_body("bench-auto", 1)))
    sides = [fixed, auto]
    sim.wait_until(lambda: all(
        sum(1 for c in sim.containers(s.deployment_uuid) if c["status"] == "running") == n
        for s, n in ((fixed, fixed_replicas), (auto, 1))), timeout=30)

    decisions: list[dict] = []
    loop = asyncio.new_event_loop()
    stop_sampling = threading.Event()

    async def setup() -> None:
        await start_gateway(fixed, client_factory, hour, False, decisions)
        await start_gateway(auto, client_factory, hour, True, decisions)

    thread = threading.Thread(target=loop.run_forever, name="gateways", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(setup(), loop).result(30)
    sampler = threading.Thread(target=sample_replicas, args=(sim, sides, stop_sampling), daemon=True)
    day_start = time.monotonic()
    sampler.start()
    asyncio.run(drive(sides, args.day_seconds, args.peak_rps, args.seed))
    stop_sampling.set()
    sampler.join()

    async def teardown() -> None:
        for side in sides:
            await side.gateway.stop()  # stops the autoscaler extension too
            side.gateway.source.stop()

    asyncio.run_coroutine_threadsafe(teardown(), loop).result(90)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    sim.stop()

    print(f"Autoscaling bench: a compressed day ({args.day_seconds:g} real s, 1 h = {hour:g} s; simulator {SIM_SPEED:g}x, "
          f"autoscaler look-back/upscale {LOOK_BACK_HOURS * hour:g} s, downscale {DOWNSCALE_DELAY_HOURS * hour:g} s), peak {args.peak_rps:g} req/s x {SERVICE_SECONDS:g} s = load {peak_load:g}, "
          f"target {TARGET_INFLIGHT:g} in flight per replica, {SERVICE_CONCURRENCY} served at once per replica")
    print()
    print(f"| {'setup':<16} | {'replica-hours':>13} | {'vs fixed':>8} | {'requests':>8} | {'p50 ms':>7} | {'p95 ms':>7} | "
          f"{'p95 vs fixed':>12} | {'dropped/5xx':>11} | {'max replicas':>12} |")
    print(f"|{'-' * 18}|{'-' * 15}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 14}|{'-' * 13}|{'-' * 14}|")
    base_hours = replica_hours(fixed, hour)
    base_p95 = percentile(fixed.latencies, 0.95)
    for side in sides:
        hours = replica_hours(side, hour)
        p50, p95 = percentile(side.latencies, 0.5), percentile(side.latencies, 0.95)
        print(f"| {side.name:<16} | {hours:>13.1f} | {hours / base_hours:>7.0%}  | {len(side.latencies) + side.failed:>8} | "
              f"{p50 * 1000:>7.0f} | {p95 * 1000:>7.0f} | {p95 / base_p95:>11.2f}x | {side.failed:>11} | "
              f"{max((r for _, r, _ in side.samples), default=0):>12} |")
    print()
    saving = 1 - replica_hours(auto, hour) / base_hours
    print(f"autoscaler: {saving:.0%} fewer replica-hours than fixed at the peak need ({fixed_replicas}); "
          f"p95 {percentile(auto.latencies, 0.95) / base_p95:.2f}x of fixed; {auto.failed} dropped or 5xx; "
          f"{sum(1 for d in decisions if d.get('action') in ('scale_up', 'scale_down'))} scaling decisions")
    print()
    print("Running replicas per hour of the day (mean), and the load as a share of the peak:")
    print()
    auto_hours, fixed_hours = hourly_means(auto, day_start, hour), hourly_means(fixed, day_start, hour)
    for hour in range(24):
        share = rate_share(hour + 0.5)
        print(f"  {hour:02d}h load {'#' * round(share * 20):<20} auto {'█' * round(auto_hours[hour]):<{MAX_REPLICAS}} "
              f"{auto_hours[hour]:4.1f}  fixed {'█' * round(fixed_hours[hour]):<{MAX_REPLICAS}} {fixed_hours[hour]:4.1f}")
    print()
    summary = auto.extension.final or {}
    print(f"autoscaler stopped: {json.dumps({k: summary.get(k) for k in ('final_replica_num', 'left_at_last_size', 'changes')})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
