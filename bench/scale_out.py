#!/usr/bin/env python3
"""Scale-out benchmarks: several client machines, Redis-shared load counts, HAProxy; prints tables.

Needs a real redis-server and haproxy (Debian: apt-get install redis-server haproxy) and the
`redis` package; the bench starts both on loopback ports with temporary directories and
stops them. The simulator gives every container its own port (service_ports) so HAProxy
can address replicas as host:port; `discover_services.py --watch --redis --haproxy-socket`
feeds both the Redis registry and the HAProxy backend, as in production.

Section (a): 3 client processes (3 "app servers"), each with its own threads, against 4
replicas that serve one request at a time, one fast and three slow:
  - independent pools: ServicePool.from_redis, least_inflight on each client's own counts;
  - shared in-flight: the same with shared_inflight=True (counts in Redis);
  - HAProxy leastconn, and HAProxy leastconn with maxconn 1 per server (queueing in HAProxy).
  p50/p95/mean latency and how many requests each replica served.

  - one serve_gateway.py (following the Redis registry) that all three clients call;
  - a serve_gateway.py per client, sharing in-flight counts in Redis (--shared-inflight).
Section (b): requests/s and added latency, one replica answering at once (no queueing):
direct to the replica, through HAProxy, and through the Python gateway (serve_gateway.py).
The replica is the simulator, in Python on the same cores, so it limits every row; what the
proxies cost beside each other with a fast upstream is bench/gateway.py's anchors table.

Section (c): what shared in-flight counts cost per request (lease + release, no HTTP):
local counts vs Redis on loopback.

    python bench/scale_out.py [--requests N] [--threads N] [--sequential N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from servers import binary, free_port, start_haproxy, stop, wait_for
from tables import percentile, print_markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "scripts"
MACHINES = ("1a1a1a1a1a", "2b2b2b2b2b", "3c3c3c3c3c", "4d4d4d4d4d")
# One fast replica and three 4x slower ones (a newer GPU beside older ones), as in
# bench/load_balancing.py, each serving one request at a time like a GPU running one batch.
FAST_SECONDS, SLOW_SECONDS = 0.02, 0.08
CLIENTS = 3
DEFAULT_REQUESTS = 60  # per client thread
DEFAULT_THREADS = 2  # per client process
DEFAULT_SEQUENTIAL = 1000  # section (b) requests per row
DEFAULT_LEASES = 2000  # section (c) lease/release pairs per row
# Simulated seconds per real second: container start-up (~30 simulated s) takes 0.15 s.
SPEED = 200.0
# The watcher's interval in the bench: changes are rare here, 0.2 s keeps start-up quick.
WATCH_INTERVAL = 0.2
# Client processes start together this long after launch, once their imports are done.
START_DELAY_SECONDS = 1.0
KEY_PREFIX = "bench-scale-out"


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = free_port()
    conf = directory / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\nsave \"\"\nappendonly no\nlogfile \"\"\n", encoding="utf-8")
    process = subprocess.Popen([binary("redis-server"), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers():
        try:
            return client.ping()
        except redis.RedisError:
            return False

    wait_for(answers, "redis-server")
    client.close()
    return process, url


def cluster() -> dict:
    default = json.loads((SCRIPTS_DIR / "simulator" / "default_cluster.json").read_text(encoding="utf-8"))
    template = dict(default["machines"][0], gpu_num=4, cpu_num=48, memory_gb=240)
    return {**default, "background_load": [], "machines": [dict(template, machine_id=m) for m in MACHINES]}


def deploy(sim, replicas: int) -> str:
    config = json.loads((ROOT / "examples" / "replicaset-service.json").read_text(encoding="utf-8"))
    config.update(name="bench-scale-out", replica_num=replicas)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token}
    try:
        done = subprocess.run([sys.executable, str(ROOT / "queue_submit.py"), handle.name, "--interval", "0.05",
                               "--wait-running", "--quiet"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(handle.name)
    result = json.loads(done.stdout)
    if result.get("status") != "success":
        raise SystemExit(f"deploy failed: {result}")
    return result["deployment_uuid"]


# One client machine: its own process, threads, pool (or HAProxy). Prints one JSON line.
CLIENT = r"""
import http.client, json, sys, threading, time
from urllib.parse import urlsplit
sys.path.insert(0, sys.argv[1])
mode, redis_url, deployment_uuid, prefix, proxy_url = sys.argv[2:7]
requests, threads, start_at, seed = int(sys.argv[7]), int(sys.argv[8]), float(sys.argv[9]), int(sys.argv[10])
pool = None
if mode in ("independent", "shared"):
    from service_pool import ServicePool
    pool = ServicePool.from_redis(redis_url, deployment_uuid, key_prefix=prefix, shared_inflight=(mode == "shared"), seed=seed)
    assert pool.services(), pool.last_refresh_error
