#!/usr/bin/env python3
"""Load balancing and discovery benchmarks against the in-process simulator; prints tables.

Section 1: one request stream through `service_pool.ServicePool` with `round_robin` (what
nginx would do) and with `least_inflight`, over a ReplicaSet of 4 replicas on 4 machines
where one machine answers fast and the others slowly (simulator `set_machine_latency`).
Reports p50/p95/mean latency, wall time and each replica's share of the requests, twice:
with a fixed delay per machine and unlimited concurrency (no queueing: how far a policy
shifts load toward faster replicas), and with each replica serving one request at a time
(simulator `set_machine_concurrency`), like a GPU running one batch while the next queues,
which is the case AutoDL's guide says nginx-style balancing gets wrong.

Section 2: how long `discover_services --watch` (RegistryWatcher) takes to reflect a change
at a given --interval: a container crashed -> removed from the registry, and its
replacement reaching `running` -> added.

    python bench/load_balancing.py [--requests N] [--threads N] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tables import percentile, print_markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
MACHINES = ("1a1a1a1a1a", "2b2b2b2b2b", "3c3c3c3c3c", "4d4d4d4d4d")
# Real seconds each machine's service waits before answering: one fast replica, three 4x
# slower ones — a newer GPU beside older ones, or one host less loaded than the rest.
FAST_SECONDS, SLOW_SECONDS = 0.02, 0.08
REPLICAS = len(MACHINES)
DEFAULT_REQUESTS = 400
DEFAULT_THREADS = 8
POLICIES = ("round_robin", "least_inflight")
# Requests one replica serves at once: 0 = unlimited (pure delay), 1 = a GPU running one batch.
CONCURRENCY_MODES = ((0, "unlimited"), (1, "1 at a time"))
# Simulated seconds per real second: container start-up (~30 simulated s) takes 0.15 s.
SPEED = 200.0
WATCH_INTERVALS = (0.25, 1.0)
DEFAULT_TRIALS = 5
# The bench samples the simulator and the registry this often (well under any interval).
SAMPLE_SECONDS = 0.002
# Any single wait longer than this is reported as a failed trial instead of hanging.
WAIT_LIMIT_SECONDS = 10.0


def cluster() -> dict:
    """Four identical 4-card hosts, so the 4 replicas land on 4 different machines."""
    default = json.loads((SCRIPTS_DIR / "simulator" / "default_cluster.json").read_text(encoding="utf-8"))
    template = dict(default["machines"][0], gpu_num=4, cpu_num=48, memory_gb=240)
    return {**default, "background_load": [], "machines": [dict(template, machine_id=m) for m in MACHINES]}


def deploy(sim, replicas: int) -> str:
    config = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
    config.update(name="bench-load-balancing", replica_num=replicas)
    config_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-lb-{os.getpid()}.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token}
    try:
        done = subprocess.run([sys.executable, str(ROOT / "queue_submit.py"), str(config_path), "--interval", "0.05",
                               "--wait-running", "--quiet"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        config_path.unlink(missing_ok=True)
    result = json.loads(done.stdout)
    if result.get("status") != "success":
        raise SystemExit(f"deploy failed: {result}")
    return result["deployment_uuid"]


def api_client(sim):
    from autodl_esd.core.http import ApiClient
    from autodl_esd.core.settings import Settings

    # Loopback simulator: anything slower than a few seconds is a hang, not a slow answer.
    return ApiClient(Settings(token=sim.token, host=sim.url, http_timeout=5.0))


def run_stream(pool, requests: int, threads: int) -> tuple[list[float], float]:
    """Send `requests` GETs through the pool from `threads` threads: (latencies, wall seconds)."""

    def one(_):
        started = time.perf_counter()
        with pool.lease() as service:
            with urllib.request.urlopen(service.url + "/predict", timeout=WAIT_LIMIT_SECONDS) as response:
                response.read()
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as executor:
        latencies = list(executor.map(one, range(requests)))
    return latencies, time.perf_counter() - started


def balancing_section(sim, deployment_uuid: str, requests: int, threads: int) -> list[tuple[str, ...]]:
    from autodl_esd.serving.registry.watcher import build_registry
    from service_pool import ServicePool

    for machine in MACHINES:
        sim.set_machine_latency(machine, SLOW_SECONDS)
    sim.set_machine_latency(MACHINES[0], FAST_SECONDS)
    registry = build_registry(api_client(sim), deployment_uuid)
    rows = []
    for concurrency, label in CONCURRENCY_MODES:
        for machine in MACHINES:
            sim.set_machine_concurrency(machine, concurrency)
        for policy in POLICIES:
            pool = ServicePool.from_services(registry["services"], policy=policy, seed=1)
            latencies, wall = run_stream(pool, requests, threads)
            share = {row["machine_id"]: row["completed"] for row in pool.stats()}
            rows.append((
                label, policy, f"{percentile(latencies, 0.5) * 1000:.0f}", f"{percentile(latencies, 0.95) * 1000:.0f}",
                f"{statistics.mean(latencies) * 1000:.0f}", f"{wall:.2f}",
                f"{share.get(MACHINES[0], 0)}", " / ".join(str(share.get(m, 0)) for m in MACHINES[1:]),
            ))
    return rows


def wait_for(predicate, limit: float = WAIT_LIMIT_SECONDS):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(SAMPLE_SECONDS)
    return None


def discovery_trial(sim, deployment_uuid: str, watcher, rng: random.Random) -> tuple[float | None, float | None]:
    """Crash one registered replica at a random point of the watch cycle: (seconds until it
    is deregistered, seconds from its replacement running until that is registered)."""

    def registered() -> set[str]:
        return {s["container_uuid"] for s in (watcher.document or {}).get("services", [])}

    def running() -> set[str]:
        return {c["uuid"] for c in sim.containers(deployment_uuid) if c["status"] == "running"}

    before = wait_for(lambda: registered() if registered() == running() and len(registered()) == REPLICAS else None)
    if not before:
        return None, None
    # Changes arrive at any moment, not right after a poll: sample the whole cycle.
    time.sleep(rng.uniform(0, watcher.options.interval))
    victim = sorted(before)[0]
    sim.crash_container(victim)
    crashed_at = time.monotonic()
    seen: dict[str, float] = {}
    replacement = None

    def observe() -> bool:
        nonlocal replacement
        now = time.monotonic()
        if "removed" not in seen and victim not in registered():
            seen["removed"] = now
        if replacement is None:
            replacement = next(iter(running() - before), None)
            if replacement:
                seen["running"] = now
        if replacement and "added" not in seen and replacement in registered():
            seen["added"] = now
        return {"removed", "added"} <= set(seen)

    wait_for(observe)
    removal = seen["removed"] - crashed_at if "removed" in seen else None
    addition = seen["added"] - seen["running"] if "added" in seen else None
    return removal, addition


def discovery_section(sim, deployment_uuid: str, trials: int) -> list[tuple[str, ...]]:
    from autodl_esd.serving.registry.watcher import RegistryWatcher, WatchOptions
    from discover_services import DEFAULT_RESYNC_EVERY

    rng = random.Random(1)
    rows = []
    for interval in WATCH_INTERVALS:
        watcher = RegistryWatcher(api_client(sim), deployment_uuid, WatchOptions(interval=interval, resync_every=DEFAULT_RESYNC_EVERY))
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            results = [discovery_trial(sim, deployment_uuid, watcher, rng) for _ in range(trials)]
        finally:
            watcher.stop_event.set()
            thread.join(timeout=WAIT_LIMIT_SECONDS)
        for label, samples in (("crash -> removed", [r[0] for r in results]), ("running -> added", [r[1] for r in results])):
            ok = [s for s in samples if s is not None]
            rows.append((f"{interval:g}", label, f"{len(ok)}/{len(samples)}",
                         f"{statistics.mean(ok):.3f}" if ok else "-", f"{max(ok):.3f}" if ok else "-"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help=f"requests per policy (default {DEFAULT_REQUESTS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"client threads (default {DEFAULT_THREADS})")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help=f"crashes per watch interval (default {DEFAULT_TRIALS})")
    args = parser.parse_args(argv)
    if min(args.requests, args.threads, args.trials) < 1:
        parser.error("--requests, --threads and --trials must be at least 1")
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    from simulator import Simulator

    with Simulator(speed=SPEED, seed=1, cluster=cluster()) as sim:
        deployment_uuid = deploy(sim, REPLICAS)
        print_markdown_table(
            f"Load balancing: {args.requests} requests, {args.threads} threads, {REPLICAS} replicas "
            f"(1 machine {FAST_SECONDS * 1000:.0f} ms, 3 machines {SLOW_SECONDS * 1000:.0f} ms)",
            ("per-replica concurrency", "policy", "p50 ms", "p95 ms", "mean ms", "wall s", "fast replica", "slow replicas"),
            balancing_section(sim, deployment_uuid, args.requests, args.threads),
        )
        print_markdown_table(
            "Discovery: RegistryWatcher reaction (real seconds)",
            ("--interval", "change", "trials", "mean", "max"),
            discovery_section(sim, deployment_uuid, args.trials),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