results, lock = [], threading.Lock()

def get(connections, base):
    parts = urlsplit(base)
    connection = connections.get(parts.netloc)
    if connection is None:
        connection = connections[parts.netloc] = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", "/predict")
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return json.loads(body)["container_uuid"]

def worker():
    connections = {}
    for _ in range(requests):
        started = time.perf_counter()
        if pool is not None:
            with pool.lease() as service:
                served = get(connections, service.url)
        else:
            served = get(connections, proxy_url)
        with lock:
            results.append((time.perf_counter() - started, served))

time.sleep(max(0.0, start_at - time.time()))
workers = [threading.Thread(target=worker) for _ in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print(json.dumps(results))
if pool is not None:
    pool.close()
"""


def run_clients(mode: str, redis_url: str, deployment_uuid: str, proxy_url: str, requests: int, threads: int) -> list:
    start_at = time.time() + START_DELAY_SECONDS
    proxy_urls = proxy_url.split(",")  # one per client when each has its own gateway
    processes = [subprocess.Popen([sys.executable, "-c", CLIENT, str(SCRIPTS_DIR), mode, redis_url, deployment_uuid, KEY_PREFIX,
                                   proxy_urls[i % len(proxy_urls)], str(requests), str(threads), str(start_at), str(i)],
                                  stdout=subprocess.PIPE, text=True) for i in range(CLIENTS)]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            raise SystemExit(f"client failed in mode {mode}")
        results.extend(json.loads(out))
    return results


def balance_section(sim, deployment_uuid: str, redis_url: str, proxies: dict[str, str], requests: int, threads: int) -> list[tuple]:
    machine_of = {c["uuid"]: c["machine_id"] for c in sim.containers(deployment_uuid)}
    rows = []
    modes = [("independent pools (own counts)", "independent", ""), ("shared in-flight counts (Redis)", "shared", ""),
             ("HAProxy leastconn", "haproxy", proxies["leastconn"]), ("HAProxy leastconn + maxconn 1", "haproxy", proxies["maxconn1"])]
    if proxies.get("gateway"):
        modes.append(("one serve_gateway.py (least_inflight)", "haproxy", proxies["gateway"]))
    if proxies.get("gateways_shared"):
        modes.append(("a serve_gateway.py per client, --shared-inflight", "haproxy", proxies["gateways_shared"]))
    for label, mode, proxy_url in modes:
        results = run_clients(mode, redis_url, deployment_uuid, proxy_url, requests, threads)
        latencies = [r[0] for r in results]
        served = {m: 0 for m in MACHINES}
        for _, uuid in results:
            served[machine_of[uuid]] += 1
        rows.append((label, f"{percentile(latencies, 0.5) * 1000:.0f}", f"{percentile(latencies, 0.95) * 1000:.0f}",
                     f"{statistics.mean(latencies) * 1000:.0f}", str(served[MACHINES[0]]),
                     " / ".join(str(served[m]) for m in MACHINES[1:])))
    return rows


def sequential(url: str, requests: int, threads: int) -> tuple[float, float]:
    """(requests/s, mean latency s) for keep-alive GETs of <url>/predict."""
    parts = urlsplit(url)
    path = (parts.path.rstrip("/") or "") + "/predict"

    def worker(count: int) -> list[float]:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{url}: HTTP {response.status}")
            samples.append(time.perf_counter() - started)
        connection.close()
        return samples

    worker(20)  # warm up connections and caches
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as executor:
        samples = [s for chunk in executor.map(worker, [requests // threads] * threads) for s in chunk]
    return len(samples) / (time.perf_counter() - started), statistics.mean(samples)


def start_gateway(redis_url: str, deployment_uuid: str, stack: list, *extra: str) -> str | None:
    """scripts/serve_gateway.py following the Redis registry; its URL, or None without aiohttp."""
    try:
        import aiohttp  # noqa: F401 - the gateway's own dependency
    except ImportError:
        return None
    env = {**os.environ, "AUTODL_TOKEN": ""}  # it follows Redis, it never calls the API
    process = subprocess.Popen([sys.executable, str(SCRIPTS_DIR / "serve_gateway.py"), "--deployment-uuid", deployment_uuid,
                                "--registry-redis", redis_url, "--key-prefix", KEY_PREFIX, "--listen", "127.0.0.1:0", "--quiet", *extra],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stack.append(process)
    ready = json.loads(process.stdout.readline() or "{}")
    if ready.get("status") != "success":
        raise SystemExit(f"serve_gateway.py did not start: {ready}")
    return ready["url"]


def overhead_section(sim, deployment_uuid: str, direct: str, proxy: str, gateway: str | None, requests: int) -> list[tuple]:
    rows = []
    for threads in (1, 4):
        base_rps, base_latency = sequential(direct, requests, threads)
        rows.append((str(threads), "direct to the replica", f"{base_rps:,.0f}", f"{base_latency * 1000:.2f}", "-"))
        for label, url in (("through HAProxy", proxy), ("through serve_gateway.py", gateway)):
            if url is None:
                continue
            rps, latency = sequential(url, requests, threads)
            rows.append((str(threads), label, f"{rps:,.0f}", f"{latency * 1000:.2f}", f"{(latency - base_latency) * 1000:+.2f}"))
    return rows


def lease_cost_section(redis_url: str, leases: int) -> list[tuple]:
    from autodl_esd.serving.registry import redis_store
    from autodl_esd.serving.routing.ledgers import SharedInflight
    from service_pool import ServicePool

    services = [{"container_uuid": f"bench-{i}", "url": f"http://127.0.0.1:9/{i}", "healthy": True} for i in range(4)]
    client = redis_store.connect(redis_url)
    shared = SharedInflight(client, redis_store.RedisKeys("0" * 15, KEY_PREFIX))
    rows = []
    for label, kwargs in (("this client's counts", {}), ("shared counts in Redis (loopback)", {"shared_inflight": shared})):
        pool = ServicePool.from_services(services, seed=1, **kwargs)
        for _ in range(50):
            pool.lease().release()
        started = time.perf_counter()
        for _ in range(leases):
            pool.lease().release()
        per = (time.perf_counter() - started) / leases
        rows.append((label, f"{per * 1e6:.0f}", "0" if not kwargs else "2 (lease: 1 script call, release: 1 ZREM)"))
    client.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help=f"(a) requests per client thread (default {DEFAULT_REQUESTS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"(a) threads per client process (default {DEFAULT_THREADS})")
    parser.add_argument("--sequential", type=int, default=DEFAULT_SEQUENTIAL, help=f"(b) requests per row (default {DEFAULT_SEQUENTIAL})")
    parser.add_argument("--leases", type=int, default=DEFAULT_LEASES, help=f"(c) lease/release pairs per row (default {DEFAULT_LEASES})")
    args = parser.parse_args(argv)
    if min(args.requests, args.threads, args.sequential, args.leases) < 1:
        parser.error("every count must be at least 1")
    sys.path.insert(0, str(SCRIPTS_DIR))
    from simulator import Simulator

    stack: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as temp, \
            Simulator(speed=SPEED, seed=1, cluster=cluster(), service_ports=True) as sim:
        directory = Path(temp)
        try:
            redis_process, redis_url = start_redis(directory)
            stack.append(redis_process)
            deployment_uuid = deploy(sim, len(MACHINES))
            from autodl_esd.serving import haproxy
            from autodl_esd.serving.registry import redis_store as redis_registry

            proxies, sockets = {}, {}
            for name, maxconn in (("leastconn", 0), ("maxconn1", 1)):
                options = haproxy.server_options("1s", 2, 1, 10, maxconn)
                process, url, socket_path = start_haproxy(directory, deployment_uuid, options, f"haproxy-{maxconn}")
                stack.append(process)
                proxies[name], sockets[name] = url, (socket_path, options)
            env = {**os.environ, "AUTODL_HOST": sim.url, "AUTODL_TOKEN": sim.token}
            for name, (socket_path, options) in sockets.items():
                feed = [sys.executable, str(SCRIPTS_DIR / "discover_services.py"), "--deployment-uuid", deployment_uuid, "--watch",
                        "--interval", str(WATCH_INTERVAL), "--haproxy-socket", socket_path, "--haproxy-backend", "replicas",
                        "--haproxy-server-options", options, "--quiet"]
                if name == "leastconn":  # this one also keeps the Redis registry (for the pools and the gateway)
                    feed += ["--redis", redis_url, "--key-prefix", KEY_PREFIX]
                stack.append(subprocess.Popen(feed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            keys = redis_registry.RedisKeys(deployment_uuid, KEY_PREFIX)
            client = redis_registry.connect(redis_url)
            wait_for(lambda: len((redis_registry.read_registry(client, keys) or {}).get("services", [])) == len(MACHINES), "the Redis registry")
            for socket_path, _ in sockets.values():
                wait_for(lambda: len(haproxy.RuntimeApi(socket_path).servers("replicas")) == len(MACHINES), "HAProxy servers")
            client.close()
            for socket_path, _ in sockets.values():  # first health checks pass (a fixed wait was short on a loaded machine)
                wait_for(lambda: [row["status"] for row in haproxy.RuntimeApi(socket_path).stats("replicas")] == ["UP"] * len(MACHINES),
                         "HAProxy's health checks to pass")
            gateway = start_gateway(redis_url, deployment_uuid, stack)
            if gateway:
                proxies["gateway"] = gateway
                proxies["gateways_shared"] = ",".join(start_gateway(redis_url, deployment_uuid, stack, "--shared-inflight")
                                                      for _ in range(CLIENTS))

            for machine in MACHINES:
                sim.set_machine_latency(machine, SLOW_SECONDS)
                sim.set_machine_concurrency(machine, 1)
            sim.set_machine_latency(MACHINES[0], FAST_SECONDS)
            print_markdown_table(
                f"(a) {CLIENTS} client processes x {args.threads} threads x {args.requests} requests, {len(MACHINES)} replicas "
                f"serving one request at a time (1 at {FAST_SECONDS * 1000:.0f} ms, 3 at {SLOW_SECONDS * 1000:.0f} ms)",
                ("clients balance with", "p50 ms", "p95 ms", "mean ms", "fast replica", "slow replicas"),
                balance_section(sim, deployment_uuid, redis_url, proxies, args.requests, args.threads),
            )

            for machine in MACHINES:
                sim.set_machine_latency(machine, 0)
                sim.set_machine_concurrency(machine, 0)
            direct = sim.service_address(sim.containers(deployment_uuid)[0]["uuid"])
            print_markdown_table(
                f"(b) {args.sequential} keep-alive GETs per row, replicas answering at once (the Python simulator, loopback; "
                "mean latency per request)",
                ("client threads", "path", "requests/s", "mean ms", "added ms"),
                overhead_section(sim, deployment_uuid, direct, proxies["leastconn"], gateway, args.sequential),
            )
            if gateway is None:
                print("\n(aiohttp is not installed: no serve_gateway.py rows)")

            print_markdown_table(
                f"(c) cost of shared in-flight counts: {args.leases} lease+release pairs, no HTTP",
                ("least_inflight on", "µs per request", "Redis round trips per request"),
                lease_cost_section(redis_url, args.leases),
            )
        finally:
            for process in reversed(stack):
                stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
